"""Real lesion shapes at exact sizes, placed inside a brain, and the synthesis conditioning mask.

Thesis §4.3.5 ("How to generate a small lesion dataset?", Fig. 4.8) and §4.3.1 (Fig. 4.3):

* **Lesion size** is the in-plane diameter of :mod:`brainldm.data.lesion_geometry`: the maximum
  extent along the two in-plane axes (0 and 1 of a RAS array) within an axial slice.
* :func:`resize_lesion` scales a real lesion's bounding box with nearest-neighbour
  interpolation (labels stay labels, no blur) to a target diameter in mm. One big step loses
  thin parts of the lesion (Fig. 4.8, top row), so it goes in gentle steps: when the lesion
  still needs the factor ``f_i = target / current``, the step applied is
  ``f_{i+1} = (f_i + 1) / 2`` - the size moves half-way to the target, and a step factor is
  never below 0.5, so nearest-neighbour sampling keeps the first and last row of the box
  along every axis. Should a step empty the mask or jump more than a voxel past the target
  (a sparse lesion can collapse), it is made milder again with the same rule. When the size is within a voxel of the target, the lesion is cropped
  (:func:`~brainldm.data.lesion_geometry.trim_to_diameter`) where rounding left it a voxel too
  wide, or resized by a last small step (then cropped) where it was short or cropping jumped too
  far. The result measures the target rounded to whole voxels (within one voxel for degenerate,
  one-voxel-thin shapes) and is never empty.
* :func:`place_lesion` puts a lesion into a brain: at a given centre voxel, or at a centre drawn
  uniformly among all positions where every lesion voxel lies inside the brain mask
  (:func:`fitting_centres`); a clear :class:`~brainldm.errors.SettingsError` when that is
  impossible.
* :func:`conditioning_mask` is the two-channel one-hot conditioning signal of the synthesis
  models (channel 0 brain, channel 1 lesion, Fig. 4.3b).
* Real lesion shapes come from training labels (:func:`lesion_shapes_from_labels`,
  :func:`training_label_files`) and from ``../shared/data/lesion_masks``
  (:func:`shared_lesion_files`); :func:`load_lesion_library` reads them.

Everything here is numpy on label arrays (``0`` = background, ``> 0`` = lesion; sub-region labels
such as BraTS' 1/2/3 are carried through resizing and placement unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from brainldm.data.lesion_geometry import (
    inplane_diameter_mm,
    inplane_extents,
    lesion_components,
    trim_to_diameter,
)
from brainldm.errors import InputDataError, SettingsError

#: Target diameters of the thesis's small-lesion dataset and of the tests (mm).
STANDARD_DIAMETERS_MM: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0)


# --------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    found = ndi.find_objects(np.asarray(mask, dtype=np.uint8))
    return found[0] if found else None


def _as_label_box(labels: np.ndarray, what: str = "lesion mask") -> np.ndarray:
    """Integer labels cropped to the bounding box of their non-zero voxels; error when empty."""
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = np.rint(arr).astype(np.int16)
    elif arr.dtype.kind not in "iu":
        raise SettingsError(f"The {what} must hold integer labels or booleans, not {arr.dtype}.")
    box = _bbox(arr > 0)
    if box is None:
        raise SettingsError(f"The {what} is empty (no voxel > 0); paint or choose a lesion first.")
    return np.ascontiguousarray(arr[box])


def _nearest_resize(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label box to ``shape`` (voxel centres aligned: output voxel
    ``j`` of ``m`` samples input voxel ``floor((j + 0.5) * n / m)`` of ``n``)."""
    index = []
    for n, m in zip(labels.shape, shape):
        idx = np.floor((np.arange(m) + 0.5) * (n / m)).astype(np.intp)
        index.append(np.clip(idx, 0, n - 1))
    return labels[np.ix_(*index)]


def scale_nearest(labels: np.ndarray, factor: float, in_plane_only: bool = False) -> np.ndarray:
    """One nearest-neighbour step: a label box scaled by ``factor`` along every axis (isotropic in
    mm; only along axes 0 and 1 with ``in_plane_only``, for single slices), cropped to its lesion
    (which may be empty after a large shrinking step)."""
    shape = tuple(
        n if (in_plane_only and axis >= 2) else max(1, math.floor(n * factor + 0.5))
        for axis, n in enumerate(labels.shape)
    )
    out = _nearest_resize(labels, shape)
    box = _bbox(out > 0)
    return out if box is None else np.ascontiguousarray(out[box])


# --------------------------------------------------------------------------------------------
# resizing (thesis §4.3.5)
# --------------------------------------------------------------------------------------------


@dataclass
class ResizedLesion:
    """Result of :func:`resize_lesion`.

    labels:
        The resized lesion, cropped to its bounding box (same number of axes as the input).
    diameter_mm:
        Its in-plane diameter (:func:`~brainldm.data.lesion_geometry.inplane_diameter_mm`).
    target_mm:
        The diameter asked for.
    steps:
        The scale factors applied, in order (the thesis's iterative steps; a last small growth
        step when rounding left the lesion a voxel short is included).
    cropped:
        Whether the lesion was cropped to reach the target exactly.
    """

    labels: np.ndarray
    diameter_mm: float
    target_mm: float
    steps: list[float] = field(default_factory=list)
    cropped: bool = False

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.labels))


def _diameter(labels: np.ndarray, spacing: Sequence[float]) -> float:
    return inplane_diameter_mm(labels > 0, spacing)


def _acceptable(candidate: np.ndarray, before: float, goal: float, voxel: float, spacing: Sequence[float]) -> bool:
    """Whether a resizing step kept the lesion and did not pass the goal by more than a voxel."""
    if not candidate.any():
        return False
    d = _diameter(candidate, spacing)
    return d >= goal - voxel - 1e-9 if before > goal else d <= goal + voxel + 1e-9


def _limits(target_mm: float, spacing: Sequence[float]) -> tuple[int, int]:
    """Largest in-plane extent (voxels) per axis for a target diameter: the target rounded to voxels."""
    return tuple(max(1, math.floor(target_mm / float(s) + 0.5)) for s in spacing[:2])  # type: ignore[return-value]


def _cropped(labels: np.ndarray, limits: tuple[int, int]) -> np.ndarray:
    keep = trim_to_diameter(labels > 0, limits)
    out = np.where(keep, labels, 0).astype(labels.dtype)
    box = _bbox(out > 0)
    return out if box is None else np.ascontiguousarray(out[box])


def resize_lesion(
    labels: np.ndarray,
    diameter_mm: float,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    max_steps: int = 64,
) -> ResizedLesion:
    """Shrink or grow a real lesion to an exact in-plane diameter (thesis §4.3.5, Fig. 4.8).

    ``labels`` is a 3-D ``(X, Y, Z)`` array in RAS voxel order (axial slices along the last axis)
    or a 2-D axial slice ``(X, Y)``; voxels > 0 are lesion (their label values are kept). The
    lesion is scaled by the same factor along every axis (its shape is kept in mm) with
    nearest-neighbour steps ``f_{i+1} = (f_i + 1) / 2`` (see the module docstring), then
    cropped where rounding leaves it a voxel off. The result's diameter is the target rounded
    to whole voxels (within half a voxel of ``diameter_mm``; within one voxel for degenerate
    shapes such as a one-voxel-thin ring, which sampling thins to a few dots) and the lesion
    never vanishes.

    Raises :class:`~brainldm.errors.SettingsError` for an empty mask or a target smaller than a voxel.
    """
    arr = np.asarray(labels)
    flat = arr.ndim == 2
    if flat:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise SettingsError(f"A lesion mask must be 2-D (X, Y) or 3-D (X, Y, Z); got shape {arr.shape}.")
    spacing = tuple(float(s) for s in spacing)
    if flat and len(spacing) == 2:
        spacing = (*spacing, 1.0)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise SettingsError(f"Voxel spacing must be three positive numbers (mm); got {spacing}.")
    target = float(diameter_mm)
    if not math.isfinite(target) or target < min(spacing[:2]):
        raise SettingsError(
            f"Lesion diameter {diameter_mm} mm is smaller than one voxel ({min(spacing[:2]):g} mm); choose a larger one."
        )
    current = _as_label_box(arr)
    limits = _limits(target, spacing)
    goal = max(limits[0] * spacing[0], limits[1] * spacing[1])  # the target rounded to the grid
    voxel = max(spacing[0], spacing[1])
    steps: list[float] = []

    # 1. Gentle steps until the lesion is within one voxel of the goal.
    for _ in range(max_steps):
        d = _diameter(current, spacing)
        if abs(d - goal) <= voxel + 1e-9:
            break
        f = (goal / d + 1.0) / 2.0  # f_{i+1} = (f_i + 1) / 2, f_i = the factor still needed
        nxt = scale_nearest(current, f, flat)
        # A step must neither lose the lesion nor jump past the target by more than a voxel (a
        # sparse lesion can collapse under nearest-neighbour sampling): if it does, take a
        # milder step by the same rule.
        while not _acceptable(nxt, d, goal, voxel, spacing) and abs(f - 1.0) > 1e-3:
            f = (f + 1.0) / 2.0
            nxt = scale_nearest(current, f, flat)
        if not _acceptable(nxt, d, goal, voxel, spacing) or nxt.shape == current.shape:
            break  # no progress possible by scaling; the final crop / growth step takes over
        current = nxt
        steps.append(f)

    # 2. Exact size: crop where a voxel too wide. Should cropping a sparse lesion jump below the
    #    goal, or the lesion be short of it, a last small step of factor (goal + offset) / d is
    #    taken instead (offsets 0, -1/2, +1/2, -1, +1, ... voxels), cropped where still too wide.
    def exact(candidate: np.ndarray) -> bool:
        return abs(_diameter(candidate, spacing) - goal) < 1e-6

    def fitted(candidate: np.ndarray) -> tuple[np.ndarray, bool]:
        ex, ey = inplane_extents(candidate > 0)
        too_wide = ex > limits[0] or ey > limits[1]
        return (_cropped(candidate, limits) if too_wide else candidate), too_wide

    first, cropped = fitted(current)
    candidates: list[tuple[np.ndarray, list[float], bool]] = [(first, [], cropped)]
    if not exact(first):
        d = _diameter(current, spacing)
        for k in range(25):
            g = (goal + (k + 1) // 2 * (1 if k % 2 == 0 else -1) * 0.5 * voxel) / d
            scaled = scale_nearest(current, g, flat) if g > 0 else current
            if not scaled.any():
                continue
            scaled, was_cropped = fitted(scaled)
            candidates.append((scaled, [g], was_cropped))
            if exact(scaled):
                break
    best, extra, cropped = min(candidates, key=lambda c: abs(_diameter(c[0], spacing) - goal))
    diameter = _diameter(best, spacing)
    if flat:
        best = best[:, :, 0]
    return ResizedLesion(labels=best, diameter_mm=diameter, target_mm=target, steps=steps + extra, cropped=cropped)


# --------------------------------------------------------------------------------------------
# placement
# --------------------------------------------------------------------------------------------


def _box_centre(shape: Sequence[int]) -> tuple[int, ...]:
    """The voxel of a lesion box that is put on the placement centre: index ``n // 2`` per axis."""
    return tuple(int(n) // 2 for n in shape)


def fitting_centres(lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Boolean map (shape of ``brain``) of the centres at which every voxel of ``lesion`` lies in ``brain``.

    ``lesion`` is a label box (voxels > 0 count; it is cropped to its bounding box first); its
    voxel ``shape // 2`` is the one placed on the centre. Computed for all centres at once as an
    FFT correlation of the outside-of-brain indicator with the lesion's footprint.
    """
    from scipy import signal

    footprint = _as_label_box(lesion) > 0
    brain = np.asarray(brain, dtype=bool)
    if brain.ndim != footprint.ndim:
        raise SettingsError(f"Lesion ({footprint.ndim}-D) and brain mask ({brain.ndim}-D) differ in dimensions.")
    out = np.zeros(brain.shape, dtype=bool)
    region = _bbox(brain)
    if region is None:
        return out
    sub = brain[region]
    if any(f > s for f, s in zip(footprint.shape, sub.shape)):
        return out
    outside = (~sub).astype(np.float64)
    counts = signal.correlate(outside, footprint.astype(np.float64), mode="valid", method="fft")
    valid = counts < 0.5
    centre = _box_centre(footprint.shape)
    target = tuple(slice(r.start + c, r.start + c + v) for r, c, v in zip(region, centre, valid.shape))
    out[target] = valid
    return out


def _random_centre(labels: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
                   tries: int = 2000) -> tuple[int, ...] | None:
    """A centre drawn uniformly among those where the whole lesion lies in the brain, or None.

    Rejection sampling over the brain's bounding box (every fitting centre lies in it) is exact
    and takes milliseconds; only when it finds nothing in ``tries`` draws (a lesion that barely
    fits, or not at all) is the full map of :func:`fitting_centres` computed.
    """
    region = _bbox(brain)
    if region is None or any(n > r.stop - r.start for n, r in zip(labels.shape, region)):
        return None
    voxels = np.argwhere(labels > 0) - np.array(_box_centre(labels.shape))
    low = np.array([r.start for r in region])
    high = np.array([r.stop for r in region])
    shape = np.array(brain.shape)
    tries = min(tries, max(20, 20_000_000 // len(voxels)))  # bound the work for very large lesions
    for _ in range(tries):
        centre = rng.integers(low, high)
        pos = voxels + centre
        if (pos >= 0).all() and (pos < shape).all() and brain[tuple(pos.T)].all():
            return tuple(int(c) for c in centre)
    ok = fitting_centres(labels, brain)
    if not ok.any():
        return None
    return tuple(int(i) for i in np.unravel_index(rng.choice(np.flatnonzero(ok)), brain.shape))


@dataclass
class PlacedLesion:
    """A lesion put into a volume: ``labels`` has the brain's shape; ``centre`` is the voxel
    the lesion box's centre (index ``shape // 2``) was put on; ``box`` the lesion box's slices."""

    labels: np.ndarray
    centre: tuple[int, ...]
    box: tuple[slice, ...]


def place_lesion(
    lesion: np.ndarray,
    brain: np.ndarray,
    centre: Sequence[int] | None = None,
    rng: np.random.Generator | int | None = None,
) -> PlacedLesion:
    """Put a lesion (a label box, e.g. :attr:`ResizedLesion.labels`) into a brain.

    With ``centre`` (voxel indices in the brain's grid) the lesion box's centre voxel is put
    there and every lesion voxel must lie inside ``brain``; without it a centre is drawn
    uniformly among all those where it does (rejection sampling, falling back to
    :func:`fitting_centres`), from ``rng`` (a numpy Generator or a seed). Raises :class:`~brainldm.errors.SettingsError`, saying what to change,
    when the lesion would leave the image or the brain, or fits nowhere in this brain.
    """
    labels = _as_label_box(lesion)
    brain = np.asarray(brain, dtype=bool)
    if brain.ndim != labels.ndim:
        raise SettingsError(f"Lesion ({labels.ndim}-D) and brain mask ({brain.ndim}-D) differ in dimensions.")
    offset = _box_centre(labels.shape)
    size = " x ".join(str(n) for n in labels.shape)
    if centre is None:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        centre = _random_centre(labels, brain, generator)
        if centre is None:
            raise SettingsError(
                f"The lesion ({size} voxels) does not fit entirely inside this brain mask anywhere; "
                "choose a smaller diameter or a larger brain mask."
            )
    else:
        centre = tuple(round(float(c)) for c in centre)
        if len(centre) != brain.ndim:
            raise SettingsError(f"The centre needs {brain.ndim} voxel coordinates; got {centre}.")
    start = tuple(c - o for c, o in zip(centre, offset))
    stop = tuple(s + n for s, n in zip(start, labels.shape))
    if any(s < 0 for s in start) or any(e > n for e, n in zip(stop, brain.shape)):
        raise SettingsError(
            f"A lesion of {size} voxels centred at voxel {centre} extends beyond the image grid {brain.shape}; "
            "choose a centre further from the edge or a smaller diameter."
        )
    box = tuple(slice(s, e) for s, e in zip(start, stop))
    lesion_voxels = labels > 0
    outside = int(np.count_nonzero(lesion_voxels & ~brain[box]))
    if outside:
        raise SettingsError(
            f"{outside} of {int(lesion_voxels.sum())} lesion voxels centred at voxel {centre} lie outside the brain; "
            "choose a centre deeper inside the brain or a smaller diameter."
        )
    out = np.zeros(brain.shape, dtype=labels.dtype)
    out[box] = labels
    return PlacedLesion(labels=out, centre=centre, box=box)


# --------------------------------------------------------------------------------------------
# conditioning signal (thesis §4.3.1, Fig. 4.3b)
# --------------------------------------------------------------------------------------------


def conditioning_mask(brain: np.ndarray, lesion: np.ndarray | None = None) -> np.ndarray:
    """The two-channel one-hot conditioning mask of the synthesis models, ``float32 (2, *shape)``.

    Every voxel belongs to one class - background, brain or lesion - encoded one-hot over two
    channels (background = both 0): channel 0 is the brain without the lesion, channel 1 the
    lesion (labels > 0; lesion wins where a lesion voxel lies outside ``brain``). Without a
    lesion (a healthy-masked synthesis) channel 1 is all zero. Works for volumes and slices.
    """
    brain = np.asarray(brain, dtype=bool)
    lesion_mask = np.zeros(brain.shape, dtype=bool) if lesion is None else np.asarray(lesion) > 0
    if lesion_mask.shape != brain.shape:
        raise SettingsError(f"Brain mask {brain.shape} and lesion mask {lesion_mask.shape} must share one grid.")
    out = np.zeros((2, *brain.shape), dtype=np.float32)
    out[0] = brain & ~lesion_mask
    out[1] = lesion_mask
    return out


# --------------------------------------------------------------------------------------------
# real lesion shapes
# --------------------------------------------------------------------------------------------


@dataclass
class LesionShape:
    """One real lesion: ``labels`` cropped to its bounding box, with its grid's voxel spacing."""

    name: str
    labels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""

    @property
    def diameter_mm(self) -> float:
        return inplane_diameter_mm(self.labels > 0, self.spacing)

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.labels))


def lesion_shapes_from_labels(
    seg: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    name: str = "lesion",
    source: str = "",
    whole: bool = True,
    components: bool = True,
    min_voxels: int = 1,
) -> list[LesionShape]:
    """The lesions of a label map: the whole tumour (``name/whole``, all labels > 0) and each
    connected lesion (``name/lesion-1`` largest first, 26-connectivity, at least ``min_voxels``).
    A label map holding a single lesion gives it once (as ``whole``)."""
    seg = np.asarray(seg)
    spacing = tuple(float(s) for s in spacing)
    parts = lesion_components(seg, min_voxels=min_voxels)
    if not parts:
        return []
    shapes = []
    if whole:
        shapes.append(LesionShape(f"{name}/whole", _as_label_box(seg), spacing, source))
    if components and not (whole and len(parts) == 1):
        for i, (box, part) in enumerate(parts, start=1):
            shapes.append(LesionShape(f"{name}/lesion-{i}", np.where(part, seg[box], 0).astype(seg.dtype), spacing,
                                      source))
    return shapes


def load_lesion_library(
    paths: Iterable[str | Path], whole: bool = True, components: bool = True, min_voxels: int = 1
) -> list[LesionShape]:
    """Read label maps (NIfTI, any orientation; reoriented to RAS) into lesion shapes (see
    :func:`lesion_shapes_from_labels`). Files without any lesion add nothing."""
    from brainldm.data.io import load_label_volume, split_nifti_name

    shapes: list[LesionShape] = []
    for path in paths:
        volume = load_label_volume(path)
        name = split_nifti_name(Path(path).name) or Path(path).name
        shapes.extend(lesion_shapes_from_labels(volume.data, volume.spacing, name, str(path), whole, components,
                                                min_voxels))
    return shapes


def training_label_files(data_dir: str | Path) -> list[Path]:
    """The segmentation files of the complete subjects in a training folder (BraTS naming)."""
    from brainldm.data.io import find_subjects

    subjects, _ = find_subjects(data_dir, return_skipped=True)
    return [s.seg for s in subjects if s.seg is not None]


def shared_lesion_files(shared: str | Path | None = None) -> list[Path]:
    """All real lesion label maps in the shared development data: ``lesion_masks/*`` and the
    segmentations of the ``brats_like`` subjects. Empty when the folder is absent."""
    from brainldm.data.anatomy import shared_data_dir

    folder = Path(shared) if shared is not None else shared_data_dir()
    if folder is None or not folder.is_dir():
        return []
    masks = folder / "lesion_masks"
    files = sorted(p for p in masks.glob("*.nii*")) if masks.is_dir() else []
    brats = folder / "brats_like"
    if brats.is_dir():
        files += training_label_files(brats)
    return files


@dataclass
class LesionResizeReport:
    """What :func:`resize_lesion_file` did (all diameters in-plane, mm)."""

    source: str
    out: str
    original_diameter_mm: float
    diameter_mm: float
    target_mm: float
    original_voxels: int
    voxels: int
    centre: tuple[int, ...]
    steps: list[float]
    cropped: bool


def resize_lesion_file(
    mask: str | Path, diameter_mm: float, out: str | Path, overwrite: bool = False, largest_only: bool = False
) -> LesionResizeReport:
    """The ``brainldm lesion-resize`` use case: read a NIfTI lesion mask, resize its lesion to
    ``diameter_mm`` (:func:`resize_lesion`) and write it on the same grid, orientation and header
    geometry, centred where the original lesion's bounding box was centred. All lesions of the
    file are resized together (the whole tumour) unless ``largest_only``. Label values are kept.
    Refuses to replace ``out`` unless ``overwrite``.
    """
    from brainldm.data.io import OutputExistsError, load_label_volume, save_label_like

    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"Output file {out} already exists; choose another name or allow overwriting.")
    volume = load_label_volume(mask)
    data = volume.data
    parts = lesion_components(data)
    if not parts:
        raise InputDataError(f"{mask}: the mask holds no lesion (no voxel > 0); nothing to resize.")
    if largest_only:
        box, part = parts[0]
        labels = np.where(part, data[box], 0).astype(data.dtype)
    else:
        box = _bbox(data > 0)
        labels = data[box]
    resized = resize_lesion(labels, diameter_mm, volume.spacing)
    centre = tuple(s.start + (s.stop - s.start) // 2 for s in box)
    placed = place_lesion(resized.labels, np.ones(data.shape, dtype=bool), centre=centre)
    dtype = np.uint8 if int(resized.labels.max()) <= 255 else np.int16
    save_label_like(placed.labels, volume, out, dtype=dtype, overwrite=overwrite)
    return LesionResizeReport(
        source=str(mask), out=str(out), original_diameter_mm=inplane_diameter_mm(labels > 0, volume.spacing),
        diameter_mm=resized.diameter_mm, target_mm=resized.target_mm, original_voxels=int(np.count_nonzero(labels)),
        voxels=resized.voxels, centre=placed.centre, steps=resized.steps, cropped=resized.cropped,
    )


__all__ = [
    "STANDARD_DIAMETERS_MM",
    "LesionResizeReport",
    "LesionShape",
    "PlacedLesion",
    "ResizedLesion",
    "conditioning_mask",
    "fitting_centres",
    "lesion_shapes_from_labels",
    "load_lesion_library",
    "place_lesion",
    "resize_lesion",
    "resize_lesion_file",
    "scale_nearest",
    "shared_lesion_files",
    "training_label_files",
]
