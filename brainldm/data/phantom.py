"""Realistic four-sequence brain phantoms with controllable tumours.

The phantom is BrainLDM's built-in data: the default demo subject, the test fixture
and a controlled benchmark (lesions of exact in-plane diameter, as in thesis §4.3.5).

A subject is built from real anatomy (:mod:`brainldm.data.anatomy`, the MNI152 2009
template shipped with nilearn by default) in six steps:

1. **Deformation** - a small random affine (rotation, scale) plus a smooth random
   displacement field (a few mm) moves the grey/white matter and brain maps
   (trilinear :func:`scipy.ndimage.map_coordinates` on float32, fields generated
   on a coarse control grid and upsampled separably).
2. **Mass effect** - around each tumour the anatomy inside the brain is pushed
   radially outwards (displacement falling off with distance; the brain outline,
   the "skull", stays put so sulci are effaced instead).
3. **Tissue contrast** - partial-volume mixing of per-tissue intensities
   (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF dark, GM > WM), a faint
   tissue texture, and on T1c enhancing cortical vessels and choroid plexus.
4. **Tumours** - irregular nested shapes (oedema 2 > enhancing rim 3 > necrotic
   core 1, BraTS 2023 labels) from noise-perturbed radial level sets, sized by
   a search on the level so the lesion's in-plane diameter (max extent along the
   two axial axes, thesis §4.3.5) is exactly the target, then cropped if needed.
5. **Scanner effects** - smooth multiplicative bias field per sequence, Rician
   noise (sigma given in units of the [-1, 1] brain-normalised intensity range).
6. **Skull stripping** - background exactly 0; intensities rounded to integers
   (files are written as int16 like BraTS), so what is written reloads bit-exact.

Everything random comes from :class:`numpy.random.Generator` streams spawned from
:attr:`PhantomSpec.seed` (one each for anatomy, tumours, appearance and noise): the same
spec gives identical arrays, and the same seed without tumours gives the healthy
counterpart of a subject with tumours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from brainldm.data.anatomy import ANATOMIES, AnatomyMaps, load_anatomy
from brainldm.data.lesion_geometry import (
    inplane_diameter_mm,
    lesion_diameters_mm,
    trim_to_diameter,
)
from brainldm.data.sequences import SEQUENCE_TITLES, SEQUENCES
from brainldm.data.subject import Subject
from brainldm.errors import InputDataError, SettingsError

#: BraTS 2023 tumour labels written in ``-seg`` files.
LABEL_NCR = 1  # necrotic core
LABEL_OEDEMA = 2  # peritumoural oedema (SNFH)
LABEL_ET = 3  # enhancing tumour
LABEL_NAMES: dict[int, str] = {LABEL_NCR: "necrotic core", LABEL_OEDEMA: "oedema", LABEL_ET: "enhancing tumour"}

#: Allowed in-plane lesion diameters (mm).
MIN_DIAMETER_MM = 5.0
MAX_DIAMETER_MM = 50.0

_TISSUES = ("csf", "gm", "wm")

#: Reference tissue intensities per sequence (scanner-like units, before per-subject jitter).
_TISSUE_INTENSITY: dict[str, dict[str, float]] = {
    "t1n": {"csf": 330.0, "gm": 760.0, "wm": 1050.0},
    "t1c": {"csf": 420.0, "gm": 830.0, "wm": 1100.0},
    "t2w": {"csf": 2300.0, "gm": 800.0, "wm": 560.0},
    "t2f": {"csf": 170.0, "gm": 1000.0, "wm": 740.0},
}

#: Tumour-compartment intensities as multiples of the sequence's white-matter intensity.
_TUMOUR_FACTOR: dict[str, dict[str, float]] = {
    #        oedema        enhancing rim   necrotic core
    "t1n": {"oedema": 0.78, "et": 0.80, "ncr": 0.42},
    "t1c": {"oedema": 0.82, "et": 2.05, "ncr": 0.42},
    "t2w": {"oedema": 2.90, "et": 1.90, "ncr": 3.50},
    "t2f": {"oedema": 2.10, "et": 1.60, "ncr": 1.25},
}

#: Enhancing vessels / choroid plexus on T1c, as a multiple of white matter.
_VESSEL_FACTOR = 2.2
#: Fraction of the underlying tissue signal still visible inside oedema.
_OEDEMA_TISSUE_KEEP = 0.3


# --------------------------------------------------------------------------------------
# specifications and results
# --------------------------------------------------------------------------------------


@dataclass
class TumourSpec:
    """One tumour.

    Attributes
    ----------
    diameter_mm:
        Target in-plane diameter of the whole lesion (all labels > 0), 5-50 mm.
    centre:
        Voxel index ``(x, y, z)`` in the 240x240x155 grid, or ``None`` for a random
        position fully inside the brain (cerebrum, away from the ventricles).
    core_fraction:
        Radius of the tumour core (enhancing + necrotic) relative to the whole lesion
        (0.2-1.0); ``None`` draws one (0.5-0.75, larger for small lesions).
    necrosis_fraction:
        Radius of the necrotic core relative to the tumour core (0-0.9); ``None`` draws one.
    mass_effect:
        Strength of the displacement of surrounding tissue, 0 (none) to 1 (strong).
    """

    diameter_mm: float = 20.0
    centre: tuple[int, int, int] | None = None
    core_fraction: float | None = None
    necrosis_fraction: float | None = None
    mass_effect: float = 0.6

    def __post_init__(self) -> None:
        try:
            self.diameter_mm = float(self.diameter_mm)
            if self.centre is not None:
                self.centre = tuple(int(round(float(c))) for c in self.centre)  # type: ignore[assignment]
        except (TypeError, ValueError) as exc:
            raise SettingsError(
                f"Tumour diameter must be a number of mm and the centre three voxel indices; "
                f"got diameter {self.diameter_mm!r}, centre {self.centre!r}."
            ) from exc
        if not MIN_DIAMETER_MM <= self.diameter_mm <= MAX_DIAMETER_MM:
            raise SettingsError(
                f"Tumour diameter {self.diameter_mm} mm is out of range; choose "
                f"{MIN_DIAMETER_MM:g}-{MAX_DIAMETER_MM:g} mm."
            )
        if self.centre is not None:
            if len(self.centre) != 3:
                raise SettingsError(f"Tumour centre must be three voxel indices (x, y, z); got {self.centre!r}.")
        if self.core_fraction is not None and not 0.2 <= self.core_fraction <= 1.0:
            raise SettingsError(f"core_fraction must be within 0.2-1.0; got {self.core_fraction}.")
        if self.necrosis_fraction is not None and not 0.0 <= self.necrosis_fraction <= 0.9:
            raise SettingsError(f"necrosis_fraction must be within 0-0.9; got {self.necrosis_fraction}.")
        if not 0.0 <= self.mass_effect <= 1.0:
            raise SettingsError(f"mass_effect must be within 0-1; got {self.mass_effect}.")


@dataclass
class PhantomSpec:
    """Everything that defines one phantom subject (same spec -> identical arrays).

    Tumours are ``tumours`` when given (an empty list makes a healthy subject);
    otherwise ``n_tumours`` tumours of ``lesion_diameter_mm`` (at ``centre`` when
    ``n_tumours == 1`` and a centre is given, else at random positions).

    The same seed without tumours gives the subject's **healthy counterpart**: anatomy,
    tissue appearance, bias field and noise come from their own random streams, so the two
    are identical away from the tumours and their mass effect (T1c may differ along a vessel
    that runs past a tumour) - a ground truth for counterfactual generation.

    Attributes
    ----------
    seed:
        Non-negative integer seed of the random streams.
    subject_id:
        Name used for files; default ``Phantom-<seed>``.
    anatomy:
        ``"mni152"`` (built in) or ``"sri24"`` (needs the shared development data).
    noise_sigma:
        Rician noise level in units of the sequence's brain intensity range mapped to
        [-1, 1] (as the normaliser does), e.g. 0.015.
    deformation_mm:
        Standard deviation of the smooth random displacement field (mm).
    bias_strength:
        Standard deviation of the log bias field (0.1 ~ +-10 % shading).
    intensity_jitter:
        Relative standard deviation of per-subject tissue intensities.
    vessels:
        Draw enhancing vessels and choroid plexus on T1c.
    """

    seed: int = 0
    subject_id: str | None = None
    tumours: list[TumourSpec] | None = None
    n_tumours: int = 1
    lesion_diameter_mm: float = 20.0
    centre: tuple[int, int, int] | None = None
    anatomy: str = "mni152"
    noise_sigma: float = 0.015
    deformation_mm: float = 2.5
    bias_strength: float = 0.08
    intensity_jitter: float = 0.04
    vessels: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SettingsError(f"Phantom seed must be a non-negative integer; got {self.seed!r}.")
        if self.tumours is not None:  # plain numbers are diameters
            self.tumours = [t if isinstance(t, TumourSpec) else TumourSpec(t) for t in self.tumours]
        if self.anatomy not in ANATOMIES:
            raise SettingsError(f"Unknown phantom anatomy {self.anatomy!r}; choose one of {', '.join(ANATOMIES)}.")
        if self.n_tumours < 0 or self.n_tumours > 5:
            raise SettingsError(f"n_tumours must be within 0-5; got {self.n_tumours}.")
        if not 0.0 <= self.noise_sigma <= 0.2:
            raise SettingsError(f"noise_sigma must be within 0-0.2; got {self.noise_sigma}.")
        if not 0.0 <= self.deformation_mm <= 10.0:
            raise SettingsError(f"deformation_mm must be within 0-10; got {self.deformation_mm}.")
        if not 0.0 <= self.bias_strength <= 0.5:
            raise SettingsError(f"bias_strength must be within 0-0.5; got {self.bias_strength}.")
        if not 0.0 <= self.intensity_jitter <= 0.2:
            raise SettingsError(f"intensity_jitter must be within 0-0.2; got {self.intensity_jitter}.")
        if self.tumours is not None and len(self.tumours) > 5:
            raise SettingsError(f"At most 5 tumours per phantom; got {len(self.tumours)}.")
        if self.tumours is None and self.n_tumours > 0:
            TumourSpec(self.lesion_diameter_mm, self.centre)  # validates diameter and centre
        if self.centre is not None and (self.tumours is not None or self.n_tumours != 1):
            raise SettingsError(
                "A tumour centre applies to a single tumour (n_tumours=1); give each tumour its own "
                "centre through tumours=[TumourSpec(...), ...]."
            )

    def resolved_tumours(self) -> list[TumourSpec]:
        """The tumours this spec asks for."""
        if self.tumours is not None:
            return list(self.tumours)
        centre = self.centre if self.n_tumours == 1 else None
        return [TumourSpec(self.lesion_diameter_mm, centre) for _ in range(self.n_tumours)]

    @property
    def resolved_id(self) -> str:
        return self.subject_id or f"Phantom-{self.seed:05d}"


@dataclass
class PlacedTumour:
    """A tumour as generated: where it is and how big it measures."""

    centre: tuple[int, int, int]
    target_diameter_mm: float
    diameter_mm: float  # measured in-plane diameter of the lesion (all labels > 0)
    box: tuple[slice, slice, slice]  # bounding box of the lesion in the grid
    mask: np.ndarray  # bool lesion mask inside ``box``
    voxels: dict[str, int]  # voxel count per compartment ("ncr", "oedema", "et")

    @property
    def axial_slice(self) -> int:
        """Axial slice (z index) with the largest lesion area."""
        return int(self.box[2].start + np.argmax(self.mask.sum(axis=(0, 1))))


@dataclass
class PhantomResult:
    """A generated phantom with what it was made of (for tests and benchmarks)."""

    subject: Subject
    spec: PhantomSpec
    tumours: list[PlacedTumour]
    tissue: dict[str, np.ndarray]  # "csf", "gm", "wm" probability maps after deformation and mass effect
    brain_mask: np.ndarray  # bool (X, Y, Z)


# --------------------------------------------------------------------------------------
# geometry helpers (lesion size: brainldm.data.lesion_geometry)
# --------------------------------------------------------------------------------------


def _rbf_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """(n_out, n_ctrl) Gaussian-RBF interpolation weights, rows normalised to unit L2 norm.

    With independent standard-normal control values, every output sample of the
    separable product then has unit variance.
    """
    n_ctrl = max(int(n_ctrl), 2)
    centres = np.linspace(-0.5, n_out - 0.5, n_ctrl)
    width = (centres[1] - centres[0]) * 0.8
    w = np.exp(-0.5 * ((np.arange(n_out)[:, None] - centres[None, :]) / width) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


def smooth_random_field(
    rng: np.random.Generator, shape: Sequence[int], control_spacing: float, count: int = 1
) -> np.ndarray:
    """``count`` smooth random fields of ``shape`` with unit variance per voxel.

    Standard-normal values on a control grid about ``control_spacing`` voxels apart,
    upsampled separably with Gaussian RBF weights (cheap: three small matrix products).
    Returns ``(count, *shape)`` float32.
    """
    mats = [_rbf_matrix(int(n), int(math.ceil(n / control_spacing)) + 2) for n in shape]
    out = np.empty((count, *[int(s) for s in shape]), dtype=np.float32)
    for i in range(count):
        coef = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
        t = np.tensordot(mats[0], coef, axes=(1, 0))  # (X, ny, nz)
        t = np.tensordot(t, mats[1], axes=(1, 1))  # (X, nz, Y)
        t = np.tensordot(t, mats[2], axes=(1, 1))  # (X, Y, Z)
        out[i] = t
    return out


def _rotation(angles: Sequence[float]) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _box_around(centre: Sequence[int], half: int, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    slices = (slice(max(int(c) - half, 0), min(int(c) + half + 1, int(n))) for c, n in zip(centre, shape))
    return tuple(slices)  # type: ignore[return-value]


def _grid_coords(box: tuple[slice, slice, slice]) -> list[np.ndarray]:
    """Broadcastable index arrays of ``box`` (float32)."""
    axes = [np.arange(s.start, s.stop, dtype=np.float32) for s in box]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


# --------------------------------------------------------------------------------------
# generation steps
# --------------------------------------------------------------------------------------


@dataclass
class _Work:
    """State of one phantom while it is built: maps inside the anatomy's working box."""

    box: tuple[slice, slice, slice]
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # soft brain map after deformation
    sharpen: float = 1.0  # partial-volume sharpening exponent of the anatomy

    @property
    def offset(self) -> np.ndarray:
        return np.array([s.start for s in self.box])


def _deform_anatomy(anat: AnatomyMaps, rng: np.random.Generator, spec: PhantomSpec) -> _Work:
    """Small random affine + smooth displacement field applied to the anatomy (step 1)."""
    box = anat.box
    shape = tuple(s.stop - s.start for s in box)
    centre = np.array([(s.start + s.stop - 1) / 2.0 for s in box])
    angles = rng.normal(0.0, math.radians(2.0), size=3)
    scale = rng.uniform(0.93, 1.03) * (1.0 + rng.normal(0.0, 0.015, size=3))
    # output -> source: x_src = c + R^T diag(1/s) (x - c) + u(x)
    matrix = _rotation(angles).T / scale[None, :]
    disp = smooth_random_field(rng, shape, control_spacing=28.0, count=3) * np.float32(spec.deformation_mm)
    grid = _grid_coords(box)
    rel = [g - np.float32(c) for g, c in zip(grid, centre)]
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):
        coords[i] = (
            np.float32(centre[i])
            + np.float32(matrix[i, 0]) * rel[0]
            + np.float32(matrix[i, 1]) * rel[1]
            + np.float32(matrix[i, 2]) * rel[2]
            + disp[i]
        )
    del disp
    brain = ndi.map_coordinates(anat.brain, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    # Tissue maps only where the deformed brain is (about 40 % of the box).
    inside = np.flatnonzero(brain > 0)
    flat_coords = coords.reshape(3, -1)[:, inside]
    del coords
    maps = []
    for src in (anat.gm, anat.wm):
        out = np.zeros(shape, dtype=np.float32)
        out.ravel()[inside] = ndi.map_coordinates(src, flat_coords, order=1, mode="constant", cval=0.0, prefilter=False)
        maps.append(out)
    return _Work(box, maps[0], maps[1], brain, anat.sharpen)


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Approximate distance (mm) to the outside of ``mask``, computed on a 2 mm grid, full size."""
    coarse = mask[::2, ::2, ::2]
    dist = ndi.distance_transform_edt(coarse, sampling=2.0).astype(np.float32)
    full = np.repeat(np.repeat(np.repeat(dist, 2, 0), 2, 1), 2, 2)
    return full[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def _choose_centres(
    tumours: list[TumourSpec],
    work: _Work,
    dist: np.ndarray,
    rng: np.random.Generator,
    grid_shape: Sequence[int],
) -> list[np.ndarray]:
    """Tumour centres in grid voxels: given ones are validated, others drawn in the cerebrum."""
    mask = work.brain >= 0.5
    csf = np.clip(work.brain - work.gm - work.wm, 0.0, 1.0)
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    z_floor = zs[0] + 0.35 * (zs[-1] - zs[0])  # above the cerebellum / brainstem
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for t in tumours:
        radius = t.diameter_mm / 2.0
        if t.centre is not None:
            c = np.array(t.centre, dtype=int)
            if np.any(c < 0) or np.any(c >= np.array(grid_shape)):
                raise SettingsError(f"Tumour centre {tuple(c)} is outside the {tuple(grid_shape)} grid.")
            local = c - work.offset
            inside = bool(np.all(local >= 0) and np.all(local < np.array(mask.shape)))
            depth = float(dist[tuple(local)]) if inside else 0.0
            if depth < radius + 1.0:
                raise SettingsError(
                    f"Tumour centre {tuple(c)} is {depth:.0f} mm inside the brain, too close to its edge for a "
                    f"{t.diameter_mm:g} mm lesion; choose a centre at least {radius + 2:.0f} mm deep "
                    "or a smaller diameter."
                )
            centres.append(c + rng.uniform(-0.3, 0.3, 3))
            radii.append(radius)
            continue
        ok = (dist >= radius + 4.0) & (csf < 0.4)
        ok[:, :, : int(math.ceil(z_floor - work.offset[2]))] = False
        candidates = np.argwhere(ok[::2, ::2, ::2]) * 2
        if len(candidates):
            local = candidates + work.offset
            for c_prev, r_prev in zip(centres, radii):
                far = np.linalg.norm(local - c_prev, axis=1) >= 1.5 * (radius + r_prev) + 6.0
                candidates, local = candidates[far], local[far]
        if not len(candidates):
            raise SettingsError(
                f"No room inside the brain for another {t.diameter_mm:g} mm tumour; use fewer or smaller tumours."
            )
        pick = local[rng.integers(len(local))]
        centres.append(pick + rng.uniform(-0.5, 0.5, 3))
        radii.append(radius)
    return centres


def _mass_effect(work: _Work, centre: np.ndarray, radius: float, strength: float) -> None:
    """Push tissue radially away from ``centre`` (step 2), in place on ``work.gm``/``work.wm``.

    Backward map: an output voxel at distance r samples the tissue at distance
    ``r * (1 - k exp(-(r/L)^2))`` with ``L = 1.3 radius`` and ``k = 0.7 strength`` (< 1, so the
    map is monotone and never folds); the push peaks near the lesion border (~0.4 k radius) and
    falls to nothing by ~3 L. The brain outline is left in place (the skull): sulci are effaced.
    """
    if strength <= 0.0:
        return
    k = 0.7 * strength
    length = 1.3 * max(radius, 2.5)
    local_c = centre - work.offset
    half = int(math.ceil(3.0 * length))
    box = _box_around(np.round(local_c).astype(int), half, work.gm.shape)
    grid = _grid_coords(box)
    rel = [g - np.float32(c) for g, c in zip(grid, local_c)]
    r2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
    factor = (1.0 - np.float32(k) * np.exp(-r2 / np.float32(length**2))).astype(np.float32)
    coords = np.stack(np.broadcast_arrays(*[np.float32(c) + r * factor for c, r in zip(local_c, rel)]))
    # The map only pulls towards the centre (factor <= 1): the box holds every source point.
    for name in ("gm", "wm"):
        arr = getattr(work, name)
        src = arr[box].copy()
        shifted = coords - np.array([s.start for s in box], dtype=np.float32)[:, None, None, None]
        arr[box] = ndi.map_coordinates(src, shifted, order=1, mode="nearest", prefilter=False)


def _lesion_levels(
    t: TumourSpec, centre: np.ndarray, work: _Work, rng: np.random.Generator
) -> tuple[tuple[slice, slice, slice], dict[str, np.ndarray], float, float]:
    """Level-set functions of the lesion compartments inside a box around ``centre``.

    Returns the box (local to ``work``), radial "levels" (mm) of the whole lesion,
    the core and the necrosis (a voxel belongs to a compartment when its level is at most
    the compartment's threshold), and the core / necrosis fractions.
    """
    radius = t.diameter_mm / 2.0
    local_c = centre - work.offset
    half = int(math.ceil(2.0 * radius + 4))
    box = _box_around(np.round(local_c).astype(int), half, work.gm.shape)
    shape = tuple(s.stop - s.start for s in box)
    grid = _grid_coords(box)
    dist = np.sqrt(sum((g - np.float32(c)) ** 2 for g, c in zip(grid, local_c))).astype(np.float32)
    small = t.diameter_mm < 12
    core_fraction = (
        t.core_fraction
        if t.core_fraction is not None
        else float(rng.uniform(0.62, 0.8) if small else rng.uniform(0.5, 0.72))
    )
    necrosis_fraction = (
        t.necrosis_fraction
        if t.necrosis_fraction is not None
        else float(rng.uniform(0.0, 0.45) if small else rng.uniform(0.55, 0.8))
    )
    # Each compartment gets its own lobulation, at a scale proportional to its size.
    irregular = 0.25 if radius > 4 else 0.12
    core_radius = radius * core_fraction
    noise = [
        smooth_random_field(rng, shape, control_spacing=max(r * 0.5, 2.5))[0]
        for r in (radius, core_radius, core_radius * max(necrosis_fraction, 0.3))
    ]
    wm = work.wm[box]
    levels = {
        # oedema spreads preferentially along white matter
        "whole": dist / np.clip(1.0 + irregular * noise[0] + 0.35 * (wm - 0.5), 0.5, None),
        "core": dist / np.clip(1.0 + irregular * noise[1], 0.55, None),
        "ncr": dist / np.clip(1.0 + 1.2 * irregular * noise[2], 0.5, None),
    }
    return box, levels, core_fraction, necrosis_fraction


def _lesion_mask(levels: dict[str, np.ndarray], s: float, cf: float, allowed: np.ndarray) -> np.ndarray:
    return ((levels["whole"] <= s) | (levels["core"] <= s * cf)) & allowed


def _size_lesion(
    levels: dict[str, np.ndarray], cf: float, allowed: np.ndarray, target_mm: float, local_c: np.ndarray
) -> tuple[float, np.ndarray]:
    """Find the level ``s`` whose lesion reaches the target in-plane diameter, then crop exactly.

    The lesion grows monotonically with ``s``; bisection finds the smallest ``s`` with a
    diameter of at least the target (1 mm grid), and :func:`trim_to_diameter` crops any
    overshoot, so the result measures the target rounded to whole voxels (within 1 mm in the
    rare case where cropping removes a detached lobe).
    """
    target_vox = int(math.floor(target_mm + 0.5))  # 1 mm grid; halves round up

    def diameter(s: float) -> float:
        return inplane_diameter_mm(_lesion_mask(levels, s, cf, allowed))

    lo, hi = 0.0, target_mm / 2.0
    while diameter(hi) < target_vox:
        hi *= 1.5
        if hi > 4.0 * target_mm:
            raise SettingsError(
                f"A {target_mm:g} mm lesion does not fit inside the brain at this position; "
                "choose a centre deeper inside the brain or a smaller diameter."
            )
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if diameter(mid) >= target_vox:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    mask = _lesion_mask(levels, hi, cf, allowed)
    if inplane_diameter_mm(mask) > target_vox:
        # Overshoot (a level added voxels on both sides, or a lobe): crop; should cropping
        # shrink the lesion further (a detached lobe removed), keep the closest of the
        # cropped lesion and the two lesions around the target.
        candidates = [trim_to_diameter(mask, target_vox, local_c), mask, _lesion_mask(levels, lo, cf, allowed)]
        mask = min(candidates, key=lambda m: abs(inplane_diameter_mm(m) - target_mm))
    return hi, mask


def _soft(level: np.ndarray, threshold: float) -> np.ndarray:
    """Partial-volume membership: 1 well inside, 0 well outside, 0.5 at the threshold (1 mm ramp)."""
    return np.clip(0.5 + (threshold - level), 0.0, 1.0).astype(np.float32)


@dataclass
class _Lesion:
    box: tuple[slice, slice, slice]  # local to the working box
    whole: np.ndarray  # soft memberships in the lesion box (whole lesion: oedema appearance weight)
    core: np.ndarray
    ncr: np.ndarray
    labels: np.ndarray  # int16 BraTS labels in the lesion box
    texture: np.ndarray  # heterogeneity field in the lesion box
    factors: dict[str, dict[str, float]]  # per sequence compartment factors (jittered)


def _build_lesion(
    t: TumourSpec, centre: np.ndarray, work: _Work, rng: np.random.Generator, taken: np.ndarray
) -> _Lesion:
    target_vox = math.floor(t.diameter_mm + 0.5)
    best = None
    for _attempt in range(4):  # a new shape when cropping could not hit the size exactly (rare)
        box, levels, cf, nf = _lesion_levels(t, centre, work, rng)
        local_c = centre - work.offset - np.array([sl.start for sl in box])
        allowed = (work.brain[box] >= 0.5) & ~taken[box]
        s, hard = _size_lesion(levels, cf, allowed, t.diameter_mm, local_c)
        error = abs(inplane_diameter_mm(hard) - target_vox)
        if best is None or error < best[0]:
            best = (error, box, levels, cf, nf, allowed, s, hard)
        if error == 0:
            break
    _, box, levels, cf, nf, allowed, s, hard = best
    whole = np.maximum(_soft(levels["whole"], s), _soft(levels["core"], s * cf))
    core = _soft(levels["core"], s * cf)
    ncr = np.minimum(_soft(levels["ncr"], s * cf * nf), core) if nf > 0 else np.zeros_like(core)
    # Necrosis stays at least one voxel inside the core: an enhancing rim always surrounds it.
    core_inner = ndi.binary_erosion(core >= 0.5)
    ncr = np.where(core_inner, ncr, np.minimum(ncr, 0.45)).astype(np.float32)
    # Oedema fades in over a few mm from the lesion border (it infiltrates; a sharp edge would be
    # unnaturally conspicuous); outside the measured lesion partial volume stays below one half.
    depth = s - np.minimum(levels["whole"], levels["core"] / np.float32(cf))
    fade_in = np.float32(0.5) + np.float32(0.5) * np.clip(depth / np.float32(max(1.5, 0.3 * s)), 0.0, 1.0)
    whole = np.where(hard, fade_in, np.minimum(whole, 0.45) * allowed).astype(np.float32)
    core = np.minimum(core, whole)
    ncr = np.minimum(ncr, whole)
    labels = np.zeros(hard.shape, dtype=np.int16)
    labels[hard] = LABEL_OEDEMA
    labels[hard & (core >= 0.5)] = LABEL_ET
    labels[hard & (ncr >= 0.5)] = LABEL_NCR
    factors = {
        seq: {k: v * float(np.exp(rng.normal(0.0, 0.07))) for k, v in f.items()} for seq, f in _TUMOUR_FACTOR.items()
    }
    texture = smooth_random_field(rng, hard.shape, control_spacing=3.0)[0]
    return _Lesion(box, whole, core, ncr, labels, texture, factors)


def _vessel_map(csf: np.ndarray, dist: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Enhancing structures for T1c, in [0, 1]: thin vessels along sulcal CSF and choroid plexus.

    Vessels are random walks with momentum that stay in CSF-rich voxels (sulci, fissures),
    rasterised and blurred into tubes about 1.5 mm wide; the choroid plexus is a few small
    blobs in deep ventricular CSF.
    """
    out = np.zeros(mask.shape, dtype=np.float32)
    shape = np.array(mask.shape)

    def splat(points: np.ndarray, weight: float) -> None:
        idx = np.round(points).astype(int)
        keep = np.all((idx >= 0) & (idx < shape), axis=1)
        np.add.at(out, tuple(idx[keep].T), np.float32(weight))

    def first_match(group: np.ndarray, lo_csf: float, lo_dist: float, hi_dist: float) -> np.ndarray | None:
        ok = (csf[tuple(group.T)] > lo_csf) & (dist[tuple(group.T)] > lo_dist) & (dist[tuple(group.T)] < hi_dist)
        return group[int(np.argmax(ok))] if ok.any() else None

    # Each vessel and blob gets its own group of random probe voxels and its own stream, so a
    # local change of the anatomy (a tumour's mass effect) leaves the other vessels in place.
    n_walks = int(rng.integers(24, 36))
    n_blobs = int(rng.integers(3, 6))
    probes = (rng.random((n_walks + n_blobs, 1000, 3)) * shape).astype(int)
    walk_seeds = rng.integers(2**63, size=n_walks)
    blob_offsets = rng.normal(0.0, 1.3, size=(n_blobs, 60, 3))
    for group, walk_seed in zip(probes[:n_walks], walk_seeds):
        start = first_match(group, 0.6, 3.0, 16.0)
        if start is not None:
            walk = np.random.default_rng(int(walk_seed))
            p = start.astype(np.float64)
            d = walk.standard_normal(3)
            d /= np.linalg.norm(d)
            pts = [p.copy()]
            for _ in range(int(walk.integers(30, 90))):
                for _try in range(8):
                    nd = d + 0.4 * walk.standard_normal(3)
                    nd /= np.linalg.norm(nd)
                    q = p + 0.7 * nd
                    qi = np.round(q).astype(int)
                    if np.all(qi >= 0) and np.all(qi < shape) and csf[tuple(qi)] > 0.3:
                        p, d = q, nd
                        pts.append(p.copy())
                        break
                else:
                    break
            splat(np.array(pts), float(walk.uniform(0.6, 1.1)) * 0.7)
    for group, offsets in zip(probes[n_walks:], blob_offsets):  # choroid plexus
        centre = first_match(group, 0.85, 20.0, np.inf)
        if centre is not None:
            splat(centre + offsets, 0.3)
    sigma = 0.65
    filt = ndi.gaussian_filter(out, sigma) * np.float32(2.0 * math.pi * sigma**2)
    np.clip(filt, 0.0, 1.0, out=filt)
    return filt


def _gaussian_noise_field(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """White noise blurred with a Gaussian of ``sigma`` voxels, rescaled to unit variance."""
    noise = ndi.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), sigma)
    delta = np.zeros(int(8 * sigma) + 1, dtype=np.float64)
    delta[len(delta) // 2] = 1.0
    kernel = ndi.gaussian_filter1d(delta, sigma)
    noise /= np.float32(np.sqrt((kernel**2).sum()) ** 3)
    return noise


def _tissue_fractions(work: _Work) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Brain mask, its flat voxel indices and per-voxel CSF/GM/WM fractions (summing to 1) there."""
    mask = work.brain >= 0.5
    idx = np.flatnonzero(mask)
    brain = work.brain.ravel()[idx]
    gm = np.clip(work.gm.ravel()[idx], 0.0, None)
    wm = np.clip(work.wm.ravel()[idx], 0.0, None)
    total = gm + wm
    scale = np.where(total > brain, brain / np.maximum(total, 1e-6), 1.0).astype(np.float32)
    gm *= scale
    wm *= scale
    csf = np.clip(brain - gm - wm, 0.0, None)
    fr = [np.power(a / brain, np.float32(work.sharpen)) for a in (csf, gm, wm)]
    norm = fr[0] + fr[1] + fr[2]
    norm[norm <= 0] = 1.0
    return mask, idx, {name: a / norm for name, a in zip(_TISSUES, fr)}


def _paint(
    work: _Work,
    lesions: list[_Lesion],
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    spec: PhantomSpec,
    dist: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Tissue contrast, tumours, bias and noise (steps 3-6), on the brain voxels of the working box.

    Returns the images of the box ``(4, *box)``, the brain mask, the flat brain-voxel indices
    and the tissue fractions there.
    """
    mask, idx, tissue = _tissue_fractions(work)
    shape = mask.shape
    n = idx.size
    # Faint smooth tissue heterogeneity (kept well below what an autoencoder must reproduce).
    texture = _gaussian_noise_field(rng, shape, 2.0).ravel()[idx]
    vessels = None
    if spec.vessels:
        csf3 = np.zeros(shape, dtype=np.float32)
        csf3.ravel()[idx] = tissue["csf"]
        vessels = _vessel_map(csf3, dist, mask, rng).ravel()[idx]
        del csf3
    bias = smooth_random_field(rng, shape, control_spacing=70.0, count=len(SEQUENCES))
    # Position of each box voxel among the brain voxels (-1 outside), to paint lesion boxes.
    position = np.full(mask.size, -1, dtype=np.int32)
    position[idx] = np.arange(n, dtype=np.int32)
    lesion_index = []
    for les in lesions:
        sub = position.reshape(shape)[les.box].ravel()
        keep = sub >= 0
        lesion_index.append((sub[keep], keep))
    images = np.zeros((len(SEQUENCES), *shape), dtype=np.float32)
    for i, seq in enumerate(SEQUENCES):
        gain = float(rng.uniform(0.85, 1.2))
        value = {
            t: _TISSUE_INTENSITY[seq][t] * gain * float(np.exp(rng.normal(0.0, spec.intensity_jitter)))
            for t in _TISSUES
        }
        img = tissue["csf"] * np.float32(value["csf"])
        img += tissue["gm"] * np.float32(value["gm"])
        img += tissue["wm"] * np.float32(value["wm"])
        img *= 1.0 + np.float32(0.008) * texture
        if seq == "t1c" and vessels is not None:
            img += vessels * (np.float32(_VESSEL_FACTOR * value["wm"]) - img)
        wm_value = value["wm"]
        for les, (where, keep) in zip(lesions, lesion_index):
            region = img[where]
            f = les.factors[seq]
            het = 1.0 + np.float32(0.08) * les.texture.ravel()[keep]
            whole, core, ncr = (a.ravel()[keep] for a in (les.whole, les.core, les.ncr))
            oedema = _OEDEMA_TISSUE_KEEP * region + (1 - _OEDEMA_TISSUE_KEEP) * np.float32(f["oedema"] * wm_value) * het
            region = region + whole * (oedema - region)
            region = region + core * (np.float32(f["et"] * wm_value) * het - region)
            necrosis = np.float32(f["ncr"] * wm_value) * (1.0 + np.float32(0.12) * les.texture.ravel()[keep])
            region = region + ncr * (necrosis - region)
            img[where] = region
        img *= np.exp(np.float32(spec.bias_strength) * bias[i].ravel()[idx])
        if spec.noise_sigma > 0:
            intensities = list(value.values())
            sigma = np.float32(spec.noise_sigma * (max(intensities) - min(intensities)) / 2.0)
            real = img + sigma * noise_rng.standard_normal(n, dtype=np.float32)
            imag = sigma * noise_rng.standard_normal(n, dtype=np.float32)
            img = np.sqrt(real * real + imag * imag)
        # Integers (files are int16); every brain voxel at least 1 so the mask survives.
        np.clip(np.rint(img), 1, 32767, out=img)
        images[i].ravel()[idx] = img
    return images, mask, idx, tissue


# --------------------------------------------------------------------------------------
# public generation API
# --------------------------------------------------------------------------------------


def generate_phantom(spec: PhantomSpec) -> PhantomResult:
    """Build one phantom subject and report what was placed where."""
    anat = load_anatomy(spec.anatomy)
    # Independent streams per step, so the same seed without tumours is the exact healthy
    # counterpart (same anatomy, appearance and noise) of a subject with tumours.
    anatomy_rng, tumour_rng, appearance_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(4)
    )
    tumours = spec.resolved_tumours()
    for t in tumours:  # cheap early check, before any work, for centres clearly off the brain
        if t.centre is not None and not (
            all(0 <= c < n for c, n in zip(t.centre, anat.shape)) and anat.brain[t.centre] > 0
        ):
            raise SettingsError(
                f"Tumour centre {tuple(t.centre)} is outside the brain; choose a voxel inside the brain "
                f"(the brain spans x {anat.box[0].start}-{anat.box[0].stop - 1}, y {anat.box[1].start}-"
                f"{anat.box[1].stop - 1}, z {anat.box[2].start}-{anat.box[2].stop - 1} with margins)."
            )
    work = _deform_anatomy(anat, anatomy_rng, spec)
    dist = _distance_inside(work.brain >= 0.5)
    centres = _choose_centres(tumours, work, dist, tumour_rng, anat.shape)
    for t, c in zip(tumours, centres):
        _mass_effect(work, c, t.diameter_mm / 2.0, t.mass_effect)
    taken = np.zeros(work.gm.shape, dtype=bool)
    lesions: list[_Lesion] = []
    placed: list[PlacedTumour] = []
    for t, c in zip(tumours, centres):
        les = _build_lesion(t, c, work, tumour_rng, taken)
        hard = les.labels > 0
        taken[les.box] |= ndi.binary_dilation(hard, iterations=2)
        lesions.append(les)
        nz = np.argwhere(hard)
        lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
        start = np.array([s.start for s in les.box]) + work.offset
        grid_box = tuple(slice(int(start[a] + lo[a]), int(start[a] + hi[a])) for a in range(3))
        sub = hard[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        placed.append(
            PlacedTumour(
                centre=tuple(int(round(v)) for v in c),  # type: ignore[arg-type]
                target_diameter_mm=float(t.diameter_mm),
                diameter_mm=inplane_diameter_mm(sub),
                box=grid_box,  # type: ignore[arg-type]
                mask=sub,
                voxels={
                    "ncr": int((les.labels == LABEL_NCR).sum()),
                    "oedema": int((les.labels == LABEL_OEDEMA).sum()),
                    "et": int((les.labels == LABEL_ET).sum()),
                },
            )
        )
    images_box, mask_box, brain_idx, tissue_flat = _paint(work, lesions, appearance_rng, noise_rng, spec, dist)

    shape = anat.shape
    images = np.zeros((len(SEQUENCES), *shape), dtype=np.float32)
    images[(slice(None), *work.box)] = images_box
    seg = np.zeros(shape, dtype=np.int16)
    seg_box = seg[work.box]
    for les in lesions:
        region = seg_box[les.box]
        region[les.labels > 0] = les.labels[les.labels > 0]
    brain_mask = np.zeros(shape, dtype=bool)
    brain_mask[work.box] = mask_box
    tissue = {}
    for name, flat in tissue_flat.items():
        box_map = np.zeros(mask_box.shape, dtype=np.float32)
        box_map.ravel()[brain_idx] = flat
        full = np.zeros(shape, dtype=np.float32)
        full[work.box] = box_map
        tissue[name] = full
    subject = Subject(subject_id=spec.resolved_id, images=images, affine=anat.affine.copy(), seg=seg)
    return PhantomResult(subject=subject, spec=spec, tumours=placed, tissue=tissue, brain_mask=brain_mask)


def make_phantom(spec: PhantomSpec | None = None) -> Subject:
    """One phantom subject: four sequences ``(4, 240, 240, 155)`` float32 and an int16 ``seg``."""
    return generate_phantom(spec or PhantomSpec()).subject


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    data = np.clip(np.rint(np.asarray(array)), -32768, 32767).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_phantom_subject(subject: Subject, out_dir: str | Path, png: bool = True) -> Path:
    """Write a subject as a BraTS 2023 folder ``<out_dir>/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

    Images and labels are written as int16 in ``subject.affine`` (phantom intensities are
    integers, so reloading gives the same arrays). With ``png`` an overview
    ``<id>-overview.png`` is written too. Returns the subject folder.
    """
    folder = Path(out_dir) / subject.subject_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputDataError(f"Cannot create the output folder {folder}: {exc}. Choose a writable folder.") from exc
    for i, seq in enumerate(SEQUENCES):
        _write_nifti(subject.images[i], subject.affine, folder / f"{subject.subject_id}-{seq}.nii.gz")
    seg = subject.seg if subject.seg is not None else np.zeros(subject.shape, dtype=np.int16)
    _write_nifti(seg, subject.affine, folder / f"{subject.subject_id}-seg.nii.gz")
    if png:
        phantom_overview_png(subject, folder / f"{subject.subject_id}-overview.png")
    return folder


def phantom_overview_png(subject: Subject, path: str | Path, slice_index: int | None = None) -> Path:
    """Overview picture: the four sequences at the tumour's axial slice, with the seg outlined.

    Top row plain images, bottom row with label contours (yellow oedema, red enhancing,
    blue necrosis). Radiological convention (patient's right on the left, anterior up).
    The axial slice is ``slice_index`` or the one with the largest lesion area (for a
    healthy subject the slice with the largest brain area above the ventricles' level).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    images = subject.images
    seg = subject.seg if subject.seg is not None else np.zeros(subject.shape, dtype=np.int16)
    brain = (images > 0).any(axis=0)
    if slice_index is None:
        area = (seg > 0).sum(axis=(0, 1))
        if area.max() > 0:
            slice_index = int(np.argmax(area))
        else:
            zs = np.flatnonzero(brain.any(axis=(0, 1)))
            slice_index = int(zs[0] + 0.6 * (zs[-1] - zs[0])) if zs.size else subject.shape[2] // 2
    z = int(slice_index)
    diameters = lesion_diameters_mm(seg, subject.spacing)
    if diameters:
        size = ", ".join(f"{d:.0f}" for d in diameters) + " mm"
        title = f"{subject.subject_id}  -  lesion in-plane diameter {size}  -  axial slice {z}"
    else:
        title = f"{subject.subject_id}  -  healthy  -  axial slice {z}"
    # Crop to the brain's in-plane bounding box (whole volume) with a small margin.
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    if xs.size and ys.size:
        x0, x1 = max(xs[0] - 6, 0), min(xs[-1] + 7, subject.shape[0])
        y0, y1 = max(ys[0] - 6, 0), min(ys[-1] + 7, subject.shape[1])
    else:
        x0, x1, y0, y1 = 0, subject.shape[0], 0, subject.shape[1]

    def view(a: np.ndarray) -> np.ndarray:
        # array (x, y) -> display rows = anterior at top, columns = patient's right on the left
        return a[x0:x1, y0:y1].T[::-1, ::-1]

    fig = Figure(figsize=(13, 7.2), facecolor="black")
    axes = fig.subplots(2, len(SEQUENCES))
    seg_z = view(seg[:, :, z])
    lesion_z = seg[:, :, z] > 0
    for i, seq in enumerate(SEQUENCES):
        vol = images[i]
        inside = vol[::2, ::2, ::2][brain[::2, ::2, ::2]]
        # Window: brain's 99.5th percentile with head-room, widened so the lesion is not saturated.
        vmax = 1.1 * float(np.percentile(inside, 99.5)) if inside.size else 1.0
        if lesion_z.any():
            vmax = max(vmax, float(np.percentile(vol[:, :, z][lesion_z], 98)))
        for row in range(2):
            ax = axes[row, i]
            ax.imshow(view(vol[:, :, z]), cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(SEQUENCE_TITLES[seq], color="white", fontsize=11)
            else:
                outlines = (
                    (seg_z > 0, "#ffd400"),  # whole lesion
                    ((seg_z == LABEL_ET) | (seg_z == LABEL_NCR), "#ff3030"),  # tumour core
                    (seg_z == LABEL_NCR, "#30a0ff"),  # necrosis
                )
                for region, colour in outlines:
                    if region.any():
                        ax.contour(region.astype(np.float32), [0.5], colors=[colour], linewidths=0.8)
    fig.suptitle(title, color="white", fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.02, hspace=0.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=90, facecolor="black")
    return path


def _write_one_phantom(spec: PhantomSpec, out: Path, png: bool) -> tuple[Path, dict]:
    """Generate and write one subject; returns its folder and its ``phantoms.json`` entry."""
    result = generate_phantom(spec)
    folder = write_phantom_subject(result.subject, out, png=png)
    entry = {
        "subject_id": spec.resolved_id,
        "seed": spec.seed,
        "anatomy": spec.anatomy,
        "healthy": not spec.tumours,
        "tumours": [
            {
                "centre": list(p.centre),
                "target_diameter_mm": p.target_diameter_mm,
                "diameter_mm": p.diameter_mm,
                "axial_slice": p.axial_slice,
                "voxels": p.voxels,
            }
            for p in result.tumours
        ],
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("tumours",)},
    }
    return folder, entry


def make_phantom_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    diameters: Sequence[float] = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0),
    healthy_fraction: float = 0.2,
    progress: bool | Callable[[int, int], None] = True,
    anatomy: str = "mni152",
    tumours_per_subject: int = 1,
    png: bool = False,
    workers: int = 1,
) -> list[Path]:
    """Write ``n`` phantom subjects (BraTS 2023 folders) plus ``phantoms.json`` describing them.

    Subject ``i`` gets its own seed from ``numpy.random.SeedSequence(seed)`` (recorded in the
    manifest, so any subject can be regenerated alone with :class:`PhantomSpec`); a
    ``healthy_fraction`` of subjects (rounded) has no tumour, the others
    ``tumours_per_subject`` tumours with diameters drawn from ``diameters``.
    ``progress`` is ``True`` for a tqdm bar, ``False`` for none, or a callable ``(done, total)``.
    ``workers`` > 1 generates that many subjects at once in separate processes (same files).
    Returns the subject folders.
    """
    if n < 1:
        raise SettingsError(f"Number of phantom subjects must be at least 1; got {n}.")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise SettingsError(f"healthy_fraction must be within 0-1; got {healthy_fraction}.")
    diameters = [float(d) for d in diameters]
    if not diameters and healthy_fraction < 1.0:
        raise SettingsError("Give at least one lesion diameter (or healthy_fraction=1).")
    for d in diameters:
        TumourSpec(d)  # validates the range
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(np.random.SeedSequence(seed))
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]
    n_healthy = int(round(healthy_fraction * n))
    healthy = set(master.permutation(n)[:n_healthy].tolist())
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="phantoms", unit="subject")
    specs = []
    for i in range(n):
        tumours = (
            [] if i in healthy else [TumourSpec(float(master.choice(diameters))) for _ in range(tumours_per_subject)]
        )
        specs.append(PhantomSpec(seed=seeds[i], subject_id=f"Phantom-{seed:04d}-{i:04d}", tumours=tumours,
                                 anatomy=anatomy))
    manifest: list[dict] = []
    folders: list[Path] = []

    def finished(entry: tuple[Path, dict]) -> None:
        folders.append(entry[0])
        manifest.append(entry[1])
        # rewritten after every subject, so an interrupted run still describes what it wrote
        (out / "phantoms.json").write_text(json.dumps({"seed": seed, "subjects": manifest}, indent=1))
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(len(manifest), n)

    workers = max(1, min(int(workers), n))
    if workers == 1:
        for spec in specs:
            finished(_write_one_phantom(spec, out, png))
    else:
        # subjects are independent; results are taken in order, so the output does not depend on workers
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for entry in pool.map(_write_one_phantom, specs, [out] * n, [png] * n):
                finished(entry)
    if bar is not None:
        bar.close()
    return folders
