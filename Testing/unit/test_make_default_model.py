"""Resources/models/make_default_model.py: the GPU-rental path (--stop-after train, --set, --workers)
trains a real (tiny) bundle on generated phantoms and stops before measuring anything."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "Resources" / "models" / "make_default_model.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # a test-sized training set; everything else is the script as shipped (this module object is this
    # test module's own)
    module.TRAIN_PHANTOMS = dict(n=2, seed=3, diameters=(20,), healthy_fraction=0.5)
    return module


TINY_SPLIT = ["--set", "split.train=1.0", "--set", "split.val=0.0", "--set", "split.test=0.0"]


@pytest.fixture(scope="module")
def trained(script, tmp_path_factory):
    """WORK after the GPU-rental path (--stop-after train) trained a tiny bundle, and what it printed.
    (One training shared by the tests below: each used to train its own.)"""
    work = tmp_path_factory.mktemp("make-default") / "work"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train", "--workers", "2",
                            "--set", "autoencoder.max_steps=2", "--set", "denoiser.max_steps=2", *TINY_SPLIT])
    assert code == 0
    return work, printed.getvalue()


@pytest.fixture(scope="module")
def finetuned(script, trained, tmp_path_factory):
    """The trained bundle fine-tuned once (--finetune) with a 3-step preset; its first stage's record
    first says it was trained on another machine (as when a GPU trained it)."""
    work, _ = trained
    first = work / "run" / "bundle"
    manifest = json.loads((first / "bundle.json").read_text())
    manifest["training"]["autoencoder"]["machine"] = "the GPU it was trained on"
    (first / "bundle.json").write_text(json.dumps(manifest))
    preset = tmp_path_factory.mktemp("presets") / "finetune.yaml"
    preset.write_text("extends: tiny\nsplit: {train: 1.0, val: 0.0, test: 0.0}\ndenoiser: {max_steps: 3}\n")
    return first, preset, script.finetune(work, str(preset), work / "data" / "train", first)


def test_stop_after_train_gives_a_bundle_and_measures_nothing(script, trained):
    work, printed = trained
    bundle = work / "run" / "bundle"
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["training"]["machine"]  # where it was trained (a GPU when there is one)
    assert manifest["training"]["denoiser"]["step"] == 2
    assert len(json.loads((work / "data" / "train" / "phantoms.json").read_text())["subjects"]) == 2
    # nothing measured yet: no validation/test phantoms, no grid search, no card numbers
    assert not (work / "data" / "validation").exists() and not (work / "grid").exists()
    assert "stopping as asked" in printed
    # run again: the trained bundle is reused, not retrained
    mtime = (bundle / "denoiser.pt").stat().st_mtime_ns
    assert script.main(["--work", str(work), "--config", "tiny", "--stop-after", "train"]) == 0
    assert (bundle / "denoiser.pt").stat().st_mtime_ns == mtime


def test_finetune_keeps_the_first_stage_and_says_where_the_denoiser_started(script, trained, finetuned):
    """--finetune: the denoiser of WORK/run/bundle trained further with another preset, its first
    stage kept; the exported bundle (and its card) says what it started from and how long each
    part took on which machine."""
    work, _ = trained
    first, preset, bundle = finetuned
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


def test_a_second_fine_tune_keeps_the_whole_history(script, trained, finetuned, tmp_path):
    """Fine-tuning an already fine-tuned bundle: its init record nests the earlier one, and the first
    stage keeps the machine it was trained on (not the machine the parent bundle was exported on)."""
    work, _ = trained
    first, preset, second = finetuned
    third = script.finetune(tmp_path / "again", str(preset), work / "data" / "train", second)
    training = json.loads((third / "bundle.json").read_text())["training"]
    init = training["denoiser"]["init"]
    first_id = json.loads((first / "bundle.json").read_text())["model_id"]
    assert init["model_id"] == json.loads((second / "bundle.json").read_text())["model_id"]
    assert init["init"]["model_id"] == first_id and init["init"]["denoiser"]["step"] == 2
    assert training["autoencoder"]["machine"] == "the GPU it was trained on"
