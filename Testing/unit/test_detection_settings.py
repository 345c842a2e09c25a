"""Detection settings: thesis defaults, a model's recommendation, then what the user asked for."""

import pytest

from brainldm.detect.settings import DetectionSettings
from brainldm.errors import SettingsError


def test_the_models_recommendation_fills_in_what_the_user_left_unset():
    recommended = {"guidance": 10.0, "steps": 25, "mix": 0.93, "window_batch": 99}  # window_batch: not a model setting
    settings = DetectionSettings.for_model(recommended, steps=None, guidance=3.0)
    assert settings.guidance == 3.0  # the user's choice wins
    assert settings.steps == 25 and settings.mix == 0.93  # the model's recommendation
    assert settings.window_batch == DetectionSettings().window_batch  # only MODEL_DEFAULTS are taken
    assert DetectionSettings.for_model(None) == DetectionSettings()


def test_a_bad_recommendation_or_override_is_rejected():
    with pytest.raises(SettingsError, match="omega"):
        DetectionSettings.for_model({"mix": 0.2})
    with pytest.raises(SettingsError, match="unknown"):
        DetectionSettings.for_model(None, colour="red")


def test_a_models_fixed_threshold_and_smoothing_are_taken_and_checked():
    recommended = {"threshold": "fixed", "threshold_value": 0.03, "smoothing": 2.0}
    settings = DetectionSettings.for_model(recommended)
    assert (settings.threshold, settings.threshold_value, settings.smoothing) == ("fixed", 0.03, 2.0)
    # the user can go back to the thesis's Otsu threshold and raw map
    settings = DetectionSettings.for_model(recommended, threshold="otsu", smoothing=0.0)
    assert (settings.threshold, settings.smoothing) == ("otsu", 0.0)
    with pytest.raises(SettingsError, match="positive threshold value"):
        DetectionSettings(threshold="fixed").validate()
    with pytest.raises(SettingsError, match="smoothing"):
        DetectionSettings(smoothing=-1.0).validate()
