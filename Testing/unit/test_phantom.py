"""Brain phantom generator: anatomy, contrasts, exact lesion sizes, determinism, files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from brainldm.data.anatomy import GRID_SHAPE, load_anatomy, sri24_tissue_path
from brainldm.data.phantom import (
    LABEL_ET,
    LABEL_NCR,
    LABEL_OEDEMA,
    PhantomSpec,
    TumourSpec,
    _mass_effect,
    _Work,
    generate_phantom,
    inplane_diameter_mm,
    lesion_diameters_mm,
    make_phantom,
    make_phantom_dataset,
    write_phantom_subject,
)
from brainldm.data.sequences import SEQUENCES
from brainldm.errors import SettingsError

#: Deep white matter of the left hemisphere (MNI about (-25, -10, 30) mm).
DEEP_WM_CENTRE = (95, 121, 93)


@pytest.fixture(scope="session")
def anatomy():
    return load_anatomy("mni152")


@pytest.fixture(scope="module")
def tumour20(anatomy):
    return generate_phantom(PhantomSpec(seed=1, lesion_diameter_mm=20))


@pytest.fixture(scope="module")
def multi(anatomy):
    spec = PhantomSpec(seed=7, tumours=[TumourSpec(30), TumourSpec(10, centre=DEEP_WM_CENTRE), TumourSpec(5)])
    return generate_phantom(spec)


# ---------------------------------------------------------------------- diameter definition


def test_inplane_diameter_is_per_axial_slice_max_extent():
    mask = np.zeros((20, 20, 4), dtype=bool)
    mask[2:7, 5:8, 1] = True  # 5 x 3 in slice 1
    mask[9:13, 0:9, 2] = True  # 4 x 9 in slice 2 (x range disjoint from slice 1)
    assert inplane_diameter_mm(mask) == 9.0
    per_slice = np.zeros((20, 20, 4), dtype=bool)
    per_slice[2:7, 5:8, 1] = True
    per_slice[9:13, 5:8, 2] = True
    # the projection onto the axial plane would span 11 voxels in x: not the definition
    assert inplane_diameter_mm(per_slice) == 5.0
    assert inplane_diameter_mm(mask, spacing=(0.5, 2.0, 3.0)) == 18.0
    assert inplane_diameter_mm(np.zeros((4, 4, 4), bool)) == 0.0
    with pytest.raises(SettingsError):
        inplane_diameter_mm(np.zeros((4, 4), bool))


# ---------------------------------------------------------------------- subject format


def test_subject_format(tumour20):
    s = tumour20.subject
    assert s.images.shape == (4, *GRID_SHAPE) and s.images.dtype == np.float32
    assert s.seg.shape == GRID_SHAPE and s.seg.dtype == np.int16
    assert nib.aff2axcodes(s.affine) == ("R", "A", "S")
    assert np.allclose(s.spacing, (1.0, 1.0, 1.0))
    assert s.source is None and s.subject_id == "Phantom-00001"
    brain = tumour20.brain_mask
    assert 1.2e6 < brain.sum() < 2.4e6  # an adult brain, ~1.5 l
    for img in s.images:
        assert np.all(img[~brain] == 0.0)  # skull-stripped background exactly 0
        assert np.all(img[brain] > 0)
        assert np.array_equal(img, np.rint(img))  # integer scanner units
        assert 200 < np.median(img[brain]) < 4000


def test_tissue_contrasts(tumour20):
    imgs = tumour20.subject.images
    tissue = tumour20.tissue
    away = ~ndi.binary_dilation(tumour20.subject.seg > 0, iterations=3)
    means = {}
    for name in ("csf", "gm", "wm"):
        pure = (tissue[name] > 0.9) & away
        assert pure.sum() > 5000, name
        means[name] = imgs[:, pure].mean(axis=1)
    t1n, t1c, t2w, t2f = (SEQUENCES.index(s) for s in ("t1n", "t1c", "t2w", "t2f"))
    for i in (t1n, t1c):
        assert means["wm"][i] > 1.15 * means["gm"][i] > 1.15 * 1.15 * means["csf"][i]
    assert means["csf"][t2w] > 1.5 * means["gm"][t2w]
    assert means["gm"][t2w] > 1.15 * means["wm"][t2w]
    assert means["gm"][t2f] > 1.15 * means["wm"][t2f] > 1.15 * 2.0 * means["csf"][t2f]


def test_noise_level_suits_autoencoders(tumour20):
    """Noise sigma after [-1, 1] normalisation inside the brain is about 0.01-0.02."""
    brain = tumour20.brain_mask
    deep_wm = ndi.binary_erosion(tumour20.tissue["wm"] > 0.98, iterations=2) & (tumour20.subject.seg == 0)
    for img in tumour20.subject.images:
        lo, hi = np.percentile(img[brain], (0.5, 99.5))
        norm = (img - lo) / (hi - lo) * 2 - 1
        diff = (norm[1:] - norm[:-1])[deep_wm[1:] & deep_wm[:-1]]
        sigma = diff.std() / np.sqrt(2)
        assert 0.008 < sigma < 0.025, sigma


# ---------------------------------------------------------------------- tumours


def test_tumour_20mm_seed1(tumour20):
    seg = tumour20.subject.seg
    (t,) = tumour20.tumours
    assert t.diameter_mm == 20.0
    assert abs(inplane_diameter_mm(seg > 0) - 20.0) <= 1.0
    assert set(np.unique(seg)) == {0, LABEL_NCR, LABEL_OEDEMA, LABEL_ET}
    assert tumour20.brain_mask[seg > 0].all()  # fully inside the brain
    # nested compartments: necrosis surrounded by enhancing tumour, all inside the lesion
    core = np.isin(seg, (LABEL_NCR, LABEL_ET))
    assert ndi.binary_fill_holes(core).sum() >= core.sum()
    assert (seg == LABEL_OEDEMA).sum() > (seg == LABEL_ET).sum() > 0


def test_tumour_appearance(tumour20):
    imgs = tumour20.subject.images
    seg = tumour20.subject.seg
    wm = (tumour20.tissue["wm"] > 0.9) & (seg == 0)
    gm = (tumour20.tissue["gm"] > 0.9) & (seg == 0)

    def mean(seq, region):
        return imgs[SEQUENCES.index(seq)][region].mean()

    et, ncr, oed = seg == LABEL_ET, seg == LABEL_NCR, seg == LABEL_OEDEMA
    assert mean("t1c", et) > 1.3 * mean("t1c", wm)  # enhancing rim bright on T1c
    assert mean("t1c", ncr) < mean("t1c", gm)  # necrosis dark on T1c
    assert mean("t1n", ncr) < mean("t1n", gm)  # core dark on T1
    assert mean("t2w", oed) > mean("t2w", gm)  # oedema bright on T2
    assert mean("t2w", ncr) > mean("t2w", oed)
    assert mean("t2f", oed) > mean("t2f", gm)  # oedema bright on FLAIR
    assert mean("t2f", et) > mean("t2f", gm)


def test_several_tumours_exact_diameters(multi):
    seg = multi.subject.seg
    assert [t.target_diameter_mm for t in multi.tumours] == [30.0, 10.0, 5.0]
    total = 0
    for t in multi.tumours:
        assert abs(t.diameter_mm - t.target_diameter_mm) <= 1.0
        assert abs(inplane_diameter_mm(t.mask) - t.target_diameter_mm) <= 1.0
        assert (seg[t.box][t.mask] > 0).all()
        assert multi.brain_mask[t.box][t.mask].all()
        total += int(t.mask.sum())
    assert total == int((seg > 0).sum())
    # the tumour with a given centre is there
    placed = multi.tumours[1]
    assert np.abs(np.array(placed.centre) - DEEP_WM_CENTRE).max() <= 1
    assert seg[DEEP_WM_CENTRE] > 0


def test_mass_effect_pushes_tissue_outwards():
    """Radial push around the centre: tissue moves away from it, nothing moves far away."""
    shape = (64, 64, 64)
    x = np.arange(64, dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    box = (slice(10, 74), slice(0, 64), slice(0, 64))
    work = _Work(box=box, gm=x / 64, wm=x.copy(), brain=np.ones(shape, np.float32))
    centre = np.array([42.0, 32.0, 32.0])  # grid coordinates: local (32, 32, 32)
    _mass_effect(work, centre, radius=6.0, strength=1.0)
    moved = work.wm - x  # value = source x coordinate: < x right of the centre, > x left of it
    assert moved[38, 32, 32] < -1.5 and moved[26, 32, 32] > 1.5  # pushed by a few mm near the border
    assert np.all(moved[45:, :, :] <= 1e-4) and np.all(moved[:20, :, :] >= -1e-4)
    assert np.abs(moved[32 + 25 :, :, :]).max() < 1e-3  # ~3 L away: untouched
    assert np.array_equal(work.brain, np.ones(shape, np.float32))  # the outline stays


# ---------------------------------------------------------------------- determinism, errors


def test_same_seed_same_arrays_and_seeds_differ(tumour20, multi):
    again = make_phantom(PhantomSpec(seed=1, lesion_diameter_mm=20))
    assert np.array_equal(again.images, tumour20.subject.images)
    assert np.array_equal(again.seg, tumour20.subject.seg)
    assert not np.array_equal(tumour20.brain_mask, multi.brain_mask)  # different seed, different brain


def test_same_seed_without_tumour_is_the_healthy_counterpart(tumour20):
    healthy = generate_phantom(PhantomSpec(seed=1, n_tumours=0))
    assert healthy.tumours == [] and not healthy.subject.seg.any()  # healthy: no tumour at all
    (t,) = tumour20.tumours
    half = int(np.ceil(3 * 1.3 * t.target_diameter_mm / 2)) + 2  # reach of the mass effect
    far = np.ones(GRID_SHAPE, dtype=bool)
    far[tuple(slice(max(c - half, 0), c + half + 1) for c in t.centre)] = False
    assert np.array_equal(healthy.brain_mask, tumour20.brain_mask)
    for i, seq in enumerate(SEQUENCES):
        same = healthy.subject.images[i][far] == tumour20.subject.images[i][far]
        if seq == "t1c":  # a vessel that ran past the tumour may take another course
            assert same.mean() > 0.999
        else:
            assert same.all(), seq
    near = ~far & (tumour20.subject.seg == 0) & tumour20.brain_mask
    assert not np.array_equal(healthy.tissue["gm"][near], tumour20.tissue["gm"][near])  # mass effect


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lesion_diameter_mm": 3},
        {"lesion_diameter_mm": 60},
        {"anatomy": "nonsense"},
        {"n_tumours": -1},
        {"noise_sigma": 1.0},
        {"centre": (1, 2)},
        {"centre": (100, 100, 80), "n_tumours": 2},
        {"seed": -1},
        {"tumours": [20, 70]},
        {"lesion_diameter_mm": "big"},
    ],
)
def test_invalid_specs_raise_settings_error(kwargs):
    with pytest.raises(SettingsError):
        PhantomSpec(**kwargs)


def test_centre_outside_brain_is_refused(anatomy):
    with pytest.raises(SettingsError, match="outside the brain"):
        generate_phantom(PhantomSpec(seed=0, centre=(5, 5, 5), lesion_diameter_mm=10))
    with pytest.raises(SettingsError, match="outside the brain"):
        generate_phantom(PhantomSpec(seed=0, centre=(500, 5, 5), lesion_diameter_mm=10))


# ---------------------------------------------------------------------- files


def test_written_files_reload(tumour20, tmp_path):
    s = tumour20.subject
    folder = write_phantom_subject(s, tmp_path, png=True)
    assert folder == tmp_path / s.subject_id
    for i, seq in enumerate(SEQUENCES):
        img = nib.load(str(folder / f"{s.subject_id}-{seq}.nii.gz"))
        assert img.shape == GRID_SHAPE
        assert np.allclose(img.affine, s.affine)
        assert np.array_equal(np.asanyarray(img.dataobj), s.images[i])
    seg = nib.load(str(folder / f"{s.subject_id}-seg.nii.gz"))
    assert seg.get_data_dtype() == np.int16
    assert np.array_equal(np.asanyarray(seg.dataobj), s.seg)
    png = folder / f"{s.subject_id}-overview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_lesion_diameters_from_seg(multi):
    diameters = lesion_diameters_mm(multi.subject.seg)
    assert max(diameters) == 30.0
    assert any(abs(d - 10.0) <= 1 for d in diameters)


def test_dataset_writer_with_healthy_subjects(anatomy, tmp_path):
    calls = []
    folders = make_phantom_dataset(
        tmp_path,
        n=2,
        seed=5,
        diameters=(15,),
        healthy_fraction=0.5,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 2), (2, 2)]
    assert [f.name for f in folders] == ["Phantom-0005-0000", "Phantom-0005-0001"]
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    entries = manifest["subjects"]
    assert sorted(e["healthy"] for e in entries) == [False, True]
    for entry, folder in zip(entries, folders):
        assert entry["subject_id"] == folder.name
        seg = np.asanyarray(nib.load(str(folder / f"{folder.name}-seg.nii.gz")).dataobj)
        if entry["healthy"]:  # healthy subject: no tumour at all
            assert entry["tumours"] == [] and not seg.any()
        else:
            assert inplane_diameter_mm(seg > 0) == 15.0
            assert entry["tumours"][0]["diameter_mm"] == 15.0


def test_dataset_writer_refuses_bad_settings(tmp_path):
    with pytest.raises(SettingsError):
        make_phantom_dataset(tmp_path, n=0)
    with pytest.raises(SettingsError):
        make_phantom_dataset(tmp_path, n=1, diameters=(70,))
    with pytest.raises(SettingsError):
        make_phantom_dataset(tmp_path, n=1, healthy_fraction=1.5)


@pytest.mark.slow
@pytest.mark.shared_data
def test_sri24_anatomy(shared_data):
    if sri24_tissue_path() != shared_data / "healthy" / "sri24_tissues.nii.gz":
        pytest.skip("healthy/sri24_tissues.nii.gz not found in the shared data; set BRAINLDM_SHARED_DATA")
    result = generate_phantom(PhantomSpec(seed=2, anatomy="sri24", lesion_diameter_mm=20))
    assert result.subject.images.shape == (4, *GRID_SHAPE)
    assert result.tumours[0].diameter_mm == 20.0
    t1 = result.subject.images[0]
    assert t1[result.tissue["wm"] > 0.9].mean() > t1[result.tissue["gm"] > 0.9].mean()
