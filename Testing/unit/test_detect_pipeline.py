"""The detection pipeline end to end with small real (untrained, randomised) networks.

The networks are tiny and randomly initialised (the denoiser's zero-initialised output layer
is re-randomised so it predicts non-zero noise): what is tested is the plumbing - shapes,
grids, window blending, modes, determinism, outputs on disk - not detection quality
(that is measured by ``brainldm evaluate`` and the model card).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainldm.data.preprocess import PreprocessConfig
from brainldm.data.subject import Subject
from brainldm.detect.pipeline import HEALTHY, detect
from brainldm.detect.settings import DetectionSettings
from brainldm.detect.windows import SlidingWindowDenoiser, WholeVolumeDenoiser, window_starts
from brainldm.diffusion.sampler import Cancelled
from brainldm.errors import SettingsError
from brainldm.nets import denoiser as denoiser_module
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.bundle import ModelBundle
from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser
from brainldm.train.toy import toy_subject_arrays


def _randomise_output(model: torch.nn.Module, seed: int = 0) -> None:
    """MONAI zero-initialises the output conv and each residual block's last conv; randomise them so
    an untrained denoiser predicts non-zero noise that depends on the class label."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


def tiny_bundle(position: str = "coords", spatial_dims: int = 3) -> ModelBundle:
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(kind="kl", spatial_dims=spatial_dims, latent_channels=4, channels=(8, 16),
                               num_res_blocks=1, attention=False, norm_num_groups=8)
    dn_cfg = DenoiserConfig(spatial_dims=spatial_dims, latent_channels=4, channels=(16, 32),
                            attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
                            num_head_channels=16, position_embedding=position, position_dim=8)
    autoencoder, denoiser = build_autoencoder(ae_cfg).eval(), build_denoiser(dn_cfg).eval()
    _randomise_output(denoiser)
    return ModelBundle(
        autoencoder=autoencoder, denoiser=denoiser, autoencoder_config=ae_cfg, denoiser_config=dn_cfg,
        preprocess_config=PreprocessConfig(margin=2, multiple=8), latent_scale=1.0,
        schedule_config={"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        model_id=f"tiny-{position}-{spatial_dims}d", patch_size=(16,) * spatial_dims,
    )


@pytest.fixture(scope="module")
def toy_subject() -> Subject:
    images, seg = toy_subject_arrays((40, 44, 36), seed=3)
    padded = np.zeros((4, 48, 52, 44), np.float32)
    padded[:, 4:44, 4:48, 4:40] = images
    seg_full = np.zeros((48, 52, 44), np.int16)
    seg_full[4:44, 4:48, 4:40] = seg
    return Subject("toy", padded, np.diag([1.0, 1.0, 1.0, 1.0]), seg=seg_full)


FAST = dict(steps=4, guidance=2.0)


def test_label_constant_matches_nets():
    assert HEALTHY == denoiser_module.HEALTHY


@pytest.mark.parametrize("encoder", ["edict", "ddim"])
def test_whole_volume_detection_shapes_and_grid(toy_subject, encoder):
    result = detect(toy_subject, tiny_bundle(), DetectionSettings(encoder=encoder, **FAST))
    assert result.counterfactual.shape == toy_subject.images.shape
    assert result.reconstruction.shape == toy_subject.images.shape
    assert result.anomaly_map.shape == toy_subject.shape
    assert result.segmentation.dtype == np.uint8 and set(np.unique(result.segmentation)) <= {0, 1}
    # nothing outside the brain
    outside = ~result.brain_mask
    assert not result.segmentation[outside].any()
    assert np.all(result.anomaly_map[outside] == 0)
    assert np.all(result.counterfactual[:, outside] == 0)
    assert result.timings["inversion"] > 0 and result.timings["generation"] > 0
    assert result.timings["denoiser_calls"] > 0
    assert "dice" in result.metrics and 0.0 <= result.metrics["dice"] <= 1.0
    assert result.reconstruction_error is not None


def test_same_seed_same_result(toy_subject):
    a = detect(toy_subject, tiny_bundle(), DetectionSettings(**FAST))
    b = detect(toy_subject, tiny_bundle(), DetectionSettings(**FAST))
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    np.testing.assert_array_equal(a.segmentation, b.segmentation)


def test_guidance_changes_the_counterfactual(toy_subject):
    low = detect(toy_subject, tiny_bundle(), DetectionSettings(steps=4, guidance=0.0))
    high = detect(toy_subject, tiny_bundle(), DetectionSettings(steps=4, guidance=8.0))
    assert np.abs(low.counterfactual - high.counterfactual).max() > 0


def test_noise_level_changes_the_counterfactual_and_is_validated(toy_subject):
    full = detect(toy_subject, tiny_bundle(), DetectionSettings(encoder="ddim", **FAST))
    part = detect(toy_subject, tiny_bundle(), DetectionSettings(encoder="ddim", noise_level=200, **FAST))
    assert np.abs(full.counterfactual - part.counterfactual).max() > 0
    assert DetectionSettings.for_model({"noise_level": 300}).noise_level == 300
    for bad in (dict(noise_level=-1), dict(noise_level=1001), dict(steps=50, noise_level=20)):
        with pytest.raises(SettingsError):
            DetectionSettings(**bad).validate()


def test_windows_mode_runs_and_counts_windows(toy_subject):
    bundle = tiny_bundle("sin")
    result = detect(toy_subject, bundle, DetectionSettings(mode="auto", overlap=0.5, **FAST))
    assert result.timings.get("mode_windows") == 1.0
    with pytest.raises(SettingsError, match="windows"):
        detect(toy_subject, bundle, DetectionSettings(mode="whole", **FAST))


def test_window_covering_everything_equals_whole_volume():
    torch.manual_seed(1)
    bundle = tiny_bundle("coords")
    z = torch.randn(2, 4, 12, 12, 8)
    t = torch.full((2,), 300, dtype=torch.long)
    labels = torch.tensor([0, 2])
    whole = WholeVolumeDenoiser(bundle.denoiser, size_multiple=2)(z, t, labels)
    windowed = SlidingWindowDenoiser(bundle.denoiser, window=(12, 12, 8), overlap=0.25)(z, t, labels)
    torch.testing.assert_close(whole, windowed, rtol=1e-5, atol=1e-5)


def test_windows_without_brain_are_skipped():
    bundle = tiny_bundle("sin")
    brain = torch.zeros(24, 24, 8, dtype=torch.bool)
    brain[:8, :8, :] = True
    net = SlidingWindowDenoiser(bundle.denoiser, window=(8, 8, 8), overlap=0.0, brain=brain)
    assert net.num_windows((24, 24, 8)) == 1
    eps = net(torch.randn(1, 4, 24, 24, 8), torch.tensor([10]), torch.tensor([2]))
    assert eps[..., 8:, :, :].abs().max() == 0 and eps[..., :8, :8, :].abs().max() > 0


def test_window_starts_cover_the_axis():
    for size, window, overlap in [(40, 16, 0.25), (16, 16, 0.5), (10, 16, 0.0), (33, 8, 0.5)]:
        starts = window_starts(size, window, overlap)
        covered = np.zeros(max(size, window), bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered[:size].all()
        assert starts[-1] + window >= size


def test_slices_mode_with_a_2d_model(toy_subject):
    result = detect(toy_subject, tiny_bundle("coords", spatial_dims=2), DetectionSettings(**FAST))
    assert result.timings.get("mode_slices") == 1.0
    assert result.anomaly_map.shape == toy_subject.shape


def test_graddiff_map_and_threshold(toy_subject):
    result = detect(toy_subject, tiny_bundle(), DetectionSettings(threshold="graddiff", steps=10, guidance=3.0))
    assert result.graddiff_map is not None and result.graddiff_map.shape == toy_subject.shape
    assert result.graddiff_map[result.brain_mask].max() > 0


def test_cancel_stops_detection(toy_subject):
    with pytest.raises(Cancelled):
        detect(toy_subject, tiny_bundle(), DetectionSettings(**FAST), cancel=lambda: True)


def test_progress_reaches_one(toy_subject):
    seen = []
    detect(toy_subject, tiny_bundle(), DetectionSettings(**FAST), progress=lambda stage, f: seen.append((stage, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_segment_outputs_on_disk(tmp_path, toy_subject):
    from brainldm.data.io import save_like  # noqa: F401  (outputs go through save_like)
    from brainldm.logic.detection import model_description, write_detection_outputs
    import nibabel as nib

    bundle = tiny_bundle()
    settings = DetectionSettings(**FAST)
    result = detect(toy_subject, bundle, settings)
    report = write_detection_outputs(toy_subject, result, tmp_path, settings, model_description(bundle))
    for name in ("anomaly_map.nii.gz", "segmentation.nii.gz", "counterfactual-t2f.nii.gz", "overview.png",
                 "report.json"):
        assert (tmp_path / name).is_file(), name
    seg = nib.load(tmp_path / "segmentation.nii.gz")
    assert seg.shape == toy_subject.shape
    np.testing.assert_allclose(seg.affine, toy_subject.affine)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["settings"]["steps"] == 4 and saved["total_seconds"] > 0 and saved["metrics"]
    assert report["peak_memory_mb"] > 0
    # never overwrite without being asked
    with pytest.raises(Exception, match="already holds outputs"):
        write_detection_outputs(toy_subject, result, tmp_path, settings, model_description(bundle))


def test_reconstruction_report_per_sequence(toy_subject):
    from brainldm.evaluate.reconstruction import reconstruction_report

    report = reconstruction_report(toy_subject, tiny_bundle())
    for seq in ("t1n", "t1c", "t2w", "t2f", "all"):
        l1 = report["errors"][seq]["l1"]
        assert 0 <= l1["mean"] <= l1["p95"] <= l1["p99"] <= l1["max"]
    assert report["errors"]["all"]["l2"]["max"] == pytest.approx(report["errors"]["all"]["l1"]["max"] ** 2, rel=1e-5)
