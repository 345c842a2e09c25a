"""Resources/models/make_synthesis_model.py: trains a real (tiny) synthesis bundle on generated
phantoms, tries mask guidance values on validation phantoms, stores the chosen one in bundle.json
and writes a card with the held-out check's numbers."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "Resources" / "models" / "make_synthesis_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("make_synthesis_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(found: int, adds: int, n: int = 4, fraction: float = 0.5) -> dict:
    entry = lambda k: {"count": k, "n": n, "rate": k / n, "ci95": [0.0, 1.0]}  # noqa: E731
    return {"summary": {"n": n, "found": {"either": entry(found)}, "adds_none": {"all": entry(adds)}},
            "cases": [{"flair-percentile_mask_fraction": fraction}] * (n - 1) + [{"flair-percentile_mask_fraction": None}]}


def test_mask_guidance_choice_best_found_rate_then_clearest_margin_never_adding_lesions():
    script = _load()
    checks = {0.0: _check(1, 4, fraction=0.1), 2.0: _check(4, 4, fraction=0.4), 3.0: _check(4, 4, fraction=0.45),
              4.0: _check(4, 2, fraction=0.6)}
    assert script.choose_mask_guidance(checks) == 3.0
    assert script.mean_mask_fraction(checks[3.0]) == pytest.approx(0.45)  # cases without a number left out
    # equal in both: the smaller M
    assert script.choose_mask_guidance({2.0: _check(4, 4), 1.0: _check(4, 4)}) == 1.0
    # the best found rate is useless when the healthy-masked syntheses add lesions
    assert script.choose_mask_guidance({1.0: _check(2, 4), 6.0: _check(4, 1)}) == 1.0
    assert script.choose_mask_guidance({6.0: _check(4, 1)}) == 0.0
    table = script.selection_table(checks, 3.0)
    assert "| 3 (chosen) | 4/4 | 4/4 | 0.45 |" in table and "| 4 | 4/4 | 2/4 | 0.60 |" in table


@pytest.mark.slow
def test_make_synthesis_model_end_to_end(tmp_path, monkeypatch):
    script = _load()
    monkeypatch.setattr(script, "TRAIN_PHANTOMS", dict(n=2, seed=3, diameters=(20,), healthy_fraction=0.0))
    monkeypatch.setattr(script, "SELECTION_PHANTOMS", dict(n=1, seed=5, diameters=(20,), healthy_fraction=0.0))
    monkeypatch.setattr(script, "TEST_PHANTOMS", dict(n=1, seed=7, diameters=(20,), healthy_fraction=0.0))
    work = tmp_path / "work"
    tiny = ["--set", "autoencoder.max_steps=2", "--set", "synthesis.mask_autoencoder.max_steps=2",
            "--set", "synthesis.denoiser.max_steps=2", "--set", "split.train=1.0", "--set", "split.val=0.0",
            "--set", "split.test=0.0"]
    import make_default_model  # the helpers the script shares, imported by it from Resources/models

    monkeypatch.setattr(make_default_model, "REPO", tmp_path / "repo")  # --install copies there
    code = script.main(["--work", str(work), "--config", "tiny-synth", *tiny, "--mask-guidance", "0,2",
                        "--steps", "2", "--detector-model", "none", "--workers", "1", "--install"])
    assert code == 0
    bundle = work / "synth-run" / "bundle"
    manifest = json.loads((bundle / "bundle.json").read_text())
    chosen = manifest["inference"]["mask_guidance"]
    assert chosen in (0.0, 2.0) and manifest["inference"]["steps"] == 2
    for m in ("m0", "m2"):
        assert (work / "select" / m / "check.json").is_file()
    check = json.loads((work / f"check-m{chosen:g}-flair" / "check.json").read_text())
    assert check["synthesis_settings"]["mask_guidance"] == chosen  # the held-out check used the choice
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Measured" in card and "(chosen)" in card and "Held-out phantoms" in card
    assert "make_synthesis_model.py --work WORK" in card
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    installed = tmp_path / "repo" / "Resources" / "models" / manifest["model_id"]
    assert SynthesisBundle.verify(installed)["inference"]["mask_guidance"] == chosen
    assert (installed / "MODEL_CARD.md").read_text() == card
    # a second run measures nothing again and does not duplicate the card's sections
    assert script.main(["--work", str(work), "--config", "tiny-synth", "--mask-guidance", "0,2", "--steps", "2",
                        "--detector-model", "none"]) == 0
    assert (bundle / "MODEL_CARD.md").read_text().count("## Measured") == 1
