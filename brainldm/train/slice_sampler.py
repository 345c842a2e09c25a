"""A vectorised 2D denoiser-patch sampler whose latents live on the training device.

:class:`brainldm.train.data.LatentPatchSampler` draws one patch at a time in Python (about
0.1 ms each): on a GPU, whose denoiser step over a batch of 2D latent windows takes a few
milliseconds, that loop would leave the GPU idle most of the time. :class:`DeviceSliceSampler`
draws the same distribution for a whole batch at once:

1. healthy or diseased with probability ``diseased_fraction`` (like the per-patch sampler);
2. a subject (diseased: among subjects with a tumour), then, with ``flip_prob``, its
   horizontally flipped copy;
3. an axial slice from the subject's healthy slices (brain, no tumour) or tumour slices,
   falling back to the other kind, then to any slice, when the wanted kind is empty;
4. a random in-plane window inside the subject's latent grid; the label is DISEASED when the
   window holds a tumour latent voxel, else HEALTHY.

All latents are stacked (zero-padded to the largest grid) in one tensor on the device and the
windows are gathered by advanced indexing, so a batch costs a handful of tensor operations.
Used for 2D models when :func:`stacked_bytes` fits the stage's ``stacked_sampler_mb``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from brainldm.errors import BrainLDMError
from brainldm.train.data import LatentRecord, VolumeRecord


def stacked_bytes(records: Sequence[LatentRecord]) -> int:
    """Bytes of the zero-padded float32 stack of these 2D latent records."""
    if not records:
        return 0
    shapes = np.array([r.latent.shape for r in records])
    return int(len(records) * np.prod(shapes.max(axis=0)) * 4)


class DeviceSliceSampler:
    """Batches of 2D latent windows with HEALTHY (0) / DISEASED (1) labels, drawn on ``device``.

    ``sample(batch_size)`` returns ``{"z", "labels", "start", "extent"}`` like
    :meth:`LatentPatchSampler.sample`, with every tensor already on ``device``.
    """

    def __init__(self, records: Sequence[LatentRecord], latent_patch: Sequence[int], diseased_fraction: float,
                 rng: np.random.Generator, flip_prob: float = 0.0, device: torch.device | str = "cpu"):
        if not records:
            raise BrainLDMError("No latent volumes to draw denoiser patches from.")
        if len(latent_patch) != 2 or any(len(r.latent.shape) != 4 for r in records):
            raise BrainLDMError("DeviceSliceSampler draws 2D windows from (C, x, y, z) latent volumes only.")
        self.device = torch.device(device)
        self.rng = rng
        self.patch = tuple(int(s) for s in latent_patch)
        self.diseased_fraction = float(diseased_fraction)
        self.flip_prob = float(flip_prob)
        grids = np.array([r.latent.shape[1:] for r in records], dtype=np.int64)  # (R, 3): x, y, z
        if (grids[:, :2] < np.array(self.patch)).any():
            raise BrainLDMError(f"A latent slice is smaller than the {list(self.patch)} window; "
                                "the encoder pads every subject to at least one window.")
        channels = records[0].latent.shape[0]
        cx, cy, cz = (int(v) for v in grids.max(axis=0))
        latents = torch.zeros((len(records), cz, channels, cx, cy), dtype=torch.float32)
        tumour = torch.zeros((len(records), cz, cx, cy), dtype=torch.bool)
        for i, record in enumerate(records):
            x, y, z = (int(v) for v in grids[i])
            latents[i, :z, :, :x, :y] = torch.from_numpy(np.moveaxis(np.array(record.latent, np.float32), -1, 0))
            if record.tumour is not None:
                tumour[i, :z, :x, :y] = torch.from_numpy(np.moveaxis(np.array(record.tumour, bool), -1, 0))
        self.latents = latents.to(self.device)
        self.tumour = tumour.to(self.device)
        self.grids = grids
        plain = [i for i, r in enumerate(records) if not r.flipped]
        flipped = {r.subject_id: i for i, r in enumerate(records) if r.flipped}
        self.plain = np.array(plain, dtype=np.int64)
        self.flipped_of = np.array([flipped.get(records[i].subject_id, i) for i in plain], dtype=np.int64)
        # slice pools of every plain subject, flattened: pool k of subject j = values[offsets[j,k]:+sizes[j,k]]
        pools: list[np.ndarray] = []
        sizes = np.zeros((len(plain), 3), dtype=np.int64)  # healthy, tumour, any
        for j, i in enumerate(plain):
            record = records[i]
            brain = np.asarray(record.brain).any(axis=(0, 1))
            has = np.asarray(record.tumour).any(axis=(0, 1)) if record.tumour is not None else np.zeros_like(brain)
            for k, pool in enumerate((np.flatnonzero(brain & ~has), np.flatnonzero(has), np.arange(brain.size))):
                pools.append(pool)
                sizes[j, k] = pool.size
        self.pool_values = np.concatenate(pools)
        self.pool_offsets = (np.cumsum(sizes.reshape(-1)) - sizes.reshape(-1)).reshape(sizes.shape)
        self.pool_sizes = sizes
        self.with_tumour = np.flatnonzero(sizes[:, 1] > 0)
        self._px = torch.arange(self.patch[0], device=self.device)
        self._py = torch.arange(self.patch[1], device=self.device)

    @property
    def nbytes(self) -> int:
        return int(self.latents.numel() * 4 + self.tumour.numel())

    def draw_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Records (stack indices), slices and in-plane window starts ``(B, 2)`` of one batch."""
        rng = self.rng
        want_diseased = rng.random(batch_size) < self.diseased_fraction
        subject = rng.integers(len(self.plain), size=batch_size)
        if self.with_tumour.size:
            subject = np.where(want_diseased, self.with_tumour[rng.integers(self.with_tumour.size, size=batch_size)],
                               subject)
        # pool: wanted kind, else the other kind, else every slice
        first = np.where(want_diseased, 1, 0)
        second = 1 - first
        sizes = self.pool_sizes[subject]
        rows = np.arange(batch_size)
        kind = np.where(sizes[rows, first] > 0, first, np.where(sizes[rows, second] > 0, second, 2))
        size = sizes[rows, kind]
        pick = (rng.random(batch_size) * size).astype(np.int64).clip(max=size - 1)
        slices = self.pool_values[self.pool_offsets[subject, kind] + pick]
        record = self.plain[subject]
        if self.flip_prob > 0:
            record = np.where(rng.random(batch_size) < self.flip_prob, self.flipped_of[subject], record)
        room = self.grids[record, :2] - np.array(self.patch) + 1
        starts = (rng.random((batch_size, 2)) * room).astype(np.int64).clip(max=room - 1)
        return record, slices, starts

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        record, slices, starts = self.draw_indices(batch_size)
        r = torch.from_numpy(record).to(self.device)[:, None, None]
        s = torch.from_numpy(slices).to(self.device)[:, None, None]
        st = torch.from_numpy(starts).to(self.device)
        ix = (st[:, 0:1] + self._px)[:, :, None]  # (B, px, 1)
        iy = (st[:, 1:2] + self._py)[:, None, :]  # (B, 1, py)
        z = self.latents[r, s, :, ix, iy]  # (B, px, py, C): advanced indices first
        labels = self.tumour[r, s, ix, iy].flatten(1).any(dim=1).long()
        extent = torch.from_numpy(self.grids[record, :2].astype(np.float32)).to(self.device)
        return {"z": z.permute(0, 3, 1, 2).contiguous(), "labels": labels, "start": st.float(), "extent": extent}


def stacked_image_bytes(records: Sequence[VolumeRecord]) -> int:
    """Bytes of the padded float32 image stack (plus brain masks) of these 2D training records."""
    if not records:
        return 0
    shapes = np.array([r.images.shape for r in records])
    channels, x, y, z = (int(v) for v in shapes.max(axis=0))
    return int(len(records) * z * x * y * (channels * 4 + 1))


class DeviceImageSliceSampler:
    """First-stage 2D patches drawn on ``device``: a subject, one of its axial slices holding brain,
    a random in-plane window, a left-right flip with ``flip_prob`` (the distribution of
    :class:`brainldm.train.data.ImagePatchSampler` in 2D). ``sample(batch_size)`` returns
    ``(images (B, 4, *P), brain masks (B, *P))`` on ``device``.
    """

    def __init__(self, records: Sequence[VolumeRecord], patch_size: Sequence[int], flip_prob: float,
                 rng: np.random.Generator, device: torch.device | str = "cpu"):
        if not records:
            raise BrainLDMError("No subjects to draw training patches from.")
        self.device = torch.device(device)
        self.rng = rng
        self.patch = tuple(int(s) for s in patch_size)
        self.flip_prob = float(flip_prob)
        shapes = np.array([r.images.shape for r in records], dtype=np.int64)  # (R, 4): C, x, y, z
        channels = int(shapes[0, 0])
        # a window may start before / end after a slice smaller than it (random_start): pad by the shortfall
        self.pad = np.maximum(np.array(self.patch, dtype=np.int64) - shapes[:, 1:3].min(axis=0), 0)
        cx, cy = (int(v) for v in shapes[:, 1:3].max(axis=0) + 2 * self.pad)
        cz = int(shapes[:, 3].max())
        images = torch.full((len(records), cz, channels, cx, cy), -1.0, dtype=torch.float32)
        masks = torch.zeros((len(records), cz, cx, cy), dtype=torch.bool)
        slices, sizes = [], []
        for i, record in enumerate(records):
            _, x, y, z = (int(v) for v in shapes[i])
            px, py = (int(v) for v in self.pad)
            images[i, :z, :, px:px + x, py:py + y] = torch.from_numpy(
                np.moveaxis(np.array(record.images, np.float32), -1, 0))
            masks[i, :z, px:px + x, py:py + y] = torch.from_numpy(np.moveaxis(np.array(record.mask, bool), -1, 0))
            brain = np.flatnonzero(np.asarray(record.mask).any(axis=(0, 1)))
            pool = brain if brain.size else np.arange(z)
            slices.append(pool)
            sizes.append(pool.size)
        self.images = images.to(self.device)
        self.masks = masks.to(self.device)
        self.shapes = shapes
        self.pool_values = np.concatenate(slices)
        self.pool_sizes = np.array(sizes, dtype=np.int64)
        self.pool_offsets = np.cumsum(self.pool_sizes) - self.pool_sizes
        self._px = torch.arange(self.patch[0], device=self.device)
        self._py = torch.arange(self.patch[1], device=self.device)

    @property
    def nbytes(self) -> int:
        return int(self.images.numel() * 4 + self.masks.numel())

    def draw_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Subjects, slices, window starts ``(B, 2)`` in the subject's own grid, and flips."""
        rng = self.rng
        subject = rng.integers(len(self.shapes), size=batch_size)
        full = self.shapes[subject, 1:3]
        patch = np.array(self.patch)
        # random_start: uniform in [0, full - size] when the slice is large enough, else in [full - size, 0]
        low = np.minimum(full - patch, 0)
        high = np.maximum(full - patch, 0)
        starts = low + (rng.random((batch_size, 2)) * (high - low + 1)).astype(np.int64).clip(max=high - low)
        size = self.pool_sizes[subject]
        pick = (rng.random(batch_size) * size).astype(np.int64).clip(max=size - 1)
        slices = self.pool_values[self.pool_offsets[subject] + pick]
        flips = rng.random(batch_size) < self.flip_prob
        return subject, slices, starts, flips

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        subject, slices, starts, flips = self.draw_indices(batch_size)
        r = torch.from_numpy(subject).to(self.device)[:, None, None]
        s = torch.from_numpy(slices).to(self.device)[:, None, None]
        st = torch.from_numpy(starts + self.pad).to(self.device)
        ix = (st[:, 0:1] + self._px)[:, :, None]
        iy = (st[:, 1:2] + self._py)[:, None, :]
        images = self.images[r, s, :, ix, iy].permute(0, 3, 1, 2)  # (B, C, px, py)
        masks = self.masks[r, s, ix, iy]
        flip = torch.from_numpy(flips).to(self.device)
        if bool(flips.any()):  # left-right = axis 0 of the canonical RAS grid = the first window axis
            images = torch.where(flip[:, None, None, None], images.flip(2), images)
            masks = torch.where(flip[:, None, None], masks.flip(1), masks)
        return images.contiguous(), masks.contiguous()
