"""Settings and results of anomaly detection (what `brainldm segment` and the UIs pass around)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from brainldm.diffusion.sampler import SamplerSettings
from brainldm.errors import SettingsError


@dataclass
class DetectionSettings:
    """How to turn a scan into a healthy counterfactual and a segmentation.

    Defaults follow the thesis's best setting scaled for CPU (EDICT, C = 5, omega = 0.97;
    thesis Table 3.4) with N = 50 steps.
    """

    encoder: Literal["edict", "ddim"] = "edict"
    steps: int = 50  # N: DDIM/EDICT steps for inversion and for generation
    noise_level: int = 0  # L: timestep the inversion reaches (0 = all T; thesis N in [400, 600] for DDIM)
    guidance: float = 5.0  # C in Eq. 2.45
    mix: float = 0.97  # EDICT mixing weight omega (Eq. 2.52)
    threshold: Literal["otsu", "graddiff", "fixed"] = "otsu"
    # "fixed": this anomaly-map value (normalised [-1, 1] units, after smoothing) separates tumour from
    # brain - one operating point per model, chosen on validation subjects (grid-search --thresholds)
    threshold_value: float = 0.0
    smoothing: float = 0.0  # Gaussian sigma (voxels) of the anomaly map before thresholding; 0 = none (thesis)
    overlap: float = 0.25  # sliding-window overlap for patch models (0, 0.25, 0.5)
    mask_brain: bool = True  # restrict the counterfactual/anomaly map to the brain (thesis Table 3.5)
    opening_radius: int = 1  # binary opening after thresholding
    mode: Literal["auto", "whole", "windows", "slices"] = "auto"
    window_batch: int = 4  # windows per denoiser call in sliding-window mode
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "DetectionSettings":
        if self.encoder not in ("edict", "ddim"):
            raise SettingsError(f"encoder must be 'edict' or 'ddim', got {self.encoder!r}")
        if not 1 <= self.steps <= 1000:
            raise SettingsError(f"steps (N) must be between 1 and 1000, got {self.steps}")
        if not 0 <= self.noise_level <= 1000:
            raise SettingsError(f"noise level (L) must be between 1 and 1000 (0 = all timesteps), "
                                f"got {self.noise_level}")
        if self.noise_level and self.steps > self.noise_level:
            raise SettingsError(f"steps (N = {self.steps}) cannot exceed the noise level (L = {self.noise_level}): "
                                "each step moves at least one timestep")
        if not 0.0 <= self.guidance <= 50.0:
            raise SettingsError(f"guidance (C) must be between 0 and 50 (thesis uses 0-20), got {self.guidance}")
        if not 0.5 < self.mix <= 1.0:
            raise SettingsError(f"mix (omega) must be in (0.5, 1]; the thesis uses 0.91-0.99, got {self.mix}")
        if self.threshold not in ("otsu", "graddiff", "fixed"):
            raise SettingsError(f"threshold must be 'otsu', 'graddiff' or 'fixed', got {self.threshold!r}")
        if self.threshold == "fixed" and not self.threshold_value > 0:
            raise SettingsError("threshold 'fixed' needs a positive threshold value: use a model that recommends "
                                "one (grid-search --thresholds chooses it) or give --threshold-value; got "
                                f"{self.threshold_value}")
        if not 0.0 <= self.smoothing <= 10.0:
            raise SettingsError(f"smoothing (Gaussian sigma in voxels) must be between 0 and 10, got {self.smoothing}")
        if self.overlap not in (0.0, 0.25, 0.5):
            raise SettingsError(f"overlap must be 0, 0.25 or 0.5, got {self.overlap}")
        if self.mode not in ("auto", "whole", "windows", "slices"):
            raise SettingsError(f"mode must be auto, whole, windows or slices, got {self.mode!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def sampler_settings(self) -> SamplerSettings:
        """The trajectory these settings walk."""
        return SamplerSettings(method=self.encoder, num_steps=self.steps, omega=self.mix,
                               noise_level=self.noise_level or None)

    #: Settings a model bundle may recommend (``bundle.json`` ``"inference"``, chosen by grid search).
    MODEL_DEFAULTS = ("encoder", "steps", "noise_level", "guidance", "mix", "threshold", "threshold_value",
                      "smoothing", "opening_radius", "mask_brain")

    @classmethod
    def for_model(cls, inference: dict | None = None, **overrides) -> "DetectionSettings":
        """Settings for a model: the thesis defaults, then the model's recommendation
        (``inference``, only the keys in :attr:`MODEL_DEFAULTS`), then ``overrides`` that are not
        ``None`` (what the user asked for explicitly)."""
        values = {k: v for k, v in (inference or {}).items() if k in cls.MODEL_DEFAULTS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise SettingsError(f"unknown detection settings: {', '.join(unknown)}")
        return cls(**values).validate()


@dataclass
class DetectionResult:
    """Everything detection produces, in the subject's canonical grid (see :class:`Subject`).

    ``reconstruction`` and ``counterfactual`` are in the subject's raw intensity units
    (normalisation undone); maps are float32, ``segmentation`` is uint8 (0/1).
    """

    reconstruction: np.ndarray  # (4, X, Y, Z)
    counterfactual: np.ndarray  # (4, X, Y, Z)
    anomaly_map: np.ndarray  # (X, Y, Z)
    segmentation: np.ndarray  # (X, Y, Z) uint8
    brain_mask: np.ndarray  # (X, Y, Z) bool
    threshold: float
    graddiff_map: np.ndarray | None = None
    #: |input - reconstruction| averaged over sequences (normalised units): the autoencoder baseline's map
    reconstruction_error: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
