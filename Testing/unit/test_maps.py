"""Anomaly maps, Otsu + opening segmentation, and GradDiff recording/aggregation/ROI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainldm.detect.maps import (
    smooth_map,
    GradDiffRecorder,
    GradDiffSettings,
    anomaly_map,
    binary_dilation,
    binary_opening,
    graddiff_map,
    graddiff_roi,
    graddiff_step_indices,
    otsu_threshold,
    segment_from_map,
    structuring_ball,
)
from brainldm.diffusion.guidance import make_noise_fn
from brainldm.diffusion.sampler import SamplerSettings, chain_callbacks, generate
from brainldm.diffusion.schedule import NoiseSchedule
from brainldm.errors import InputDataError, SettingsError
from brainldm.evaluate.metrics import dice

N = 32


def sphere(center, radius, shape=(N, N, N)) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


@pytest.fixture()
def phantom():
    """A brain sphere with a bright 'lesion', low noise elsewhere, an isolated hot voxel and a hot outside."""
    rng = np.random.default_rng(0)
    brain = sphere((16, 16, 16), 13)
    lesion = sphere((11, 18, 15), 4)
    amap = rng.uniform(0.0, 0.2, (N, N, N)).astype(np.float32)
    amap[lesion] += 1.0
    amap[22, 10, 16] = 1.5  # single-voxel outlier inside the brain
    amap[~brain] = 5.0  # outside the brain: must be ignored
    return amap, brain, lesion


# --------------------------------------------------------------------------- anomaly map


def test_anomaly_map_aggregates_sequences_and_masks():
    rec = np.zeros((4, 6, 6, 6), np.float32)
    cf = np.zeros_like(rec)
    rec[:, 2, 2, 2] = [1.0, -2.0, 3.0, 0.0]
    mask = np.ones((6, 6, 6), bool)
    mask[0] = False
    rec[:, 0, 0, 0] = 9.0  # outside the mask
    out = anomaly_map(rec, cf, mask)
    assert out.dtype == np.float32 and out.shape == (6, 6, 6)
    assert out[2, 2, 2] == pytest.approx(1.5) and out[0, 0, 0] == 0.0
    assert anomaly_map(rec, cf, mask, reduce="sum")[2, 2, 2] == pytest.approx(6.0)
    assert anomaly_map(rec, cf, mask, reduce="max")[2, 2, 2] == pytest.approx(3.0)
    assert anomaly_map(torch.from_numpy(rec), torch.from_numpy(cf))[0, 0, 0] == pytest.approx(9.0)
    single = anomaly_map(rec[1], cf[1], mask)  # one sequence without channel axis
    assert single[2, 2, 2] == pytest.approx(2.0)
    with pytest.raises(InputDataError):
        anomaly_map(rec, cf[:3])
    with pytest.raises(InputDataError):
        anomaly_map(rec, cf, np.ones((5, 6, 6), bool))
    with pytest.raises(SettingsError):
        anomaly_map(rec, cf, reduce="mode")


# --------------------------------------------------------------------------- thresholding


def test_smooth_map_keeps_compact_regions_and_dims_scattered_voxels():
    """Normalised convolution inside the brain: a constant map stays constant up to the brain's edge,
    zero outside; one-voxel spikes fall far below a compact blob of the same height; sigma 0 is the
    identity; a mismatched mask is a clear error."""
    shape = (40, 40, 40)
    grid = np.indices(shape)
    brain = ((grid - 20) ** 2).sum(0) <= 16 ** 2
    constant = np.where(brain, 0.5, 0.0).astype(np.float32)
    smoothed = smooth_map(constant, 2.0, brain_mask=brain)
    assert np.allclose(smoothed[brain], 0.5, atol=1e-5) and not smoothed[~brain].any()
    amap = np.zeros(shape, np.float32)
    blob = ((grid - np.array([20, 20, 26])[:, None, None, None]) ** 2).sum(0) <= 4 ** 2
    amap[blob] = 1.0
    rng = np.random.default_rng(0)
    spikes = tuple(rng.integers(8, 32, size=(3, 40)))
    amap[spikes] = 1.0
    amap[~brain] = 0.0
    out = smooth_map(amap, 1.5, brain_mask=brain)
    lonely = np.zeros(shape, bool)
    lonely[spikes] = True
    lonely &= brain & ~binary_dilation(blob, 4)
    assert out[20, 20, 26] > 0.8  # the blob's centre keeps its level
    assert out[lonely].max() < 0.2  # isolated voxels are averaged away
    assert np.array_equal(smooth_map(amap, 0.0, brain_mask=brain), amap)
    with pytest.raises(InputDataError, match="brain mask"):
        smooth_map(amap, 1.0, brain_mask=brain[:-1])


def test_otsu_threshold_separates_modes():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.8, 0.05, 500)])
    thr = otsu_threshold(values)
    assert 0.15 < thr < 0.7
    assert (values[5000:] > thr).all() and (values[:5000] <= thr).mean() > 0.999
    with pytest.raises(ValueError):
        otsu_threshold(np.full(10, 0.3))
    with pytest.raises(ValueError):
        otsu_threshold(values, mask=np.zeros(values.shape, bool))


def test_structuring_elements_and_morphology():
    assert structuring_ball(1, 3).sum() == 7 and structuring_ball(2, 3).sum() == 33
    assert structuring_ball(1, 2).sum() == 5 and structuring_ball(0, 3).sum() == 1
    blob = sphere((16, 16, 16), 5)
    noisy = blob.copy()
    noisy[2, 2, 2] = True
    opened = binary_opening(noisy, 1)
    assert not opened[2, 2, 2] and opened[16, 16, 16] and not (opened & ~noisy).any()
    assert opened.sum() > 0.8 * blob.sum()
    assert np.array_equal(binary_opening(noisy, 0), noisy)
    dilated = binary_dilation(blob, 2)
    assert (blob <= dilated).all() and (dilated <= sphere((16, 16, 16), 7)).all()  # |a + b| <= 5 + 2
    assert dilated.sum() > blob.sum() and dilated[16, 16, 23] and not dilated[16, 16, 24]
    with pytest.raises(SettingsError):
        structuring_ball(-1)


def test_segment_from_map_otsu_opening(phantom):
    amap, brain, lesion = phantom
    seg = segment_from_map(amap, brain, method="otsu", opening_radius=1)
    assert not seg.no_signal and seg.warning is None
    assert 0.2 < seg.threshold < 1.0
    assert not (seg.mask & ~brain).any()  # never outside the brain
    assert not seg.mask[22, 10, 16]  # outlier removed by the opening
    assert dice(seg.mask, lesion) > 0.85
    without_opening = segment_from_map(amap, brain, opening_radius=0)
    assert without_opening.mask[22, 10, 16]
    # without the brain mask the bright outside dominates Otsu: the lesion is lost
    unmasked = segment_from_map(amap, None)
    assert dice(unmasked.mask, lesion) < 0.1
    fixed = segment_from_map(amap, brain, method="fixed", threshold=0.5, opening_radius=1)
    assert fixed.threshold == 0.5 and dice(fixed.mask, lesion) > 0.85
    with pytest.raises(SettingsError):
        segment_from_map(amap, brain, method="fixed")
    with pytest.raises(SettingsError):
        segment_from_map(amap, brain, method="triangle")
    with pytest.raises(InputDataError):
        segment_from_map(amap, brain[:-1])


def test_segment_from_map_without_signal_does_not_crash(phantom):
    _, brain, _ = phantom
    for amap in (np.zeros((N, N, N), np.float32), np.full((N, N, N), 0.7, np.float32)):
        seg = segment_from_map(amap, brain)
        assert seg.no_signal and not seg.mask.any() and math.isnan(seg.threshold) and "no signal" in seg.warning
    seg = segment_from_map(np.random.rand(N, N, N), np.zeros((N, N, N), bool))
    assert seg.no_signal and not seg.mask.any() and "brain mask is empty" in seg.warning
    amap = np.random.default_rng(2).random((N, N, N)).astype(np.float32)
    amap[0, 0, 0] = np.nan
    seg = segment_from_map(amap, None)
    assert not seg.no_signal and "non-finite" in seg.warning and not seg.mask[0, 0, 0]


def test_segment_from_map_in_2d():
    amap = np.zeros((40, 40), np.float32)
    amap[10:20, 10:20] = 1.0
    amap += np.random.default_rng(3).uniform(0, 0.1, amap.shape).astype(np.float32)
    seg = segment_from_map(amap, np.ones_like(amap, bool))
    ref = np.zeros_like(seg.mask)
    ref[10:20, 10:20] = True
    assert dice(seg.mask, ref) > 0.9


# --------------------------------------------------------------------------- GradDiff


def test_graddiff_step_indices():
    assert graddiff_step_indices(100) == [90, 92, 94, 97, 99]  # 5 points, final 10 %
    assert graddiff_step_indices(600) == [540, 555, 570, 584, 599]
    assert graddiff_step_indices(100, GradDiffSettings(window_position="start")) == [0, 2, 4, 7, 9]
    assert graddiff_step_indices(20) == [18, 19]  # window of 2 steps holds 2 distinct points
    assert graddiff_step_indices(10, GradDiffSettings(steps="all")) == list(range(10))
    assert graddiff_step_indices(10, GradDiffSettings(steps="last")) == [9]
    assert graddiff_step_indices(50, GradDiffSettings(steps="range", step_range=(0, 10))) == list(range(10))
    assert graddiff_step_indices(3, GradDiffSettings(steps="range", step_range=(0, 10))) == [0, 1, 2]
    with pytest.raises(SettingsError):
        graddiff_step_indices(10, GradDiffSettings(window_fraction=0.0))
    with pytest.raises(SettingsError):
        GradDiffSettings(step_reduce="max").validate()


class TinyDenoiser:
    """A fixed random nonlinear label-conditioned noise model on (B, C, X, Y, Z) latents."""

    def __init__(self, channels=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, 3, 3, 3, generator=g, dtype=torch.float64) / 9.0
        self.label_maps = torch.randn(3, channels, 6, 6, 6, generator=g, dtype=torch.float64) * 0.5

    def __call__(self, z, t, labels):
        h = torch.nn.functional.conv3d(z, self.weight, padding=1)
        return torch.tanh(h + self.label_maps[labels] + torch.sin(t.double() / 50).reshape(-1, 1, 1, 1, 1))


@pytest.mark.parametrize("method", ["ddim", "edict"])
@pytest.mark.parametrize("reduce", ["median", "mean"])
def test_recorder_keeps_only_needed_steps_and_aggregates(method, reduce):
    schedule = NoiseSchedule()
    model = TinyDenoiser()
    num_steps = 30
    settings = GradDiffSettings(step_reduce=reduce, window_fraction=0.2, num_points=4)
    recorder = GradDiffRecorder(num_steps, settings)
    assert recorder.step_indices == (24, 26, 27, 29)
    everything = {}
    keep_all = lambda i, n, t, info: everything.__setitem__(i, info.pseudo_gradient.clone())  # noqa: E731
    zT = torch.randn(1, 3, 6, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    eps_fn = make_noise_fn(model, label=0, null_label=2, scale=3.0)
    generate(zT, eps_fn, schedule, SamplerSettings(method, num_steps, 0.95),
             callback=chain_callbacks(recorder, keep_all))
    assert len(everything) == num_steps and recorder.recorded_steps == [24, 26, 27, 29]
    # memory: the median keeps the 4 chosen steps; mean keeps one running sum
    assert len(recorder._pseudo) == (4 if reduce == "median" else 0)
    assert (recorder._pseudo_sum is None) == (reduce == "median")
    kept = np.stack([everything[i].numpy() for i in (24, 26, 27, 29)])
    expected = np.median(kept, axis=0) if reduce == "median" else kept.mean(axis=0)
    np.testing.assert_allclose(recorder.latent_map().numpy(), np.abs(expected), atol=1e-12)


def test_recorder_true_gradient_and_errors():
    rec = GradDiffRecorder(10, GradDiffSettings(steps="last"))
    with pytest.raises(ValueError, match="recorded nothing"):
        rec.latent_map()
    pseudo = torch.tensor([[1.0, -2.0]])
    rec.record(3, pseudo * 100)  # not a kept step: ignored
    rec.record(9, pseudo, true_gradient=torch.tensor([[-0.5, 0.5]]))
    assert torch.allclose(rec.latent_map(), torch.tensor([[1.5, 2.5]]))
    assert rec.wants(9) and not rec.wants(3)

    class Info:
        direction = "generate"
        pseudo_gradient = None

    with pytest.raises(ValueError, match="GuidedNoise"):
        GradDiffRecorder(10, GradDiffSettings(steps="last"))(9, 10, 0, Info())
    Info.direction = "invert"
    GradDiffRecorder(10)(9, 10, 0, Info())  # inversion steps are ignored


def test_graddiff_map_and_roi_constrain_otsu(phantom):
    amap, brain, lesion = phantom
    # latent (compression 4) pseudo-gradient concentrated at the lesion
    latent = torch.zeros(2, 3, 8, 8, 8)
    latent[:, :, 2:4, 4:5, 3:5] = torch.tensor([1.0, -1.0])[:, None, None, None, None, None].reshape(2, 1, 1, 1, 1)
    gmap = graddiff_map(latent, (N, N, N))
    assert gmap.shape == (2, N, N, N) and gmap.dtype == np.float32
    single = graddiff_map(latent[0], (N, N, N))
    np.testing.assert_allclose(single, gmap[0])
    assert gmap[0][lesion].mean() > 5 * gmap[0][~sphere((11, 18, 15), 8)].mean()
    roi = graddiff_roi(single, brain, opening_radius=1, dilation_radius=2)
    assert not roi.no_signal and roi.mask.any() and not (roi.mask & ~brain).any()
    assert roi.mask[lesion].mean() > 0.9
    # a large bright artefact far from the lesion pulls plain Otsu; the ROI keeps it out
    artefact = sphere((22, 10, 20), 4) & brain
    amap2 = amap.copy()
    amap2[artefact] = 3.0
    plain = segment_from_map(amap2, brain)
    assert plain.mask[artefact].all()
    constrained = segment_from_map(amap2, brain, roi=roi.mask)
    assert not constrained.mask[artefact].any() and dice(constrained.mask, lesion) > 0.8
    # no signal: empty ROI, flagged
    flat = graddiff_roi(np.zeros((N, N, N)), brain)
    assert flat.no_signal and not flat.mask.any()
    seg = segment_from_map(amap, brain, roi=flat.mask)
    assert seg.no_signal and "region of interest" in seg.warning
    with pytest.raises(InputDataError):
        graddiff_map(latent, (N, N))
