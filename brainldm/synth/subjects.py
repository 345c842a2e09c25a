"""Lesion synthesis into reference subjects: ``brainldm synth`` and ``brainldm synth-dataset``.

* :func:`make_lesion` gives the lesion to synthesise on a reference's canonical grid: a painted
  mask (``--lesion-mask``), or a real lesion shape resized to an exact in-plane diameter
  (:func:`~brainldm.synth.lesions.resize_lesion`) and placed inside the brain, at a given centre or
  at random (:func:`~brainldm.synth.lesions.place_lesion`).
* :func:`synthesise_subject` preprocesses the reference as the model was trained (brain mask,
  crop, [-1, 1]), synthesises the windows holding the lesion (the axial slices for 2D models, the
  whole cropped volume for 3D ones, :func:`brainldm.synth.generate.synthesise`), pastes them back
  with soft weights and returns a new subject: the four sequences with the lesion, in the
  reference's intensities, every voxel outside the synthesised region bit-identical to the
  reference, and the lesion labels (added to the reference's own segmentation, if any).
* :func:`write_synthetic_subject` writes it as a BraTS 2023 subject folder in the reference files'
  own grid, orientation and header (:func:`brainldm.data.io.save_like`), plus ``synth.json``.
* :func:`run_synth` and :func:`synth_dataset` are the two commands' use cases.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainldm.data.lesion_geometry import inplane_diameter_mm
from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import Subject
from brainldm.errors import InputDataError, SettingsError
from brainldm.synth.generate import SynthSettings, synthesise
from brainldm.synth.lesions import (
    LesionShape,
    load_lesion_library,
    place_lesion,
    resize_lesion,
)

Progress = Callable[[str, float], None]

#: Lesion shapes with fewer voxels are not drawn for synthetic lesions (specks grown to 20 mm are cubes).
MIN_SHAPE_VOXELS = 100


# --------------------------------------------------------------------------- models


def load_synthesis_model(model: str | Path | None, device: str = "cpu"):
    """The :class:`~brainldm.nets.synthesis_bundle.SynthesisBundle` at ``model``; a clear
    :class:`~brainldm.errors.ModelBundleError` saying how to train one when none is given."""
    from brainldm.errors import ModelBundleError
    from brainldm.nets.synthesis_bundle import HOW_TO_TRAIN, SynthesisBundle

    if model is None or str(model).strip() == "":
        raise ModelBundleError(f"No lesion synthesis model is available (none given and none in Resources/models): "
                               f"{HOW_TO_TRAIN}.")
    return SynthesisBundle.load(model, device=device)


# --------------------------------------------------------------------------- geometry


def file_voxel_to_canonical(index: Sequence[int], subject: Subject) -> tuple[int, int, int]:
    """A voxel index of the reference files (their own axis order) as an index of the subject's
    canonical RAS+ arrays (the files' orientation transform, nibabel ``apply_orientation`` rules)."""
    index = tuple(round(float(v)) for v in index)
    if len(index) != 3:
        raise SettingsError(f"A centre needs three voxel coordinates X,Y,Z; got {index}.")
    if subject.source is None:
        return index  # type: ignore[return-value]
    shape = tuple(int(s) for s in subject.source.shape)
    if not all(0 <= v < s for v, s in zip(index, shape)):
        raise SettingsError(f"The centre {index} lies outside the reference grid {shape} (voxel indices from 0).")
    ornt = np.asarray(subject.source.to_canonical)
    out = [0, 0, 0]
    for axis, (target, flip) in enumerate(ornt):
        out[int(target)] = shape[axis] - 1 - index[axis] if flip < 0 else index[axis]
    return tuple(out)  # type: ignore[return-value]


def canonical_to_file_voxel(index: Sequence[int], subject: Subject) -> tuple[int, int, int]:
    """Inverse of :func:`file_voxel_to_canonical`."""
    index = tuple(int(v) for v in index)
    if subject.source is None:
        return index  # type: ignore[return-value]
    shape = tuple(int(s) for s in subject.source.shape)
    ornt = np.asarray(subject.source.to_canonical)
    out = [0, 0, 0]
    for axis, (target, flip) in enumerate(ornt):
        value = index[int(target)]
        out[axis] = shape[axis] - 1 - value if flip < 0 else value
    return tuple(out)  # type: ignore[return-value]


def axial_file_axis(subject: Subject) -> int:
    """The axis of the reference files that runs inferior-superior (canonical axis 2)."""
    if subject.source is None:
        return 2
    ornt = np.asarray(subject.source.to_canonical)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


def parse_centre(text: str | None) -> tuple[int, int, int] | None:
    """``"X,Y,Z"`` -> voxel indices (None stays None)."""
    if text is None or str(text).strip() == "":
        return None
    try:
        values = tuple(round(float(v)) for v in str(text).replace(" ", "").split(","))
    except ValueError as error:
        raise SettingsError(f"The centre must be three voxel indices X,Y,Z, got {text!r}.") from error
    if len(values) != 3:
        raise SettingsError(f"The centre must be three voxel indices X,Y,Z, got {text!r}.")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- lesions


def lesion_sources(paths: Sequence[str | Path]) -> list[Path]:
    """Label map files from files and folders (a folder: its subjects' segmentations, else every
    NIfTI file in it)."""
    from brainldm.synth.lesions import training_label_files

    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found = training_label_files(path)
            files += found if found else sorted(p for p in path.glob("*.nii*"))
        elif path.is_file():
            files.append(path)
        else:
            raise InputDataError(f"Lesion source {path} does not exist.")
    return files


def lesion_library(paths: Sequence[str | Path] = (), min_voxels: int = MIN_SHAPE_VOXELS) -> list[LesionShape]:
    """Real lesion shapes: each connected lesion of the given label maps (default: the shared
    development lesion masks, when present), keeping those with at least ``min_voxels`` voxels
    (all when none has that many)."""
    from brainldm.synth.lesions import shared_lesion_files

    files = lesion_sources(paths) if paths else shared_lesion_files()
    shapes = [s for s in load_lesion_library(files, whole=False, components=True) if s.voxels > 0]
    large = [s for s in shapes if s.voxels >= min_voxels]
    return large or shapes


def sphere_shape(diameter_voxels: int = 24) -> LesionShape:
    """A ball, the fallback shape when no real lesion mask is at hand."""
    r = (diameter_voxels - 1) / 2.0
    grid = np.indices((diameter_voxels,) * 3) - r
    ball = (np.sqrt((grid**2).sum(axis=0)) <= r + 0.25).astype(np.uint8)
    return LesionShape("sphere", ball, (1.0, 1.0, 1.0), "generated")


@dataclass
class LesionChoice:
    """The lesion to synthesise, on the reference's canonical grid, and where it came from."""

    labels: np.ndarray  # (X, Y, Z) integer labels, > 0 = lesion
    source: str
    target_mm: float | None
    diameter_mm: float
    centre: tuple[int, int, int] | None


def load_lesion_mask(path: str | Path, subject: Subject) -> np.ndarray:
    """A lesion mask file on the reference's grid, as canonical labels (clear error when the grids differ)."""
    from brainldm.data.io import load_label_volume

    volume = load_label_volume(path)
    if volume.data.shape != subject.shape or not np.allclose(volume.affine, subject.affine, atol=1e-3):
        raise InputDataError(f"The lesion mask {path} is not on the reference's voxel grid ({subject.shape}); paint "
                             "or resample it on the reference (e.g. its t1n file) first.")
    if not (volume.data > 0).any():
        raise InputDataError(f"The lesion mask {path} is empty (no voxel > 0); paint the lesion first.")
    return volume.data


def make_lesion(
    subject: Subject,
    brain: np.ndarray,
    diameter_mm: float,
    shapes: Sequence[LesionShape],
    centre: Sequence[int] | None = None,
    rng: np.random.Generator | int | None = None,
    tries: int = 8,
) -> LesionChoice:
    """A real lesion shape (drawn from ``shapes``; a ball when there is none) resized to
    ``diameter_mm`` on the subject's voxel spacing and placed inside ``brain`` (canonical grid), its
    box centre on ``centre`` (canonical voxel) or at a random position where it fits."""
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pool = list(shapes) or [sphere_shape(max(24, int(np.ceil(2 * diameter_mm / min(subject.spacing[:2])))))]
    last_error: SettingsError | None = None
    order = generator.permutation(len(pool))[:max(1, tries)] if centre is None else generator.permutation(len(pool))[:1]
    for index in order:
        shape = pool[int(index)]
        resized = resize_lesion(shape.labels, diameter_mm, subject.spacing)
        try:
            placed = place_lesion(resized.labels, brain, centre=centre, rng=generator)
        except SettingsError as error:
            last_error = error
            continue
        return LesionChoice(placed.labels, shape.name + (f" ({shape.source})" if shape.source else ""),
                            float(diameter_mm), resized.diameter_mm, tuple(int(c) for c in placed.centre))
    raise last_error or SettingsError("No lesion shape fits this brain.")


# --------------------------------------------------------------------------- synthesis


@dataclass
class SynthResult:
    """A synthetic subject (reference grid, canonical arrays) and what was done."""

    subject: Subject
    lesion: np.ndarray  # bool, canonical grid: the painted lesion (only a region for a healthy-masked synthesis)
    slices: list[int]  # canonical axial slices synthesised (2D models)
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


def synthesise_subject(
    subject: Subject,
    lesion_labels: np.ndarray,
    bundle,
    settings: SynthSettings | None = None,
    subject_id: str | None = None,
    prepared=None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SynthResult:
    """Synthesise the lesion ``lesion_labels`` (canonical grid, > 0 = lesion) into ``subject``.

    With ``settings.healthy`` the same region is synthesised from an empty lesion channel (a
    healthy-masked synthesis): the images change there, the segmentation stays the reference's."""
    from brainldm.data.preprocess import preprocess_subject

    started = time.perf_counter()
    settings = settings or SynthSettings()
    report = progress or (lambda stage, fraction: None)
    lesion_labels = np.asarray(lesion_labels)
    if lesion_labels.shape != subject.shape:
        raise InputDataError(f"The lesion mask {lesion_labels.shape} is not on the reference grid {subject.shape}.")
    lesion_full = lesion_labels > 0
    if not lesion_full.any():
        raise InputDataError("The lesion mask is empty: paint or choose a lesion first.")
    report("preprocess", 0.0)
    prepared = prepared if prepared is not None else preprocess_subject(subject, bundle.preprocess_config)
    lesion = prepared.crop.apply(lesion_full, fill=False)
    if int(lesion.sum()) != int(lesion_full.sum()):
        raise InputDataError("Part of the lesion lies outside the brain's bounding box; put it inside the brain.")
    margin = float(settings.margin_mm) / float(min(subject.spacing[:2]))
    if bundle.spatial_dims == 2:
        slices = [int(z) for z in np.flatnonzero(lesion.any(axis=(0, 1)))]
        windows = np.moveaxis(prepared.images[..., slices], -1, 0)
        brain = np.moveaxis(prepared.mask[..., slices], -1, 0)
        lesions = np.moveaxis(lesion[..., slices], -1, 0)
    else:
        slices = []
        windows, brain, lesions = prepared.images[None], prepared.mask[None], lesion[None]
    batches = -(-windows.shape[0] // max(1, int(settings.slice_batch)))
    total = batches * int(settings.steps)
    calls = {"n": 0}

    def callback(step_index, num_steps, t, info) -> None:
        calls["n"] += 1
        report("synthesis", min(calls["n"] / total, 1.0))

    output = synthesise(bundle, windows, brain, lesions, settings, margin_voxels=margin, callback=callback,
                        cancel=cancel)
    report("compose", 1.0)
    cropped = np.array(prepared.images, dtype=np.float32, copy=True)
    weights = np.zeros(cropped.shape[1:], dtype=np.float32)
    if bundle.spatial_dims == 2:
        cropped[..., slices] = np.moveaxis(output.images, 0, -1)
        weights[..., slices] = np.moveaxis(output.weights, 0, -1)
    else:
        cropped, weights = output.images[0], output.weights[0]
    full_weights = prepared.crop.invert(weights, fill=0.0)
    changed = full_weights > 0
    # Blend in the reference's intensities (not on the clipped [-1, 1] grid), only where synthesised.
    synthetic = prepared.to_subject_images(cropped)[:, changed]
    images = np.array(subject.images, dtype=np.float32, copy=True)
    w = full_weights[changed]
    images[:, changed] = w * synthetic + (1.0 - w) * images[:, changed]
    seg = np.zeros(subject.shape, dtype=np.int16) if subject.seg is None else np.array(subject.seg, dtype=np.int16)
    if not settings.healthy:  # a healthy-masked synthesis adds no lesion label
        seg[lesion_full] = np.asarray(lesion_labels, dtype=np.int16)[lesion_full]
    new_id = subject_id or f"{subject.subject_id}-synth"
    result_subject = Subject(subject_id=new_id, images=images, affine=subject.affine, seg=seg, source=subject.source,
                             paths={})
    canonical = [int(z) for z in np.flatnonzero(lesion_full.any(axis=(0, 1)))]
    return SynthResult(
        subject=result_subject, lesion=lesion_full, slices=canonical, seconds=time.perf_counter() - started,
        report={"changed_voxels": int(changed.sum()), "windows": int(windows.shape[0]),
                "settings": settings.to_dict()},
    )


def _source_dtype(subject: Subject):
    header = getattr(subject.source, "header", None) if subject.source is not None else None
    if header is None:
        return np.dtype(np.float32)
    dtype = np.dtype(header.get_data_dtype())
    return dtype if dtype.kind in "iuf" else np.dtype(np.float32)


def write_synthetic_subject(result: SynthResult, reference: Subject, out_dir: str | Path,
                            overwrite: bool = False, report: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the synthetic subject as ``<out>/<id>-t1n.nii.gz`` ... ``-seg.nii.gz`` (BraTS 2023 naming)
    in the reference files' grid and header, and ``<out>/synth.json``. Returns the written files."""
    from brainldm.data.io import OutputExistsError, save_like

    out_dir = Path(out_dir).expanduser()
    sid = result.subject.subject_id
    names = {seq: out_dir / f"{sid}-{seq}.nii.gz" for seq in SEQUENCES}
    names["seg"] = out_dir / f"{sid}-seg.nii.gz"
    if not overwrite:
        taken = [p for p in names.values() if p.exists()]
        if taken:
            raise OutputExistsError(f"{out_dir} already holds {taken[0].name}; choose another --out or pass --overwrite.")
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = _source_dtype(reference)
    for index, seq in enumerate(SEQUENCES):
        volume = result.subject.images[index]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            volume = np.clip(np.rint(volume), info.min, info.max)
        save_like(volume, reference, names[seq], dtype=dtype, overwrite=True)
    seg = result.subject.seg
    save_like(seg, reference, names["seg"], dtype=np.uint8 if int(seg.max()) <= 255 else np.int16, overwrite=True)
    if report is not None:
        (out_dir / "synth.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return names


# --------------------------------------------------------------------------- use cases


def load_reference(reference: str | Path) -> Subject:
    """The one subject in a folder (BraTS 2023 or 2021 naming)."""
    from brainldm.data.io import find_subjects, load_subject

    found = find_subjects(reference)
    if not found:
        raise InputDataError(f"No complete subject in {reference}: it needs <id>-t1n/-t1c/-t2w/-t2f.nii.gz (BraTS "
                             "2023) or <id>_t1/_t1ce/_t2/_flair.nii.gz (BraTS 2021).")
    if len(found) > 1:
        raise InputDataError(f"{reference} holds {len(found)} subjects; point --reference to one subject folder.")
    return load_subject(found[0])


@dataclass
class SynthRequest:
    """``brainldm synth``: one reference, a painted lesion mask or an exact diameter (and centre)."""

    reference: Path
    out_dir: Path
    lesion_mask: Path | None = None
    diameter_mm: float | None = None
    centre: tuple[int, int, int] | None = None  # voxel indices of the reference files
    lesion_sources: list[Path] = field(default_factory=list)
    subject_id: str | None = None
    settings: SynthSettings = field(default_factory=SynthSettings)
    overwrite: bool = False

    def validate(self) -> SynthRequest:
        if (self.lesion_mask is None) == (self.diameter_mm is None):
            raise SettingsError("Give either a lesion mask (--lesion-mask) or a diameter (--diameter), not both or "
                                "neither.")
        if self.centre is not None and self.diameter_mm is None:
            raise SettingsError("--center places a lesion of --diameter; a lesion mask already says where it is.")
        if self.diameter_mm is not None and not 0 < float(self.diameter_mm) <= 100:
            raise SettingsError(f"The lesion diameter must lie in (0, 100] mm, got {self.diameter_mm}.")
        return self


def _model_summary(bundle) -> dict[str, Any]:
    return {"model_id": bundle.model_id, "path": str(bundle.path), "mechanism": bundle.mechanism,
            "configuration": bundle.conditioning_config.label}


def run_synth(request: SynthRequest, bundle, progress: Progress | None = None,
              cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Synthesise a lesion into the reference and write the synthetic subject; returns the report."""
    from brainldm.data.preprocess import preprocess_subject

    request.validate()
    subject = load_reference(request.reference)
    prepared = preprocess_subject(subject, bundle.preprocess_config)
    brain = prepared.crop.invert(prepared.mask, fill=False)
    if request.lesion_mask is not None:
        labels = load_lesion_mask(request.lesion_mask, subject)
        choice = LesionChoice(labels, str(request.lesion_mask), None,
                              inplane_diameter_mm(labels > 0, subject.spacing), None)
    else:
        centre = None if request.centre is None else file_voxel_to_canonical(request.centre, subject)
        shapes = lesion_library(request.lesion_sources)
        choice = make_lesion(subject, brain, float(request.diameter_mm), shapes, centre, rng=request.settings.seed)
    result = synthesise_subject(subject, choice.labels, bundle, request.settings,
                                subject_id=request.subject_id or f"{subject.subject_id}-synth", prepared=prepared,
                                progress=progress, cancel=cancel)
    report = {
        "subject": result.subject.subject_id,
        "reference": subject.subject_id,
        "reference_files": subject.paths,
        "model": _model_summary(bundle),
        "lesion": {"source": choice.source, "target_diameter_mm": choice.target_mm,
                   "diameter_mm": inplane_diameter_mm(result.lesion, subject.spacing), "voxels": int(result.lesion.sum()),
                   "centre_voxel": None if choice.centre is None else list(canonical_to_file_voxel(choice.centre, subject)),
                   "axial_slices": {"file_axis": axial_file_axis(subject),
                                    "indices": sorted(canonical_to_file_voxel((0, 0, z), subject)[axial_file_axis(subject)]
                                                      for z in result.slices)}},
        "seconds": round(result.seconds, 2),
        **result.report,
    }
    files = write_synthetic_subject(result, subject, request.out_dir, request.overwrite, report)
    report["files"] = {k: str(v) for k, v in files.items()}
    return report


@dataclass
class SynthDatasetRequest:
    """``brainldm synth-dataset``: ``count`` references x ``diameters`` x ``slices`` lesions each."""

    references: Path
    out_dir: Path
    count: int = 10
    slices: int = 5
    diameters: tuple[float, ...] = (5.0, 10.0, 20.0)
    lesion_sources: list[Path] = field(default_factory=list)
    settings: SynthSettings = field(default_factory=SynthSettings)
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> SynthDatasetRequest:
        if self.count < 1 or self.slices < 1:
            raise SettingsError("--count and --slices must be at least 1.")
        if not self.diameters or any(not 0 < float(d) <= 100 for d in self.diameters):
            raise SettingsError(f"Give lesion diameters in (0, 100] mm, got {list(self.diameters)}.")
        return self


def synth_dataset(request: SynthDatasetRequest, bundle, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The small-lesion benchmark data of thesis §4.3.5: for each of the first ``count`` reference
    subjects, each diameter and ``slices`` repetitions, one real lesion shape resized to exactly that
    diameter, placed at random inside the brain and synthesised; each sample is a subject folder
    ``<reference>-d<D>mm-<k>`` with its exact ``-seg`` mask. Writes ``synth_dataset.json`` and
    ``.csv`` (one row per sample: reference, diameter asked and measured, voxels, centre, the axial
    slice of largest lesion area) and returns the manifest."""
    from brainldm.data.io import find_subjects, load_subject
    from brainldm.data.preprocess import preprocess_subject

    request.validate()
    report = progress or (lambda stage, fraction: None)
    found = find_subjects(request.references)
    if len(found) < request.count:
        raise InputDataError(f"{request.references} holds {len(found)} complete subject(s); --count asks for "
                             f"{request.count}.")
    out = Path(request.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    shapes = lesion_library(request.lesion_sources)
    total = request.count * len(request.diameters) * request.slices
    rows: list[dict[str, Any]] = []
    done = 0
    started = time.perf_counter()
    for i, files in enumerate(found[: request.count]):
        subject = load_subject(files)
        prepared = preprocess_subject(subject, bundle.preprocess_config)
        brain = prepared.crop.invert(prepared.mask, fill=False)
        for d_index, diameter in enumerate(request.diameters):
            for k in range(request.slices):
                rng = np.random.default_rng([request.seed, i, d_index, k])
                sample_id = f"{subject.subject_id}-d{float(diameter):g}mm-{k}"
                row: dict[str, Any] = {"subject": sample_id, "reference": subject.subject_id,
                                       "target_diameter_mm": float(diameter)}
                try:
                    choice = make_lesion(subject, brain, float(diameter), shapes, rng=rng)
                    settings = SynthSettings(**{**request.settings.to_dict(), "seed": int(rng.integers(2**31))})
                    result = synthesise_subject(subject, choice.labels, bundle, settings, subject_id=sample_id,
                                                prepared=prepared, cancel=cancel)
                    areas = result.lesion.sum(axis=(0, 1))
                    row.update({
                        "diameter_mm": inplane_diameter_mm(result.lesion, subject.spacing),
                        "voxels": int(result.lesion.sum()),
                        "centre_voxel": list(canonical_to_file_voxel(choice.centre, subject)),
                        "largest_slice": int(canonical_to_file_voxel((0, 0, int(np.argmax(areas))), subject)[
                            axial_file_axis(subject)]),
                        "lesion_source": choice.source, "seconds": round(result.seconds, 2), "status": "ok",
                    })
                    write_synthetic_subject(result, subject, out / sample_id, request.overwrite,
                                            {**row, "model": _model_summary(bundle)})
                except SettingsError as error:
                    row.update({"status": "failed", "reason": str(error)})
                rows.append(row)
                done += 1
                report("synth-dataset", done / total)
                _write_manifest(out, request, bundle, rows, time.perf_counter() - started)
    return json.loads((out / "synth_dataset.json").read_text())


def _write_manifest(out: Path, request: SynthDatasetRequest, bundle, rows: list[dict[str, Any]], seconds: float) -> None:
    manifest = {"model": _model_summary(bundle), "references": str(request.references), "count": request.count,
                "slices": request.slices, "diameters_mm": [float(d) for d in request.diameters],
                "settings": request.settings.to_dict(), "seed": request.seed, "seconds": round(seconds, 1),
                "samples": rows}
    (out / "synth_dataset.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
    columns = ["subject", "reference", "target_diameter_mm", "diameter_mm", "voxels", "centre_voxel",
               "largest_slice", "lesion_source", "seconds", "status", "reason"]
    with open(out / "synth_dataset.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def synthesis_unavailable_message() -> str:
    from brainldm.nets.synthesis_bundle import HOW_TO_TRAIN

    return f"No lesion synthesis model is available (none given and none in Resources/models): {HOW_TO_TRAIN}."


__all__ = [
    "LesionChoice",
    "SynthDatasetRequest",
    "SynthRequest",
    "SynthResult",
    "canonical_to_file_voxel",
    "file_voxel_to_canonical",
    "lesion_library",
    "load_lesion_mask",
    "load_reference",
    "load_synthesis_model",
    "make_lesion",
    "parse_centre",
    "run_synth",
    "synth_dataset",
    "synthesise_subject",
    "write_synthetic_subject",
]
