"""Training patch samplers: healthy patches from diseased brains (§3.3.2, Fig. 3.4).

A patch is *diseased* when it holds any tumour voxel and *healthy* otherwise. The thesis'
distance-based sampler draws

* healthy patch centres with a probability that rises linearly with the Euclidean
  distance from the centre to the tumour (``scipy.ndimage.distance_transform_edt`` of the
  tumour-free region), after subtracting an offset proportional to the norm of the patch
  size so that centres close to the tumour get no weight (tissue near a tumour is
  deformed; far tissue is closer to healthy anatomy);
* diseased patch centres uniformly among the centres whose patch contains tumour;
* healthy and diseased patches in a fixed mix (50/50 by default).

Centres stay half a patch away from the volume border (every patch lies inside the
volume) and, an improvement over the reference code, healthy centres lie inside the brain
mask. Whether a patch contains tumour is checked exactly (box sums), so no healthy patch
ever touches a tumour voxel whatever the offset. Subjects without tumour give only
healthy patches, drawn uniformly inside the brain.

The ``"uniform"`` sampler is the ablation of Table 3.6: the same class mix, but centres
uniform within each class, disregarding the distance to the tumour.

Works for volumes ``(X, Y, Z)`` and slices ``(X, Y)``; patches are given by their start
index (``start = centre - size // 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from brainldm.errors import InputDataError, SettingsError

#: Class labels of patches (shared with the denoiser's class embedding).
HEALTHY = 0
DISEASED = 1

SamplerKind = Literal["distance", "uniform"]


@dataclass
class PatchSamplerConfig:
    """Settings of the training patch sampler.

    Attributes
    ----------
    patch_size:
        Patch size in voxels per axis (64^3 in the thesis; 2 entries for 2D).
    kind:
        ``"distance"`` (thesis sampler) or ``"uniform"`` (ablation).
    healthy_fraction:
        Probability that a draw is a healthy patch (when both classes are available).
    distance_offset:
        The distance map is offset by ``distance_offset * ||patch_size||`` before the
        linear weighting (weight = max(distance - offset, 0)). 0.5 (default) is the
        half-diagonal, the smallest offset for which every positively weighted centre is
        guaranteed tumour-free; 1.0 is the full norm of the patch size, as written in the
        thesis (much stricter: with 64^3 patches centres must be 111 voxels from tumour).
        Healthy patches are always checked exactly for tumour voxels.
    restrict_to_brain:
        Healthy centres must lie inside the brain mask (when one is given).
    """

    patch_size: tuple[int, ...] = (64, 64, 64)
    kind: SamplerKind = "distance"
    healthy_fraction: float = 0.5
    distance_offset: float = 0.5
    restrict_to_brain: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, list):
            self.patch_size = tuple(self.patch_size)
        if len(self.patch_size) not in (2, 3) or any(int(p) < 1 for p in self.patch_size):
            raise SettingsError(f"patch_size must be 2 or 3 positive sizes, got {self.patch_size!r}.")
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.kind not in ("distance", "uniform"):
            raise SettingsError(f"Patch sampler kind must be 'distance' or 'uniform', got {self.kind!r}.")
        if not 0.0 <= self.healthy_fraction <= 1.0:
            raise SettingsError(f"healthy_fraction must lie in [0, 1], got {self.healthy_fraction}.")
        if self.distance_offset < 0:
            raise SettingsError(f"distance_offset must not be negative, got {self.distance_offset}.")


@dataclass
class PatchDraws:
    """Drawn patches: ``starts`` ``(n, axes)`` int64 start indices, ``labels`` ``(n,)`` int64
    (:data:`HEALTHY` / :data:`DISEASED`)."""

    starts: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def window_sums(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Number of true voxels in every window of ``size``: entry ``s`` counts
    ``mask[s0:s0+size0, s1:s1+size1, ...]``; shape ``mask.shape - size + 1``."""
    counts = mask.astype(np.int64)
    for axis, length in enumerate(size):
        csum = np.cumsum(counts, axis=axis)
        pad = [(0, 0)] * counts.ndim
        pad[axis] = (1, 0)
        csum = np.pad(csum, pad)
        upper = np.take(csum, np.arange(length, csum.shape[axis]), axis=axis)
        lower = np.take(csum, np.arange(0, csum.shape[axis] - length), axis=axis)
        counts = upper - lower
    return counts


def patch_slices(start: np.ndarray | tuple[int, ...], size: tuple[int, ...]) -> tuple[slice, ...]:
    """Index of a patch in a spatial array (prepend ``...`` for channel-first arrays)."""
    return tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, size))


def patch_label(tumour: np.ndarray | None, start: np.ndarray | tuple[int, ...], size: tuple[int, ...]) -> int:
    """:data:`DISEASED` when the patch holds any tumour voxel, else :data:`HEALTHY`."""
    if tumour is None:
        return HEALTHY
    return DISEASED if bool(np.any(tumour[patch_slices(start, size)])) else HEALTHY


class PatchSampler:
    """Draws labelled training patches of one subject.

    Parameters
    ----------
    tumour:
        Tumour mask (any non-zero voxel is tumour), ``None`` or empty for a subject without
        tumour.
    brain:
        Brain mask of the same shape, or ``None`` (whole volume).
    config:
        :class:`PatchSamplerConfig`.
    shape:
        Spatial shape, needed only when both masks are ``None``.
    """

    def __init__(
        self,
        tumour: np.ndarray | None,
        brain: np.ndarray | None,
        config: PatchSamplerConfig,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.config = config
        size = config.patch_size
        reference = tumour if tumour is not None else brain
        if reference is None:
            if shape is None:
                raise InputDataError("The patch sampler needs a tumour mask, a brain mask or a shape.")
            reference = np.zeros(shape, dtype=bool)
        self.shape = tuple(int(s) for s in reference.shape)
        if len(self.shape) != len(size):
            raise SettingsError(
                f"Patch size {size} has {len(size)} axes but the volume {self.shape} has {len(self.shape)}."
            )
        for name, arr in (("tumour", tumour), ("brain", brain)):
            if arr is not None and tuple(arr.shape) != self.shape:
                raise InputDataError(f"The {name} mask has shape {tuple(arr.shape)}, expected {self.shape}.")
        if any(p > s for p, s in zip(size, self.shape)):
            raise InputDataError(
                f"Patch size {size} does not fit the volume {self.shape}; use smaller patches or pad the volume."
            )
        tumour_mask = np.zeros(self.shape, dtype=bool) if tumour is None else np.asarray(tumour) != 0
        brain_mask = None if brain is None else np.asarray(brain) != 0
        self.tumour = tumour_mask
        self.has_tumour = bool(tumour_mask.any())

        # Start grid: start s in [0, shape - size]; centre = s + size // 2.
        half = np.array([p // 2 for p in size])
        grid = tuple(s - p + 1 for s, p in zip(self.shape, size))
        centre_index = tuple(slice(h, h + g) for h, g in zip(half, grid))
        counts = window_sums(tumour_mask, size)  # tumour voxels per patch, indexed by start
        clean = counts == 0
        diseased = ~clean
        in_brain = np.ones(grid, dtype=bool)
        if config.restrict_to_brain and brain_mask is not None:
            in_brain = brain_mask[centre_index]

        # Healthy weights over starts.
        healthy_candidates = clean & in_brain
        if config.kind == "distance" and self.has_tumour:
            distance = ndimage.distance_transform_edt(~tumour_mask)[centre_index]
            offset = config.distance_offset * float(np.linalg.norm(size))
            weight = np.clip(distance - offset, 0.0, None)
            weight = np.where(healthy_candidates, weight, 0.0)
            if not weight.any():
                # No centre beyond the offset: still rise linearly with the distance.
                weight = np.where(healthy_candidates, distance, 0.0)
        else:
            weight = healthy_candidates.astype(np.float64)
        self._healthy_index, self._healthy_cdf = self._table(weight)
        self._diseased_index, self._diseased_cdf = self._table(diseased.astype(np.float64))
        self._grid = grid

    @staticmethod
    def _table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = weight.ravel()
        index = np.flatnonzero(flat > 0)
        cdf = np.cumsum(flat[index], dtype=np.float64)
        return index, cdf

    @property
    def num_healthy_centres(self) -> int:
        """Start positions with positive healthy probability."""
        return int(self._healthy_index.size)

    @property
    def num_diseased_centres(self) -> int:
        """Start positions whose patch contains tumour."""
        return int(self._diseased_index.size)

    def healthy_probability(self) -> np.ndarray:
        """Probability of each patch *centre* being drawn as healthy, on the volume grid
        (zero near the border) - the map of Fig. 3.4."""
        prob = np.zeros(int(np.prod(self._grid)), dtype=np.float64)
        if self._healthy_index.size:
            weights = np.diff(np.concatenate([[0.0], self._healthy_cdf]))
            prob[self._healthy_index] = weights / self._healthy_cdf[-1]
        full = np.zeros(self.shape, dtype=np.float64)
        half = [p // 2 for p in self.config.patch_size]
        full[tuple(slice(h, h + g) for h, g in zip(half, self._grid))] = prob.reshape(self._grid)
        return full

    def _draw(self, index: np.ndarray, cdf: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        picks = np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right")
        flat = index[np.minimum(picks, index.size - 1)]
        return np.stack(np.unravel_index(flat, self._grid), axis=1).astype(np.int64)

    def sample(self, count: int, rng: np.random.Generator | int | None = None) -> PatchDraws:
        """Draw ``count`` patches: each is healthy with probability ``healthy_fraction``
        (when both classes exist in this subject, otherwise the available class)."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        has_h, has_d = self.num_healthy_centres > 0, self.num_diseased_centres > 0
        if not (has_h or has_d):
            raise InputDataError(
                "No patch can be drawn from this subject: no healthy centre inside the brain and no tumour."
            )
        if has_h and has_d:
            labels = np.where(rng.random(count) < self.config.healthy_fraction, HEALTHY, DISEASED)
        else:
            labels = np.full(count, HEALTHY if has_h else DISEASED)
        labels = labels.astype(np.int64)
        starts = np.zeros((count, len(self.shape)), dtype=np.int64)
        is_h = labels == HEALTHY
        if is_h.any():
            starts[is_h] = self._draw(self._healthy_index, self._healthy_cdf, int(is_h.sum()), rng)
        if (~is_h).any():
            starts[~is_h] = self._draw(self._diseased_index, self._diseased_cdf, int((~is_h).sum()), rng)
        return PatchDraws(starts=starts, labels=labels)


__all__ = [
    "DISEASED",
    "HEALTHY",
    "PatchDraws",
    "PatchSampler",
    "PatchSamplerConfig",
    "patch_label",
    "patch_slices",
    "window_sums",
]
