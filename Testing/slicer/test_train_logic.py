"""brainldm.logic.train: the BrainLDMTrain module's behaviour, with real background training runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.errors import BrainLDMError, InputDataError, SettingsError  # noqa: E402
from brainldm.logic import mrml  # noqa: E402
from brainldm.logic import train as train_logic  # noqa: E402

#: A cpu-small run shrunk to seconds per step on 32^3 toy subjects.
TINY = ("autoencoder.patch_size=[32,32,32]; autoencoder.batch_size=1; autoencoder.model.channels=[8,16]; "
        "autoencoder.model.norm_num_groups=8; autoencoder.log_every=1; autoencoder.checkpoint_every=2")


@pytest.fixture
def toy_data(tmp_path) -> Path:
    control = pytest.importorskip("brainldm.train.runner", reason="brainldm.train.runner is not written yet")
    del control
    from brainldm.train.toy import write_toy_dataset

    write_toy_dataset(tmp_path / "data", count=3, shape=(32, 32, 32))
    return tmp_path / "data"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLDM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def wait_for(run_dir: Path, condition, timeout: float = 240.0) -> train_logic.TrainingProgress:
    """Poll like the module's QTimer does, until ``condition(progress)`` or the run ended."""
    deadline = time.monotonic() + timeout
    progress = train_logic.training_progress(run_dir)
    while not condition(progress):
        if not progress.alive and progress.state not in ("starting", "running"):
            break
        assert time.monotonic() < deadline, f"timed out: {progress.text}"
        time.sleep(0.5)
        progress = train_logic.training_progress(run_dir)
    return progress


def test_parameters_round_trip_and_overrides(headless, tmp_path):
    node = mrml.get_parameter_node("BrainLDMTrain")
    params = train_logic.TrainParameters(data_folder=tmp_path / "data", output_folder=tmp_path / "run",
                                         preset="thesis-3d", stage="denoiser", model_name="mine",
                                         overrides="a.b=1;\n c=[1, 2] ", gpus=2)
    mrml.write_parameters(node, params)
    assert mrml.read_parameters(node, train_logic.TrainParameters) == params
    assert params.override_list() == ["a.b=1", "c=[1, 2]"]
    with pytest.raises(SettingsError, match="key=value"):
        train_logic.TrainParameters(overrides="lr 3").override_list()
    assert set(train_logic.available_presets()) >= {"cpu-small", "thesis-3d"}


def test_bad_inputs_are_clear_errors_and_start_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SettingsError, match="output folder"):
        train_logic.start_training(train_logic.TrainParameters(data_folder=tmp_path))
    with pytest.raises(InputDataError, match="does not exist"):
        train_logic.start_training(train_logic.TrainParameters(data_folder=tmp_path / "nope", output_folder=run))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="No complete subject"):
        train_logic.start_training(train_logic.TrainParameters(data_folder=tmp_path / "empty", output_folder=run))
    with pytest.raises(BrainLDMError, match="Nothing to resume"):
        train_logic.resume_training(train_logic.TrainParameters(output_folder=run))
    with pytest.raises(BrainLDMError, match="no exported model"):
        train_logic.register_trained_model(run)
    assert not run.exists()


def test_unknown_preset(tmp_path):
    from brainldm.train.toy import write_toy_dataset

    write_toy_dataset(tmp_path / "data", count=1, shape=(16, 16, 16))
    with pytest.raises(SettingsError, match="Unknown preset 'fast'"):
        train_logic.start_training(train_logic.TrainParameters(data_folder=tmp_path / "data", preset="fast",
                                                               output_folder=tmp_path / "run"))


def test_format_duration():
    assert train_logic.format_duration(None) == "-"
    assert train_logic.format_duration(12.4) == "12 s"
    assert train_logic.format_duration(250) == "4 min 10 s"
    assert train_logic.format_duration(3900) == "1 h 05 min"
    assert train_logic.format_duration(float("nan")) == "-"


def test_launch_poll_and_stop_a_real_run(toy_data, tmp_path):
    params = train_logic.TrainParameters(data_folder=toy_data, output_folder=tmp_path / "run", preset="cpu-small",
                                         overrides=TINY + "; autoencoder.max_steps=100000")
    run = train_logic.start_training(params)
    try:
        with pytest.raises(BrainLDMError, match="already active"):
            train_logic.start_training(params)  # one run per folder
        progress = wait_for(params.output_folder, lambda p: p.state == "running" and p.step >= 1)
        assert progress.alive and progress.state == "running", progress.text
        assert progress.stage == "autoencoder" and progress.total_steps == 100000
        assert progress.epoch > 0 and progress.loss is not None and np.isfinite(progress.loss)
        assert progress.eta_s is not None and progress.eta_text != "-"
        assert 0 < progress.fraction < 0.01
    finally:
        stopped = train_logic.stop_training(params.output_folder, wait=120)
    assert not stopped.alive
    assert stopped.state == "stopped", stopped.text
    assert stopped.step >= 1
    assert run.wait(timeout=30) == 0
    assert list(params.output_folder.rglob("last.pt")), "stopping must leave a checkpoint to resume from"


@pytest.mark.slow
def test_resume_finish_and_register(toy_data, tmp_path, home):
    """Stop, resume from the checkpoint, finish both stages, register the exported model."""
    from brainldm.logic.catalogue import model_catalogue, resolve_model

    tiny_all = (TINY + "; autoencoder.max_steps=4; denoiser.patch_size=[32,32,32]; denoiser.batch_size=2; "
                "denoiser.model.channels=[8,16]; denoiser.model.attention_levels=[false,false]; "
                "denoiser.model.norm_num_groups=8; denoiser.model.num_head_channels=8; denoiser.max_steps=4; "
                "denoiser.val_every=2; autoencoder.val_every=2; denoiser.checkpoint_every=2")
    params = train_logic.TrainParameters(data_folder=toy_data, output_folder=tmp_path / "run", preset="cpu-small",
                                         overrides=tiny_all, model_name="Toy model")
    train_logic.start_training(params)
    wait_for(params.output_folder, lambda p: p.step >= 1)
    first = train_logic.stop_training(params.output_folder, wait=120)
    assert first.state == "stopped", first.text
    train_logic.resume_training(params)
    final = wait_for(params.output_folder, lambda p: p.state in ("finished", "failed"), timeout=900)
    assert final.state == "finished", final.text
    assert final.bundle is not None
    entry = train_logic.register_trained_model(params.output_folder, title=params.model_name)
    assert entry.title == "Toy model" and (home / "models") in entry.path.parents
    assert any(e.model_id == entry.model_id and e.source == "user" for e in model_catalogue())
    assert resolve_model(entry.model_id) == entry.path
