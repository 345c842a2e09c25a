"""Run a latent denoiser over a whole latent volume, in one piece or in blended windows.

Both wrappers look like a denoiser to the samplers (``model(z, t, labels) -> eps``), so
classifier-free guidance (which doubles the batch) and the DDIM/EDICT loops need not know
how the volume is cut:

- :class:`WholeVolumeDenoiser`: the fast path for ``coords`` models (per-voxel coordinate
  channels let a model trained on patches run on any window, thesis §3.3.2 variant). The
  latent is padded to the network's size multiple and passed at once.
- :class:`SlidingWindowDenoiser`: the thesis's patch inference (§3.4.5): windows of the
  training patch size with 0/25/50 % overlap, each told its start position, blended with a
  separable triangular weight; windows without brain are skipped (their noise is 0, and the
  latent there is never looked at because maps are restricted to the brain).
- :class:`SliceBatchDenoiser`: 2D models on a stack of slices, in chunks of the batch axis.

``calls`` counts denoiser evaluations (one per network call, per sample in the batch), which
the benchmark uses to extrapolate the reference configuration's time.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def _pad_to_multiple(z: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    spatial = z.shape[2:]
    target = [int(math.ceil(s / multiple) * multiple) for s in spatial]
    if list(spatial) == target:
        return z, list(spatial)
    pad: list[int] = []
    for s, tgt in zip(reversed(spatial), reversed(target)):
        pad += [0, tgt - s]
    return F.pad(z, pad, mode="replicate"), list(spatial)


class WholeVolumeDenoiser:
    """The denoiser on the whole latent at once (``start = 0``, ``extent`` = latent size)."""

    def __init__(self, model: torch.nn.Module, size_multiple: int = 1) -> None:
        self.model = model
        self.size_multiple = int(size_multiple)
        self.calls = 0

    def __call__(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        padded, spatial = _pad_to_multiple(z, self.size_multiple)
        batch, dims = z.shape[0], z.ndim - 2
        start = torch.zeros(batch, dims, device=z.device)
        extent = torch.tensor([float(s) for s in spatial], device=z.device).expand(batch, dims)
        eps = self.model(padded, t, labels, start=start, extent=extent)
        self.calls += batch
        return eps[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of ``window`` covering ``[0, size)`` with the given overlap.

    The stride is ``window * (1 - overlap)`` (at least 1); the last window is shifted back to
    end at ``size``. A volume smaller than the window gives one window at 0.
    """
    if size <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _triangular_weight(window: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Separable blending weight, highest in the window's centre, never zero at its border."""
    weight = None
    for n in window:
        ramp = 1.0 - (torch.arange(n, device=device, dtype=torch.float32) + 0.5 - n / 2).abs() / (n / 2)
        ramp = ramp.clamp_min(1.0 / n)
        weight = ramp if weight is None else weight[..., None] * ramp
    return weight


class SlidingWindowDenoiser:
    """The denoiser over overlapping windows of the latent, blended (thesis §3.4.5).

    ``brain``: optional boolean latent-grid mask; windows that contain none of it are skipped.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        window: tuple[int, ...],
        overlap: float = 0.25,
        brain: torch.Tensor | None = None,
        batch_size: int = 4,
    ) -> None:
        self.model = model
        self.window = tuple(int(w) for w in window)
        self.overlap = float(overlap)
        self.brain = brain
        self.batch_size = max(1, int(batch_size))
        self.calls = 0
        self._plan_for: tuple[int, ...] | None = None
        self._starts: list[tuple[int, ...]] = []

    def _plan(self, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
        if self._plan_for != spatial:
            per_axis = [window_starts(s, w, self.overlap) for s, w in zip(spatial, self.window)]
            starts = list(itertools.product(*per_axis))
            if self.brain is not None:
                starts = [s for s in starts if bool(self.brain[self._region(s, spatial)].any())]
            self._starts, self._plan_for = starts, spatial
        return self._starts

    def _region(self, start: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, self.window, spatial))

    def num_windows(self, spatial: tuple[int, ...]) -> int:
        return len(self._plan(tuple(spatial)))

    def __call__(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        padded, _ = _pad_to_multiple(z, 1)
        # pad so every window fits completely (volumes smaller than the window)
        spatial = tuple(z.shape[2:])
        need = [max(w, s) for w, s in zip(self.window, spatial)]
        if list(need) != list(spatial):
            pad: list[int] = []
            for s, n in zip(reversed(spatial), reversed(need)):
                pad += [0, n - s]
            padded = F.pad(z, pad, mode="replicate")
        full = tuple(padded.shape[2:])
        starts = self._plan(full)
        batch, dims = z.shape[0], z.ndim - 2
        out = torch.zeros_like(padded)
        norm = torch.zeros(full, device=z.device, dtype=z.dtype)
        weight = _triangular_weight(self.window, z.device).to(z.dtype)
        extent = torch.tensor([float(s) for s in spatial], device=z.device)
        for chunk_start in range(0, len(starts), self.batch_size):
            chunk = starts[chunk_start:chunk_start + self.batch_size]
            crops, ts, ls, st = [], [], [], []
            for s in chunk:
                region = (slice(None), slice(None)) + tuple(slice(a, a + w) for a, w in zip(s, self.window))
                crops.append(padded[region])
                ts.append(t)
                ls.append(labels)
                st.append(torch.tensor([float(a) for a in s], device=z.device).expand(batch, dims))
            eps = self.model(
                torch.cat(crops), torch.cat(ts), torch.cat(ls),
                start=torch.cat(st), extent=extent.expand(batch * len(chunk), dims),
            )
            self.calls += batch * len(chunk)
            for i, s in enumerate(chunk):
                region = tuple(slice(a, a + w) for a, w in zip(s, self.window))
                out[(slice(None), slice(None)) + region] += eps[i * batch:(i + 1) * batch] * weight
                norm[region] += weight
        out = out / norm.clamp_min(1e-8)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


class SliceBatchDenoiser:
    """A 2D denoiser over a stack of latent slices ``(S, C, x, y)``, ``batch_size`` slices per call."""

    def __init__(self, model: torch.nn.Module, size_multiple: int = 1, batch_size: int = 32) -> None:
        self.model = model
        self.size_multiple = int(size_multiple)
        self.batch_size = max(1, int(batch_size))
        self.calls = 0

    def __call__(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        padded, spatial = _pad_to_multiple(z, self.size_multiple)
        pieces = []
        for i in range(0, z.shape[0], self.batch_size):
            part = padded[i:i + self.batch_size]
            n = part.shape[0]
            start = torch.zeros(n, 2, device=z.device)
            extent = torch.tensor([float(s) for s in spatial], device=z.device).expand(n, 2)
            pieces.append(self.model(part, t[i:i + n], labels[i:i + n], start=start, extent=extent))
            self.calls += n
        eps = torch.cat(pieces)
        return eps[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
