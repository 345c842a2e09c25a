"""Geometry of lesion masks: the in-plane diameter of thesis §4.3, connected lesions, cropping.

One definition of lesion size for the whole package (phantoms, evaluation by lesion size,
lesion resizing in :mod:`brainldm.synth.lesions`):

* :func:`inplane_diameter_mm` - the **in-plane diameter** (thesis §4.3 "Important remark" and
  §4.3.5, Fig. 4.2a): the maximum extent of the lesion along the two in-plane axes within an
  axial slice, maximised over all axial slices. Arrays are in canonical RAS+ voxel order, so
  the axial (transversal) plane is spanned by axes 0 and 1 and slices run along axis 2.
* :func:`lesion_diameters_mm` / :func:`lesion_components` - the connected lesions of a label map.
* :func:`trim_to_diameter` - crop a lesion so that no axial slice extends further than a given
  number of voxels along either in-plane axis ("the lesion mask is cropped appropriately",
  §4.3.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from brainldm.errors import SettingsError

#: 26-connectivity: voxels touching by a face, an edge or a corner belong to one lesion.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def inplane_extents(mask: np.ndarray) -> tuple[int, int]:
    """Largest per-slice extent of ``mask`` along axis 0 and along axis 1, in voxels.

    For every axial slice (last axis) the extent along an in-plane axis is
    ``last - first + 1`` (voxels counted inclusively); each value is the maximum over slices.
    ``(0, 0)`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise SettingsError(f"The in-plane diameter needs a 3-D mask (X, Y, Z); got shape {mask.shape}.")
    out = []
    for other in (1, 0):  # extent along axis 0 (drop axis 1), then along axis 1 (drop axis 0)
        present = mask.any(axis=other)  # (axis length, Z)
        if not present.any():
            return 0, 0
        n = present.shape[0]
        idx = np.arange(n)[:, None]
        first = np.where(present, idx, n).min(axis=0)
        last = np.where(present, idx, -1).max(axis=0)
        out.append(int(np.where(last >= first, last - first + 1, 0).max()))
    return out[0], out[1]


def inplane_diameter_mm(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """In-plane diameter of a lesion mask, thesis §4.3.5: the maximum extent along the two
    in-plane axes within an axial slice.

    For every axial slice (last axis of a RAS array) the lesion's extent along axis 0 and
    axis 1 is measured as ``(last - first + 1) * spacing`` (voxels counted inclusively);
    the diameter is the largest of these over both axes and all slices. 0 for an empty mask.
    """
    ex, ey = inplane_extents(mask)
    return max(float(ex) * float(spacing[0]), float(ey) * float(spacing[1]))


def lesion_components(seg: np.ndarray, min_voxels: int = 1) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The connected lesions (labels > 0, 26-connectivity) of a label map, largest first.

    Each entry is ``(box, mask)``: the bounding box of the lesion in ``seg``'s grid and the
    lesion's boolean mask inside that box (other lesions in the box are not included).
    Lesions smaller than ``min_voxels`` are left out.
    """
    lesion = np.asarray(seg) > 0
    if not lesion.any():
        return []
    crop = ndi.find_objects(lesion.astype(np.uint8))[0]
    labels, _ = ndi.label(lesion[crop], structure=CONNECTIVITY_26)
    out = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        part = labels[sl] == i
        if int(part.sum()) < min_voxels:
            continue
        box = tuple(slice(c.start + s.start, c.start + s.stop) for c, s in zip(crop, sl))
        out.append((box, part))
    out.sort(key=lambda item: -int(item[1].sum()))
    return out


def lesion_diameters_mm(seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> list[float]:
    """In-plane diameter of each connected lesion (labels > 0) of a label map, largest first."""
    return sorted((inplane_diameter_mm(part, spacing) for _, part in lesion_components(seg)), reverse=True)


def trim_to_diameter(
    mask: np.ndarray, max_extent: int | Sequence[int], centre: Sequence[float] | None = None
) -> np.ndarray:
    """Crop a lesion so no axial slice extends more than ``max_extent`` voxels along x or y.

    ``max_extent`` is one number of voxels for both in-plane axes or one per axis (anisotropic
    in-plane spacing). In every axial slice that is too wide, the outermost row/column on the
    side farther from ``centre`` (default: the lesion's centre of mass) is removed until the
    slice fits (thesis §4.3.5: "the lesion mask is cropped appropriately"). Returns a new mask;
    a non-empty slice never becomes empty (limits are at least 1 voxel).
    """
    mask = np.array(mask, dtype=bool, copy=True)
    limits = (int(max_extent), int(max_extent)) if np.isscalar(max_extent) else tuple(int(v) for v in max_extent)
    if min(limits) < 1:
        raise SettingsError(f"A lesion cannot be cropped to less than one voxel; got {max_extent}.")
    if centre is None:
        centre = ndi.center_of_mass(mask) if mask.any() else (0.0, 0.0, 0.0)
    for z in range(mask.shape[2]):
        plane = mask[:, :, z]
        if not plane.any():
            continue
        for axis in (0, 1):
            while True:
                present = np.flatnonzero(plane.any(axis=1 - axis))
                if present.size == 0 or present[-1] - present[0] + 1 <= limits[axis]:
                    break
                lo, hi = present[0], present[-1]
                cut = lo if (centre[axis] - lo) > (hi - centre[axis]) else hi
                if axis == 0:
                    plane[cut, :] = False
                else:
                    plane[:, cut] = False
    return mask


__all__ = [
    "CONNECTIVITY_26",
    "inplane_diameter_mm",
    "inplane_extents",
    "lesion_components",
    "lesion_diameters_mm",
    "trim_to_diameter",
]
