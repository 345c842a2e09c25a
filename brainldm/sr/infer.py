"""Super-resolution inference: overlapping patches of 2x-upsampled slices (thesis §4.4.1).

For each axial slice of the low-resolution input (normalised to [-1, 1] like the training data):

1. upsample it ``scale``-fold with bicubic interpolation (what the degradation pipelines'
   Algorithm 2, line 8, gives the model in training, :func:`brainldm.sr.degrade.resize`);
2. cut the upsampled slice into overlapping patches of the training patch size
   (:mod:`brainldm.sr.patches`); patches without foreground are left as they are;
3. per patch: encode (``c = s E(patch)``), run the DDIM subsequence from the SDEdit start
   (:func:`brainldm.sr.model.sample_sr_latents`), decode (``D(z / s)``);
4. blend the patches with Gaussian weights, put the background back, clip to [-1, 1].

:func:`super_resolve_volume` is the entry point for other code (``brainldm segment --upscale``):
raw intensities in, raw intensities out. :func:`super_resolve_files` is the ``brainldm sr``
use case (NIfTI in, NIfTI out).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainldm.errors import InputDataError, SettingsError
from brainldm.sr.config import SRInferenceSettings
from brainldm.sr.degrade import resize
from brainldm.sr.model import sample_sr_latents, sr_timestep_pairs
from brainldm.sr.patches import (
    blend_patches,
    blend_weights,
    extract_patches,
    pad_to_patch,
    patch_grid,
)

log = logging.getLogger(__name__)

#: A value above this counts as foreground in a normalised image (background is exactly -1).
FOREGROUND_LEVEL = -1.0 + 1e-3

Progress = Callable[[int, int], None]


def _check_normalised(lr: np.ndarray, channels: int) -> np.ndarray:
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim != 4 or lr.shape[1] != channels:
        raise InputDataError(f"Expected low-resolution slices of shape (S, {channels}, X, Y), got {lr.shape}.")
    if not np.isfinite(lr).all():
        raise InputDataError("The low-resolution image holds NaN or infinite values; replace them first "
                             "(e.g. numpy.nan_to_num).")
    return lr


def upsample(lr: np.ndarray, scale: float, mode: str = "cubic") -> np.ndarray:
    """``(..., C, x, y)`` -> ``(..., C, round(scale x), round(scale y))`` by bicubic (or another) interpolation,
    with the pixel-centre convention of the degradation pipelines (field of view kept)."""
    lr = np.asarray(lr, dtype=np.float32)
    shape = tuple(round(s * float(scale)) for s in lr.shape[-2:])
    return resize(lr, shape, (lr.ndim - 2, lr.ndim - 1), mode)


def upsampled_foreground(foreground: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A low-resolution foreground mask ``(..., x, y)`` on the upsampled grid (linear, >= 0.5),
    as the degradation pipelines mask the background (:func:`brainldm.sr.degrade.degrade`)."""
    mask = np.asarray(foreground, dtype=np.float32)
    return resize(mask, shape, (mask.ndim - 2, mask.ndim - 1), "linear") >= 0.5


def _patch_seed(seed: int, slice_index: int, patch_index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(slice_index), int(patch_index)]).generate_state(1)[0])


@torch.no_grad()
def super_resolve_patches(bicubic: np.ndarray, bundle, settings: SRInferenceSettings,
                          seeds: list[int]) -> np.ndarray:
    """SR of ``(N, C, P, P)`` bicubic-upsampled, normalised patches -> ``(N, C, P, P)`` in [-1, 1].

    ``seeds``: one per patch, for its start noise.
    """
    autoencoder, model, schedule = bundle.autoencoder, bundle.model, bundle.schedule
    device = bundle.device
    s = float(bundle.latent_scale)
    x = torch.from_numpy(np.ascontiguousarray(bicubic, dtype=np.float32)).to(device)
    condition = autoencoder.encode(x) * s
    noise = torch.stack([torch.randn(condition.shape[1:], generator=torch.Generator().manual_seed(seed))
                         for seed in seeds]).to(device=device, dtype=condition.dtype)
    pairs = sr_timestep_pairs(settings.steps, settings.strength, schedule.num_train_timesteps)
    z = sample_sr_latents(lambda z_t, t, c: model(z_t, t, c), condition, noise, pairs, schedule)
    out = autoencoder.decode(z / s)
    if settings.output == "residual":
        out = x + out - autoencoder.decode(condition / s)
    return out.clamp(-1.0, 1.0).float().cpu().numpy()


def _patch_size(bundle, settings: SRInferenceSettings) -> int:
    patch = int(settings.patch_size) or (int(bundle.patch_size[0]) if bundle.patch_size else 0)
    if patch <= 0:
        raise SettingsError("The SR bundle records no training patch size; set the patch size (--patch-size).")
    multiple = int(bundle.compression) * int(bundle.model.size_multiple)
    if patch % multiple:
        raise SettingsError(f"The SR patch size {patch} must be a multiple of {multiple} (the autoencoder's "
                            f"compression {bundle.compression} x the denoiser's {bundle.model.size_multiple}).")
    return patch


def super_resolve_slices(lr: np.ndarray, bundle, settings: SRInferenceSettings | None = None,
                         foreground: np.ndarray | None = None, progress: Progress | None = None,
                         slice_ids: list[int] | None = None) -> np.ndarray:
    """Super-resolve normalised low-resolution slices.

    Parameters
    ----------
    lr:
        ``(S, C, x, y)`` float in [-1, 1] (BrainLDM's normalisation, background -1), ``C`` = the
        bundle's channels (four sequences).
    bundle:
        An :class:`~brainldm.sr.bundle.SRBundle`.
    settings:
        :class:`~brainldm.sr.config.SRInferenceSettings` (default: the bundle's recommendation).
    foreground:
        ``(S, x, y)`` bool; default: pixels where any channel is above the background level.
    progress:
        Called as ``progress(done, total)`` with the number of patches diffused.
    slice_ids:
        Indices of the slices for the noise seeds (default ``0 .. S-1``): the same slice gets the
        same noise whatever else is processed with it.

    Returns
    -------
    ``(S, C, round(scale x), round(scale y))`` float32 in [-1, 1], background -1.
    """
    settings = settings or bundle.inference_settings()
    trained = float(getattr(bundle, "train_strength", 1.0))
    if settings.strength > trained + 1e-9:
        raise SettingsError(f"SR strength {settings.strength} starts at noise levels this model never saw: it was "
                            f"trained up to strength {trained:g}; use --strength {trained:g} or less.")
    lr = _check_normalised(lr, bundle.channels)
    n_slices = lr.shape[0]
    if foreground is None:
        foreground = (lr > FOREGROUND_LEVEL).any(axis=1)
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.shape != (n_slices, *lr.shape[2:]):
        raise InputDataError(f"The foreground mask {foreground.shape} does not fit the slices {lr.shape}.")
    slice_ids = list(range(n_slices)) if slice_ids is None else list(slice_ids)
    patch = _patch_size(bundle, settings)
    bicubic = np.clip(upsample(lr, bundle.scale), -1.0, 1.0)
    shape = tuple(int(s) for s in bicubic.shape[-2:])
    upsampled_fg = upsampled_foreground(foreground, shape)
    weights = blend_weights(patch, settings.blend)

    # Every patch of every slice; the ones holding foreground are diffused in batches.
    plans = []
    jobs: list[tuple[int, int]] = []
    for i in range(n_slices):
        padded = pad_to_patch(np.where(upsampled_fg[i][None], bicubic[i], -1.0), patch, -1.0)
        starts = patch_grid(padded.shape[1:], patch, settings.overlap)
        patches = extract_patches(padded, starts, patch)
        plans.append((padded.shape[1:], starts, patches))
        if not upsampled_fg[i].any():
            continue
        for j, values in enumerate(patches):
            if not settings.skip_background or values.max() > FOREGROUND_LEVEL:
                jobs.append((i, j))
    done = 0
    for begin in range(0, len(jobs), int(settings.batch_size)):
        chunk = jobs[begin:begin + int(settings.batch_size)]
        batch = np.stack([plans[i][2][j] for i, j in chunk])
        seeds = [_patch_seed(settings.seed, slice_ids[i], j) for i, j in chunk]
        result = super_resolve_patches(batch, bundle, settings, seeds)
        for (i, j), values in zip(chunk, result):
            plans[i][2][j] = values
        done += len(chunk)
        if progress is not None:
            progress(done, len(jobs))
    out = np.empty((n_slices, lr.shape[1], *shape), dtype=np.float32)
    for i, (padded_shape, starts, patches) in enumerate(plans):
        blended = blend_patches(patches, starts, padded_shape, weights)[:, :shape[0], :shape[1]]
        out[i] = np.where(upsampled_fg[i][None], np.clip(blended, -1.0, 1.0), -1.0)
    return out


def super_resolve_volume(images: np.ndarray, bundle, settings: SRInferenceSettings | None = None,
                         progress: Progress | None = None, chunk: int = 8) -> np.ndarray:
    """Super-resolve a multi-sequence volume in-plane: ``(C, x, y, z)`` -> ``(C, s x, s y, z)``.

    Parameters
    ----------
    images:
        ``(C, x, y, z)`` raw intensities (skull-stripped, background 0) in the canonical RAS+ voxel
        order, ``C`` = the bundle's channels (the four sequences in :data:`brainldm.data.sequences.SEQUENCES`
        order); axial slices (the last axis) are super-resolved one by one.
    bundle:
        An :class:`~brainldm.sr.bundle.SRBundle` (``SRBundle.load(folder)``); ``s = bundle.scale`` (2).
    settings:
        :class:`~brainldm.sr.config.SRInferenceSettings`; default: the bundle's recommendation
        (``bundle.inference_settings(steps=..., ...)`` changes some).
    progress:
        ``progress(done, total)`` in axial slices.
    chunk:
        Slices super-resolved together (bounds memory).

    Returns
    -------
    ``(C, s x, s y, z)`` float32 raw intensities: each sequence is normalised as in training (brain
    mask, 0.5/99.5 brain percentiles -> [-1, 1]), super-resolved and mapped back, so intensities
    beyond those percentiles come back clipped to them; the background (outside the upsampled
    brain mask) is 0. Slices without brain are 0. The affine of the output grid is
    :func:`brainldm.sr.degrade_files.scaled_affine` of the input's (voxel size / s in-plane).
    """
    from brainldm.data.preprocess import Normaliser, brain_mask

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != bundle.channels:
        raise InputDataError(f"super_resolve_volume needs (C, X, Y, Z) images with C = {bundle.channels} (the "
                             f"model's sequences); got shape {images.shape}.")
    if not np.isfinite(images).all():
        raise InputDataError("The images hold NaN or infinite values; replace them (e.g. numpy.nan_to_num(images, "
                             "nan=0.0)) before super-resolution.")
    settings = settings or bundle.inference_settings()
    pre = bundle.preprocess_config
    mask = brain_mask(images, fill_holes=pre.fill_holes, min_component_voxels=pre.min_component_voxels)
    if not mask.any():
        raise InputDataError("No brain found: every sequence is zero everywhere.")
    normaliser = Normaliser(low_percentile=pre.low_percentile, high_percentile=pre.high_percentile)
    normalised = normaliser.normalise(images.astype(np.float32), mask)
    scale = float(bundle.scale)
    out_xy = tuple(round(s * scale) for s in images.shape[1:3])
    out = np.zeros((images.shape[0], *out_xy, images.shape[3]), dtype=np.float32)
    with_brain = [int(z) for z in np.flatnonzero(mask.any(axis=(0, 1)))]
    for begin in range(0, len(with_brain), max(1, int(chunk))):
        zs = with_brain[begin:begin + max(1, int(chunk))]
        lr = np.moveaxis(normalised[..., zs], -1, 0)  # (S, C, x, y)
        fg = np.moveaxis(mask[..., zs], -1, 0)
        sr = super_resolve_slices(lr, bundle, settings, foreground=fg, slice_ids=zs)
        fg_up = upsampled_foreground(fg, out_xy)
        for k, z in enumerate(zs):
            raw = normaliser.denormalise(sr[k][..., None])[..., 0]
            out[..., z] = np.where(fg_up[k][None], raw, 0.0)
        if progress is not None:
            progress(min(begin + len(zs), len(with_brain)), len(with_brain))
    return out


# --------------------------------------------------------------------------- files (brainldm sr)


@dataclass
class SRRequest:
    """Options of ``brainldm sr``.

    ``source``: a subject folder (four sequences in BraTS naming; all four are written, plus the
    segmentation upsampled by nearest neighbour) or one sequence file of such a subject (its
    sibling files are read, the requested sequence is written to ``out``). ``out``: a folder for a
    subject, a ``.nii.gz`` file for one file. ``slices``: only these axial slices (``(first, last)``
    inclusive, RAS+ voxel indices); the others are bicubic (quick trials).
    """

    source: Path
    model: Path
    out: Path
    settings: SRInferenceSettings | None = None
    overwrite: bool = False
    slices: tuple[int, int] | None = None


def _subject_files(source: Path):
    from brainldm.data.io import find_subjects, parse_brats_name, scan_subjects

    if source.is_dir():
        subjects = find_subjects(source)
        if len(subjects) != 1:
            raise InputDataError(f"{source} holds {len(subjects)} complete subjects; give one subject folder (or one "
                                 "of its files).")
        return subjects[0], None
    parsed = parse_brats_name(source.name)
    if parsed is None or parsed[1] == "seg":
        raise InputDataError(f"{source.name} is not a sequence file in BraTS naming (<id>-t1n/-t1c/-t2w/-t2f.nii.gz): "
                             "the SR model reads all four sequences of a subject, so give a subject folder or one of "
                             "its sequence files.")
    scan = scan_subjects(source.parent)
    for files in scan.subjects:
        if files.subject_id == parsed[0]:
            return files, parsed[1]
    raise InputDataError(f"The SR model needs all four sequences of subject {parsed[0]}, but {source.parent} does not "
                         "hold all of them (t1n, t1c, t2w, t2f).")


def super_resolve_files(request: SRRequest, progress: Progress | None = None) -> dict:
    """Run ``brainldm sr``: read, super-resolve, write NIfTI (RAS+ voxel order, in-plane voxel size / scale)
    and ``<name>-sr.json``. Returns the record written."""
    from brainldm.data.io import OutputExistsError, load_subject
    from brainldm.data.sequences import SEQUENCES
    from brainldm.sr.bundle import SRBundle
    from brainldm.sr.degrade_files import _write_nifti, scaled_affine

    source = Path(request.source).expanduser()
    if not source.exists():
        raise InputDataError(f"{source} does not exist; give a subject folder or one of its sequence files.")
    out = Path(request.out).expanduser()
    files, sequence = _subject_files(source)
    if sequence is not None:
        if not out.name.lower().endswith((".nii.gz", ".nii")):
            raise SettingsError(f"--out {out} must be a .nii.gz file when the input is one file.")
        targets = {sequence: out}
        record_path = out.with_name(out.name.split(".nii")[0] + "-sr.json")
    else:
        targets = {seq: out / Path(files.paths[seq]).name for seq in SEQUENCES}
        if files.seg:
            targets["seg"] = out / Path(files.seg).name
        record_path = out / f"{files.subject_id}-sr.json"
    if not request.overwrite:
        existing = [p for p in (*targets.values(), record_path) if p.exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} already exists; choose another --out or pass --overwrite.")
    bundle = SRBundle.load(request.model, device=(request.settings.device if request.settings else "cpu"))
    settings = request.settings or bundle.inference_settings()
    subject = load_subject(files)
    started = time.perf_counter()
    images = subject.images
    if request.slices is not None:
        first, last = (int(v) for v in request.slices)
        if not 0 <= first <= last < images.shape[3]:
            raise SettingsError(f"--slices {first}:{last} must lie within 0:{images.shape[3] - 1}.")
        part = images.copy()
        keep = np.zeros(images.shape[3], dtype=bool)
        keep[first:last + 1] = True
        part[..., ~keep] = 0.0
        result = super_resolve_volume(part, bundle, settings, progress=progress)
        bicubic = np.clip(upsample(np.moveaxis(images, -1, 0), bundle.scale), 0.0, None)
        result[..., ~keep] = np.moveaxis(bicubic, 0, -1)[..., ~keep]
    else:
        result = super_resolve_volume(images, bundle, settings, progress=progress)
    seconds = time.perf_counter() - started
    affine = scaled_affine(subject.affine, subject.shape, result.shape[1:])
    for seq, path in targets.items():
        if seq == "seg":
            seg = resize(np.asarray(subject.seg, dtype=np.float32)[None], result.shape[1:3], (1, 2), "nearest")[0]
            _write_nifti(path, np.rint(seg).astype(np.int16), affine, request.overwrite)
        else:
            _write_nifti(path, result[SEQUENCES.index(seq)], affine, request.overwrite)
    record = {
        "subject": files.subject_id, "model": str(bundle.path), "model_id": bundle.model_id,
        "scale": bundle.scale, "input_shape": list(subject.shape), "output_shape": list(result.shape[1:]),
        "settings": settings.to_dict(), "seconds": round(seconds, 2),
        "slices": list(request.slices) if request.slices else None,
        "outputs": {k: str(v) for k, v in targets.items()},
        "note": "arrays in RAS+ voxel order; in-plane voxel size divided by the scale",
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


__all__ = ["SRRequest", "super_resolve_files", "super_resolve_patches", "super_resolve_slices",
           "super_resolve_volume", "upsample", "upsampled_foreground"]
