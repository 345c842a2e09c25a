"""Super-resolution LDM (issue 7): DDIM/SDEdit maths, patches and blending, the model, bundles,
inference on slices and volumes, presets, and the ``train sr`` / ``sr`` / ``sr-check`` commands."""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from brainldm.cli import main
from brainldm.data.preprocess import PreprocessConfig
from brainldm.diffusion.schedule import NoiseSchedule
from brainldm.errors import InputDataError, ModelBundleError, SettingsError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.config import AutoencoderConfig, ConditioningConfig, DenoiserConfig
from brainldm.sr.bundle import SRBundle, is_sr_bundle
from brainldm.sr.config import SRInferenceSettings
from brainldm.sr.infer import (
    super_resolve_slices,
    super_resolve_volume,
    upsample,
    upsampled_foreground,
)
from brainldm.sr.model import (
    build_sr_model,
    sample_sr_latents,
    sdedit_start,
    sr_timestep_pairs,
)
from brainldm.sr.patches import (
    blend_patches,
    blend_weights,
    extract_patches,
    patch_grid,
    tile_starts,
)
from brainldm.train.config import load_config
from brainldm.train.toy import toy_subject_arrays, write_toy_dataset

SCHEDULE = {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def _randomise(*modules: torch.nn.Module) -> None:
    """Give zero-initialised convolutions (MONAI's output layer, ControlNet's zero convolutions) random weights."""
    with torch.no_grad():
        for module in modules:
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.normal_(0.0, 0.05)


def tiny_sr_bundle(seed: int = 0, patch: int = 16) -> SRBundle:
    """Random tiny SR networks (output layers randomised: an untrained MONAI denoiser predicts exactly 0)."""
    torch.manual_seed(seed)
    ae_cfg = AutoencoderConfig(kind="kl", spatial_dims=2, latent_channels=4, channels=(8, 16),
                               full_resolution_level=False, num_res_blocks=1)
    dn_cfg = DenoiserConfig(spatial_dims=2, channels=(8, 16), attention_levels=(False, False), mid_attention=False,
                            num_res_blocks=1, norm_num_groups=8, num_head_channels=8, position_embedding="none")
    conditioning = ConditioningConfig(mechanism="structural", mask_latent_channels=4, embedding_channels=8)
    model = build_sr_model(dn_cfg, conditioning).eval()
    _randomise(model.denoiser.out[-1], *model.encoder.controlnet_down_blocks, model.encoder.controlnet_mid_block,
               model.encoder.controlnet_cond_embedding.conv_out)
    return SRBundle(autoencoder=build_autoencoder(ae_cfg).eval(), model=model, autoencoder_config=ae_cfg,
                    denoiser_config=dn_cfg, conditioning_config=conditioning,
                    preprocess_config=PreprocessConfig(margin=2, multiple=8), latent_scale=1.0,
                    schedule_config=dict(SCHEDULE), model_id="tiny-sr-test", scale=2.0, patch_size=(patch, patch),
                    pipelines=("mri", "esrgan"), inference={"steps": 2, "strength": 0.5, "overlap": 0.25})


FAST = SRInferenceSettings(steps=2, strength=0.5, overlap=0.25, batch_size=4)


# --------------------------------------------------------------------------- maths


def test_sr_timestep_pairs_spread_steps_from_the_start_to_the_clean_latent():
    assert sr_timestep_pairs(4, 0.4) == [(399, 299), (299, 199), (199, 99), (99, -1)]
    pairs = sr_timestep_pairs(10, 1.0)
    assert pairs[0][0] == 999 and pairs[-1] == (99, -1) and len(pairs) == 10
    assert all(t > t_prev for t, t_prev in pairs) and all(a[1] == b[0] for a, b in itertools.pairwise(pairs))
    assert sr_timestep_pairs(1, 0.25) == [(249, -1)]
    with pytest.raises(SettingsError, match="strength"):
        sr_timestep_pairs(4, 0.0)
    with pytest.raises(SettingsError, match="steps"):
        sr_timestep_pairs(300, 0.2)


def test_sdedit_start_is_the_forward_process_of_the_condition():
    z, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(sdedit_start(z, eps, 1.0), z)
    torch.testing.assert_close(sdedit_start(z, eps, 0.0), eps)
    schedule = NoiseSchedule()
    torch.testing.assert_close(sdedit_start(z, eps, schedule.alpha_bar(500)), schedule.add_noise(z, eps, 500))
    with pytest.raises(ValueError):
        sdedit_start(z, eps[:1], 0.5)


def test_ddim_with_the_true_noise_lands_exactly_on_the_target_latent():
    """An oracle predicting the exact noise of z_t with respect to x0 makes every DDIM step exact
    (Eq. 2.33), so the subsequence ends on x0 whatever the start."""
    schedule = NoiseSchedule()
    x0 = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    condition = torch.randn_like(x0)

    def oracle(z, t, c):
        abar = schedule.alpha_bar(t)
        return (z - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    out = sample_sr_latents(oracle, condition, torch.randn_like(x0), sr_timestep_pairs(5, 0.6), schedule)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    # a model predicting no noise returns the scaled start: DDIM keeps z / sqrt(abar) at t_prev = -1
    zero = sample_sr_latents(lambda z, t, c: torch.zeros_like(z), condition, torch.zeros_like(x0),
                             sr_timestep_pairs(1, 0.5), schedule)
    torch.testing.assert_close(zero, condition, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- patches


def test_tile_starts_cover_the_axis_and_end_at_the_border():
    assert tile_starts(10, 16, 0.25) == [0]
    assert tile_starts(64, 32, 0.25) == [0, 24, 32]
    starts = tile_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68 and all(0 < b - a <= 16 for a, b in itertools.pairwise(starts))
    with pytest.raises(SettingsError):
        tile_starts(10, 4, 1.0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_overlapping_patches_blend_back_exactly(mode):
    constant = np.full((4, 50, 37), 0.3125, np.float32)
    starts = patch_grid(constant.shape[1:], 16, 0.25)
    blended = blend_patches(extract_patches(constant, starts, 16), starts, constant.shape[1:], blend_weights(16, mode))
    np.testing.assert_allclose(blended, constant, rtol=0, atol=1e-7)
    image = np.random.default_rng(0).normal(size=(2, 40, 33)).astype(np.float32)
    starts = patch_grid(image.shape[1:], 16, 0.5)
    blended = blend_patches(extract_patches(image, starts, 16), starts, image.shape[1:], blend_weights(16, mode))
    np.testing.assert_allclose(blended, image, rtol=0, atol=1e-6)


def test_gaussian_weights_favour_the_patch_centre_and_stay_positive():
    w = blend_weights(32)
    assert w.shape == (32, 32) and w.min() > 0 and w[15, 15] == pytest.approx(w.max()) and w[0, 0] < 0.05 * w.max()
    with pytest.raises(SettingsError):
        blend_weights(16, "median")


# --------------------------------------------------------------------------- model


def test_structural_encoder_starts_silent_and_the_condition_then_matters():
    bundle = tiny_sr_bundle()
    model = bundle.model
    z = torch.randn(2, 4, 8, 8)
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    fresh = build_sr_model(bundle.denoiser_config, bundle.conditioning_config).eval()
    _randomise(fresh.denoiser.out[-1])  # the denoiser predicts something, the encoder still adds zero
    with torch.no_grad():
        torch.testing.assert_close(fresh(z, 10, a), fresh(z, 10, b))
        assert model(z, 10, a).shape == z.shape
        assert not torch.allclose(model(z, 10, a), model(z, 10, b))
        with pytest.raises(ValueError, match="condition"):
            model(z, 10, a[:, :, :4])


# --------------------------------------------------------------------------- inference


def _normalised_slices(count=2, shape=(24, 20), seed=0):
    images, _ = toy_subject_arrays((*shape, 8), seed=seed)
    x = images[..., 2:2 + count] / max(images.max(), 1e-6) * 2.0 - 1.0
    x[:, (images[..., 2:2 + count] == 0).all(axis=0)] = -1.0
    return np.ascontiguousarray(np.moveaxis(x, -1, 0)).astype(np.float32)


def test_super_resolve_slices_doubles_the_grid_keeps_background_and_is_reproducible():
    bundle = tiny_sr_bundle()
    lr = _normalised_slices()
    out = super_resolve_slices(lr, bundle, FAST)
    assert out.shape == (2, 4, 48, 40) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    background = ~upsampled_foreground((lr > -1 + 1e-3).any(axis=1), (48, 40))
    assert background.shape == (2, 48, 40) and background.any() and not background.all()
    assert (np.moveaxis(out, 1, -1)[background] == -1.0).all()
    np.testing.assert_allclose(out, super_resolve_slices(lr, bundle, FAST.with_changes(batch_size=1)), rtol=0, atol=1e-5)
    assert not np.array_equal(out, super_resolve_slices(lr, bundle, FAST.with_changes(seed=5)))
    # the model changes the bicubic image (it is not a no-op)
    bicubic = np.clip(upsample(lr, 2.0), -1, 1)
    assert np.abs(np.moveaxis(out - bicubic, 1, -1)[~background]).mean() > 1e-3
    with pytest.raises(InputDataError, match=r"\(S, 4, X, Y\)"):
        super_resolve_slices(lr[:, :3], bundle, FAST)
    bad = lr.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        super_resolve_slices(bad, bundle, FAST)
    with pytest.raises(SettingsError, match="multiple"):
        super_resolve_slices(lr, bundle, FAST.with_changes(patch_size=12))
    bundle.training = {"sr": {"config": {"train_strength": 0.2}}}
    with pytest.raises(SettingsError, match="trained up to strength 0.2"):
        super_resolve_slices(lr, bundle, FAST)


def test_super_resolve_volume_returns_raw_intensities_on_the_doubled_grid():
    bundle = tiny_sr_bundle()
    images, _ = toy_subject_arrays((20, 22, 3), seed=1)
    images = images * 300.0
    out = super_resolve_volume(images, bundle, FAST)
    assert out.shape == (4, 40, 44, 3) and out.dtype == np.float32
    outside = np.repeat(np.repeat((images == 0).all(axis=0), 2, axis=0), 2, axis=1)
    assert (out[:, outside] == 0).all() and out.min() >= 0
    inside = out[:, ~outside]
    assert 0 < np.median(inside) < 2 * images.max()
    with pytest.raises(InputDataError, match="C = 4"):
        super_resolve_volume(images[:2], bundle, FAST)
    with pytest.raises(InputDataError, match="NaN"):
        super_resolve_volume(np.where(images > 100, np.nan, images), bundle, FAST)


# --------------------------------------------------------------------------- bundles


def test_bundle_round_trip_keeps_every_network_and_setting(tmp_path):
    bundle = tiny_sr_bundle()
    folder = bundle.save(tmp_path / "sr")
    assert is_sr_bundle(folder)
    loaded = SRBundle.load(folder)
    for a, b in ((bundle.autoencoder, loaded.autoencoder), (bundle.model, loaded.model)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(x, y, msg=name)
    assert loaded.scale == 2.0 and loaded.patch_size == (16, 16) and loaded.pipelines == ("mri", "esrgan")
    assert loaded.inference_settings().steps == 2 and loaded.inference_settings(steps=3).steps == 3
    lr = _normalised_slices(1)
    np.testing.assert_allclose(super_resolve_slices(lr, bundle, FAST), super_resolve_slices(lr, loaded, FAST), atol=1e-5)
    with pytest.raises(ModelBundleError, match="not empty"):
        bundle.save(folder)


def test_corrupt_or_wrong_bundles_fail_with_one_clear_message(tmp_path):
    folder = tiny_sr_bundle().save(tmp_path / "sr")
    weights = folder / "denoiser.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelBundleError, match="truncated or corrupt"):
        SRBundle.load(folder)
    weights.unlink()
    with pytest.raises(ModelBundleError, match="denoiser.pt is missing"):
        SRBundle.load(folder)
    (folder / "bundle.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match="not valid JSON"):
        SRBundle.load(folder)
    (folder / "bundle.json").write_text(json.dumps({"format": "brainldm-model-bundle", "format_version": 1}))
    with pytest.raises(ModelBundleError, match="detection model bundle"):
        SRBundle.load(folder)
    with pytest.raises(ModelBundleError, match="does not exist"):
        SRBundle.load(tmp_path / "nowhere")


# --------------------------------------------------------------------------- presets


def test_sr_presets_load_and_thesis_sr_matches_table_b7():
    thesis = load_config("thesis-sr").sr
    dn = thesis.denoiser
    assert dn.model.channels == (256, 512, 768, 1024) and dn.model.num_res_blocks == 2 and dn.batch_size == 24
    assert dn.model.attention_levels == (False, True, True, True) and dn.model.num_head_channels == 64
    assert dn.ema_decay == 0.9 and tuple(dn.patch_size) == (256, 256) and dn.scale == 2.0
    assert thesis.conditioning.mechanism == "structural" and dn.schedule.num_train_timesteps == 1000
    cpu = load_config("cpu-sr").sr
    assert tuple(cpu.denoiser.patch_size) == (64, 64) and cpu.inference.strength <= cpu.denoiser.train_strength
    assert load_config("tiny-sr").sr.denoiser.max_steps <= 10


@pytest.mark.parametrize("override, message", [
    ("sr.inference.strength=0.9", "train_strength"),
    ("sr.denoiser.pipelines=[jpeg]", "pipelines"),
    ("sr.denoiser.patch_size=[40,40]", "multiple of 16"),
    ("sr.conditioning.mechanism=concat", "structural"),
    ("sr.inference.overlap=1.0", "overlap"),
])
def test_bad_sr_settings_are_refused_with_the_key(override, message):
    with pytest.raises(SettingsError, match=message):
        load_config("cpu-sr", [override])


# --------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr") / "data"
    write_toy_dataset(folder, count=2, shape=(28, 30, 6), seed=7)
    return folder


def test_sr_command_writes_the_subject_on_the_doubled_grid(toy_data, tmp_path):
    model = tiny_sr_bundle().save(tmp_path / "model")
    subject = toy_data / "Toy-007-000"
    out = tmp_path / "out"
    assert main(["sr", str(subject), "--model", str(model), "--out", str(out), "--steps", "1"]) == 0
    source = nib.load(subject / "Toy-007-000-t2f.nii.gz")
    result = nib.load(out / "Toy-007-000-t2f.nii.gz")
    assert result.shape == (56, 60, 6)
    np.testing.assert_allclose(np.sqrt((result.affine[:3, :3] ** 2).sum(0)), [0.5, 0.5, 1.0])
    # the centre of each 2x2 block of output voxels is the input voxel centre (field of view kept)
    block = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 1]], float)
    np.testing.assert_allclose((result.affine @ block.T).T.mean(axis=0), source.affine @ [0, 0, 0, 1])
    seg = np.asarray(nib.load(out / "Toy-007-000-seg.nii.gz").dataobj)
    original = np.asarray(nib.load(subject / "Toy-007-000-seg.nii.gz").dataobj)
    np.testing.assert_array_equal(seg[::2, ::2], original)
    record = json.loads((out / "Toy-007-000-sr.json").read_text())
    assert record["output_shape"] == [56, 60, 6] and record["settings"]["steps"] == 1
    # one file of the subject in, that sequence out; existing outputs are kept
    one = tmp_path / "one.nii.gz"
    assert main(["sr", str(subject / "Toy-007-000-t1n.nii.gz"), "--model", str(model), "--out", str(one),
                 "--steps", "1"]) == 0
    assert nib.load(one).shape == (56, 60, 6)
    assert main(["sr", str(subject), "--model", str(model), "--out", str(out)]) == 2


def test_sr_command_errors_are_clear(toy_data, tmp_path, capsys):
    model = tiny_sr_bundle().save(tmp_path / "model")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    source = toy_data / "Toy-007-000" / "Toy-007-000-t2f.nii.gz"
    (lonely / "Toy-007-000-t2f.nii.gz").write_bytes(source.read_bytes())
    assert main(["sr", str(lonely / "Toy-007-000-t2f.nii.gz"), "--model", str(model), "--out",
                 str(tmp_path / "x.nii.gz")]) == 2
    assert "all four sequences" in capsys.readouterr().err
    assert main(["sr", str(toy_data / "Toy-007-000"), "--model", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "brainldm train sr" in capsys.readouterr().err
    assert main(["sr", str(toy_data / "Toy-007-000"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--strength", "1.5"]) == 2
    assert "strength" in capsys.readouterr().err


def test_sr_check_reports_sr_bicubic_and_nearest_for_both_pipelines(toy_data, tmp_path, capsys):
    model = tiny_sr_bundle().save(tmp_path / "model")
    out = tmp_path / "check"
    assert main(["sr-check", "--data", str(toy_data), "--model", str(model), "--out", str(out), "--slices", "2",
                 "--steps", "1"]) == 0
    result = json.loads((out / "sr_check.json").read_text())
    assert set(result["summary"]) == {"mri", "esrgan", "all"}
    for method in ("nearest", "bicubic", "sr"):
        assert math.isfinite(result["summary"]["all"][method]["psnr"]["mean"])
        assert 0 < result["summary"]["all"][method]["ssim"]["mean"] <= 1
    # bicubic interpolation beats nearest neighbour on smooth images
    assert result["summary"]["all"]["bicubic"]["psnr"]["mean"] > result["summary"]["all"]["nearest"]["psnr"]["mean"]
    assert len(result["rows"]) == 2 * 2 * 2 and result["timing_one_slice"]["seconds"] > 0
    assert result["timing_one_slice"]["output_shape"] == [4, 56, 60]
    assert (out / "sr_check.png").stat().st_size > 10_000 and (out / "sr_check.csv").is_file()
    assert "time per 28x30 4-sequence slice" in capsys.readouterr().out


def test_train_sr_runs_both_stages_resumes_and_exports_a_bundle(toy_data, tmp_path):
    run = tmp_path / "run"
    small = ["--set", "autoencoder.max_steps=2", "--set", "sr.denoiser.max_steps=2"]
    assert main(["train", "sr", "--config", "tiny-sr", "--data", str(toy_data), "--out", str(run), *small]) == 0
    assert main(["train", "sr", "--data", str(toy_data), "--out", str(run), "--resume",
                 "--set", "sr.denoiser.max_steps=3"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    sr_train = [r["step"] for r in records if r["stage"] == "sr" and r["split"] == "train"]
    assert sr_train == [1, 2, 3]  # resumed at step 2, not started again
    assert [r["step"] for r in records if r["stage"] == "autoencoder" and r["split"] == "train"] == [1, 2]
    val = [r for r in records if r["stage"] == "sr" and r["split"] == "val"][-1]
    assert {"val_loss", "val_psnr_sr", "val_psnr_bicubic"} <= set(val)
    assert (run / "sr" / "checkpoints" / "last.pt").is_file()
    bundle = SRBundle.load(run / "bundle")
    assert bundle.training["sr"]["step"] == 3 and bundle.patch_size == (32, 32)
    lr = _normalised_slices(1, shape=(16, 16))
    assert super_resolve_slices(lr, bundle).shape == (1, 4, 32, 32)


def test_train_sr_fine_tunes_an_sr_bundle_and_rejects_what_is_not_a_bundle(toy_data, tmp_path):
    """--init with an SR bundle: its first stage is used as it is (written to <run>/first_stage, no
    autoencoder trained) and its SR networks are the start; --init with anything else stops before
    the run folder is made."""
    from brainldm.train.sr import train_sr

    run = tmp_path / "run"
    assert main(["train", "sr", "--config", "tiny-sr", "--data", str(toy_data), "--out", str(run),
                 "--set", "autoencoder.max_steps=1", "--set", "sr.denoiser.max_steps=1"]) == 0
    tuned = train_sr("tiny-sr", toy_data, tmp_path / "tuned", init=run / "bundle", show_progress=False,
                     overrides=["sr.denoiser.max_steps=1", "sr.denoiser.lr=1e-12"])
    assert tuned.state == "finished" and tuned.bundle is not None
    assert (tmp_path / "tuned" / "first_stage" / "autoencoder.pt").is_file()
    assert not (tmp_path / "tuned" / "autoencoder").exists()
    before, after = SRBundle.load(run / "bundle"), SRBundle.load(tuned.bundle)
    for name, weights in before.autoencoder.state_dict().items():
        assert torch.equal(weights, after.autoencoder.state_dict()[name]), name
    # one step at lr 1e-12: the fine-tuned SR networks are still the bundle's own (they were the start)
    for name, weights in before.model.state_dict().items():
        assert torch.allclose(weights, after.model.state_dict()[name], atol=1e-8), name
    assert after.training["autoencoder"]["origin"].startswith("bundle ")

    with pytest.raises(Exception, match="is not a model bundle"):
        train_sr("tiny-sr", toy_data, tmp_path / "wrong", init=run / "sr", show_progress=False)
    assert not (tmp_path / "wrong").exists()
