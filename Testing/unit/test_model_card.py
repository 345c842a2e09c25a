"""The measured part of a model card comes from real evaluation results."""

import os
from pathlib import Path

from brainldm.evaluate.evaluation import EvaluationRequest, evaluate
from brainldm.evaluate.model_card import label_type, machine_description, measured_section
from brainldm.train.toy import write_toy_dataset


def test_measured_section_reports_the_evaluated_numbers(tmp_path):
    write_toy_dataset(tmp_path / "data", count=2, shape=(40, 40, 40), seed=3)
    results = evaluate(EvaluationRequest(data_dir=tmp_path / "data", out_dir=tmp_path / "eval", bootstrap=50))
    text = measured_section(results, results, {"demo_seed": 5, "metrics": {"dice": 0.5, "specificity": 0.99},
                                               "baseline_flair_percentile": {"dice": 0.1},
                                               "timings_s": {"total": 12.0}, "peak_memory_mb": 900.0},
                            machine="test machine")
    dice = results["summary"]["all"]["flair-percentile"]["dice"]["mean"]
    assert f"{dice:.3f}" in text
    assert "FLAIR percentile threshold" in text and "test machine" in text
    for row in results["subjects"]:
        assert row["subject"] in text
    assert "Dice 0.500" in text and "12.0 s" in text


def test_label_types_and_machine():
    assert label_type("Phantom-0777-0001", "/nowhere") == "phantom (exact)"
    assert label_type("Someone", Path("/nowhere")) == "manual"
    description = machine_description()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # "1 core" on a machine (or a CI job) pinned to one core, "N cores" otherwise
    assert f", {cores} core{'s' if cores != 1 else ''}, " in description
