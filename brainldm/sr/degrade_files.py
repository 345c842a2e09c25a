"""Use case ``brainldm degrade``: degrade NIfTI files or subjects and write them with their new geometry.

``IN`` is one NIfTI file or a folder of subjects in BraTS naming (read with :mod:`brainldm.data.io`,
reoriented to canonical RAS+). Every image is degraded by :func:`brainldm.sr.degrade.degrade`
with raw intensities (per-sequence reference, see there) onto the low-resolution grid: each axial
slice in-plane (default, the thesis's 2D setting) or along all three axes (``volume``). Outputs,
written in RAS+ voxel order with an affine whose voxel size is multiplied by the actual resampling
factor and whose origin keeps the field of view:

* ``OUT/<file name>`` (a file) or ``OUT/<subject>/<original file names>`` (a subject; a label map
  is resampled by nearest neighbour), so a degraded subject loads like any other;
* ``<name>-degradation.json``: pipeline, seed, every parameter drawn, grids and affines;
* with ``png``: ``<name>-degradation.png``, every step on one axial slice (like Fig. B.5): the slice
  with the most lesion when a label map is there, else the middle of the brain.

Subjects of a folder get seeds ``seed, seed + 1, ...`` in id order. Nothing is overwritten unless
``overwrite`` is set, and an input file is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainldm.errors import InputDataError, SettingsError

log = logging.getLogger(__name__)


@dataclass
class DegradeRequest:
    """Options of ``brainldm degrade``."""

    source: Path  # a NIfTI file or a folder of subjects
    out_dir: Path
    pipeline: str = "mri"  # "mri" (Algorithm 2) or "esrgan" (Algorithm 1)
    seed: int = 0
    scale: float = 2.0  # downscale factor of the written grid (issue 7: 2x)
    volume: bool = False  # degrade along all three axes instead of each axial slice
    png: bool = False
    overwrite: bool = False


@dataclass
class _Job:
    name: str  # subject id or file stem
    inputs: list[Path]  # one per channel
    outputs: list[Path]  # one per channel
    channel_titles: list[str]
    seg_input: Path | None = None
    seg_output: Path | None = None
    record: Path = Path()
    png: Path | None = None
    subject_files: object = None  # brainldm.data.io.SubjectFiles for subjects
    extra: dict = field(default_factory=dict)


def scaled_affine(affine: np.ndarray, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """Affine of a grid resampled from ``old_shape`` to ``new_shape`` over the same field of view.

    With pixel centres at ``align_corners=False`` positions, new voxel ``j`` sits at old voxel
    coordinate ``(j + 0.5) f - 0.5`` with ``f = old / new``: the voxel size grows by ``f`` and the
    origin moves by ``(f - 1) / 2`` old voxels.
    """
    factors = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(factors)
    step[:3, 3] = (factors - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ step


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, overwrite: bool) -> Path:
    import nibabel as nib

    from brainldm.data.io import OutputExistsError

    if path.exists() and not overwrite:
        raise OutputExistsError(f"Output file {path} already exists; choose another --out or pass --overwrite.")
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"BrainLDM degrade"
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _plan(request: DegradeRequest) -> list[_Job]:
    from brainldm.data.io import scan_subjects, split_nifti_name
    from brainldm.data.sequences import SEQUENCE_TITLES, SEQUENCES

    source = Path(request.source).expanduser()
    out_dir = Path(request.out_dir).expanduser()
    if not source.exists():
        raise InputDataError(f"{source} does not exist; give a NIfTI file or a folder holding a subject.")
    if source.is_file():
        stem = split_nifti_name(source.name)
        if stem is None:
            raise InputDataError(f"{source} is not a NIfTI file (.nii or .nii.gz); give a NIfTI file or a subject folder.")
        return [_Job(name=stem, inputs=[source], outputs=[out_dir / source.name], channel_titles=[stem],
                     record=out_dir / f"{stem}-degradation.json",
                     png=out_dir / f"{stem}-degradation.png" if request.png else None)]
    scan = scan_subjects(source)
    if not scan.subjects:
        reasons = "".join(f"\n  - {s.reason}" for s in scan.skipped[:5])
        raise InputDataError(
            f"No complete subject in {source}: expected the four sequences in BraTS 2023 or 2021 naming, "
            f"or give one NIfTI file.{reasons}"
        )
    for skipped in scan.skipped:
        log.warning("%s", skipped.reason)
    jobs = []
    for files in scan.subjects:
        folder = out_dir / files.subject_id
        inputs = [files.paths[s] for s in SEQUENCES]
        jobs.append(_Job(
            name=files.subject_id, inputs=inputs, outputs=[folder / p.name for p in inputs],
            channel_titles=[SEQUENCE_TITLES[s] for s in SEQUENCES],
            seg_input=files.seg, seg_output=folder / files.seg.name if files.seg else None,
            record=folder / f"{files.subject_id}-degradation.json",
            png=folder / f"{files.subject_id}-degradation.png" if request.png else None, subject_files=files,
        ))
    return jobs


def _check_outputs(jobs: list[_Job], overwrite: bool) -> None:
    from brainldm.data.io import OutputExistsError

    inputs = {p.resolve() for job in jobs for p in [*job.inputs, *([job.seg_input] if job.seg_input else [])]}
    for job in jobs:
        outputs = [*job.outputs, job.record, *([job.seg_output] if job.seg_output else []), *([job.png] if job.png else [])]
        for path in outputs:
            if path.resolve() in inputs:
                raise SettingsError(f"Output {path} would replace an input file; choose another --out.")
            if path.exists() and not overwrite:
                raise OutputExistsError(f"{path} already exists; choose another --out or pass --overwrite to replace it.")


def _load(job: _Job) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images (C, X, Y, Z) raw, canonical affine, label map or None) of one job."""
    from brainldm.data.io import _read_volume, load_subject

    if job.subject_files is not None:
        subject = load_subject(job.subject_files)
        return subject.images, subject.affine, subject.seg
    # no public single-image loader in brainldm.data.io yet: reuse its reader (checks, RAS+ reorientation)
    volume = _read_volume("image", job.inputs[0], is_label=False)
    return volume.data[None], volume.affine, None


def _picture_slice(images: np.ndarray, seg: np.ndarray | None) -> int:
    """Axial slice of the picture: the one with the most lesion, else the middle of the brain."""
    if seg is not None and np.any(seg > 0):
        return int(np.argmax((seg > 0).sum(axis=(0, 1))))
    zs = np.flatnonzero((images > 0).any(axis=(0, 1, 2)))
    return int(zs[len(zs) // 2]) if zs.size else images.shape[-1] // 2


def degrade_files(request: DegradeRequest) -> list[Path]:
    """Run ``brainldm degrade``; return the paths written (images, records, pictures)."""
    from brainldm.sr.degrade import degrade, pipeline_config, resize

    config = pipeline_config(request.pipeline)
    if not 1.0 <= float(request.scale) <= 16.0:
        raise SettingsError(f"--scale must be within 1-16; got {request.scale}.")
    jobs = _plan(request)
    _check_outputs(jobs, request.overwrite)
    written: list[Path] = []
    axes = "all" if request.volume else "inplane"
    for index, job in enumerate(jobs):
        seed = int(request.seed) + index
        images, affine, seg = _load(job)
        recorder = None
        z = _picture_slice(images, seg)
        if job.png is not None:
            from brainldm.sr.figure import SliceRecorder

            recorder = SliceRecorder(z, images.shape[-1])
        result = degrade(images, config, seed, scale=request.scale, value_range="raw", axes=axes, on_step=recorder)
        new_affine = scaled_affine(affine, images.shape[1:], result.image.shape[1:])
        for channel, path in enumerate(job.outputs):
            written.append(_write_nifti(path, np.ascontiguousarray(result.image[channel]), new_affine, request.overwrite))
        if seg is not None and job.seg_output is not None:
            deg_axes = (1, 2, 3) if request.volume else (1, 2)
            labels = resize(seg[None].astype(np.float32), tuple(result.image.shape[a] for a in deg_axes), deg_axes,
                            "nearest")[0]
            written.append(_write_nifti(job.seg_output, np.rint(labels).astype(np.int16), new_affine, request.overwrite))
        spacing = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))
        record = {
            "name": job.name,
            **result.record,
            "inputs": [str(p) for p in job.inputs],
            "outputs": [str(p) for p in job.outputs],
            "label_map": str(job.seg_output) if seg is not None and job.seg_output else None,
            "orientation": "RAS+ voxel order (inputs were reoriented by their affine)",
            "input_affine": np.asarray(affine).round(6).tolist(),
            "output_affine": new_affine.round(6).tolist(),
            "output_voxel_size_mm": spacing.round(6).tolist(),
            "config": config.to_dict(),
        }
        job.record.parent.mkdir(parents=True, exist_ok=True)
        job.record.write_text(json.dumps(record, indent=2))
        written.append(job.record)
        if job.png is not None and recorder is not None:
            from brainldm.sr.figure import degradation_png, single_degradations

            gallery = single_degradations(recorder.steps[0][1], request.pipeline, seed)
            algorithm = "Algorithm 2" if request.pipeline == "mri" else "Algorithm 1"
            title = (f"{job.name} - {request.pipeline} pipeline (thesis {algorithm}, Table B.5), seed {seed}, "
                     f"scale {request.scale:g}, axial slice {z}")
            written.append(degradation_png(job.png, recorder.steps, gallery, job.channel_titles, title))
        log.info("%s: %s -> %s", job.name, "x".join(map(str, images.shape[1:])), "x".join(map(str, result.image.shape[1:])))
    return written
