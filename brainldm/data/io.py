"""Find, load and write the NIfTI files of a subject.

* :func:`find_subjects` / :func:`scan_subjects` look for subjects in a folder named in the BraTS 2023
  (``<id>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``) or BraTS 2021 (``<id>_t1.nii.gz``,
  ``_t1ce``, ``_t2``, ``_flair``, ``_seg``) convention, with one sub-folder per subject or all files
  flat in the folder. Incomplete subjects are reported (:class:`SkippedSubject`), never dropped silently.
* :func:`load_subject` / :func:`load_subject_from_paths` read the four sequences (and an optional
  segmentation), reorient them by their affine to canonical RAS+ voxel order, check that all files
  share one voxel grid and that the images are usable, and return a :class:`~brainldm.data.subject.Subject`.
* :func:`save_like` writes a volume given in the subject's canonical grid back into the grid,
  orientation and header geometry of the file the subject was read from.

Every problem caused by the files themselves is raised as :class:`~brainldm.errors.InputDataError`
whose message names the file and says what is wrong.
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import SourceGeometry, Subject
from brainldm.errors import BrainLDMError, InputDataError, SettingsError

#: File name endings read as NIfTI (longest first).
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

#: Canonical RAS+ orientation as a nibabel ``ornt`` array (axis i -> axis i, no flip).
_RAS_ORNT = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])

# File-name patterns (case-insensitive), matched against the name without its extension.
# A segmentation may carry a tag after "seg" (e.g. "-seg-pseudo"); the plain name wins if both exist.
_BRATS2023_SEQUENCE = re.compile(r"^(?P<id>.+)-(?P<key>t1n|t1c|t2w|t2f)$", re.IGNORECASE)
_BRATS2021_SEQUENCE = re.compile(r"^(?P<id>.+)_(?P<key>t1|t1ce|t2|flair)$", re.IGNORECASE)
_BRATS2023_SEG = re.compile(r"^(?P<id>.+)-seg(?P<tag>-\w+)?$", re.IGNORECASE)
_BRATS2021_SEG = re.compile(r"^(?P<id>.+)_seg(?P<tag>[-_]\w+)?$", re.IGNORECASE)
_BRATS2021_TO_SEQUENCE = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}

_NAMING_HELP = (
    "expected BraTS 2023 names (<id>-t1n.nii.gz, <id>-t1c.nii.gz, <id>-t2w.nii.gz, <id>-t2f.nii.gz, "
    "optional <id>-seg.nii.gz) or BraTS 2021 names (<id>_t1.nii.gz, <id>_t1ce.nii.gz, <id>_t2.nii.gz, "
    "<id>_flair.nii.gz, optional <id>_seg.nii.gz)"
)


class OutputExistsError(BrainLDMError, FileExistsError):
    """An output file already exists and overwriting was not requested."""


class IncompleteSubjectWarning(UserWarning):
    """:func:`find_subjects` skipped subjects that lack a sequence (or are ambiguous)."""


# --------------------------------------------------------------------------------------------
# Finding subjects
# --------------------------------------------------------------------------------------------


@dataclass
class SubjectFiles:
    """The files of one subject: the four sequences and an optional segmentation."""

    subject_id: str
    paths: dict[str, Path]  # sequence name (see SEQUENCES) -> file
    seg: Path | None = None


@dataclass
class SkippedSubject:
    """A subject (or folder) that was found but cannot be used, and why."""

    subject_id: str
    folder: Path
    found: dict[str, Path]  # the files that were recognised, by sequence name (and "seg")
    missing: tuple[str, ...]  # sequence names without a file
    reason: str  # a sentence for the user

    def __str__(self) -> str:
        return self.reason


@dataclass
class SubjectScan:
    """Result of :func:`scan_subjects`: usable subjects and skipped ones, both sorted by id."""

    subjects: list[SubjectFiles] = field(default_factory=list)
    skipped: list[SkippedSubject] = field(default_factory=list)


def split_nifti_name(name: str) -> str | None:
    """Return ``name`` without its NIfTI extension, or ``None`` when it is not a NIfTI file name."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def parse_brats_name(name: str) -> tuple[str, str, bool] | None:
    """Parse a BraTS 2023 or 2021 file name.

    Returns ``(subject_id, key, tagged)`` where ``key`` is a sequence name from :data:`SEQUENCES`
    or ``"seg"`` and ``tagged`` is True for a tagged segmentation such as ``-seg-pseudo``;
    ``None`` when the name follows neither convention.
    """
    stem = split_nifti_name(name)
    if stem is None:
        return None
    match = _BRATS2023_SEQUENCE.match(stem)
    if match:
        return match["id"], match["key"].lower(), False
    match = _BRATS2021_SEQUENCE.match(stem)
    if match:
        return match["id"], _BRATS2021_TO_SEQUENCE[match["key"].lower()], False
    for pattern in (_BRATS2023_SEG, _BRATS2021_SEG):
        match = pattern.match(stem)
        if match:
            return match["id"], "seg", match["tag"] is not None
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and split_nifti_name(p.name) is not None
    )


def scan_subjects(folder: str | Path) -> SubjectScan:
    """Find the subjects in ``folder`` (files flat in it or in sub-folders one level down).

    Subjects missing a sequence, with two files for one sequence, or folders holding NIfTI files
    with unrecognised names are returned in :attr:`SubjectScan.skipped` with the reason.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise InputDataError(f"Data folder {root} does not exist; check the path.")
    if not root.is_dir():
        raise InputDataError(f"{root} is not a folder; give the folder that holds the subjects' NIfTI files.")

    # candidates[subject_id][key] -> list of (tagged, path)
    candidates: dict[str, dict[str, list[tuple[bool, Path]]]] = {}
    skipped: list[SkippedSubject] = []
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for sub in folders:
        unrecognised = []
        for path in _nifti_files(sub):
            parsed = parse_brats_name(path.name)
            if parsed is None:
                unrecognised.append(path.name)
                continue
            subject_id, key, tagged = parsed
            candidates.setdefault(subject_id, {}).setdefault(key, []).append((tagged, path))
        if unrecognised:
            skipped.append(
                SkippedSubject(
                    subject_id=sub.name,
                    folder=sub,
                    found={},
                    missing=SEQUENCES,
                    reason=f"{sub}: NIfTI files with unrecognised names ({', '.join(unrecognised[:5])}"
                    f"{', ...' if len(unrecognised) > 5 else ''}); {_NAMING_HELP}.",
                )
            )

    subjects: list[SubjectFiles] = []
    for subject_id in sorted(candidates):
        by_key = candidates[subject_id]
        found: dict[str, Path] = {}
        problems: list[str] = []
        for key, options in by_key.items():
            if key == "seg":
                untagged = [p for tagged, p in options if not tagged]
                options = [(False, p) for p in untagged] if untagged else options
            if len(options) > 1:
                names = ", ".join(str(p) for _, p in sorted(options, key=lambda o: str(o[1])))
                problems.append(f"several files for {key} ({names}); keep one")
            else:
                found[key] = options[0][1]
        missing = tuple(s for s in SEQUENCES if s not in found and s not in by_key)
        folder_of = next(iter(found.values()), None) or by_key[next(iter(by_key))][0][1]
        if missing:
            have = ", ".join(s for s in (*SEQUENCES, "seg") if s in found) or "nothing"
            problems.insert(0, f"missing {', '.join(missing)} (found {have})")
        if problems:
            skipped.append(
                SkippedSubject(
                    subject_id=subject_id,
                    folder=folder_of.parent,
                    found=found,
                    missing=missing,
                    reason=f"Subject {subject_id} in {folder_of.parent} skipped: {'; '.join(problems)}.",
                )
            )
            continue
        subjects.append(
            SubjectFiles(subject_id=subject_id, paths={s: found[s] for s in SEQUENCES}, seg=found.get("seg"))
        )
    skipped.sort(key=lambda s: (s.subject_id, str(s.folder)))
    return SubjectScan(subjects=subjects, skipped=skipped)


def find_subjects(
    folder: str | Path, return_skipped: bool = False
) -> list[SubjectFiles] | tuple[list[SubjectFiles], list[SkippedSubject]]:
    """Complete subjects in ``folder``, sorted by id (see :func:`scan_subjects`).

    With ``return_skipped=True`` returns ``(subjects, skipped)``; otherwise skipped subjects are
    reported with an :class:`IncompleteSubjectWarning` naming each one and what it lacks.
    """
    scan = scan_subjects(folder)
    if return_skipped:
        return scan.subjects, scan.skipped
    if scan.skipped:
        lines = "\n".join(f"  - {s.reason}" for s in scan.skipped)
        warnings.warn(
            f"{len(scan.skipped)} subject(s) in {folder} skipped:\n{lines}", IncompleteSubjectWarning, stacklevel=2
        )
    return scan.subjects


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridTolerance:
    """How far two files' voxel grids may differ and still count as the same grid."""

    spacing_rtol: float = 1e-3  # relative difference of voxel sizes
    direction_atol: float = 1e-3  # absolute difference of direction cosines
    origin_atol_voxels: float = 1e-2  # origin distance, as a fraction of the smallest voxel size


@dataclass
class _Volume:
    """One file read and reoriented to canonical RAS+."""

    name: str  # sequence name or "seg"
    path: Path
    image: nib.spatialimages.SpatialImage
    data: np.ndarray  # canonical orientation
    affine: np.ndarray  # canonical affine
    source_shape: tuple[int, int, int]
    to_canonical: np.ndarray


def _describe(name: str, path: Path) -> str:
    return f"{name} ({path})"


def _read_volume(name: str, path: str | Path, is_label: bool) -> _Volume:
    path = Path(path).expanduser()
    what = _describe(name, path)
    if not path.exists():
        raise InputDataError(f"{what}: file not found; check the path.")
    if not path.is_file():
        raise InputDataError(f"{what}: is not a file.")
    try:
        image = nib.load(str(path))
        raw = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel, gzip and numpy raise many kinds; the user needs one clear message
        raise InputDataError(
            f"{what}: cannot be read as a NIfTI image ({type(exc).__name__}: {exc}). "
            "Check that it is a complete, uncorrupted .nii or .nii.gz file."
        ) from None
    if not isinstance(image, nib.spatialimages.SpatialImage) or raw.ndim < 3:
        raise InputDataError(f"{what}: has shape {tuple(raw.shape)}; expected a 3-D volume.")
    while raw.ndim > 3 and raw.shape[-1] == 1:  # e.g. SRI24 files are stored (240, 240, 155, 1)
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise InputDataError(
            f"{what}: has shape {tuple(image.shape)}, i.e. several volumes; expected one 3-D volume "
            "(split the series and pick one)."
        )
    if raw.dtype.kind not in "biuf":
        raise InputDataError(f"{what}: voxel type {raw.dtype} is not supported; expected integers or floats.")

    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        bad = int(raw.size - np.count_nonzero(finite))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(raw)))
            raise InputDataError(
                f"{what}: {bad} voxel(s) are not finite ({n_nan} NaN, {bad - n_nan} infinite). "
                "Replace them (e.g. by 0) before loading."
            )
    if is_label:
        data = np.rint(raw).astype(np.int16) if raw.dtype.kind == "f" else raw.astype(np.int16)
    else:
        data = raw.astype(np.float32)
        low, high = float(data.min()), float(data.max())
        if low == high:
            kind = "empty (every voxel is 0)" if low == 0 else f"constant (every voxel is {low:g})"
            raise InputDataError(f"{what}: image is {kind}; it holds no brain. Check that the right file was chosen.")

    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputDataError(f"{what}: its affine (voxel-to-world matrix) is invalid:\n{affine}")
    source_ornt = io_orientation(affine)
    to_canonical = ornt_transform(source_ornt, _RAS_ORNT)
    canonical = np.ascontiguousarray(apply_orientation(data, to_canonical))
    canonical_affine = affine @ inv_ornt_aff(to_canonical, data.shape)
    return _Volume(
        name=name,
        path=path,
        image=image,
        data=canonical,
        affine=canonical_affine,
        source_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        to_canonical=to_canonical,
    )


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform that undoes ``ornt`` (for :func:`apply_orientation`).

    ``ornt[i] = (j, flip)`` sends input axis ``i`` to output axis ``j`` (flipped if ``flip == -1``);
    the inverse sends axis ``j`` back to ``i`` with the same flip.
    """
    ornt = np.asarray(ornt, dtype=np.float64)
    inverse = np.empty_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (axis, flip)
    return inverse


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=float).ravel()) + ")"


def _grid_difference(volume: _Volume, reference: _Volume, tol: GridTolerance) -> str | None:
    """Describe how ``volume``'s canonical grid differs from ``reference``'s, or ``None`` if it does not."""
    if volume.data.shape != reference.data.shape:
        return f"shape {volume.data.shape} differs from {reference.name} {reference.data.shape}"
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    ref_spacing = np.linalg.norm(reference.affine[:3, :3], axis=0)
    if not np.allclose(spacing, ref_spacing, rtol=tol.spacing_rtol, atol=0):
        return f"spacing {_fmt(spacing)} mm differs from {reference.name} {_fmt(ref_spacing)} mm"
    direction = volume.affine[:3, :3] / spacing
    ref_direction = reference.affine[:3, :3] / ref_spacing
    if not np.allclose(direction, ref_direction, rtol=0, atol=tol.direction_atol):
        return (
            f"direction {_fmt(direction)} ({''.join(nib.aff2axcodes(volume.image.affine))} file) differs from "
            f"{reference.name} {_fmt(ref_direction)} ({''.join(nib.aff2axcodes(reference.image.affine))} file)"
        )
    origin, ref_origin = volume.affine[:3, 3], reference.affine[:3, 3]
    if np.linalg.norm(origin - ref_origin) > tol.origin_atol_voxels * float(ref_spacing.min()):
        return f"origin {_fmt(origin)} mm differs from {reference.name} {_fmt(ref_origin)} mm"
    return None


def _subject_id_from_path(path: Path) -> str:
    parsed = parse_brats_name(path.name)
    if parsed is not None:
        return parsed[0]
    return split_nifti_name(path.name) or path.stem


def load_subject_from_paths(
    t1n: str | Path,
    t1c: str | Path,
    t2w: str | Path,
    t2f: str | Path,
    seg: str | Path | None = None,
    subject_id: str | None = None,
    tolerance: GridTolerance = GridTolerance(),
) -> Subject:
    """Load four sequence files (and an optional segmentation) into a canonical RAS+ :class:`Subject`.

    ``t1n`` is the reference: its grid is the one every other file must share (within
    ``tolerance``), and :func:`save_like` writes into its original orientation and header.
    """
    files = {"t1n": t1n, "t1c": t1c, "t2w": t2w, "t2f": t2f}
    volumes = [_read_volume(name, path, is_label=False) for name, path in files.items()]
    if seg is not None:
        volumes.append(_read_volume("seg", seg, is_label=True))
    reference = volumes[0]
    for volume in volumes[1:]:
        difference = _grid_difference(volume, reference, tolerance)
        if difference is not None:
            raise InputDataError(
                f"{volume.name}: {difference} ({volume.path} vs {reference.path}). All sequences and the "
                "segmentation must be co-registered on one voxel grid; resample them onto the t1n grid first."
            )
    images = np.stack([v.data for v in volumes[:4]])
    header = reference.image.header.copy()
    return Subject(
        subject_id=subject_id or _subject_id_from_path(reference.path),
        images=images,
        affine=reference.affine,
        seg=volumes[4].data if seg is not None else None,
        source=SourceGeometry(
            affine=np.asarray(reference.image.affine, dtype=np.float64),
            shape=reference.source_shape,
            to_canonical=reference.to_canonical,
            header=header,
        ),
        paths={v.name: str(v.path) for v in volumes},
    )


def load_subject(files: SubjectFiles, tolerance: GridTolerance = GridTolerance()) -> Subject:
    """Load a subject found by :func:`find_subjects` (see :func:`load_subject_from_paths`)."""
    missing = [s for s in SEQUENCES if s not in files.paths]
    if missing:
        raise InputDataError(f"Subject {files.subject_id}: no file given for {', '.join(missing)}.")
    return load_subject_from_paths(
        *(files.paths[s] for s in SEQUENCES), seg=files.seg, subject_id=files.subject_id, tolerance=tolerance
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _output_dtype(array: np.ndarray, dtype: np.dtype | type | str | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    if array.dtype == np.int64:
        return np.dtype(np.int32)
    return array.dtype


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and array.dtype.kind in "fb":
        values = np.rint(array) if array.dtype.kind == "f" else array
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise ValueError(f"values {values.min()}..{values.max()} do not fit in {dtype}")
        return values.astype(dtype)
    if dtype.kind in "iu" and array.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"values {array.min()}..{array.max()} do not fit in {dtype}")
    return array.astype(dtype, copy=False)


def save_like(
    array: np.ndarray,
    subject: Subject,
    path: str | Path,
    dtype: np.dtype | type | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` (shape ``subject.shape``, canonical RAS+ grid) as a NIfTI file in the source grid.

    The array is reoriented back to the voxel order of the file the subject was read from and
    written with a copy of that file's header, so affine, qform/sform (and their codes), voxel
    sizes and units are bit-identical to the input's (a trailing singleton 4th axis is kept too).
    Subjects without a source (generated phantoms) are written with ``subject.affine``.

    ``dtype`` defaults to the array's own (bool -> uint8, float -> float32); floats written to
    an integer type are rounded. No intensity scaling is stored. An existing file is only
    replaced with ``overwrite=True``; the file is written to a temporary name first so a
    failed write never leaves a half-written output.
    """
    array = np.asarray(array)
    if array.shape != subject.shape:
        raise ValueError(f"array shape {array.shape} does not match subject {subject.subject_id} grid {subject.shape}")
    return _save_in_grid(array, subject.affine, subject.source, path, dtype, overwrite)


def _save_in_grid(
    array: np.ndarray,
    affine: np.ndarray,
    source: SourceGeometry | None,
    path: str | Path,
    dtype: np.dtype | type | str | None,
    overwrite: bool,
) -> Path:
    """Write a canonical-grid ``array`` into the grid of ``source`` (see :func:`save_like`)."""
    path = Path(path).expanduser()
    if split_nifti_name(path.name) is None:
        raise SettingsError(f"Output file {path} must end with .nii.gz or .nii.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"Output file {path} already exists; choose another name or allow overwriting.")
    out_dtype = _output_dtype(array, dtype)

    header_ok = source is not None and isinstance(source.header, (nib.Nifti1Header, nib.Nifti2Header))
    if source is None:
        data = array
        image = nib.Nifti1Image(_cast(data, out_dtype), np.asarray(affine, dtype=np.float64))
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
    else:
        data = np.ascontiguousarray(apply_orientation(array, invert_ornt(source.to_canonical)))
        if data.shape != tuple(source.shape):
            raise ValueError(f"reoriented shape {data.shape} does not match source shape {tuple(source.shape)}")
        data = _cast(data, out_dtype)
        if header_ok:
            header = source.header.copy()
            full_shape = tuple(header.get_data_shape())
            if len(full_shape) > 3 and all(s == 1 for s in full_shape[3:]) and full_shape[:3] == data.shape:
                data = data.reshape(full_shape)
            header.set_data_dtype(out_dtype)
            header.set_slope_inter(None, None)  # values are written as they are: no scaling
            header["cal_min"] = 0
            header["cal_max"] = 0
            header["intent_code"] = 0
            header["intent_name"] = b""
            header["descrip"] = b"BrainLDM"
            klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
            # affine=None: nibabel keeps the header's qform/sform fields exactly as they are.
            image = klass(data, None, header=header)
        else:
            image = nib.Nifti1Image(data, source.affine)
            image.header.set_qform(source.affine, code=1)
            image.header.set_sform(source.affine, code=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        nib.save(image, str(tmp))
        if path.exists() and not overwrite:  # appeared while writing
            raise OutputExistsError(f"Output file {path} already exists; choose another name or allow overwriting.")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------------------------
# single label maps (lesion masks)
# --------------------------------------------------------------------------------------------


@dataclass
class LabelVolume:
    """One label map (e.g. a lesion mask) read into canonical RAS+ voxel order.

    ``data`` is ``(X, Y, Z)`` int16 (0 = background); ``source`` remembers the file's grid so
    :func:`save_label_like` writes results back onto exactly that grid and orientation.
    """

    data: np.ndarray
    affine: np.ndarray
    source: SourceGeometry
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def load_label_volume(path: str | Path) -> LabelVolume:
    """Read one NIfTI label map (values rounded to integers), reoriented to canonical RAS+."""
    volume = _read_volume("label map", path, is_label=True)
    source = SourceGeometry(affine=np.asarray(volume.image.affine, dtype=np.float64), shape=volume.source_shape,
                            to_canonical=volume.to_canonical, header=volume.image.header.copy())
    return LabelVolume(data=volume.data, affine=volume.affine, source=source, path=volume.path)


def save_label_like(
    array: np.ndarray,
    like: LabelVolume,
    path: str | Path,
    dtype: np.dtype | type | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` (canonical grid of ``like``) in the grid, orientation and header geometry of
    the file ``like`` was read from; same rules as :func:`save_like`."""
    array = np.asarray(array)
    if array.shape != like.data.shape:
        raise ValueError(f"array shape {array.shape} does not match the label map grid {like.data.shape}")
    return _save_in_grid(array, like.affine, like.source, path, dtype, overwrite)
