"""Segmentation metrics and bootstrap confidence intervals (thesis §2.1.2, §4.4.1).

Inputs are boolean (or 0/1) arrays of the same shape; a label map with several tumour classes
must be binarised by the caller (``seg > 0`` = whole tumour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brainldm.errors import InputDataError


def _binary_pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise InputDataError(
            f"segmentation shapes differ: prediction {pred.shape} vs reference {ref.shape}; "
            "load a reference segmentation in the same grid as the images"
        )
    return pred.astype(bool, copy=False), ref.astype(bool, copy=False)


def dice(prediction, reference) -> float:
    """Dice similarity coefficient ``2 |P & R| / (|P| + |R|)``; both empty counts as perfect (1.0)."""
    pred, ref = _binary_pair(prediction, reference)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def sensitivity(prediction, reference) -> float:
    """True-positive rate ``TP / (TP + FN)``; NaN when the reference has no positives (undefined)."""
    pred, ref = _binary_pair(prediction, reference)
    positives = int(ref.sum())
    if positives == 0:
        return float("nan")
    return int(np.logical_and(pred, ref).sum()) / positives


def specificity(prediction, reference) -> float:
    """True-negative rate ``TN / (TN + FP)``; NaN when the reference has no negatives (undefined)."""
    pred, ref = _binary_pair(prediction, reference)
    negatives = int((~ref).sum())
    if negatives == 0:
        return float("nan")
    return int(np.logical_and(~pred, ~ref).sum()) / negatives


def segmentation_metrics(prediction, reference) -> dict[str, float]:
    """``{"dice", "sensitivity", "specificity"}`` of one prediction against its reference."""
    return {
        "dice": dice(prediction, reference),
        "sensitivity": sensitivity(prediction, reference),
        "specificity": specificity(prediction, reference),
    }


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``(1 - alpha)`` confidence interval of the mean (thesis §4.4.1).

    Draws ``n`` resamples of the values with replacement and returns ``(mean, low, high)`` where
    ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled means.
    NaN values (undefined metrics, e.g. sensitivity of a tumour-free case) are left out; with no
    finite value left the result is ``(nan, nan, nan)``.
    """
    if int(n) < 1:
        raise ValueError(f"number of bootstrap resamples must be positive, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        nan = float("nan")
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    n = int(n)
    means = np.empty(n, dtype=np.float64)
    chunk = max(1, 4_000_000 // data.size)  # bound the memory of the resample index array
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        idx = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[idx].mean(axis=1)
    low, high = np.percentile(means, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(data.mean()), float(low), float(high)
