"""Super-resolution training pairs made on the fly (thesis §4.4.1, Algorithms 1-2).

A training pair is a high-resolution (HR) axial slice of a preprocessed training subject and the
same slice degraded by one of the thesis's pipelines (:func:`brainldm.sr.degrade.make_sr_pair`)
and upsampled back to the HR grid by bicubic interpolation (the model's condition). Degrading a
whole four-sequence slice takes tens of milliseconds, much more than the data of one small
training step may cost, so :class:`SRPairPool` keeps a pool of degraded slices and replaces a few
of them with fresh draws before every step: the pairs stay new and every draw (subject, slice,
pipeline, degradation seed, patch position, flip) comes from one seeded generator, so a run is
reproducible. Patches are centred on a random brain pixel, so none is pure background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from brainldm.errors import BrainLDMError
from brainldm.sr.degrade import make_sr_pair


@dataclass
class DegradedSlice:
    """One pool entry: ``hr`` and ``condition`` ``(C, H, W)`` float32 in [-1, 1], ``brain`` ``(H, W)`` bool."""

    hr: np.ndarray
    condition: np.ndarray
    brain: np.ndarray
    pipeline: str
    subject: str
    slice_index: int
    seed: int


def _window_start(rng: np.random.Generator, centre: int, size: int, full: int) -> int:
    """Start of a window of ``size`` around ``centre``, kept inside ``[0, full)`` when it fits."""
    start = int(centre) - size // 2 + int(rng.integers(-(size // 4), size // 4 + 1))
    if full >= size:
        return int(np.clip(start, 0, full - size))
    return int(np.clip(start, full - size, 0))


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """The window ``start : start + size`` of the last two axes, ``fill`` outside the array."""
    out = np.full(array.shape[:-2] + tuple(int(s) for s in size), fill, dtype=array.dtype)
    src, dst = [], []
    for a, s, full in zip(start, size, array.shape[-2:]):
        lo, hi = max(int(a), 0), min(int(a) + int(s), int(full))
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(a), hi - int(a)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class SRPairPool:
    """Degraded training slices (a pool refreshed on the fly) and patches of them.

    Parameters
    ----------
    records:
        Preprocessed subjects (:class:`brainldm.train.data.VolumeRecord`: ``images`` ``(C, x, y, z)``
        in [-1, 1], ``mask`` ``(x, y, z)``).
    patch_size:
        ``(P, P)`` training patch on the HR grid.
    pipelines:
        ``("mri", "esrgan")`` or one of them, drawn with equal probability.
    scale:
        Downscale factor of the LR grid (2).
    pool_size:
        Degraded slices kept.
    rng:
        The generator every draw comes from.
    flip_prob:
        Probability of a left-right flip of a patch (HR and condition together).
    """

    def __init__(self, records, patch_size: Sequence[int], pipelines: Sequence[str], scale: float,
                 pool_size: int, rng: np.random.Generator, flip_prob: float = 0.0):
        if not records:
            raise BrainLDMError("No subjects to make super-resolution training pairs from.")
        self.records = list(records)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.pipelines = tuple(pipelines)
        self.scale = float(scale)
        self.rng = rng
        self.flip_prob = float(flip_prob)
        self.brain_slices = []
        for record in self.records:
            slices = np.flatnonzero(np.asarray(record.mask).any(axis=(0, 1)))
            self.brain_slices.append(slices if slices.size else np.arange(record.shape[2]))
        self.pool: list[DegradedSlice] = [self.draw_slice() for _ in range(max(1, int(pool_size)))]

    def draw_slice(self) -> DegradedSlice:
        """A fresh degraded slice: random subject, brain slice, pipeline and degradation seed."""
        index = int(self.rng.integers(len(self.records)))
        record = self.records[index]
        slices = self.brain_slices[index]
        z = int(slices[self.rng.integers(len(slices))])
        pipeline = self.pipelines[int(self.rng.integers(len(self.pipelines)))]
        seed = int(self.rng.integers(2**31))
        hr = np.ascontiguousarray(np.asarray(record.images[..., z], dtype=np.float32))
        pair = make_sr_pair(hr, pipeline, seed, scale=self.scale)
        brain = np.asarray(record.mask[..., z], dtype=bool)
        if not brain.any():
            brain = (hr > -1.0).any(axis=0)
        return DegradedSlice(hr, pair.condition.astype(np.float32), brain, pipeline, record.subject_id, z, seed)

    def refresh(self, count: int) -> None:
        """Replace ``count`` random pool entries with fresh degraded slices."""
        for _ in range(int(count)):
            self.pool[int(self.rng.integers(len(self.pool)))] = self.draw_slice()

    def patch(self, entry: DegradedSlice) -> tuple[np.ndarray, np.ndarray]:
        """``(hr, condition)`` ``(C, P, P)`` of a window around a random brain pixel of ``entry``."""
        ys, xs = np.nonzero(entry.brain)
        if len(ys):
            k = int(self.rng.integers(len(ys)))
            centre = (ys[k], xs[k])
        else:
            centre = (entry.brain.shape[0] // 2, entry.brain.shape[1] // 2)
        start = [_window_start(self.rng, c, s, f) for c, s, f in zip(centre, self.patch_size, entry.brain.shape)]
        hr = crop(entry.hr, start, self.patch_size, -1.0)
        condition = crop(entry.condition, start, self.patch_size, -1.0)
        if self.flip_prob > 0 and self.rng.random() < self.flip_prob:  # left-right: axis 0 of the RAS grid
            hr, condition = hr[:, ::-1].copy(), condition[:, ::-1].copy()
        return hr, condition

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hr, condition)`` batches ``(B, C, P, P)`` from random pool entries."""
        pairs = [self.patch(self.pool[int(self.rng.integers(len(self.pool)))]) for _ in range(int(batch_size))]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])),
                torch.from_numpy(np.stack([p[1] for p in pairs])))

    def fixed_patches(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` patches, each from its own fresh degraded slice (validation sets)."""
        pairs = [self.patch(self.draw_slice()) for _ in range(int(count))]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])),
                torch.from_numpy(np.stack([p[1] for p in pairs])))


__all__ = ["DegradedSlice", "SRPairPool", "crop"]
