"""Training loops on tiny synthetic subjects: losses, resume, skipped subjects, denoiser, export, fine-tuning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from brainldm.errors import BrainLDMError, SettingsError
from brainldm.nets.bundle import ModelBundle
from brainldm.train.autoencoder import train_autoencoder
from brainldm.train.control import runs_status
from brainldm.train.denoiser import train_denoiser
from brainldm.train.export import export_bundle
from brainldm.train.rundir import RunDir
from brainldm.train.runner import train_all
from brainldm.train.state import load_checkpoint
from brainldm.train.toy import tiny_overrides, write_toy_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "data"
    write_toy_dataset(folder, count=5, shape=(40, 40, 40), seed=1)
    return folder


@pytest.fixture(scope="module")
def ae_run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ae"
    result = train_autoencoder("cpu-small", data_dir, run, overrides=tiny_overrides(max_steps=14, every=7),
                               show_progress=False)
    assert result.state == "finished" and result.step == 14
    return run


def train_records(run):
    return [r for r in RunDir(run).read_metrics() if r["split"] == "train"]


def test_autoencoder_learns_and_writes_its_run_folder(ae_run):
    records = train_records(ae_run)
    assert [r["step"] for r in records] == list(range(1, 15))
    first = np.mean([r["l1"] for r in records[:3]])
    last = np.mean([r["l1"] for r in records[-3:]])
    assert last < first, (first, last)
    for key in ("loss", "l1", "reg", "lr", "seconds", "epoch"):
        assert all(np.isfinite(r[key]) for r in records), key
    val = [r for r in RunDir(ae_run).read_metrics() if r["split"] == "val"]
    assert [r["step"] for r in val] == [7, 14]
    assert all(0 < r["val_mae_brain"] < 2 for r in val)
    status = runs_status(ae_run)
    assert status.state == "finished" and status.step == 14 and status.total_steps == 14
    assert status.stage == "autoencoder" and "val_mae_brain" in status.losses
    run = RunDir(ae_run)
    assert run.config_file.is_file() and run.last_checkpoint.is_file() and run.best_checkpoint.is_file()
    assert run.log_file.is_file()
    assert load_checkpoint(run.last_checkpoint)["step"] == 14


def test_resume_continues_at_the_same_step_with_the_same_result(data_dir, tmp_path):
    overrides = tiny_overrides(max_steps=8, every=4)
    straight = train_autoencoder("cpu-small", data_dir, tmp_path / "straight", overrides=overrides,
                                 show_progress=False)
    # The same run, interrupted after 4 steps and resumed.
    first = train_autoencoder("cpu-small", data_dir, tmp_path / "resumed",
                              overrides=[*overrides, "autoencoder.max_steps=4"], show_progress=False)
    assert first.step == 4
    with pytest.raises(BrainLDMError, match="--resume"):
        train_autoencoder("cpu-small", data_dir, tmp_path / "resumed", overrides=overrides, show_progress=False)
    second = train_autoencoder("cpu-small", data_dir, tmp_path / "resumed", overrides=overrides, resume=True,
                               show_progress=False)
    assert second.step == straight.step == 8
    a = load_checkpoint(RunDir(tmp_path / "straight").last_checkpoint)["networks"]["autoencoder"]
    b = load_checkpoint(RunDir(tmp_path / "resumed").last_checkpoint)["networks"]["autoencoder"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    losses_a = [r["loss"] for r in train_records(tmp_path / "straight")]
    losses_b = [r["loss"] for r in train_records(tmp_path / "resumed")]
    assert [r["step"] for r in train_records(tmp_path / "resumed")] == list(range(1, 9))
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    # Resuming with other network settings is refused with a clear message.
    with pytest.raises(SettingsError, match="num_res_blocks"):
        train_autoencoder("cpu-small", data_dir, tmp_path / "resumed", resume=True, show_progress=False,
                          overrides=[*overrides, "autoencoder.max_steps=9", "autoencoder.model.num_res_blocks=2"])


def test_incomplete_subjects_are_listed(data_dir, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    broken = min(folder.iterdir())
    next(broken.glob("*-t2f.nii.gz")).unlink()
    run = tmp_path / "run"
    result = train_autoencoder("cpu-small", folder, run, overrides=tiny_overrides(max_steps=1, every=1),
                               show_progress=False)
    assert result.state == "finished"
    status = runs_status(run)
    assert any(broken.name in line and "t2f" in line for line in status.skipped_subjects), status.skipped_subjects
    assert broken.name in RunDir(run).log_file.read_text()


def test_zero_usable_subjects_is_a_clear_error(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BrainLDMError, match="No subjects found"):
        train_autoencoder("cpu-small", empty, tmp_path / "r1", overrides=tiny_overrides(1, 1), show_progress=False)
    folder = tmp_path / "incomplete"
    shutil.copytree(data_dir, folder)
    for subject in folder.iterdir():
        next(subject.glob("*-t1c.nii.gz")).unlink()
    with pytest.raises(BrainLDMError, match="No usable training subjects") as info:
        train_autoencoder("cpu-small", folder, tmp_path / "r2", overrides=tiny_overrides(1, 1), show_progress=False)
    assert "t1c" in str(info.value)
    assert runs_status(tmp_path / "r2").state == "failed"


def test_denoiser_trains_exports_and_fine_tunes(ae_run, data_dir, tmp_path):
    run = tmp_path / "ldm"
    result = train_denoiser("cpu-small", data_dir, run, autoencoder=ae_run,
                            overrides=tiny_overrides(max_steps=6, every=3), show_progress=False)
    assert result.state == "finished" and result.step == 6
    records = train_records(run)
    assert all(np.isfinite(r["mse"]) for r in records) and 0.2 < records[0]["mse"] < 5
    state = load_checkpoint(RunDir(run).last_checkpoint)
    latent_scale = state["extra"]["latent_scale"]
    assert latent_scale > 0 and state["ema"] is not None

    bundle_dir = export_bundle(run, tmp_path / "bundle", model_id="toy-model")
    bundle = ModelBundle.load(bundle_dir)
    assert bundle.model_id == "toy-model" and bundle.latent_scale == pytest.approx(latent_scale)
    assert bundle.patch_size == (16, 16, 16) and bundle.compression == 2
    assert bundle.training["denoiser"]["step"] == 6 and bundle.training["autoencoder"]["step"] == 14
    assert "Research use only" in bundle.model_card
    # Exported denoiser weights are the EMA weights of best.pt.
    best = load_checkpoint(RunDir(run).best_checkpoint)
    for name, value in bundle.denoiser.state_dict().items():
        assert torch.equal(value, best["ema"]["shadow"][name]), name
    # Exported first stage = the autoencoder run's best weights.
    ae_best = load_checkpoint(RunDir(ae_run).best_checkpoint)["networks"]["autoencoder"]
    for name, value in bundle.autoencoder.state_dict().items():
        assert torch.equal(value, ae_best[name]), name

    # Fine-tune from the bundle (its first stage and latent_scale), with frozen input blocks.
    tuned = tmp_path / "tuned"
    train_denoiser("cpu-small", data_dir, tuned, init=bundle_dir,
                   overrides=[*tiny_overrides(max_steps=2, every=2), "denoiser.freeze=[conv_in]"],
                   show_progress=False)
    tuned_state = load_checkpoint(RunDir(tuned).last_checkpoint)
    assert tuned_state["extra"]["latent_scale"] == pytest.approx(latent_scale)
    weights = tuned_state["networks"]["denoiser"]
    initial = bundle.denoiser.state_dict()
    frozen = [k for k in weights if k.startswith("conv_in")]
    assert frozen and all(torch.equal(weights[k], initial[k]) for k in frozen)
    assert any(not torch.equal(weights[k], initial[k]) for k in weights if not k.startswith("conv_in"))


def test_autoencoder_fine_tuning_with_frozen_encoder(ae_run, data_dir, tmp_path):
    run = tmp_path / "ft"
    train_autoencoder("cpu-small", data_dir, run, init=ae_run,
                      overrides=[*tiny_overrides(max_steps=2, every=2), "autoencoder.freeze=[encoder]"],
                      show_progress=False)
    start = load_checkpoint(RunDir(ae_run).best_checkpoint)["networks"]["autoencoder"]
    end = load_checkpoint(RunDir(run).last_checkpoint)["networks"]["autoencoder"]
    encoder = [k for k in end if ".encoder." in k]
    decoder = [k for k in end if ".decoder." in k]
    assert encoder and decoder
    assert all(torch.equal(start[k], end[k]) for k in encoder)
    assert any(not torch.equal(start[k], end[k]) for k in decoder)
    with pytest.raises(SettingsError, match="matches no parameter"):
        train_autoencoder("cpu-small", data_dir, tmp_path / "bad",
                          overrides=[*tiny_overrides(1, 1), "autoencoder.freeze=[no_such_block]"],
                          show_progress=False)


def test_two_dimensional_slices(data_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="brainldm.train")
    overrides = [
        *tiny_overrides(max_steps=3, every=3),
        "autoencoder.model.spatial_dims=2", "autoencoder.patch_size=[32,32]", "autoencoder.model.attention=false",
        "autoencoder.model.num_res_blocks=1", "autoencoder.adversarial.weight=0",
        "denoiser.model.spatial_dims=2", "denoiser.patch_size=[32,32]", "denoiser.model.num_res_blocks=1",
        "denoiser.model.mid_attention=false", "denoiser.model.position_embedding=coords",
    ]
    ae = train_autoencoder("thesis-2d", data_dir, tmp_path / "ae2d", overrides=overrides, show_progress=False)
    assert ae.step == 3
    dn = train_denoiser("thesis-2d", data_dir, tmp_path / "dn2d", autoencoder=tmp_path / "ae2d",
                        overrides=overrides, show_progress=False)
    assert dn.step == 3
    state = load_checkpoint(RunDir(tmp_path / "dn2d").last_checkpoint)
    assert state["config"]["autoencoder"]["model"]["spatial_dims"] == 2
    assert all(np.isfinite(r["mse"]) for r in train_records(tmp_path / "dn2d"))
    # small 2D data: both stages drew whole batches from the stacked slices / latents
    assert "2D training slices stacked on cpu" in caplog.text and "2D latents stacked on cpu" in caplog.text


def test_adversarial_loss_after_warm_up(data_dir, tmp_path):
    run = tmp_path / "gan"
    train_autoencoder("cpu-small", data_dir, run,
                      overrides=[*tiny_overrides(max_steps=4, every=4), "autoencoder.adversarial.weight=0.1",
                                 "autoencoder.adversarial.start_step=2",
                                 "autoencoder.adversarial.discriminator={channels: 8, num_layers: 2}"],
                      show_progress=False)
    records = train_records(run)
    assert "d_loss" not in records[0] and "d_loss" not in records[1]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_adv"]) for r in records[2:])
    state = load_checkpoint(RunDir(run).last_checkpoint)
    assert "discriminator" in state["networks"] and "discriminator" in state["optimizers"]
    status = json.loads(RunDir(run).status_file.read_text())
    assert status["state"] == "finished"


def test_all_stages_then_bundle(data_dir, tmp_path):
    run = tmp_path / "all"
    result = train_all("cpu-small", data_dir, run, overrides=tiny_overrides(max_steps=2, every=2), show_progress=False)
    assert result.state == "finished" and result.bundle == run / "bundle"
    bundle = ModelBundle.load(run / "bundle")
    assert bundle.training["autoencoder"]["step"] == 2 and bundle.training["denoiser"]["step"] == 2
    status = runs_status(run)
    assert status.state == "finished" and "bundle" in status.message
    assert runs_status(run / "autoencoder").state == "finished"
    # Resuming a finished "all" run does not train the first stage again.
    before = RunDir(run / "autoencoder").last_checkpoint.stat().st_mtime_ns
    train_all(None, data_dir, run, resume=True, overrides=["denoiser.max_steps=3"], show_progress=False)
    assert RunDir(run / "autoencoder").last_checkpoint.stat().st_mtime_ns == before
    assert load_checkpoint(RunDir(run / "denoiser").last_checkpoint)["step"] == 3


def test_bf16_autocast_on_cpu(data_dir, tmp_path):
    result = train_autoencoder("cpu-small", data_dir, tmp_path / "bf16",
                               overrides=[*tiny_overrides(max_steps=2, every=2), "precision=bf16"], show_progress=False)
    assert result.state == "finished"
    assert all(np.isfinite(r["l1"]) for r in train_records(tmp_path / "bf16"))


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_subjects_end_to_end(shared_data, tmp_path):
    """Three real BraTS-like subjects (different orientations, pseudo labels): both stages and a bundle."""
    run = tmp_path / "real"
    overrides = [*tiny_overrides(max_steps=3, every=3), "split.train=1.0", "split.val=0.0", "split.test=0.0"]
    result = train_all("cpu-small", shared_data / "brats_like", run, overrides=overrides, show_progress=False)
    assert result.state == "finished"
    bundle = ModelBundle.load(result.bundle)
    assert bundle.training["denoiser"]["data"]["n_train"] == 3
    state = load_checkpoint(RunDir(run / "denoiser").last_checkpoint)
    assert state["data"]["validating_on_train"] is True
