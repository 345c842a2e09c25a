"""Segmentation metrics and the percentile bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainldm.errors import InputDataError
from brainldm.evaluate.metrics import bootstrap_ci, dice, segmentation_metrics, sensitivity, specificity


def test_counts_on_a_known_case():
    ref = np.zeros((4, 5, 6), bool)
    ref[0, :2, :] = True  # 12 positives
    pred = np.zeros_like(ref)
    pred[0, 1:3, :] = True  # 12 predicted, 6 overlap
    assert dice(pred, ref) == pytest.approx(2 * 6 / 24)
    assert sensitivity(pred, ref) == pytest.approx(6 / 12)
    negatives = ref.size - 12
    assert specificity(pred, ref) == pytest.approx((negatives - 6) / negatives)
    assert segmentation_metrics(pred, ref)["dice"] == pytest.approx(0.5)


def test_perfect_disjoint_and_empty():
    rng = np.random.default_rng(0)
    ref = rng.random((8, 8, 8)) > 0.7
    assert dice(ref, ref) == 1.0 and sensitivity(ref, ref) == 1.0 and specificity(ref, ref) == 1.0
    assert dice(~ref, ref) == 0.0 and sensitivity(~ref, ref) == 0.0 and specificity(~ref, ref) == 0.0
    empty = np.zeros((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert dice(~empty, empty) == 0.0
    assert math.isnan(sensitivity(empty, empty)) and specificity(empty, empty) == 1.0
    assert math.isnan(specificity(~empty, ~empty))
    # 0/1 integer labels are accepted; any non-zero counts as tumour
    assert dice(ref.astype(np.uint8) * 2, ref) == 1.0


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(InputDataError, match="same grid"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.1, size=200)
    mean, low, high = bootstrap_ci(values, n=2000, alpha=0.05, seed=3)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # the percentile interval of the mean is close to +-1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(values, n=500, seed=7) == bootstrap_ci(values, n=500, seed=7)
    narrow = bootstrap_ci(values, n=2000, alpha=0.5, seed=3)
    assert narrow[2] - narrow[1] < high - low


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    mean, low, high = bootstrap_ci([0.2, float("nan"), 0.4], n=200)
    assert mean == pytest.approx(0.3) and 0.2 <= low <= high <= 0.4
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], alpha=1.5)
