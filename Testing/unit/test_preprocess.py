"""Tests of brainldm.data.preprocess: brain mask, crop/pad, normalisation, and their inverses."""

from __future__ import annotations

import time

import numpy as np
import pytest

from brainldm.data.io import find_subjects, load_subject
from brainldm.data.preprocess import (
    BrainCrop,
    Normaliser,
    PreprocessConfig,
    brain_mask,
    compute_crop,
    preprocess_subject,
)
from brainldm.data.subject import Subject
from brainldm.errors import InputDataError, SettingsError

SHAPE = (40, 44, 36)


def ellipsoid(shape=SHAPE, centre=(18, 22, 17), radius=(12, 14, 10)) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0


def synthetic_images(brain: np.ndarray, seed: int = 0) -> np.ndarray:
    """(4, X, Y, Z) float32, zero outside ``brain``, each sequence with its own intensity scale."""
    rng = np.random.default_rng(seed)
    images = np.stack([rng.uniform(10, 100, brain.shape) * (k + 1) ** 2 for k in range(4)]).astype(np.float32)
    images[:, ~brain] = 0
    return images


def phantom(seed: int = 0) -> Subject:
    brain = ellipsoid()
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[15:20, 20:24, 15:18] = 1
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = (-20, -22, -27)
    return Subject(subject_id="phantom", images=synthetic_images(brain, seed), affine=affine, seg=seg)


# ------------------------------------------------------------------------------------------
# brain mask
# ------------------------------------------------------------------------------------------


def test_brain_mask_fills_holes_and_drops_speckles():
    brain = ellipsoid()
    images = synthetic_images(brain)
    images[:, 16:20, 20:24, 15:19] = 0  # an enclosed cavity where every sequence is 0
    images[:, 1:3, 1:2, 1:2] = 50.0  # a 2-voxel speckle outside the brain
    images[2, 38, 40, 30] = 5.0  # and a single voxel in one sequence
    assert brain_mask(images).tolist() == brain.tolist()
    with_hole = brain_mask(images, fill_holes=False)
    assert not with_hole[17, 21, 16] and np.count_nonzero(brain & ~with_hole) == 4 * 4 * 4
    kept = brain_mask(images, min_component_voxels=0)
    assert kept[1, 1, 1] and kept[38, 40, 30]


def test_brain_mask_is_union_of_sequences():
    brain = ellipsoid()
    images = synthetic_images(brain)
    images[0, :, :, :17] = 0  # t1n only covers the upper half ...
    images[1:, :, :, 17:] = 0  # ... the others only the lower half
    assert brain_mask(images).tolist() == brain.tolist()


def test_brain_mask_of_empty_images_and_bad_shape():
    assert not brain_mask(np.zeros((4, 8, 8, 8), dtype=np.float32)).any()
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        brain_mask(np.zeros((8, 8, 8)))


# ------------------------------------------------------------------------------------------
# crop
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("margin", "multiple"), [(0, 1), (4, 16), (3, 8), (2, 32)])
def test_crop_box_contains_brain_and_is_a_multiple(margin, multiple):
    mask = ellipsoid()
    crop = compute_crop(mask, margin=margin, multiple=multiple)
    assert all(s % multiple == 0 for s in crop.size)
    lo = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0]) for a in range(3)]
    hi = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[-1]) + 1 for a in range(3)]
    for axis in range(3):
        assert crop.start[axis] <= lo[axis] - margin or crop.start[axis] <= 0
        assert crop.stop[axis] >= hi[axis] + margin or crop.stop[axis] >= SHAPE[axis]
        if crop.size[axis] <= SHAPE[axis]:  # fits: stays inside the volume
            assert 0 <= crop.start[axis] and crop.stop[axis] <= SHAPE[axis]
    if multiple == 1 and margin == 0:
        assert crop.start == tuple(lo) and crop.stop == tuple(hi)
    cropped = crop.apply(mask, fill=False)
    assert np.count_nonzero(cropped) == np.count_nonzero(mask)
    assert crop.invert(cropped, fill=False).tolist() == mask.tolist()


def test_crop_pads_when_the_box_is_larger_than_the_volume():
    mask = np.ones((20, 20, 10), dtype=bool)
    crop = compute_crop(mask, margin=0, multiple=16)
    assert crop.size == (32, 32, 16) and crop.start == (-6, -6, -3)
    volume = np.arange(4 * 20 * 20 * 10, dtype=np.float32).reshape(4, 20, 20, 10)
    cropped = crop.apply(volume, fill=-5.0)
    assert cropped.shape == (4, 32, 32, 16)
    assert (cropped[:, :6] == -5).all() and (cropped[:, :, :, 13:] == -5).all()
    np.testing.assert_array_equal(cropped[:, 6:26, 6:26, 3:13], volume)
    np.testing.assert_array_equal(crop.invert(cropped), volume)


def test_crop_affine_and_serialisation():
    crop = BrainCrop(full_shape=(10, 12, 14), start=(2, -1, 3), size=(8, 16, 8))
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    affine[:3, 3] = (10, 20, 30)
    cropped = crop.cropped_affine(affine)
    np.testing.assert_allclose(cropped @ [0, 0, 0, 1], affine @ [2, -1, 3, 1])
    assert BrainCrop.from_dict(crop.to_dict()) == crop
    with pytest.raises(ValueError, match="full shape"):
        crop.apply(np.zeros((10, 12, 13)))
    with pytest.raises(ValueError, match="crop size"):
        crop.invert(np.zeros((10, 12, 14)))


def test_crop_of_empty_mask_and_bad_settings():
    with pytest.raises(InputDataError, match="empty"):
        compute_crop(np.zeros((8, 8, 8), dtype=bool))
    with pytest.raises(SettingsError, match="power of two"):
        compute_crop(ellipsoid(), multiple=12)
    with pytest.raises(SettingsError, match="margin"):
        compute_crop(ellipsoid(), margin=-1)


# ------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------


def test_normaliser_maps_brain_percentiles_to_minus_one_and_one():
    brain = ellipsoid()
    images = synthetic_images(brain)
    normaliser = Normaliser(low_percentile=1.0, high_percentile=99.0)
    x = normaliser.normalise(images, brain)
    assert x.dtype == np.float32 and x.shape == images.shape
    assert (x[:, ~brain] == -1).all()
    assert x.min() == -1 and x.max() == 1
    for k in range(4):
        lo, hi = np.percentile(images[k][brain], [1.0, 99.0])
        assert normaliser.lower[k] == pytest.approx(lo) and normaliser.upper[k] == pytest.approx(hi)
        inside = images[k][brain]
        expected = np.clip(2 * (inside - lo) / (hi - lo) - 1, -1, 1)
        np.testing.assert_allclose(x[k][brain], expected, atol=1e-5)
        assert np.count_nonzero(x[k][brain] == 1) == pytest.approx(0.01 * brain.sum(), abs=2)


def test_normaliser_is_per_sequence():
    brain = ellipsoid()
    images = synthetic_images(brain)
    scaled = images.copy()
    scaled[2] = scaled[2] * 37.0 + 5.0
    scaled[2][~brain] = 0
    np.testing.assert_allclose(Normaliser().normalise(scaled, brain), Normaliser().normalise(images, brain), atol=1e-5)


def test_denormalise_inverts_unclipped_values():
    brain = ellipsoid()
    images = synthetic_images(brain)
    normaliser = Normaliser()
    x = normaliser.normalise(images, brain)
    back = normaliser.denormalise(x)
    unclipped = brain[None] & (images >= normaliser.lower[:, None, None, None]) & (images <= normaliser.upper[:, None, None, None])
    np.testing.assert_allclose(back[unclipped], images[unclipped], rtol=1e-5, atol=1e-3)
    batched = normaliser.denormalise(np.stack([x, x]))
    np.testing.assert_allclose(batched[1], back)
    np.testing.assert_allclose(normaliser.denormalise(x[3], channel=3), back[3])


def test_normaliser_errors():
    brain = ellipsoid()
    images = synthetic_images(brain)
    images[2][brain] = 42.0
    with pytest.raises(InputDataError, match="^t2w: intensities inside the brain are"):
        Normaliser().normalise(images, brain)
    with pytest.raises(RuntimeError, match="not fitted"):
        Normaliser().denormalise(np.zeros((4, 2, 2, 2)))
    with pytest.raises(InputDataError, match="empty"):
        Normaliser().fit(images, np.zeros(SHAPE, dtype=bool))


# ------------------------------------------------------------------------------------------
# whole pipeline
# ------------------------------------------------------------------------------------------


def test_preprocess_subject_and_back():
    subject = phantom()
    config = PreprocessConfig(margin=2, multiple=8)
    prepared = preprocess_subject(subject, config)
    full_mask = brain_mask(subject.images)
    assert prepared.images.dtype == np.float32 and prepared.images.shape[0] == 4
    assert all(s % 8 == 0 for s in prepared.images.shape[1:])
    assert prepared.images.shape[1:] == prepared.mask.shape == prepared.seg.shape
    assert prepared.images.min() == -1 and prepared.images.max() == 1
    assert (prepared.images[:, ~prepared.mask] == -1).all()
    assert prepared.to_subject_grid(prepared.mask, fill=False).tolist() == full_mask.tolist()
    np.testing.assert_array_equal(prepared.to_subject_grid(prepared.seg), subject.seg)
    np.testing.assert_allclose(prepared.affine[:3, 3], subject.affine[:3, :3] @ prepared.crop.start + subject.affine[:3, 3])

    restored = prepared.to_subject_images(prepared.images)
    lower, upper = prepared.normaliser.lower[:, None, None, None], prepared.normaliser.upper[:, None, None, None]
    unclipped = full_mask[None] & (subject.images >= lower) & (subject.images <= upper)
    np.testing.assert_allclose(restored[unclipped], subject.images[unclipped], rtol=1e-5, atol=1e-3)


def test_preprocess_without_brain_fails_clearly():
    subject = Subject(subject_id="blank", images=np.zeros((4, 8, 8, 8), dtype=np.float32), affine=np.eye(4))
    with pytest.raises(InputDataError, match="blank: no brain found"):
        preprocess_subject(subject)


def test_preprocess_config_validation_and_round_trip():
    config = PreprocessConfig(margin=6, multiple=32, low_percentile=1.0, high_percentile=99.0)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SettingsError, match="unknown preprocessing setting"):
        PreprocessConfig.from_dict({"margni": 3})
    with pytest.raises(SettingsError, match="percentiles"):
        PreprocessConfig(low_percentile=99.0, high_percentile=1.0)
    with pytest.raises(SettingsError, match="power of two"):
        PreprocessConfig(multiple=0)


# ------------------------------------------------------------------------------------------
# real subject (../shared/data)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_subject(request) -> Subject:
    root = request.getfixturevalue("shared_data") / "brats_like"
    files = {s.subject_id: s for s in find_subjects(root)}["BraTS-GLI-00001-000"]
    return load_subject(files)


@pytest.mark.shared_data
def test_real_subject_preprocesses_fast_and_correctly(real_subject):
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        prepared = preprocess_subject(real_subject)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 2.0, f"preprocessing took {min(timings):.2f} s"
    assert all(s % 16 == 0 for s in prepared.images.shape[1:])
    assert np.prod(prepared.images.shape[1:]) < 0.6 * np.prod(real_subject.shape)  # the crop removes background
    assert prepared.images.min() == -1 and prepared.images.max() == 1
    assert (prepared.images[:, ~prepared.mask] == -1).all()
    # the whole tumour is kept by the crop and lies inside the brain mask
    assert np.count_nonzero(prepared.seg) == np.count_nonzero(real_subject.seg)
    assert np.count_nonzero((prepared.seg > 0) & ~prepared.mask) == 0
    # about 0.5 % of brain voxels are clipped at each end, per sequence
    for k in range(4):
        at_top = np.count_nonzero(prepared.images[k][prepared.mask] == 1) / prepared.mask.sum()
        assert 0.002 < at_top < 0.01
