"""The ``brainldm`` command line: help, user errors without tracebacks, phantoms on disk."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from brainldm.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("phantom", "demo", "segment", "evaluate", "benchmark", "train", "runs"):
        assert command in out


def test_phantom_command_writes_an_exact_20mm_lesion(tmp_path, capsys):
    from brainldm.data.phantom import inplane_diameter_mm

    assert main(["phantom", "--out", str(tmp_path), "--seed", "1", "--lesion-diameter", "20", "--png"]) == 0
    folder = tmp_path / "Phantom-00001"
    seg = nib.load(folder / "Phantom-00001-seg.nii.gz")
    assert seg.shape == (240, 240, 155)
    assert abs(inplane_diameter_mm(np.asanyarray(seg.dataobj) > 0, seg.header.get_zooms()[:3]) - 20) <= 1
    assert (folder / "Phantom-00001-overview.png").stat().st_size > 10_000
    # an existing subject is never overwritten without --overwrite
    assert main(["phantom", "--out", str(tmp_path), "--seed", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_segment_with_a_missing_sequence_is_a_clear_error(tmp_path, capsys):
    code = main(["segment", "--t1n", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing sequence" in err and "--t1c" in err and "Traceback" not in err


def test_segment_with_a_non_nifti_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image")
    args = [sys.executable, "-m", "brainldm.cli", "segment", "--out", str(tmp_path / "out")]
    for seq in ("t1n", "t1c", "t2w", "t2f"):
        args += [f"--{seq}", str(bad)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error" in proc.stderr


def test_bad_settings_are_rejected(capsys):
    code = main(["segment", "--subject", ".", "--out", "x", "--mix", "0.2"])
    assert code == 2
    assert "omega" in capsys.readouterr().err


def test_evaluate_baselines_only_writes_results(tmp_path, capsys):
    import json

    from brainldm.train.toy import write_toy_dataset

    write_toy_dataset(tmp_path / "data", count=3, shape=(40, 40, 40), seed=2)
    out = tmp_path / "eval"
    assert main(["evaluate", "--baselines-only", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["subjects"]) == 3
    assert set(results["summary"]["all"]) == {"flair-otsu", "flair-percentile"}
    assert (out / "results.csv").is_file() and (out / "results.png").stat().st_size > 5_000
    assert "flair-percentile" in capsys.readouterr().out
