"""Resources/models/make_default_model.py: the GPU-rental path (--stop-after train, --set, --workers)
trains a real (tiny) bundle on generated phantoms and stops before measuring anything."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "Resources" / "models" / "make_default_model.py"


@pytest.fixture()
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # a test-sized training set; everything else is the script as shipped
    monkeypatch.setattr(module, "TRAIN_PHANTOMS", dict(n=2, seed=3, diameters=(20,), healthy_fraction=0.5))
    return module


def test_stop_after_train_gives_a_bundle_and_measures_nothing(script, tmp_path, capsys):
    work = tmp_path / "work"
    code = script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train", "--workers", "2",
                        "--set", "autoencoder.max_steps=2", "--set", "denoiser.max_steps=2",
                        "--set", "split.train=1.0", "--set", "split.val=0.0", "--set", "split.test=0.0"])
    assert code == 0
    bundle = work / "run" / "bundle"
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["training"]["machine"]  # where it was trained (a GPU when there is one)
    assert manifest["training"]["denoiser"]["step"] == 2
    assert len(json.loads((work / "data" / "train" / "phantoms.json").read_text())["subjects"]) == 2
    # nothing measured yet: no validation/test phantoms, no grid search, no card numbers
    assert not (work / "data" / "validation").exists() and not (work / "grid").exists()
    assert "stopping as asked" in capsys.readouterr().out
    # run again: the trained bundle is reused, not retrained
    mtime = (bundle / "denoiser.pt").stat().st_mtime_ns
    assert script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train"]) == 0
    assert (bundle / "denoiser.pt").stat().st_mtime_ns == mtime


def test_finetune_keeps_the_first_stage_and_says_where_the_denoiser_started(script, tmp_path):
    """--finetune: the denoiser of WORK/run/bundle trained further with another preset, its first
    stage kept; the exported bundle (and its card) says what it started from and how long each
    part took on which machine."""
    work = tmp_path / "work"
    tiny = ["--set", "split.train=1.0", "--set", "split.val=0.0", "--set", "split.test=0.0"]
    assert script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train", "--workers", "1",
                        "--set", "autoencoder.max_steps=2", "--set", "denoiser.max_steps=2", *tiny]) == 0
    first = work / "run" / "bundle"
    preset = tmp_path / "finetune.yaml"
    preset.write_text("extends: tiny\nsplit: {train: 1.0, val: 0.0, test: 0.0}\n"
                      "denoiser: {max_steps: 3}\n")
    bundle = script.finetune(work, str(preset), work / "data" / "train", first)
    assert bundle == work / "finetune" / "bundle"
    manifest = json.loads((bundle / "bundle.json").read_text())
    before = json.loads((first / "bundle.json").read_text())
    training = manifest["training"]
    assert training["denoiser"]["step"] == 3
    assert manifest["model_id"] == f"{before['model_id']}-finetuned"
    init = training["denoiser"]["init"]
    assert init["from"] == str(first) and init["model_id"] == before["model_id"]
    assert init["denoiser"]["step"] == 2 and init["machine"] == before["training"]["machine"]
    # the first stage is the first bundle's, and so is the record of its training
    assert (bundle / "autoencoder.pt").read_bytes() == (first / "autoencoder.pt").read_bytes()
    assert training["autoencoder"]["step"] == before["training"]["autoencoder"]["step"] == 2
    assert training["autoencoder"]["origin"] == f"bundle {first.resolve()}"
    card = (bundle / "MODEL_CARD.md").read_text()
    assert f"fine-tuned from {before['model_id']} (2 steps" in card
    line = script.training_time_line(training, "here")
    assert "then fine-tuned for" in line and "(3 steps, windows [32, 32, 32]" in line
    # run again: reused, not retrained
    mtime = (bundle / "denoiser.pt").stat().st_mtime_ns
    assert script.finetune(work, str(preset), work / "data" / "train", first) == bundle
    assert (bundle / "denoiser.pt").stat().st_mtime_ns == mtime


def test_a_second_fine_tune_keeps_the_whole_history(script, tmp_path):
    """Fine-tuning an already fine-tuned bundle: its init record nests the earlier one, and the first
    stage keeps the machine it was trained on (not the machine the parent bundle was exported on)."""
    work = tmp_path / "work"
    tiny = ["--set", "split.train=1.0", "--set", "split.val=0.0", "--set", "split.test=0.0"]
    assert script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train", "--workers", "1",
                        "--set", "autoencoder.max_steps=2", "--set", "denoiser.max_steps=2", *tiny]) == 0
    first = work / "run" / "bundle"
    manifest = json.loads((first / "bundle.json").read_text())
    manifest["training"]["autoencoder"]["machine"] = "the GPU it was trained on"
    (first / "bundle.json").write_text(json.dumps(manifest))
    preset = tmp_path / "finetune.yaml"
    preset.write_text("extends: tiny\nsplit: {train: 1.0, val: 0.0, test: 0.0}\ndenoiser: {max_steps: 3}\n")
    second = script.finetune(work, str(preset), work / "data" / "train", first)
    third = script.finetune(tmp_path / "again", str(preset), work / "data" / "train", second)
    training = json.loads((third / "bundle.json").read_text())["training"]
    init = training["denoiser"]["init"]
    assert init["model_id"] == json.loads((second / "bundle.json").read_text())["model_id"]
    assert init["init"]["model_id"] == manifest["model_id"] and init["init"]["denoiser"]["step"] == 2
    assert training["autoencoder"]["machine"] == "the GPU it was trained on"
