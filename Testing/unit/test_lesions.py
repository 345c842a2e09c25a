"""Lesions at exact sizes (thesis §4.3.5), placement inside the brain, the one-hot conditioning mask,
the ``lesion-resize`` command and the size table - on generated shapes always and on every real
lesion mask of ``../shared/data`` when it is there."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from brainldm.cli import main
from brainldm.data import phantom
from brainldm.data.anatomy import load_anatomy
from brainldm.data.lesion_geometry import (
    inplane_diameter_mm,
    inplane_extents,
    lesion_components,
    lesion_diameters_mm,
    trim_to_diameter,
)
from brainldm.errors import SettingsError
from brainldm.synth.lesion_table import lesion_table
from brainldm.synth.lesions import (
    STANDARD_DIAMETERS_MM,
    conditioning_mask,
    fitting_centres,
    lesion_shapes_from_labels,
    load_lesion_library,
    place_lesion,
    resize_lesion,
    scale_nearest,
    shared_lesion_files,
)

TARGETS = STANDARD_DIAMETERS_MM  # 3, 5, 10, 20 mm


def _check_resized(labels: np.ndarray, target: float, spacing=(1.0, 1.0, 1.0), what: str = "",
                   exact: bool = True) -> bool:
    """The issue's criterion (diameter equals the target within one voxel, lesion kept, labels
    kept); with ``exact`` also the target rounded to the grid exactly. Returns whether exact."""
    r = resize_lesion(labels, target, spacing)
    voxel = max(spacing[0], spacing[1])
    measured = inplane_diameter_mm(r.labels > 0 if r.labels.ndim == 3 else (r.labels > 0)[:, :, None], spacing)
    assert measured == r.diameter_mm, what
    assert r.voxels > 0, f"{what}: the lesion vanished at {target} mm"
    assert abs(r.diameter_mm - target) <= voxel, f"{what}: {r.diameter_mm} mm for a {target} mm target"
    assert set(np.unique(r.labels)) <= set(np.unique(labels)), f"{what}: labels changed"
    limits = [max(1, int(np.floor(target / s + 0.5))) for s in spacing[:2]]
    is_exact = r.diameter_mm == pytest.approx(max(limits[0] * spacing[0], limits[1] * spacing[1]))
    assert is_exact or not exact, f"{what}: {r.diameter_mm} mm, not exactly {target} mm"
    return is_exact


# ----------------------------------------------------------------------------- generated shapes


def _ellipsoid(radii, shape=None) -> np.ndarray:
    shape = shape or tuple(2 * int(np.ceil(r)) + 3 for r in radii)
    grid = np.indices(shape, dtype=float)
    centre = [(s - 1) / 2 for s in shape]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _blob(seed: int, size: int = 48) -> np.ndarray:
    """An irregular lesion: smoothed noise thresholded inside a sphere, largest component, with
    BraTS-like nested labels (2 oedema > 1 core > 3 enhancing)."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((size, size, size)), 3.0)
    inside = _ellipsoid((size / 2.3,) * 3, (size,) * 3)
    mask = (field > 0.0) & inside
    labels, _ = ndi.label(mask)
    mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    out = mask.astype(np.int16) * 2
    out[ndi.binary_erosion(mask, iterations=3)] = 1
    out[ndi.binary_erosion(mask, iterations=6)] = 3
    return out


def _ring(diameter: int = 61) -> np.ndarray:
    """A one-voxel-thin circle in a single slice: the hardest case for nearest-neighbour shrinking."""
    r = (diameter - 1) / 2
    yy, xx = np.mgrid[:diameter, :diameter] - r
    dist = np.hypot(xx, yy)
    return (np.abs(dist - r) < 0.5)[:, :, None]


def _two_lesions() -> np.ndarray:
    """A big and a small lesion 40 voxels apart in the same slices."""
    out = np.zeros((70, 30, 12), dtype=np.uint8)
    out[2:22, 5:25, 1:11] = _ellipsoid((10, 10, 5), (20, 20, 10))
    out[60:63, 14:17, 5:7] = 1
    return out


GENERATED = {
    "sphere-25": _ellipsoid((12, 12, 12)),
    "ellipsoid-flat": _ellipsoid((20, 7, 3)),
    "ellipsoid-tall": _ellipsoid((4, 6, 25)),
    "blob-1": _blob(1),
    "blob-2": _blob(2),
    "blob-3": _blob(3, 64),
    "ring": _ring(),
    "two-lesions": _two_lesions(),
    "single-voxel": np.ones((1, 1, 1), dtype=bool),
    "line": np.ones((9, 1, 1), dtype=bool),
    "diagonal": np.eye(30, dtype=bool)[:, :, None] | np.eye(30, dtype=bool)[:, ::-1, None],
}


@pytest.mark.parametrize("name", sorted(GENERATED))
@pytest.mark.parametrize("target", TARGETS)
def test_generated_lesions_resize_exactly(name, target):
    # The one-voxel-thin ring is decimated by nearest-neighbour sampling to a few dots that no
    # crop can make exactly 10 voxels wide: for it only the "within one voxel" holds.
    _check_resized(GENERATED[name], target, what=name, exact=name != "ring")


@pytest.mark.parametrize("target", [4.0, 7.0, 12.5])
def test_anisotropic_spacing_within_one_voxel(target):
    spacing = (0.5, 1.0, 2.0)
    for name in ("blob-1", "sphere-25", "ring"):
        _check_resized(GENERATED[name], target, spacing, what=name, exact=name != "ring")


def test_single_slice_masks_stay_single_slices():
    section = GENERATED["blob-3"][:, :, 32]
    for target in TARGETS:
        r = resize_lesion(section, target)
        assert r.labels.ndim == 2 and r.voxels > 0
        assert inplane_diameter_mm(r.labels[:, :, None]) == target
    grown = resize_lesion(np.ones((2, 3), bool), 20.0)
    assert grown.labels.ndim == 2 and inplane_diameter_mm(grown.labels[:, :, None]) == 20.0


def test_steps_follow_the_thesis_rule():
    """Each step applies f_{i+1} = (f_i + 1) / 2 of the factor f_i still needed (never below 0.5)."""
    sphere = GENERATED["sphere-25"]  # 25 voxels across
    r = resize_lesion(sphere, 5.0)
    assert r.steps[0] == pytest.approx((5.0 / 25.0 + 1.0) / 2.0)
    assert len(r.steps) >= 3 and all(0.5 < f < 1.0 for f in r.steps)
    grown = resize_lesion(np.ones((1, 1, 1), bool), 20.0)
    assert grown.steps[0] == pytest.approx((20.0 + 1.0) / 2.0)


def test_iterative_steps_keep_what_one_step_loses():
    """Fig. 4.8: a single nearest-neighbour step misses the target on thin or scattered lesions."""
    ring = GENERATED["ring"]
    assert not scale_nearest(ring.astype(np.uint8), 5.0 / 61.0).any()  # one step: the ring vanishes
    assert resize_lesion(ring, 5.0).diameter_mm == 5.0
    two = GENERATED["two-lesions"]
    assert inplane_diameter_mm(scale_nearest(two, 10.0 / 61.0) > 0) < 5.0  # one step loses the small lesion
    assert resize_lesion(two, 10.0).diameter_mm == 10.0


def test_shrunk_lesions_keep_their_volume_in_proportion():
    """No collapse: the voxel count follows the isotropic scale (factor^3) within a factor of 2."""
    for name in ("sphere-25", "blob-1", "blob-2", "blob-3"):
        lesion = GENERATED[name] > 0
        for target in (10.0, 20.0):
            expected = lesion.sum() * (target / inplane_diameter_mm(lesion)) ** 3
            assert 0.5 < resize_lesion(lesion, target).voxels / expected < 2.0, (name, target)


def test_resize_rejects_empty_masks_and_sub_voxel_targets():
    with pytest.raises(SettingsError, match="empty"):
        resize_lesion(np.zeros((5, 5, 5), bool), 10.0)
    with pytest.raises(SettingsError, match="smaller than one voxel"):
        resize_lesion(GENERATED["sphere-25"], 0.4)
    with pytest.raises(SettingsError):
        resize_lesion(np.ones((2, 2, 2, 2), bool), 10.0)


# ----------------------------------------------------------------------------- geometry


def test_one_definition_of_the_diameter():
    assert phantom.inplane_diameter_mm is inplane_diameter_mm
    assert phantom.lesion_diameters_mm is lesion_diameters_mm
    seg = _two_lesions()
    assert inplane_diameter_mm(seg > 0) == 61.0  # both lesions in one slice
    assert lesion_diameters_mm(seg) == [20.0, 3.0]
    assert [int(m.sum()) for _, m in lesion_components(seg)] == sorted(
        [int(m.sum()) for _, m in lesion_components(seg)], reverse=True)


def test_trim_to_diameter_per_axis_limits():
    box = np.ones((9, 7, 3), bool)
    trimmed = trim_to_diameter(box, (5, 6))
    assert inplane_extents(trimmed) == (5, 6)
    assert inplane_extents(trim_to_diameter(box, 4)) == (4, 4)
    with pytest.raises(SettingsError):
        trim_to_diameter(box, 0)


def test_lesion_shapes_from_labels():
    shapes = lesion_shapes_from_labels(_two_lesions(), name="two")
    assert [s.name for s in shapes] == ["two/whole", "two/lesion-1", "two/lesion-2"]
    assert [s.diameter_mm for s in shapes] == [61.0, 20.0, 3.0]
    single = lesion_shapes_from_labels(GENERATED["sphere-25"], name="one")
    assert [s.name for s in single] == ["one/whole"]
    assert lesion_shapes_from_labels(np.zeros((4, 4, 4)), name="none") == []


# ----------------------------------------------------------------------------- placement


def _brute_force_centres(lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    out = np.zeros(brain.shape, bool)
    offset = [n // 2 for n in lesion.shape]
    voxels = np.argwhere(lesion > 0)
    for c in itertools.product(*(range(n) for n in brain.shape)):
        pos = voxels - offset + np.array(c)
        if (pos >= 0).all() and (pos < brain.shape).all() and brain[tuple(pos.T)].all():
            out[c] = True
    return out


def test_fitting_centres_match_brute_force():
    rng = np.random.default_rng(4)
    brain = ndi.binary_opening(_ellipsoid((7, 8, 6), (18, 20, 16)) & (rng.random((18, 20, 16)) > 0.05))
    for lesion in (np.array([[[1, 0], [1, 1]], [[0, 0], [0, 1]]]), np.ones((3, 4, 2)), _ellipsoid((1.5, 2, 1))):
        assert np.array_equal(fitting_centres(lesion, brain), _brute_force_centres(lesion, brain))


@pytest.fixture(scope="module")
def mni_brain():
    return load_anatomy("mni152").brain > 0.5


def test_random_placement_stays_inside_the_brain(mni_brain):
    for seed, (name, target) in enumerate((("blob-1", 20.0), ("ring", 5.0), ("two-lesions", 10.0))):
        lesion = resize_lesion(GENERATED[name], target).labels
        placed = place_lesion(lesion, mni_brain, rng=seed)
        inside = placed.labels > 0
        assert inside.sum() == np.count_nonzero(lesion)
        assert not (inside & ~mni_brain).any()
        assert inplane_diameter_mm(inside) == target
        again = place_lesion(lesion, mni_brain, rng=seed)
        assert again.centre == placed.centre  # reproducible from the seed


def test_placement_at_a_centre_and_clear_errors(mni_brain):
    lesion = resize_lesion(GENERATED["sphere-25"], 20.0).labels
    placed = place_lesion(lesion, mni_brain, centre=(95, 121, 93))  # deep white matter
    assert placed.centre == (95, 121, 93)
    assert placed.labels[95, 121, 93] > 0
    edge = np.argwhere(mni_brain)[0]  # the first brain voxel: at the surface
    with pytest.raises(SettingsError, match="outside the brain"):
        place_lesion(lesion, mni_brain, centre=tuple(edge))
    with pytest.raises(SettingsError, match="beyond the image grid"):
        place_lesion(lesion, mni_brain, centre=(2, 120, 80))
    huge = resize_lesion(GENERATED["sphere-25"], 120.0).labels  # fits the brain's bounding box, not the brain
    with pytest.raises(SettingsError, match="does not fit"):
        place_lesion(huge, mni_brain, rng=0)
    with pytest.raises(SettingsError, match="does not fit"):  # longer than the brain
        place_lesion(np.ones((200, 1, 1), bool), mni_brain, rng=0)


# ----------------------------------------------------------------------------- conditioning


def test_conditioning_mask_is_two_channel_one_hot():
    brain = _ellipsoid((10, 12, 8), (24, 28, 20))
    lesion = np.zeros(brain.shape, np.int16)
    lesion[10:15, 12:16, 8:11] = 2
    cond = conditioning_mask(brain, lesion)
    assert cond.shape == (2, *brain.shape) and cond.dtype == np.float32
    assert set(np.unique(cond)) == {0.0, 1.0}
    assert cond.sum(axis=0).max() == 1.0  # one-hot: at most one channel per voxel
    assert np.array_equal(cond[1] > 0, lesion > 0)
    assert np.array_equal(cond[0] > 0, brain & (lesion == 0))
    assert np.array_equal(cond.sum(axis=0) > 0, brain | (lesion > 0))
    healthy = conditioning_mask(brain)
    assert not healthy[1].any() and np.array_equal(healthy[0] > 0, brain)
    assert conditioning_mask(brain[:, :, 5], lesion[:, :, 9]).shape == (2, 24, 28)
    with pytest.raises(SettingsError):
        conditioning_mask(brain, lesion[:-1])


# ----------------------------------------------------------------------------- command line and table


def _write_lps_mask(path, labels: np.ndarray) -> nib.Nifti1Image:
    """Store a RAS-ordered label map as an LPS file (axes 0 and 1 flipped), as some BraTS files are."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [labels.shape[0] - 1, labels.shape[1] - 1, 0]
    image = nib.Nifti1Image(labels[::-1, ::-1].astype(np.int16), affine)
    nib.save(image, str(path))
    return image


def _canonical(path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def test_lesion_resize_command(tmp_path, capsys):
    seg = np.zeros((80, 90, 60), np.int16)
    seg[10:58, 20:68, 6:54] = _blob(1)
    seg[70:72, 80:82, 30] = 1  # a speck far away
    source = _write_lps_mask(tmp_path / "mask.nii.gz", seg)
    out = tmp_path / "resized.nii.gz"

    assert main(["lesion-resize", str(tmp_path / "mask.nii.gz"), "--diameter", "10", "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    written = nib.load(str(out))
    assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    result = _canonical(out)
    assert inplane_diameter_mm(result > 0) == 10.0
    assert set(np.unique(result)) <= set(np.unique(seg))

    before = out.read_bytes()
    assert main(["lesion-resize", str(tmp_path / "mask.nii.gz"), "--diameter", "5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["lesion-resize", str(tmp_path / "mask.nii.gz"), "--diameter", "5", "--out", str(out),
                 "--overwrite", "--largest"]) == 0
    result = _canonical(out)
    assert inplane_diameter_mm(result > 0) == 5.0 and len(lesion_components(result)) == 1

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    assert main(["lesion-resize", str(tmp_path / "empty.nii.gz"), "--diameter", "5", "--out",
                 str(tmp_path / "x.nii.gz")]) == 2
    assert "no lesion" in capsys.readouterr().err


def test_lesion_table_on_generated_files(tmp_path):
    seg = np.zeros((70, 60, 40), np.uint8)
    seg[2:50, 2:50, 2:38] = _blob(2)[:, :, 6:42]
    path = tmp_path / "gen-seg.nii.gz"
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(path))
    lines, summary = lesion_table([path], (5.0, 20.0))
    assert summary["resizes"] == 2 * summary["shapes"] and summary["exact"] == summary["resizes"]
    assert len(lines) == 2 + summary["shapes"] and lines[2].startswith("| gen-seg/whole |")


# ----------------------------------------------------------------------------- all real lesion masks


@pytest.fixture(scope="module")
def real_lesions(request):
    shared = request.getfixturevalue("shared_data")
    files = shared_lesion_files(shared)
    if not files:
        pytest.skip(f"no lesion masks in {shared}/lesion_masks or {shared}/brats_like")
    return load_lesion_library(files)


@pytest.mark.shared_data
def test_every_real_lesion_resizes_exactly(real_lesions):
    """Over all lesion masks available (shared lesion_masks and brats_like labels; each connected
    lesion and the whole tumour), every target is met within one voxel and no lesion vanishes."""
    exact = [_check_resized(shape.labels, target, shape.spacing, what=shape.name, exact=False)
             for shape, target in itertools.product(real_lesions, TARGETS)]
    # measured on the shared data of 2026-11: all 136 resizes exact (docs/synthesis.md)
    assert sum(exact) >= 0.95 * len(exact)


@pytest.mark.shared_data
def test_real_lesions_keep_their_volume_in_proportion(real_lesions):
    for shape in real_lesions:
        if shape.voxels < 1000 or shape.name.endswith("/whole") and len(lesion_components(shape.labels)) > 1:
            continue  # specks have no shape to keep; a scattered tumour's diameter spans its gaps
        for target in (10.0, 20.0):
            expected = shape.voxels * (target / shape.diameter_mm) ** 3
            assert 0.4 < resize_lesion(shape.labels, target, shape.spacing).voxels / expected < 2.5, (shape.name, target)


@pytest.mark.shared_data
def test_real_lesions_placed_inside_the_brain(real_lesions, mni_brain):
    rng = np.random.default_rng(0)
    for shape in real_lesions:
        if not shape.name.endswith("/whole"):
            continue
        lesion = resize_lesion(shape.labels, 20.0, shape.spacing).labels
        placed = place_lesion(lesion, mni_brain, rng=rng)
        assert not ((placed.labels > 0) & ~mni_brain).any(), shape.name
        assert inplane_diameter_mm(placed.labels > 0) == 20.0


def test_random_placement_finds_a_single_fitting_position():
    """A lesion that fits at one centre only (found by the exact map when sampling gives up)."""
    brain = np.zeros((64, 64, 16), bool)
    brain[2:62, 30, 3] = True  # a long thin strand widens the brain's bounding box
    brain[2, 2:62, 3] = True
    brain[40:50, 40:50, 3:13] = True  # the only room for a 10^3 lesion
    lesion = np.ones((10, 10, 10), np.uint8)
    for seed in range(3):
        assert place_lesion(lesion, brain, rng=seed).centre == (45, 45, 8)
