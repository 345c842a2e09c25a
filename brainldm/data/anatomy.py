"""Real brain anatomy for phantoms: tissue probability maps on the BraTS 1 mm grid.

Two sources are supported:

``"mni152"`` (default, always available offline)
    The ICBM 2009a non-linear symmetric MNI152 template that ships inside the
    nilearn wheel (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``).
    Grey and white matter come from the template's probability maps, the brain
    mask from the (skull-stripped) template T1, and cerebrospinal fluid is what
    is left: ``csf = brain - gm - wm``. The template is placed in the BraTS
    ``240 x 240 x 155`` grid so that its brain sits where BraTS (SRI24) brains
    sit; world coordinates of the grid stay MNI millimetres.

``"sri24"`` (optional)
    The SRI24 tissue label map in the BraTS grid (``healthy/sri24_tissues.nii.gz``
    of the shared development data, labels 1 CSF, 2 GM, 3 WM, stored 4-D and LAS:
    reoriented by its affine). Hard labels are smoothed slightly into partial-volume
    probabilities.

Maps are computed once per process (``functools.lru_cache``) and returned
read-only.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainldm.errors import InputDataError, SettingsError

#: Shape of the BraTS / SRI24 1 mm grid (canonical RAS+ array order).
GRID_SHAPE: tuple[int, int, int] = (240, 240, 155)

#: Anatomy names accepted by :func:`load_anatomy`.
ANATOMIES: tuple[str, ...] = ("mni152", "sri24")

_MNI_FILE = "mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"

#: Voxel shift that places the MNI152 template array in the BraTS grid: grid index =
#: template index + shift. Chosen so the template brain's bounding box is centred
#: like BraTS/SRI24 brains in x and y (centre ~120, ~114) with the vertex at z ~ 145
#: (the lowest ~9 mm of the medulla fall outside the 155-slice grid, as in BraTS).
_MNI_SHIFT = np.array([22, -3, -9])

#: Margin (voxels) of the working box around the brain, room for deformations.
_BOX_MARGIN = 10


@dataclass(frozen=True)
class AnatomyMaps:
    """Tissue probability maps of one brain on the 240x240x155 1 mm grid (RAS+).

    Attributes
    ----------
    name:
        Which anatomy (``"mni152"`` or ``"sri24"``).
    gm, wm:
        Grey / white matter probabilities, float32 in [0, 1], read-only.
    brain:
        Brain (intracranial, skull-stripped) mask as float32 in {0, 1} (or soft), read-only.
    affine:
        Voxel-to-world affine of the grid (1 mm, RAS+).
    box:
        Slices of the brain's bounding box plus a margin: the region worth computing.
    sharpen:
        Exponent for the partial-volume fractions when images are rendered from the maps
        (> 1 where the maps are blurrier than a single scan, as an average template is).
    """

    name: str
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    box: tuple[slice, slice, slice]
    sharpen: float = 1.0

    @property
    def csf(self) -> np.ndarray:
        """Cerebrospinal fluid probability: what the brain mask holds beyond GM and WM."""
        return np.clip(self.brain - self.gm - self.wm, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]


def mni152_template_dir() -> Path:
    """Folder inside the installed nilearn package that holds the MNI152 2009 maps."""
    try:
        folder = importlib.resources.files("nilearn") / "datasets" / "data"
    except ModuleNotFoundError as exc:  # pragma: no cover - nilearn is a dependency
        raise InputDataError(
            "The MNI152 anatomy needs the 'nilearn' package (it ships the template maps). "
            "Install it with: pip install nilearn"
        ) from exc
    return Path(str(folder))


def shared_data_dir() -> Path | None:
    """The shared development data folder (``$BRAINLDM_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("BRAINLDM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    for folder in candidates:
        if folder.is_dir():
            return folder
    return None


def sri24_tissue_path() -> Path | None:
    """Path of the SRI24 tissue map when the shared development data are present."""
    folder = shared_data_dir()
    if folder is None:
        return None
    path = folder / "healthy" / "sri24_tissues.nii.gz"
    return path if path.is_file() else None


def _brain_box(brain: np.ndarray, margin: int = _BOX_MARGIN) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero((brain > 0).any(axis=other))
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + 1 + margin, brain.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def _resample_to_grid(
    data: np.ndarray, src_affine: np.ndarray, grid_affine: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Resample ``data`` (source voxel grid) onto ``shape`` with ``grid_affine``, trilinear.

    A pure integer translation (the usual case: both are 1 mm RAS grids) is an exact copy;
    anything else goes through :func:`scipy.ndimage.affine_transform` (order 1).
    """
    from scipy import ndimage as ndi

    grid_to_src = np.linalg.inv(src_affine) @ grid_affine
    matrix, offset = grid_to_src[:3, :3], grid_to_src[:3, 3]
    if np.allclose(matrix, np.eye(3)) and np.allclose(offset, np.round(offset)):
        offset_i = np.round(offset).astype(int)
        out = np.zeros(shape, dtype=np.float32)
        dst, src = [], []
        for axis in range(3):
            start = max(0, -offset_i[axis])
            stop = min(shape[axis], data.shape[axis] - offset_i[axis])
            if stop <= start:
                return out
            dst.append(slice(start, stop))
            src.append(slice(start + offset_i[axis], stop + offset_i[axis]))
        out[tuple(dst)] = data[tuple(src)]
        return out
    return ndi.affine_transform(
        data.astype(np.float32), matrix, offset=offset, output_shape=shape, order=1, mode="constant", cval=0.0
    ).astype(np.float32)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def _load_mni152() -> AnatomyMaps:
    import nibabel as nib

    folder = mni152_template_dir()
    images = {}
    for kind in ("t1", "gm", "wm"):
        path = folder / _MNI_FILE.format(kind=kind)
        if not path.is_file():
            raise InputDataError(
                f"The MNI152 template map {path.name} is missing from the installed nilearn package "
                f"({folder}). Reinstall nilearn (pip install --force-reinstall nilearn) or use anatomy='sri24'."
            )
        images[kind] = nib.as_closest_canonical(nib.load(str(path)))
    src_affine = images["t1"].affine
    grid_affine = src_affine.copy()
    grid_affine[:3, 3] = src_affine[:3, 3] - src_affine[:3, :3] @ _MNI_SHIFT
    maps = {
        kind: _resample_to_grid(np.asarray(img.dataobj, dtype=np.float32), src_affine, grid_affine, GRID_SHAPE)
        for kind, img in images.items()
    }
    brain = (maps["t1"] > 0).astype(np.float32)
    gm = np.clip(maps["gm"] / 255.0, 0.0, 1.0) * brain
    wm = np.clip(maps["wm"] / 255.0, 0.0, 1.0) * brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    _readonly(gm, wm, brain)
    return AnatomyMaps(
        "mni152", gm.astype(np.float32), wm.astype(np.float32), brain, grid_affine, _brain_box(brain), sharpen=1.7
    )


def _load_sri24() -> AnatomyMaps:
    import nibabel as nib
    from scipy import ndimage as ndi

    path = sri24_tissue_path()
    if path is None:
        raise InputDataError(
            "anatomy='sri24' needs healthy/sri24_tissues.nii.gz from the shared development data; "
            "set BRAINLDM_SHARED_DATA to that folder, or use the built-in anatomy='mni152'."
        )
    img = nib.as_closest_canonical(nib.funcs.squeeze_image(nib.load(str(path))))
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    if labels.shape != GRID_SHAPE:
        raise InputDataError(f"{path} has shape {labels.shape}; expected the BraTS grid {GRID_SHAPE}.")
    # Hard labels -> partial-volume probabilities (about one voxel of blur).
    probs = [ndi.gaussian_filter((labels == k).astype(np.float32), 0.8) for k in (1, 2, 3)]
    total = probs[0] + probs[1] + probs[2]
    brain = (labels > 0).astype(np.float32)
    scale = np.where(total > 1e-3, brain / np.maximum(total, 1e-3), 0.0).astype(np.float32)
    gm = probs[1] * scale
    wm = probs[2] * scale
    _readonly(gm, wm, brain)
    return AnatomyMaps("sri24", gm, wm, brain, img.affine.copy(), _brain_box(brain))


@functools.lru_cache(maxsize=4)
def load_anatomy(name: str = "mni152") -> AnatomyMaps:
    """Tissue maps of ``name`` (see :data:`ANATOMIES`) on the BraTS grid; cached per process."""
    if name == "mni152":
        return _load_mni152()
    if name == "sri24":
        return _load_sri24()
    raise SettingsError(f"Unknown phantom anatomy {name!r}; choose one of {', '.join(ANATOMIES)}.")
