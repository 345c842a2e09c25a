"""Training curves from a run's metrics logs (``brainldm runs plot``)."""

import json

import pytest

from brainldm.cli import main
from brainldm.errors import BrainLDMError
from brainldm.train.curves import plot_curves, read_metrics, summarise_curves


def _write_log(path, stage, steps, val_every, start=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for step in range(1, steps + 1):
            loss = 1.0 / step
            f.write(json.dumps({"stage": stage, "step": step, "seconds": start + 2.0 * step, "split": "train",
                                "loss": loss}) + "\n")
            if step % val_every == 0:
                f.write(json.dumps({"stage": stage, "step": step, "seconds": start + 2.0 * step, "split": "val",
                                    "val_loss": 1.0 / step + (0.5 if step == steps else 0.0)}) + "\n")
        f.write('{"stage": "' + stage + '", "step": 9')  # a line cut short by a killed run


def test_curves_of_an_all_run_are_read_per_stage_without_duplicates(tmp_path):
    _write_log(tmp_path / "autoencoder" / "metrics.jsonl", "autoencoder", 40, 10)
    _write_log(tmp_path / "denoiser" / "metrics.jsonl", "denoiser", 30, 5)
    _write_log(tmp_path / "metrics.jsonl", "denoiser", 30, 5)  # the same records again at the top level
    curves = read_metrics(tmp_path)
    assert set(curves) == {"autoencoder", "denoiser"}
    assert len(curves["denoiser"]["train"]) == 30 and len(curves["denoiser"]["val"]) == 6
    summary = summarise_curves(curves)
    # The last validation is worse (+0.5): the best is the one before it.
    assert summary["autoencoder"]["best_step"] == 30
    assert summary["denoiser"]["best_step"] == 25
    assert summary["autoencoder"]["steps"] == 40
    assert summary["autoencoder"]["minutes"] == pytest.approx(80 / 60, abs=0.05)


def test_plot_writes_a_png_and_the_cli_refuses_to_overwrite(tmp_path, capsys):
    _write_log(tmp_path / "run" / "metrics.jsonl", "autoencoder", 20, 5)
    out = plot_curves(tmp_path / "run", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["runs", "plot", str(tmp_path / "run"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["runs", "plot", str(tmp_path / "run"), "--out", str(out), "--overwrite"]) == 0


def test_a_folder_without_logs_is_a_clear_error(tmp_path):
    with pytest.raises(BrainLDMError, match="metrics.jsonl"):
        read_metrics(tmp_path)
