"""Naive baselines that every detector must beat (thesis Table 3.4, §4.4.2).

FLAIR intensity thresholding is a strong naive baseline for brain tumours: oedema and
tumour are bright on T2-FLAIR. Two variants, both on the normalised FLAIR inside the brain:

- ``flair_otsu``: one Otsu threshold of the FLAIR intensities inside the brain;
- ``flair_percentile``: everything above a high percentile (default the 98th) of the
  brain's FLAIR intensities.

Both are followed by the same binary opening as the detector's maps.
"""

from __future__ import annotations

import numpy as np

from brainldm.data.sequences import FLAIR_INDEX
from brainldm.detect.maps import Segmentation, binary_opening, segment_from_map


def flair_otsu(images: np.ndarray, brain_mask: np.ndarray, opening_radius: int = 1) -> Segmentation:
    """Otsu threshold of the FLAIR channel of ``images`` ``(4, X, Y, Z)`` inside ``brain_mask``."""
    return segment_from_map(images[FLAIR_INDEX], brain_mask=brain_mask, method="otsu", opening_radius=opening_radius)


def flair_percentile(
    images: np.ndarray, brain_mask: np.ndarray, percentile: float = 98.0, opening_radius: int = 1
) -> Segmentation:
    """FLAIR above the ``percentile``-th percentile of the brain's FLAIR values, then an opening."""
    flair = images[FLAIR_INDEX]
    inside = flair[brain_mask]
    if inside.size == 0:
        return Segmentation(np.zeros(flair.shape, bool), float("nan"), True, "the brain mask is empty")
    threshold = float(np.percentile(inside, percentile))
    mask = binary_opening((flair > threshold) & brain_mask, opening_radius)
    return Segmentation(mask, threshold)


BASELINES = {"flair-otsu": flair_otsu, "flair-percentile": flair_percentile}
