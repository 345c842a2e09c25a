"""Anomaly maps, thresholding and GradDiff (thesis §3.4.3, §4.4.1, Table B.6, §4.4.3).

Anomaly map (§3.4.3): ``|reconstruction - counterfactual|`` aggregated over the MRI sequences, where
the reference is the first-stage *reconstruction* D(E(x)) rather than the raw input, restricted to the
brain (Table 3.5). It is binarised with one Otsu threshold per volume followed by a binary opening.

GradDiff (§4.4.1): the latent pseudo-gradient ``eps(z, t, healthy) - eps(z, t, null)`` (Eq. 2.45) and,
optionally, a true latent gradient are recorded along the generation trajectory, aggregated over
timesteps (Table B.6; best: the median of five evenly spaced points from the final 10 % of the
trajectory), reduced over channels (mean), upsampled to image space and turned into a
region-of-interest mask (Otsu, opening, dilation) that constrains the Otsu thresholding of the
anomaly map.

All maps are numpy arrays in image space (2D or 3D); torch tensors are accepted as input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_otsu

from brainldm.errors import InputDataError, SettingsError

Reduce = Literal["mean", "median", "sum", "max"]


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu").numpy()
    return np.asarray(array)


def _reduce(array: np.ndarray, how: str, axis: int) -> np.ndarray:
    if how == "mean":
        return array.mean(axis=axis)
    if how == "median":
        return np.median(array, axis=axis)
    if how == "sum":
        return array.sum(axis=axis)
    if how == "max":
        return array.max(axis=axis)
    raise SettingsError(f"reduction must be mean, median, sum or max, got {how!r}")


# --------------------------------------------------------------------------- anomaly map


def anomaly_map(
    reconstruction,
    counterfactual,
    brain_mask=None,
    reduce: Reduce = "mean",
) -> np.ndarray:
    """Anomaly map ``reduce_c |reconstruction_c - counterfactual_c|`` over sequences c (thesis §3.4.3).

    ``reconstruction``/``counterfactual``: ``(C, *S)`` arrays (``C`` sequences; a map without a channel
    axis is accepted when ``brain_mask`` fixes the spatial shape). Voxels outside ``brain_mask`` are 0.
    Returns a float32 ``(*S)`` array.
    """
    rec = _to_numpy(reconstruction).astype(np.float32, copy=False)
    cf = _to_numpy(counterfactual).astype(np.float32, copy=False)
    if rec.shape != cf.shape:
        raise InputDataError(f"reconstruction {rec.shape} and counterfactual {cf.shape} must have the same shape")
    mask = None if brain_mask is None else _to_numpy(brain_mask).astype(bool, copy=False)
    if mask is not None and rec.shape == mask.shape:
        rec, cf = rec[None], cf[None]
    if rec.ndim < 3:
        raise InputDataError(f"expected (sequences, *spatial) arrays, got shape {rec.shape}")
    diff = np.abs(rec - cf)
    amap = _reduce(diff, reduce, axis=0).astype(np.float32, copy=False)
    if mask is not None:
        if mask.shape != amap.shape:
            raise InputDataError(f"brain mask {mask.shape} does not match the images {amap.shape}")
        amap = np.where(mask, amap, np.float32(0.0))
    return amap


def smooth_map(amap, sigma: float, brain_mask=None) -> np.ndarray:
    """Gaussian smoothing (standard deviation ``sigma`` voxels) of an anomaly map, inside the brain.

    Normalised convolution ``G*(m·b) / G*b`` with the brain mask ``b``, so voxels near the brain's
    edge are not darkened by the zeros outside it; 0 outside the brain. Scattered one-voxel
    differences between counterfactual and reconstruction average out while a tumour, a compact
    region of large differences, keeps its level - what the "fixed" threshold relies on.
    ``sigma`` 0 returns the map unchanged (the thesis thresholds the raw map).
    """
    amap = _to_numpy(amap).astype(np.float32, copy=False)
    if sigma <= 0:
        return amap
    if brain_mask is None:
        return ndimage.gaussian_filter(amap, float(sigma)).astype(np.float32)
    brain = _to_numpy(brain_mask).astype(bool, copy=False)
    if brain.shape != amap.shape:
        raise InputDataError(f"brain mask {brain.shape} does not match the anomaly map {amap.shape}")
    weight = ndimage.gaussian_filter(brain.astype(np.float32), float(sigma))
    smoothed = ndimage.gaussian_filter(np.where(brain, amap, np.float32(0.0)), float(sigma))
    out = np.zeros_like(amap)
    inside = brain & (weight > 1e-6)
    out[inside] = smoothed[inside] / weight[inside]
    return out


# --------------------------------------------------------------------------- thresholding


def otsu_threshold(values, mask=None) -> float:
    """One Otsu threshold (skimage, 256-bin histogram) for all finite values inside ``mask``.

    Raises ``ValueError`` when no finite value is inside the mask or all of them are equal (no
    signal): use :func:`segment_from_map`, which turns that case into an empty segmentation.
    """
    values = _to_numpy(values)
    if mask is not None:
        mask = _to_numpy(mask).astype(bool, copy=False)
        if mask.shape != values.shape:
            raise InputDataError(f"mask {mask.shape} does not match the map {values.shape}")
        values = values[mask]
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values inside the mask to threshold")
    if values.max() - values.min() <= 1e-12 * max(1.0, abs(float(values.max()))):
        raise ValueError("the map is constant inside the mask: Otsu's threshold is undefined")
    return float(threshold_otsu(values))


def structuring_ball(radius: int, ndim: int = 3) -> np.ndarray:
    """Boolean ball ``{offset : |offset|_2 <= radius}`` (radius 1: the face-connected cross)."""
    radius = int(radius)
    if radius < 0:
        raise SettingsError(f"morphology radius must be >= 0, got {radius}")
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(axis=0) <= radius * radius


def binary_opening(mask, radius: int = 1) -> np.ndarray:
    """Binary opening (erosion then dilation) with a ball of ``radius`` voxels; radius 0 = unchanged."""
    mask = _to_numpy(mask).astype(bool)
    if int(radius) == 0 or not mask.any():
        return mask
    return ndimage.binary_opening(mask, structure=structuring_ball(radius, mask.ndim))


def binary_dilation(mask, radius: int = 1) -> np.ndarray:
    """Binary dilation with a ball of ``radius`` voxels; radius 0 = unchanged."""
    mask = _to_numpy(mask).astype(bool)
    if int(radius) == 0 or not mask.any():
        return mask
    return ndimage.binary_dilation(mask, structure=structuring_ball(radius, mask.ndim))


@dataclass
class Segmentation:
    """A thresholded map: ``mask`` (bool), the ``threshold`` used (NaN when undefined), and
    ``no_signal`` with a ``warning`` message when the map could not be thresholded."""

    mask: np.ndarray
    threshold: float
    no_signal: bool = False
    warning: str | None = None


def segment_from_map(
    amap,
    brain_mask=None,
    method: Literal["otsu", "fixed"] = "otsu",
    opening_radius: int = 1,
    roi=None,
    threshold: float | None = None,
) -> Segmentation:
    """Binary segmentation ``map > threshold`` inside the brain (and ``roi``), then a binary opening.

    ``method="otsu"``: one Otsu threshold of the values inside ``brain_mask & roi`` (thesis §3.4.3;
    with a GradDiff ROI, §4.4.1, the threshold is computed and applied inside the ROI only);
    ``method="fixed"``: the given ``threshold``. A map without signal there (empty region, constant,
    or not finite) gives an empty mask with ``no_signal=True`` and a warning instead of an error.
    """
    amap = _to_numpy(amap)
    region = np.ones(amap.shape, dtype=bool)
    for name, extra in (("brain mask", brain_mask), ("ROI", roi)):
        if extra is not None:
            extra = _to_numpy(extra).astype(bool, copy=False)
            if extra.shape != amap.shape:
                raise InputDataError(f"{name} {extra.shape} does not match the anomaly map {amap.shape}")
            region &= extra
    finite = np.isfinite(amap)
    warning = None
    if not finite.all():
        warning = f"{int((~finite).sum())} non-finite anomaly-map voxels were ignored"
    region &= finite
    empty = np.zeros(amap.shape, dtype=bool)
    if not region.any():
        where = "the GradDiff region of interest" if roi is not None else "the brain mask"
        return Segmentation(empty, float("nan"), True, f"nothing to threshold: {where} is empty")
    if method == "otsu":
        try:
            thr = otsu_threshold(amap[region])
        except ValueError:
            return Segmentation(
                empty, float("nan"), True, "the anomaly map has no signal (constant inside the brain); "
                "no anomaly was segmented"
            )
    elif method == "fixed":
        if threshold is None or not math.isfinite(float(threshold)):
            raise SettingsError("method 'fixed' needs a finite threshold value")
        thr = float(threshold)
    else:
        raise SettingsError(f"threshold method must be 'otsu' or 'fixed', got {method!r}")
    seg = (amap > thr) & region
    seg = binary_opening(seg, opening_radius)
    return Segmentation(seg, thr, False, warning)


# --------------------------------------------------------------------------- GradDiff


@dataclass(frozen=True)
class GradDiffSettings:
    """Which generation steps GradDiff keeps and how it aggregates them (thesis Table B.6, §4.4.1).

    ``steps``:
      - ``"window"`` (default): ``num_points`` evenly spaced steps inside a window of
        ``window_fraction`` of the trajectory at its ``window_position`` (``"end"`` = the last,
        least noisy steps). Default = the thesis's best: median of 5 points from the final 10 %.
        (§4.4.1 also says the largest gradients come early in the trajectory: ``"start"`` tries that.)
      - ``"range"``: steps ``step_range[0] <= i < step_range[1]`` counted from the trajectory's start
        (Table B.6's ``[0, 5] ... [0, 20]``);
      - ``"all"``: every step (mean/sum kept as a running sum; median stores every step);
      - ``"last"``: the final step only.
    ``step_reduce``: median, mean or sum over the kept steps (of the signed latent values).
    ``channel_reduce``: mean, median or sum over latent channels of the magnitude.
    ``opening_radius``/``dilation_radius``: image-space morphology that turns the map's Otsu mask into
    the ROI (§4.4.1: opening followed by dilation).
    """

    steps: Literal["window", "range", "all", "last"] = "window"
    window_fraction: float = 0.1
    window_position: Literal["end", "start"] = "end"
    num_points: int = 5
    step_range: tuple[int, int] = (0, 5)
    step_reduce: Literal["median", "mean", "sum"] = "median"
    channel_reduce: Literal["mean", "median", "sum"] = "mean"
    opening_radius: int = 1
    dilation_radius: int = 2

    def validate(self) -> "GradDiffSettings":
        if self.steps not in ("window", "range", "all", "last"):
            raise SettingsError(f"GradDiff steps must be window, range, all or last, got {self.steps!r}")
        if not 0.0 < self.window_fraction <= 1.0:
            raise SettingsError(f"GradDiff window fraction must be in (0, 1], got {self.window_fraction}")
        if self.window_position not in ("end", "start"):
            raise SettingsError(f"GradDiff window position must be 'end' or 'start', got {self.window_position!r}")
        if int(self.num_points) < 1:
            raise SettingsError(f"GradDiff needs at least one point, got {self.num_points}")
        lo, hi = self.step_range
        if not 0 <= lo < hi:
            raise SettingsError(f"GradDiff step range must satisfy 0 <= start < stop, got {self.step_range}")
        if self.step_reduce not in ("median", "mean", "sum"):
            raise SettingsError(f"GradDiff step reduction must be median, mean or sum, got {self.step_reduce!r}")
        if self.channel_reduce not in ("median", "mean", "sum"):
            raise SettingsError(
                f"GradDiff channel reduction must be median, mean or sum, got {self.channel_reduce!r}"
            )
        if self.opening_radius < 0 or self.dilation_radius < 0:
            raise SettingsError("GradDiff morphology radii must be >= 0")
        return self


def graddiff_step_indices(num_steps: int, settings: GradDiffSettings | None = None) -> list[int]:
    """Generation step indices (0 = first, most noisy step) that GradDiff records, decided up front."""
    settings = (settings or GradDiffSettings()).validate()
    n = int(num_steps)
    if n < 1:
        raise SettingsError(f"number of steps must be positive, got {num_steps}")
    if settings.steps == "all":
        return list(range(n))
    if settings.steps == "last":
        return [n - 1]
    if settings.steps == "range":
        lo, hi = settings.step_range
        indices = list(range(min(lo, n - 1), min(hi, n)))
        return indices or [n - 1]
    width = max(1, math.ceil(settings.window_fraction * n))
    lo, hi = (n - width, n - 1) if settings.window_position == "end" else (0, width - 1)
    points = np.rint(np.linspace(lo, hi, int(settings.num_points))).astype(int)
    return sorted(set(points.tolist()))


class GradDiffRecorder:
    """Sampler callback that keeps only the pseudo-gradients GradDiff needs (thesis §4.4.1, §4.4.3).

    Use as (part of) the ``callback`` of :func:`brainldm.diffusion.sampler.generate` with a noise
    function that returns :class:`~brainldm.diffusion.guidance.GuidedNoise` (guided, or
    ``with_pseudo_gradient=True``); inversion steps are ignored. A true latent-gradient term, when the
    caller computes one, is added with :meth:`record`. Tensors are stored detached on ``storage_device``.
    """

    def __init__(self, num_steps: int, settings: GradDiffSettings | None = None, storage_device="cpu") -> None:
        self.settings = (settings or GradDiffSettings()).validate()
        self.num_steps = int(num_steps)
        self.step_indices = tuple(graddiff_step_indices(self.num_steps, self.settings))
        self._wanted = set(self.step_indices)
        self.storage_device = torch.device(storage_device)
        self._running = self.settings.step_reduce in ("mean", "sum")
        self._pseudo: list[torch.Tensor] = []
        self._true: list[torch.Tensor] = []
        self._pseudo_sum: torch.Tensor | None = None
        self._true_sum: torch.Tensor | None = None
        self.recorded_steps: list[int] = []
        self._true_steps = 0

    def __call__(self, step_index: int, num_steps: int, t: int, info) -> None:
        if getattr(info, "direction", "generate") != "generate":
            return
        if num_steps != self.num_steps:
            raise ValueError(f"recorder was set up for {self.num_steps} steps, sampler runs {num_steps}")
        if step_index not in self._wanted:
            return
        if info.pseudo_gradient is None:
            raise ValueError(
                "GradDiff needs the pseudo-gradient: the noise function must return GuidedNoise "
                "(make_noise_fn(..., with_pseudo_gradient=True) or guidance C > 0)"
            )
        self.record(step_index, info.pseudo_gradient)

    def wants(self, step_index: int) -> bool:
        """Whether ``step_index`` is one of the kept steps (e.g. to compute a true gradient only there)."""
        return step_index in self._wanted

    def _store(self, value: torch.Tensor, kind: str) -> None:
        value = value.detach().to(self.storage_device, copy=True)
        if self._running:
            attr = "_pseudo_sum" if kind == "pseudo" else "_true_sum"
            current = getattr(self, attr)
            setattr(self, attr, value if current is None else current + value)
        else:
            (self._pseudo if kind == "pseudo" else self._true).append(value)

    def record(self, step_index: int, pseudo_gradient: torch.Tensor | None, true_gradient: torch.Tensor | None = None):
        """Store the terms of one generation step (ignored when the step is not a kept one)."""
        if step_index not in self._wanted:
            return
        if pseudo_gradient is not None:
            if step_index in self.recorded_steps:
                raise ValueError(f"GradDiff step {step_index} recorded twice")
            self._store(pseudo_gradient, "pseudo")
            self.recorded_steps.append(step_index)
        if true_gradient is not None:
            self._store(true_gradient, "true")
            self._true_steps += 1

    def _aggregate(self, kind: str) -> torch.Tensor | None:
        how = self.settings.step_reduce
        if self._running:
            total = self._pseudo_sum if kind == "pseudo" else self._true_sum
            count = len(self.recorded_steps) if kind == "pseudo" else self._true_steps
            if total is None:
                return None
            return total / count if how == "mean" else total
        items = self._pseudo if kind == "pseudo" else self._true
        if not items:
            return None
        if len(items) == 1:
            return items[0]
        # numpy's median averages the two middle values for an even count (torch's takes the lower)
        stacked = np.stack([item.cpu().numpy() for item in items])
        return torch.from_numpy(np.median(stacked, axis=0)).to(items[0].device)

    def latent_map(self) -> torch.Tensor:
        """Magnitude ``|agg(pseudo)| (+ |agg(true)|)`` in latent space, shape of the recorded tensors."""
        pseudo = self._aggregate("pseudo")
        if pseudo is None:
            raise ValueError("GradDiff recorded nothing: was the recorder passed as the generation callback?")
        out = pseudo.abs()
        true = self._aggregate("true")
        if true is not None:
            out = out + true.abs()
        return out


def graddiff_map(latent_map, image_shape, channel_reduce: str = "mean") -> np.ndarray:
    """Image-space GradDiff map: reduce a latent magnitude map over channels and upsample (thesis §4.4.1).

    ``latent_map``: ``(C, *s)`` or ``(B, C, *s)`` (2D or 3D latent); ``image_shape``: the spatial image
    size ``(*S)``. Uses (tri/bi)linear interpolation. Returns float32 ``(*S)`` or ``(B, *S)``.
    """
    lat = latent_map if isinstance(latent_map, torch.Tensor) else torch.as_tensor(np.asarray(latent_map))
    lat = lat.detach().to("cpu", torch.float32).abs()
    image_shape = tuple(int(s) for s in image_shape)
    spatial = len(image_shape)
    if spatial not in (2, 3):
        raise InputDataError(f"GradDiff maps are 2D or 3D, got image shape {image_shape}")
    batched = lat.ndim == spatial + 2
    if lat.ndim not in (spatial + 1, spatial + 2):
        raise InputDataError(f"latent map {tuple(lat.shape)} does not match a {spatial}D image")
    if not batched:
        lat = lat[None]
    if channel_reduce == "mean":
        reduced = lat.mean(dim=1, keepdim=True)
    elif channel_reduce == "median":
        reduced = lat.median(dim=1, keepdim=True).values
    elif channel_reduce == "sum":
        reduced = lat.sum(dim=1, keepdim=True)
    else:
        raise SettingsError(f"channel reduction must be mean, median or sum, got {channel_reduce!r}")
    mode = "trilinear" if spatial == 3 else "bilinear"
    up = F.interpolate(reduced, size=image_shape, mode=mode, align_corners=False)[:, 0]
    out = up.numpy().astype(np.float32)
    return out if batched else out[0]


def graddiff_roi(
    gmap,
    brain_mask=None,
    opening_radius: int = 1,
    dilation_radius: int = 2,
) -> Segmentation:
    """Region of interest from a GradDiff map: Otsu inside the brain, opening, then dilation (§4.4.1).

    The returned ``Segmentation.mask`` is the ROI (restricted to the brain); pass it as ``roi`` to
    :func:`segment_from_map`. A map without signal gives an empty ROI with ``no_signal=True``.
    """
    seg = segment_from_map(gmap, brain_mask, method="otsu", opening_radius=opening_radius)
    if seg.no_signal:
        return seg
    roi = binary_dilation(seg.mask, dilation_radius)
    if brain_mask is not None:
        roi &= _to_numpy(brain_mask).astype(bool, copy=False)
    warning = seg.warning
    if not roi.any():
        warning = "the GradDiff region of interest is empty after morphology"
    return Segmentation(roi, seg.threshold, not roi.any(), warning)
