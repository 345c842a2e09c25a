"""Training patch samplers (brainldm.data.sampling, thesis §3.3.2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainldm.data.sampling import (
    DISEASED,
    HEALTHY,
    PatchSampler,
    PatchSamplerConfig,
    patch_label,
    patch_slices,
    window_sums,
)
from brainldm.errors import InputDataError, SettingsError

PATCH = (16, 16, 16)


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


@pytest.fixture(scope="module")
def brain_and_tumour() -> tuple[np.ndarray, np.ndarray]:
    shape = (56, 64, 52)
    brain = _ellipsoid(shape, (28, 32, 26), (25, 29, 23))
    tumour = _ellipsoid(shape, (18, 22, 26), (6, 7, 5))
    assert (tumour <= brain).all()
    return brain, tumour


def _centres(starts: np.ndarray, size=PATCH) -> np.ndarray:
    return starts + np.array(size) // 2


def test_window_sums_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((9, 7, 8)) < 0.1
    size = (3, 4, 2)
    sums = window_sums(mask, size)
    assert sums.shape == (7, 4, 7)
    for start in np.ndindex(*sums.shape):
        assert sums[start] == mask[patch_slices(start, size)].sum()


def test_distance_sampler_labels_are_exact(brain_and_tumour) -> None:
    brain, tumour = brain_and_tumour
    sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=PATCH))
    draws = sampler.sample(1500, np.random.default_rng(0))
    assert draws.starts.shape == (1500, 3) and draws.labels.shape == (1500,)
    assert set(np.unique(draws.labels)) == {HEALTHY, DISEASED}
    # Every patch lies inside the volume.
    assert (draws.starts >= 0).all()
    assert (draws.starts + np.array(PATCH) <= np.array(tumour.shape)).all()
    for start, label in zip(draws.starts, draws.labels):
        holds_tumour = bool(tumour[patch_slices(start, PATCH)].any())
        assert holds_tumour == (label == DISEASED)
        assert patch_label(tumour, start, PATCH) == label
    healthy_centres = _centres(draws.starts[draws.labels == HEALTHY])
    assert brain[tuple(healthy_centres.T)].all(), "healthy centres must lie inside the brain"
    # About the 50/50 mix.
    assert 0.45 < (draws.labels == HEALTHY).mean() < 0.55


def test_distance_weights_rise_linearly_after_offset(brain_and_tumour) -> None:
    brain, tumour = brain_and_tumour
    config = PatchSamplerConfig(patch_size=PATCH)
    sampler = PatchSampler(tumour, brain, config)
    prob = sampler.healthy_probability()
    assert prob.shape == tumour.shape
    assert prob.sum() == pytest.approx(1.0)
    distance = ndimage.distance_transform_edt(~tumour)
    offset = 0.5 * np.linalg.norm(PATCH)
    positive = prob > 0
    assert (distance[positive] > offset).all(), "no centre within the offset of the tumour"
    # Probability proportional to (distance - offset) where positive.
    ratio = prob[positive] / (distance[positive] - offset)
    assert np.allclose(ratio, ratio[0])
    # Border band (half a patch) is never a centre.
    assert prob[:8].sum() == 0 and prob[-7:].sum() == 0


def test_uniform_sampler_differs_and_goes_closer_to_tumour(brain_and_tumour) -> None:
    brain, tumour = brain_and_tumour
    distance = ndimage.distance_transform_edt(~tumour)
    by_kind = {}
    for kind in ("distance", "uniform"):
        sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=PATCH, kind=kind))
        draws = sampler.sample(2000, np.random.default_rng(1))
        healthy = draws.starts[draws.labels == HEALTHY]
        for start in healthy:
            assert not tumour[patch_slices(start, PATCH)].any()
        by_kind[kind] = distance[tuple(_centres(healthy).T)]
    assert by_kind["uniform"].min() < 0.5 * np.linalg.norm(PATCH) <= by_kind["distance"].min()
    assert by_kind["distance"].mean() > by_kind["uniform"].mean() + 2.0


def test_diseased_patches_are_uniform_among_tumour_patches(brain_and_tumour) -> None:
    brain, tumour = brain_and_tumour
    sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=PATCH, healthy_fraction=0.0))
    draws = sampler.sample(4000, 7)
    assert (draws.labels == DISEASED).all()
    counts = window_sums(tumour, PATCH)
    assert sampler.num_diseased_centres == int((counts > 0).sum())
    # Patches with few tumour voxels are drawn as often as those full of tumour.
    drawn_counts = counts[tuple(draws.starts.T)]
    median = np.median(counts[counts > 0])
    assert 0.4 < (drawn_counts <= median).mean() < 0.65


def test_seed_determinism(brain_and_tumour) -> None:
    brain, tumour = brain_and_tumour
    sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=PATCH))
    a = sampler.sample(50, 42)
    b = sampler.sample(50, np.random.default_rng(42))
    c = sampler.sample(50, 43)
    assert np.array_equal(a.starts, b.starts) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.starts, c.starts)


def test_subject_without_tumour_gives_healthy_patches_in_brain(brain_and_tumour) -> None:
    brain, _ = brain_and_tumour
    for tumour in (None, np.zeros_like(brain)):
        sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=PATCH))
        draws = sampler.sample(300, 0)
        assert (draws.labels == HEALTHY).all()
        assert brain[tuple(_centres(draws.starts).T)].all()
        assert sampler.num_diseased_centres == 0


def test_two_dimensional_sampler() -> None:
    shape = (96, 80)
    brain = _ellipsoid(shape, (48, 40), (44, 36))
    tumour = _ellipsoid(shape, (30, 30), (8, 6))
    size = (32, 32)
    sampler = PatchSampler(tumour, brain, PatchSamplerConfig(patch_size=size))
    draws = sampler.sample(500, 5)
    assert draws.starts.shape == (500, 2)
    for start, label in zip(draws.starts, draws.labels):
        assert bool(tumour[patch_slices(start, size)].any()) == (label == DISEASED)
    assert {HEALTHY, DISEASED} == set(draws.labels.tolist())


def test_tumour_everywhere_close_falls_back_to_diseased_only() -> None:
    shape = (24, 24, 24)
    tumour = np.zeros(shape, bool)
    tumour[10:14, 10:14, 10:14] = True  # every 16^3 patch of a 24^3 volume touches it
    sampler = PatchSampler(tumour, None, PatchSamplerConfig(patch_size=PATCH))
    assert sampler.num_healthy_centres == 0
    draws = sampler.sample(20, 0)
    assert (draws.labels == DISEASED).all()


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(SettingsError, match="kind"):
        PatchSamplerConfig(kind="random")
    with pytest.raises(SettingsError, match="healthy_fraction"):
        PatchSamplerConfig(healthy_fraction=1.5)
    with pytest.raises(InputDataError, match="does not fit"):
        PatchSampler(np.zeros((10, 40, 40), bool), None, PatchSamplerConfig(patch_size=PATCH))
    with pytest.raises(SettingsError, match="axes"):
        PatchSampler(np.zeros((40, 40), bool), None, PatchSamplerConfig(patch_size=PATCH))
    with pytest.raises(InputDataError, match="brain mask has shape"):
        PatchSampler(np.zeros((40, 40, 40), bool), np.ones((40, 40, 41), bool), PatchSamplerConfig(patch_size=PATCH))
