"""``brainldm grid-search``: the grid over N, C and omega end to end with tiny random-weight bundles.

Two small toy subjects (:mod:`brainldm.train.toy`, the fast phantoms the other unit tests use) and
two tiny untrained bundles with different position embeddings (``coords``: whole-volume mode,
``sin``: sliding windows). What is tested is the wiring: every combination runs, files and figure
are written, the numbers are exactly those of ``evaluate()`` / ``detect()`` with the same settings,
shared work (encoding, inversion) changes nothing, errors are clear, Ctrl-C keeps the results so far.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from brainldm.cli import main
from brainldm.data.io import find_subjects, load_subject
from brainldm.data.preprocess import PreprocessConfig
from brainldm.detect.pipeline import counterfactual_from_inversion, detect, encode_subject, invert_latent
from brainldm.detect.settings import DetectionSettings
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.evaluate.evaluation import EvaluationRequest, evaluate
from brainldm.evaluate.grid_search import GridSearchRequest, best_combination, check_request, grid_search
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.bundle import ModelBundle
from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser
from brainldm.train.toy import write_toy_dataset

STEPS, GUIDANCE, MIX = (2, 3), (0.0, 4.0), 0.97
FIXED = dict(overlap=0.0)  # one latent window per subject for the 'sin' model: fast


def tiny_bundle(position: str) -> ModelBundle:
    """Tiny random-weight networks; the zero-initialised output layers are randomised so the untrained
    denoiser predicts label-dependent noise (guidance then changes the counterfactual)."""
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(kind="kl", spatial_dims=3, latent_channels=4, channels=(8, 16), num_res_blocks=1,
                               attention=False, norm_num_groups=8)
    dn_cfg = DenoiserConfig(spatial_dims=3, latent_channels=4, channels=(16, 32), attention_levels=(False, False),
                            num_res_blocks=1, norm_num_groups=8, num_head_channels=16, position_embedding=position,
                            position_dim=8)
    autoencoder, denoiser = build_autoencoder(ae_cfg).eval(), build_denoiser(dn_cfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in denoiser.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return ModelBundle(
        autoencoder=autoencoder, denoiser=denoiser, autoencoder_config=ae_cfg, denoiser_config=dn_cfg,
        preprocess_config=PreprocessConfig(margin=2, multiple=8), latent_scale=1.0,
        schedule_config={"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        model_id=f"tiny-{position}", patch_size=(32, 32, 32),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    write_toy_dataset(root / "data", count=2, shape=(32, 32, 32), seed=5)
    models = [tiny_bundle(p).save(root / f"model-{p}") for p in ("coords", "sin")]
    return root, models


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLDM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def cli_run(setup):
    """``brainldm grid-search`` once for the module: 2 models x (2 N x 2 C x 1 omega) x 2 subjects."""
    root, models = setup
    out = root / "out"
    argv = ["grid-search", "--data", str(root / "data"), "--split", "all", "--out", str(out),
            "--steps", ",".join(map(str, STEPS)), "--guidance", ",".join(map(str, GUIDANCE)), "--mix", str(MIX),
            "--overlap", "0"]
    for model in models:
        argv += ["--model", str(model)]
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, out, stdout.getvalue(), json.loads((out / "grid.json").read_text())


def test_cli_runs_the_whole_grid_and_writes_the_files(cli_run):
    code, out, printed, grid = cli_run
    assert code == 0 and grid["complete"] and not grid["interrupted"]
    assert [m["position_embedding"] for m in grid["models"]] == ["coords", "sin"]
    assert [m["mode"] for m in grid["models"]] == ["whole", "windows"]
    assert grid["grid"] == {"steps": list(STEPS), "guidance": list(GUIDANCE), "mix": [MIX],
                            "thresholds": [{"threshold": "otsu", "threshold_value": 0.0}]}
    assert grid["settings"]["overlap"] == 0.0 and "steps" not in grid["settings"]
    combos = grid["combinations"]
    assert len(combos) == 2 * len(STEPS) * len(GUIDANCE)
    assert {(c["model"], c["steps"], c["guidance"], c["mix"]) for c in combos} == {
        (m, n, c, MIX) for m in ("tiny-coords", "tiny-sin") for n in STEPS for c in GUIDANCE}
    for c in combos:
        assert len(c["subjects"]) == 2
        dice = c["summary"]["all"]["model"]["dice"]
        assert dice["mean"] == pytest.approx(np.mean([r["model_dice"] for r in c["subjects"]]))
        assert dice["ci95"][0] <= dice["mean"] <= dice["ci95"][1]
        assert c["seconds_per_subject"] > 0 and c["wall_seconds"] > 0
    # a random model still gives different numbers for every N and C (else the comparisons below prove nothing)
    assert len({c["summary"]["all"]["model"]["dice"]["mean"] for c in combos}) == len(combos)
    assert len(grid["encoding"]) == 2 * 2  # first stage once per model and subject
    with open(out / "grid.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(combos) * 2
    assert {"model", "position_embedding", "steps", "guidance", "mix", "subject", "model_dice",
            "model_specificity"} <= set(rows[0])
    assert (out / "grid.png").stat().st_size > 10_000
    best = grid["best"]
    assert best["dice"]["mean"] == pytest.approx(max(c["summary"]["all"]["model"]["dice"]["mean"] for c in combos))
    assert set(grid["best_per_model"]) == {"tiny-coords", "tiny-sin"}
    assert best["settings"] == {"encoder": "edict", "steps": best["steps"], "guidance": best["guidance"], "mix": MIX,
                                "threshold": "otsu", "threshold_value": 0.0, "smoothing": 0.0, "noise_level": 0}
    assert f"best overall: {best['model']} N={best['steps']} C={best['guidance']:g}" in printed


@pytest.mark.parametrize("model_index, steps, guidance", [(0, 3, 4.0), (1, 3, 4.0), (1, 2, 0.0)])
def test_numbers_equal_evaluate_with_the_same_settings(cli_run, setup, tmp_path, model_index, steps, guidance):
    _, _, _, grid = cli_run
    root, models = setup
    bundle = ModelBundle.load(models[model_index])
    settings = DetectionSettings(steps=steps, guidance=guidance, mix=MIX, **FIXED)
    expected = evaluate(EvaluationRequest(data_dir=root / "data", out_dir=tmp_path, split="all", settings=settings),
                        bundle)
    combo = next(c for c in grid["combinations"] if c["model"] == bundle.model_id and c["steps"] == steps
                 and c["guidance"] == guidance)
    got = {r["subject"]: r for r in combo["subjects"]}
    assert set(got) == {r["subject"] for r in expected["subjects"]}
    for row in expected["subjects"]:
        for key in ("model_dice", "model_specificity", "model_sensitivity", "diameter_mm", "size_group"):
            assert got[row["subject"]][key] == row[key], key
    assert combo["summary"]["all"]["model"] == expected["summary"]["all"]["model"]


@pytest.mark.parametrize("encoder", ["edict", "ddim"])
def test_one_inversion_for_every_guidance_equals_full_detection(setup, encoder):
    root, _ = setup
    subject = load_subject(find_subjects(root / "data")[0])
    bundle = tiny_bundle("coords")
    low, high = (DetectionSettings(encoder=encoder, steps=3, guidance=c, **FIXED) for c in (0.0, 4.0))
    encoded = encode_subject(subject, bundle, low)
    inverted = invert_latent(encoded, low)
    reused = [counterfactual_from_inversion(encoded, inverted, s) for s in (low, high)]  # high reuses low's inversion
    for settings, result in zip((low, high), reused):
        full = detect(subject, bundle, settings)
        np.testing.assert_array_equal(result.counterfactual, full.counterfactual)
        np.testing.assert_array_equal(result.anomaly_map, full.anomaly_map)
        np.testing.assert_array_equal(result.segmentation, full.segmentation)
        assert result.metrics == full.metrics
        assert result.timings["denoiser_calls"] == full.timings["denoiser_calls"]
    assert np.abs(reused[0].counterfactual - reused[1].counterfactual).max() > 0
    # an inversion made with other settings is refused rather than silently reused
    with pytest.raises(SettingsError, match="invert it again"):
        counterfactual_from_inversion(encoded, inverted, DetectionSettings(encoder=encoder, steps=2, **FIXED))
    with pytest.raises(SettingsError, match="encode it again"):
        invert_latent(encoded, DetectionSettings(encoder=encoder, steps=3, overlap=0.5))


def test_ctrl_c_keeps_the_finished_combinations(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "out"

    def ctrl_c_after_the_first_combination() -> bool:
        if (out / "grid.json").exists():  # written after every finished combination
            raise KeyboardInterrupt
        return False

    request = GridSearchRequest(data_dir=root / "data", out_dir=out, split="all", steps=[2], guidance=[0.0, 4.0],
                                mix=[MIX], settings=DetectionSettings(**FIXED))
    results = grid_search(request, [tiny_bundle("coords")], cancel=ctrl_c_after_the_first_combination)
    saved = json.loads((out / "grid.json").read_text())
    assert results["interrupted"] and saved["interrupted"] and not saved["complete"]
    assert [len(c["subjects"]) for c in saved["combinations"]] == [1, 0]
    assert saved["best"]["guidance"] == 0.0 and saved["best"]["n_subjects"] == 1
    assert (out / "grid.png").is_file()
    # the next search into the same folder is refused unless asked to overwrite
    with pytest.raises(BrainLDMError, match="--overwrite"):
        grid_search(request, [tiny_bundle("coords")])
    request.overwrite = True
    assert len(check_request(request)[0]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--steps", ""], "grid is empty"),
    (["--guidance", ","], "grid is empty"),
    (["--mix", "0.2"], "omega"),
    (["--guidance", "0,-1"], "guidance"),
    (["--steps", "2x"], "whole numbers"),
    (["--steps", "2.5"], "whole numbers"),
    (["--encoder", "ddim", "--mix", "0.93,0.97"], "only acts on EDICT"),
    (["--limit", "0"], "--limit"),
])
def test_bad_grids_are_clear_errors(setup, tmp_path, capsys, extra, message):
    root, models = setup
    code = main(["grid-search", "--data", str(root / "data"), "--split", "all", "--out", str(tmp_path / "o"),
                 "--model", str(models[0]), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_folders_without_subjects_and_used_outputs_are_clear_errors(setup, tmp_path, capsys):
    root, models = setup
    (tmp_path / "empty").mkdir()
    assert main(["grid-search", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                 "--model", str(models[0])]) == 2
    assert "no complete subject" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "grid.json").write_text("{}")
    assert main(["grid-search", "--data", str(root / "data"), "--split", "all", "--out", str(tmp_path / "used"),
                 "--model", str(models[0])]) == 2
    err = capsys.readouterr().err
    assert "already holds grid-search results" in err and "--overwrite" in err


def test_best_prefers_fewer_steps_on_ties_and_compares_the_same_subjects():
    def combo(steps, guidance, dice_by_subject):
        return {"model": "m", "position_embedding": "sin", "encoder": "edict", "steps": steps, "guidance": guidance,
                "mix": 0.97, "subjects": [{"subject": s, "model_dice": d} for s, d in dice_by_subject.items()]}

    tie = [combo(50, 5.0, {"a": 0.5, "b": 0.7}), combo(25, 10.0, {"a": 0.7, "b": 0.5}), combo(25, 0.0, {"a": 0.1})]
    best = best_combination(tie[:2])
    assert (best["steps"], best["guidance"]) == (25, 10.0) and best["dice"]["mean"] == pytest.approx(0.6)
    # an interrupted search: only subject 'a' is in every combination, so 'a' alone decides
    best = best_combination(tie)
    assert (best["steps"], best["guidance"], best["n_subjects"]) == (25, 10.0, 1)
    assert best_combination([]) is None


def test_fixed_thresholds_score_the_same_counterfactuals_as_evaluate_would(setup, tmp_path):
    """--thresholds: each counterfactual is also thresholded at fixed values (with --smoothing); every
    row equals ``evaluate()`` run with that fixed threshold, and the best may be a fixed one (its
    settings then carry threshold, value and smoothing, what a bundle's "inference" takes)."""
    root, models = setup
    bundle = ModelBundle.load(models[0])
    base = DetectionSettings(steps=2, guidance=4.0, mix=MIX, smoothing=1.0, **FIXED)
    subject = load_subject(find_subjects(root / "data")[0])
    otsu = detect(subject, bundle, base).threshold
    values = (round(0.5 * otsu, 6), round(1.5 * otsu, 6))
    request = GridSearchRequest(data_dir=root / "data", out_dir=tmp_path / "grid", split="all", steps=(2,),
                                guidance=(4.0,), mix=(MIX,), settings=base, thresholds=values)
    grid = grid_search(request, [bundle])
    assert [(t["threshold"], t["threshold_value"]) for t in grid["grid"]["thresholds"]] == \
        [("otsu", 0.0), ("fixed", values[0]), ("fixed", values[1])]
    combos = grid["combinations"]
    assert [(c["threshold"], c["threshold_value"], c["smoothing"]) for c in combos] == \
        [("otsu", 0.0, 1.0), ("fixed", values[0], 1.0), ("fixed", values[1], 1.0)]
    for combo in combos:
        settings = DetectionSettings(steps=2, guidance=4.0, mix=MIX, smoothing=1.0, threshold=combo["threshold"],
                                     threshold_value=combo["threshold_value"], **FIXED)
        expected = evaluate(EvaluationRequest(data_dir=root / "data", out_dir=tmp_path / f"eval-{combo['threshold_value']}",
                                              split="all", settings=settings), bundle)
        got = {r["subject"]: r for r in combo["subjects"]}
        for row in expected["subjects"]:
            for key in ("model_dice", "model_specificity", "model_sensitivity"):
                assert got[row["subject"]][key] == row[key], (combo["threshold_value"], key)
    # the three operating points segment differently (else the comparison proves nothing)
    assert len({tuple(r["model_sensitivity"] for r in c["subjects"]) for c in combos}) == 3
    best = grid["best"]
    assert best["settings"]["smoothing"] == 1.0
    assert (best["settings"]["threshold"], best["settings"]["threshold_value"]) in \
        [(c["threshold"], c["threshold_value"]) for c in combos]
    assert DetectionSettings.for_model(best["settings"]).threshold == best["settings"]["threshold"]
    with pytest.raises(SettingsError, match="--thresholds takes positive"):
        check_request(GridSearchRequest(data_dir=root / "data", out_dir=tmp_path / "bad", split="all",
                                        thresholds=(0.02, -1.0)))
