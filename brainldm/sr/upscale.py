"""Resolution-aware detection: detect on an in-plane upscaled scan, report on the input's grid.

Small lesions in low-resolution scans cover few voxels; the thesis (§4.4) upscales the scan
before detection, either by interpolation or by the super-resolution LDM, and evaluates the
segmentation on the original grid. ``brainldm segment --upscale none|interpolate|sr``:

1. :func:`upscale_subject` - the four sequences ``s``-fold in-plane (axes 0 and 1 of the canonical
   grid; axial slices are kept): ``interpolate`` = bicubic with the pixel-centre convention of the
   degradation pipelines (:func:`brainldm.sr.degrade.resize`), ``sr`` = the SR model
   (:func:`brainldm.sr.infer.super_resolve_volume`). The affine keeps the field of view
   (:func:`brainldm.sr.degrade_files.scaled_affine`); a reference segmentation is upscaled with
   nearest neighbours so Dice can also be read on the upscaled grid.
2. detection as usual on the upscaled subject.
3. :func:`result_to_input_grid` - every output back on the input grid by the exact inverse of the
   grid change: each input voxel is the mean of its ``s x s`` block (the block is exactly the
   area the voxel covers); the segmentation and brain mask are the block mean >= 0.5. Metrics
   against the input's reference are recomputed there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from brainldm.data.subject import Subject
from brainldm.detect.settings import DetectionResult
from brainldm.errors import SettingsError

UpscaleMethod = Literal["none", "interpolate", "sr"]
UPSCALE_METHODS: tuple[str, ...] = ("none", "interpolate", "sr")


@dataclass(frozen=True)
class UpscaleSettings:
    """How the scan is upscaled before detection.

    Attributes
    ----------
    method:
        ``none`` (detect on the input grid), ``interpolate`` (bicubic) or ``sr`` (SR model).
    factor:
        In-plane upscaling factor (integer >= 2); for ``sr`` it must equal the SR model's scale.
    sr_steps:
        DDIM steps of the SR model (``None``: the SR model's recommendation).
    """

    method: UpscaleMethod = "none"
    factor: int = 2

    sr_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in UPSCALE_METHODS:
            raise SettingsError(f"--upscale must be one of {', '.join(UPSCALE_METHODS)}, not {self.method!r}")
        if self.method != "none" and (int(self.factor) != self.factor or self.factor < 2):
            raise SettingsError(f"the upscaling factor must be an integer >= 2, not {self.factor!r}")


def _upscale_images(images: np.ndarray, factor: int) -> np.ndarray:
    from brainldm.sr.degrade import resize

    x, y = images.shape[1:3]
    out = resize(images.astype(np.float32), (x * factor, y * factor), axes=(1, 2), mode="cubic")
    # bicubic overshoots at the skull-stripped edge: keep the background exactly 0 outside the
    # upscaled footprint of the input's non-zero voxels
    footprint = np.repeat(np.repeat((images != 0).any(axis=0), factor, axis=0), factor, axis=1)
    out[:, ~footprint] = 0.0
    return out


def upscale_subject(subject: Subject, settings: UpscaleSettings, sr_bundle=None, progress=None) -> tuple[Subject, dict]:
    """The subject ``factor``-fold in-plane, and timings ``{"upscale": seconds}``.

    ``sr_bundle`` (an :class:`brainldm.sr.bundle.SRBundle`) is needed for ``method="sr"``.
    """
    from brainldm.sr.degrade_files import scaled_affine

    if settings.method == "none":
        return subject, {}
    factor = int(settings.factor)
    start = time.perf_counter()
    if settings.method == "interpolate":
        images = _upscale_images(subject.images, factor)
    else:
        if sr_bundle is None:
            raise SettingsError("--upscale sr needs a super-resolution model: pass --sr-model FOLDER "
                                "(train one with `brainldm train sr`, see docs/super-resolution.md)")
        if int(round(float(sr_bundle.scale))) != factor:
            raise SettingsError(f"the SR model upscales {sr_bundle.scale}x, not {factor}x")
        from brainldm.sr.infer import super_resolve_volume

        sr_settings = sr_bundle.inference_settings(**({"steps": settings.sr_steps} if settings.sr_steps else {}))
        sr_progress = (lambda done, total: progress("super-resolution", done / max(1, total))) if progress else None
        images = super_resolve_volume(subject.images, sr_bundle, sr_settings, progress=sr_progress)
    shape = subject.shape
    new_shape = (shape[0] * factor, shape[1] * factor, shape[2])
    seg = None
    if subject.seg is not None:
        seg = np.repeat(np.repeat(subject.seg, factor, axis=0), factor, axis=1)
    upscaled = Subject(subject_id=subject.subject_id, images=images.astype(np.float32),
                       affine=scaled_affine(subject.affine, shape, new_shape), seg=seg)
    return upscaled, {"upscale": round(time.perf_counter() - start, 3)}


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """``(..., f x, f y, z)`` -> ``(..., x, y, z)``: the mean of each ``f x f`` in-plane block."""
    *lead, fx, fy, z = volume.shape
    if fx % factor or fy % factor:
        raise ValueError(f"in-plane size {fx}x{fy} is not a multiple of {factor}")
    blocks = volume.reshape(*lead, fx // factor, factor, fy // factor, factor, z).astype(np.float32)
    return blocks.mean(axis=(-4, -2))


def result_to_input_grid(result: DetectionResult, subject: Subject, factor: int) -> DetectionResult:
    """Map a result computed on the ``factor``-fold upscaled grid back onto ``subject``'s grid."""
    from brainldm.evaluate.metrics import segmentation_metrics

    def down(a):
        return None if a is None else block_mean(a, factor)

    mapped = dataclasses.replace(
        result,
        reconstruction=down(result.reconstruction),
        counterfactual=down(result.counterfactual),
        anomaly_map=down(result.anomaly_map),
        graddiff_map=down(result.graddiff_map),
        reconstruction_error=down(result.reconstruction_error),
        segmentation=(block_mean(result.segmentation.astype(np.float32), factor) >= 0.5).astype(np.uint8),
        brain_mask=block_mean(result.brain_mask.astype(np.float32), factor) >= 0.5,
        timings=dict(result.timings),
        metrics={},
        warnings=list(result.warnings),
    )
    if subject.seg is not None:
        mapped.metrics = segmentation_metrics(mapped.segmentation > 0, subject.seg > 0)
    return mapped
