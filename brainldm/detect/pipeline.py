"""Healthy counterfactuals and anomaly segmentation of one subject (thesis §3.4.3, DESIGN.md §2).

::

    Subject -> preprocess (brain mask, crop, normalise to [-1, 1])
            -> first-stage encoder E -> z0 ;  D(z0) = reconstruction
            -> invert z0 over N steps with the null label (DDIM or EDICT)  -> zN
            -> generate from zN over N steps toward "healthy" with guidance C -> z0'
            -> D(z0') = counterfactual
            -> |reconstruction - counterfactual| averaged over sequences = anomaly map
            -> (optional Gaussian smoothing, ``settings.smoothing``)
            -> (GradDiff ROI) -> one Otsu threshold (or the model's fixed one) -> binary opening
               = segmentation
            -> everything pasted back into the subject's grid (raw intensities for images)

How the latent is cut for the denoiser depends on the model and ``settings.mode``:
``whole`` (``coords`` models, the fast path), ``windows`` (thesis patch inference with
overlap) or ``slices`` (2D models). ``auto`` picks ``whole`` for ``coords`` 3D models,
``windows`` for other 3D models and ``slices`` for 2D ones.

:func:`detect` runs three public stages that callers varying the settings on one subject reuse
(``brainldm grid-search``): :func:`encode_subject` (preprocessing and the first stage; independent
of N, C and omega), :func:`invert_latent` (depends on the encoder, N and omega, not on C) and
:func:`counterfactual_from_inversion` (generation with guidance C, maps, segmentation).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from brainldm.data.preprocess import PreparedSubject, preprocess_subject
from brainldm.data.subject import Subject
from brainldm.detect.maps import (
    GradDiffRecorder,
    anomaly_map,
    graddiff_map,
    graddiff_roi,
    segment_from_map,
    smooth_map,
)
from brainldm.detect.settings import DetectionResult, DetectionSettings
from brainldm.detect.windows import SliceBatchDenoiser, SlidingWindowDenoiser, WholeVolumeDenoiser
from brainldm.diffusion.guidance import make_noise_fn
from brainldm.diffusion.sampler import chain_callbacks, final_latent, generate, invert
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.evaluate.metrics import segmentation_metrics
from brainldm.nets.cpu_speed import use_onednn_convolutions

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
CancelCheck = Callable[[], bool]

HEALTHY = 0  # label constants of brainldm.nets.denoiser (kept in sync by a test)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def resolve_mode(bundle, settings: DetectionSettings) -> str:
    """The inference mode for this model: see the module docstring."""
    spatial_dims = bundle.spatial_dims
    position = getattr(bundle.denoiser_config, "position_embedding", "none")
    mode = settings.mode
    if mode == "auto":
        if spatial_dims == 2:
            return "slices"
        return "whole" if position == "coords" else "windows"
    if spatial_dims == 2 and mode != "slices":
        raise SettingsError(f"this is a 2D model: use mode 'slices' (or 'auto'), not {mode!r}")
    if spatial_dims == 3 and mode == "slices":
        raise SettingsError("this is a 3D model: use mode 'whole', 'windows' or 'auto'")
    if mode == "whole" and position == "sin":
        raise SettingsError("models with the 'sin' patch embedding need 'windows' mode (they saw only patch starts)")
    return mode


def _memory_hint(error: RuntimeError, mode: str) -> BrainLDMError:
    hint = ("use --mode windows with a smaller --overlap" if mode == "whole"
            else "lower the window batch or --overlap, or run on a machine with more memory")
    return BrainLDMError(f"out of memory during detection ({error}); {hint}")


# --------------------------------------------------------------------------- first stage


def _to_slices(images: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(4, x, y, z) -> (S, 4, x, y) for the axial slices that hold brain, and their z indices."""
    z_with_brain = np.flatnonzero(mask.any(axis=(0, 1)))
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images[..., z_with_brain], -1, 0)))
    return slices, z_with_brain


def _from_slices(volume_slices: np.ndarray, z_index: np.ndarray, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """(S, C, x, y) -> (C, x, y, z) with ``fill`` on the slices that were not processed."""
    out = np.full((volume_slices.shape[1], *shape), fill, dtype=np.float32)
    out[..., z_index] = np.moveaxis(volume_slices, 0, -1)
    return out


def _decode(autoencoder, z: torch.Tensor, chunk: int) -> torch.Tensor:
    if z.ndim == 4 and z.shape[0] > chunk:  # 2D slices: decode in chunks
        return torch.cat([autoencoder.decode(z[i:i + chunk]) for i in range(0, z.shape[0], chunk)])
    return autoencoder.decode(z)


def _encode(autoencoder, x: torch.Tensor, chunk: int) -> torch.Tensor:
    if x.ndim == 4 and x.shape[0] > chunk:
        return torch.cat([autoencoder.encode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
    return autoencoder.encode(x)


# --------------------------------------------------------------------------- main entry


def detect(
    subject: Subject,
    bundle,
    settings: DetectionSettings | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    record_graddiff: bool | None = None,
) -> DetectionResult:
    """Detect anomalies in ``subject`` with a trained :class:`~brainldm.nets.bundle.ModelBundle`.

    ``progress(stage, fraction)`` is called as work advances (fraction of the whole job in
    [0, 1]); ``cancel()`` is polled between diffusion steps and raises
    :class:`brainldm.diffusion.sampler.Cancelled` when it returns True. GradDiff maps are
    recorded when ``settings.threshold == "graddiff"`` or ``record_graddiff`` is True.

    The three stages are public for callers that vary settings on one subject (grid search):
    :func:`encode_subject` does not depend on N, C or omega, :func:`invert_latent` does not depend
    on C, and :func:`counterfactual_from_inversion` finishes the job; ``detect`` is exactly these three.
    """
    settings = (settings or DetectionSettings()).validate()
    start_all = time.perf_counter()
    encoded = encode_subject(subject, bundle, settings, progress=progress)
    inverted = invert_latent(encoded, settings, progress=progress, cancel=cancel)
    result = counterfactual_from_inversion(encoded, inverted, settings, progress=progress, cancel=cancel,
                                           record_graddiff=record_graddiff)
    result.timings["total"] = round(time.perf_counter() - start_all, 3)
    return result


@dataclass
class EncodedSubject:
    """A subject after preprocessing and the first stage: everything detection needs that does not
    depend on N, C or omega (made by :func:`encode_subject`).

    ``reconstruction_subject`` and ``reconstruction_error_subject`` are shared by every result made
    from this encoding: treat them as read-only.
    """

    subject: Subject
    bundle: object
    prepared: PreparedSubject
    mode: str
    device: torch.device
    z0: torch.Tensor  # E(x) * latent_scale
    net: object  # the denoiser wrapper of the mode (whole volume, windows or slices)
    z_index: np.ndarray | None  # axial slices processed in 'slices' mode
    reconstruction: np.ndarray  # D(E(x)), (4, x, y, z) on the prepared grid, normalised units
    reconstruction_subject: np.ndarray  # the same in raw intensities on the subject grid
    reconstruction_error_subject: np.ndarray  # |x - D(E(x))| averaged over sequences, subject grid
    layout: tuple  # the settings the denoiser wrapper was built for (see _layout)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class InvertedLatent:
    """The input's latent encoded into noise (:func:`invert_latent`): depends on the encoder, N and
    omega, not on the guidance C."""

    latent: object  # z_T (DDIM) or the EDICT pair (x_T, y_T)
    encoder: str
    steps: int
    mix: float
    seconds: float
    denoiser_calls: int
    noise_level: int = 0


def _layout(settings: DetectionSettings) -> tuple:
    return (settings.mode, settings.overlap, settings.window_batch, settings.device)


@contextmanager
def _memory_errors(mode: str):
    try:
        yield
    except RuntimeError as error:
        if "memory" in str(error).lower() or "alloc" in str(error).lower():
            raise _memory_hint(error, mode) from error
        raise


def encode_subject(subject: Subject, bundle, settings: DetectionSettings | None = None,
                   progress: Progress | None = None) -> EncodedSubject:
    """Preprocess ``subject`` and run the first stage (the part of :func:`detect` before inversion).

    Only ``settings.mode``, ``overlap``, ``window_batch``, ``device`` and ``seed`` matter here; the
    result serves every N, C and omega with those same values.
    """
    settings = (settings or DetectionSettings()).validate()
    report = progress or (lambda stage, fraction: None)
    timer = _Timer()
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    mode = resolve_mode(bundle, settings)
    bundle.to(device)
    autoencoder, denoiser = bundle.autoencoder.eval(), bundle.denoiser.eval()
    if device.type == "cpu":
        use_onednn_convolutions(autoencoder)
        use_onednn_convolutions(denoiser)

    report("preprocess", 0.0)
    with timer.stage("preprocess"):
        prepared: PreparedSubject = preprocess_subject(subject, bundle.preprocess_config)
    mask = prepared.mask
    z_index = None
    with _memory_errors(mode), torch.inference_mode():
        report("encode", 0.02)
        with timer.stage("encode"):
            if mode == "slices":
                x, z_index = _to_slices(prepared.images, mask)
            else:
                x = torch.from_numpy(prepared.images)[None]
            x = x.to(device)
            z0 = _encode(autoencoder, x, chunk=32)
            reconstruction = _decode(autoencoder, z0, chunk=32)
        z0 = z0 * float(bundle.latent_scale)
        net = _denoiser_for(mode, bundle, denoiser, settings, mask, z0, device)
        reconstruction = reconstruction.float().cpu().numpy()
    with timer.stage("maps"):
        if mode == "slices":
            reconstruction = _from_slices(reconstruction, z_index, mask.shape, fill=-1.0)
        else:
            reconstruction = reconstruction[0]
        rec_error = anomaly_map(prepared.images, reconstruction, brain_mask=mask)
    with timer.stage("to_subject_grid"):
        reconstruction_subject = prepared.to_subject_images(reconstruction)
        rec_error_subject = prepared.to_subject_grid(rec_error.astype(np.float32), fill=0.0)
    return EncodedSubject(
        subject=subject, bundle=bundle, prepared=prepared, mode=mode, device=device, z0=z0, net=net,
        z_index=z_index, reconstruction=reconstruction, reconstruction_subject=reconstruction_subject,
        reconstruction_error_subject=rec_error_subject, layout=_layout(settings), timings=timer.timings,
    )


def _check_layout(encoded: EncodedSubject, settings: DetectionSettings) -> None:
    if _layout(settings) != encoded.layout:
        raise SettingsError(
            f"this subject was encoded for mode/overlap/window batch/device {encoded.layout}, not "
            f"{_layout(settings)}; encode it again with these settings")


def _step_progress(report: Progress, offset: float, stage: str):
    def callback(step_index, num_steps, t, info):
        report(stage, offset + 0.45 * (step_index + 1) / num_steps)
    return callback


def invert_latent(encoded: EncodedSubject, settings: DetectionSettings | None = None,
                  progress: Progress | None = None, cancel: CancelCheck | None = None) -> InvertedLatent:
    """Encode the subject's latent into noise with the null label over N steps (DDIM or EDICT with
    omega). Guidance acts only in generation, so one inversion serves every C."""
    settings = (settings or DetectionSettings()).validate()
    _check_layout(encoded, settings)
    report = progress or (lambda stage, fraction: None)
    bundle = encoded.bundle
    sampler = settings.sampler_settings()
    calls_before = encoded.net.calls
    start = time.perf_counter()
    with _memory_errors(encoded.mode), torch.inference_mode():
        null_label = int(getattr(bundle.denoiser_config, "num_classes", 2))
        eps_null = make_noise_fn(encoded.net, label=null_label, null_label=null_label)
        z_T = invert(encoded.z0, eps_null, bundle.schedule, sampler,
                     callback=_step_progress(report, 0.05, "inversion"), cancel=cancel)
    return InvertedLatent(latent=z_T, encoder=settings.encoder, steps=settings.steps, mix=settings.mix,
                          noise_level=settings.noise_level,
                          seconds=round(time.perf_counter() - start, 3),
                          denoiser_calls=int(encoded.net.calls - calls_before))


def counterfactual_from_inversion(
    encoded: EncodedSubject,
    inverted: InvertedLatent,
    settings: DetectionSettings | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    record_graddiff: bool | None = None,
) -> DetectionResult:
    """Generate the healthy counterfactual from an inverted latent with guidance ``settings.guidance``
    and make the maps and the segmentation (the part of :func:`detect` after inversion).

    ``settings`` must agree with the inversion (encoder, N, omega) and the encoding (mode, overlap,
    window batch, device); the result equals :func:`detect` with the same settings. Timings hold the
    shared stages (encoding, inversion) as they were measured once; ``total`` is their sum.
    """
    settings = (settings or DetectionSettings()).validate()
    _check_layout(encoded, settings)
    if (inverted.encoder, inverted.steps, inverted.noise_level) != (settings.encoder, settings.steps,
                                                                     settings.noise_level) or (
            settings.encoder == "edict" and inverted.mix != settings.mix):
        raise SettingsError(
            f"the latent was inverted with {inverted.encoder} N={inverted.steps} L={inverted.noise_level or 'T'} "
            f"omega={inverted.mix}, not {settings.encoder} N={settings.steps} L={settings.noise_level or 'T'} "
            f"omega={settings.mix}; invert it again with these settings")
    report = progress or (lambda stage, fraction: None)
    timer = _Timer()
    warnings: list[str] = []
    bundle, mode, prepared, net = encoded.bundle, encoded.mode, encoded.prepared, encoded.net
    mask = prepared.mask
    n_steps = settings.steps
    want_graddiff = settings.threshold == "graddiff" if record_graddiff is None else bool(record_graddiff)
    sampler = settings.sampler_settings()
    calls_before = net.calls
    with _memory_errors(mode), torch.inference_mode():
        recorder = GradDiffRecorder(n_steps) if want_graddiff else None
        with timer.stage("generation"):
            null_label = int(getattr(bundle.denoiser_config, "num_classes", 2))
            eps_healthy = make_noise_fn(net, label=HEALTHY, null_label=null_label, scale=settings.guidance,
                                        with_pseudo_gradient=want_graddiff)
            callback = chain_callbacks(_step_progress(report, 0.5, "generation"), recorder)
            z_cf = final_latent(generate(inverted.latent, eps_healthy, bundle.schedule, sampler, callback=callback,
                                         cancel=cancel))
        report("decode", 0.95)
        with timer.stage("decode"):
            counterfactual = _decode(bundle.autoencoder, z_cf / float(bundle.latent_scale), chunk=32)
        counterfactual = counterfactual.float().cpu().numpy()
        latent_graddiff = recorder.latent_map() if recorder is not None else None

    with timer.stage("maps"):
        reconstruction = encoded.reconstruction
        if mode == "slices":
            counterfactual = _from_slices(counterfactual, encoded.z_index, mask.shape, fill=-1.0)
        else:
            counterfactual = counterfactual[0]
        if settings.mask_brain:
            counterfactual = np.where(mask[None], counterfactual, -1.0).astype(np.float32)
        amap = anomaly_map(reconstruction, counterfactual, brain_mask=mask if settings.mask_brain else None)
        amap = smooth_map(amap, settings.smoothing, brain_mask=mask if settings.mask_brain else None)
        gmap = roi = None
        if latent_graddiff is not None:
            gmap = _graddiff_image_map(latent_graddiff, mode, encoded.z_index, mask.shape)
            if settings.mask_brain:
                gmap = np.where(mask, gmap, 0.0).astype(np.float32)
            if settings.threshold == "graddiff":
                roi_seg = graddiff_roi(gmap, brain_mask=mask)
                if roi_seg.no_signal:
                    warnings.append(f"GradDiff gave no region of interest ({roi_seg.warning}); plain Otsu used")
                else:
                    roi = roi_seg.mask
        seg = threshold_anomaly_map(amap, mask, settings, roi=roi)
        if seg.warning:
            warnings.append(seg.warning)
        if not seg.mask.any():
            warnings.append("no anomaly was found: the segmentation is empty")

    with timer.stage("to_subject_grid"):
        counterfactual_raw = prepared.to_subject_images(counterfactual)
        brain_full = prepared.to_subject_grid(mask, fill=False)
        if settings.mask_brain:  # background of skull-stripped scans is 0
            counterfactual_raw *= brain_full[None]
        result = DetectionResult(
            reconstruction=encoded.reconstruction_subject,
            counterfactual=counterfactual_raw,
            anomaly_map=prepared.to_subject_grid(amap.astype(np.float32), fill=0.0),
            segmentation=prepared.to_subject_grid(seg.mask.astype(np.uint8), fill=0),
            brain_mask=brain_full,
            reconstruction_error=encoded.reconstruction_error_subject,
            threshold=float(seg.threshold),
            graddiff_map=None if gmap is None else prepared.to_subject_grid(gmap.astype(np.float32), fill=0.0),
            warnings=warnings,
        )
    subject = encoded.subject
    if subject.seg is not None:
        result.metrics = segmentation_metrics(result.segmentation > 0, subject.seg > 0)
    timings = dict(encoded.timings)
    timings["inversion"] = inverted.seconds
    for stage, seconds in timer.timings.items():
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 3)
    timings["total"] = round(sum(timings.values()), 3)
    timings["denoiser_calls"] = float(inverted.denoiser_calls + net.calls - calls_before)
    timings["mode_" + mode] = 1.0
    result.timings = timings
    result.peak_memory_mb = round(peak_memory_mb(), 1)
    for warning in warnings:
        log.warning("%s: %s", subject.subject_id, warning)
    report("done", 1.0)
    return result


def _denoiser_for(mode, bundle, denoiser, settings, mask, z0, device):
    multiple = int(getattr(bundle.denoiser_config, "size_multiple", 1))
    if mode == "whole":
        return WholeVolumeDenoiser(denoiser, size_multiple=multiple)
    if mode == "slices":
        return SliceBatchDenoiser(denoiser, size_multiple=multiple, batch_size=slice_batch_size(z0.shape[2:]))
    window = bundle.latent_patch_size
    if not window:
        raise SettingsError("this model bundle does not record its training patch size; use --mode whole")
    latent_mask = _latent_mask(mask, z0.shape[2:])
    return SlidingWindowDenoiser(denoiser, window, overlap=settings.overlap, brain=latent_mask.to(device),
                                 batch_size=settings.window_batch)


def slice_batch_size(latent_slice_shape, pixels_per_call: int = 36_000) -> int:
    """Slices per 2D denoiser call: about ``pixels_per_call`` latent pixels, which measured fastest on
    a 2-core CPU (a 20x24 latent: 72 slices per call 0.24 s per pass of 143 slices, 32 per call 0.28 s)."""
    pixels = int(np.prod([int(s) for s in latent_slice_shape]))
    return int(max(1, min(256, pixels_per_call // max(1, pixels))))


def _latent_mask(mask: np.ndarray, latent_shape) -> torch.Tensor:
    """Brain mask on the latent grid: a latent voxel is brain if any image voxel under it is."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.adaptive_max_pool3d(m, tuple(int(s) for s in latent_shape))[0, 0] > 0


def threshold_anomaly_map(amap, brain_mask, settings: DetectionSettings, roi=None):
    """The segmentation ``settings`` ask for from an anomaly map: one Otsu threshold per volume
    (``otsu``; inside the GradDiff ``roi`` for ``graddiff``) or the model's ``threshold_value``
    (``fixed``), then the binary opening. Returns :class:`~brainldm.detect.maps.Segmentation`."""
    method = "fixed" if settings.threshold == "fixed" else "otsu"
    return segment_from_map(amap, brain_mask=brain_mask, method=method, opening_radius=settings.opening_radius,
                            roi=roi, threshold=settings.threshold_value if method == "fixed" else None)


def _graddiff_image_map(latent_map: torch.Tensor, mode: str, z_index, shape) -> np.ndarray:
    if mode == "slices":
        # latent_map (S, C, x', y') -> upsample each slice -> (S, x, y) -> (x, y, z)
        per_slice = graddiff_map(latent_map, shape[:2])
        out = np.zeros(shape, dtype=np.float32)
        out[..., z_index] = np.moveaxis(per_slice, 0, -1)
        return out
    return graddiff_map(latent_map, shape)[0]  # (1, C, x', y', z') -> (x, y, z)
