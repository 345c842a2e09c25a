"""The shipped default model (Resources/models): small, complete, loadable, and its card is true.

The slow test reruns ``brainldm demo`` and checks that it prints the Dice of the model card
(issue: "prints a Dice that matches the model card").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MAX_MB = 50.0


def _shipped_default() -> Path:
    from brainldm.logic.catalogue import default_model

    entry = default_model()
    if entry is None or entry.source != "shipped":
        pytest.skip("no default model is shipped in Resources/models")
    return Path(entry.path)


def test_default_model_is_small_complete_and_loads():
    from brainldm.nets.bundle import ModelBundle

    folder = _shipped_default()
    assert folder.resolve().is_relative_to((REPOSITORY / "Resources" / "models").resolve())
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= MAX_MB, f"the shipped default model takes {size_mb:.1f} MB (limit {MAX_MB} MB)"
    bundle = ModelBundle.load(folder)
    assert bundle.inference, "bundle.json has no recommended detection settings (\"inference\")"
    card = (folder / "MODEL_CARD.md").read_text()
    for needle in ("Training time", "held-out", "brainldm demo", "Limitations", "FLAIR"):
        assert needle in card, f"MODEL_CARD.md says nothing about {needle!r}"


def _card_demo_dice(card: str) -> float:
    section = card.split("### `brainldm demo`", 1)[1]
    return float(re.search(r"Dice (\d\.\d+)", section).group(1))


@pytest.mark.slow
def test_demo_reproduces_the_model_card(tmp_path):
    from brainldm.logic.demo import DemoRequest, run_demo

    folder = _shipped_default()
    expected = _card_demo_dice((folder / "MODEL_CARD.md").read_text())
    report = run_demo(DemoRequest(out_dir=tmp_path / "demo"))
    assert report["model"]["model_id"], "the demo did not use the default model"
    assert report["metrics"]["dice"] == pytest.approx(expected, abs=0.005)
    assert (tmp_path / "demo" / "overview.png").is_file()
