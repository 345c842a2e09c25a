"""The measured part of a model card: what a shipped model scores, next to the baselines.

Turns the ``results.json`` of :func:`brainldm.evaluate.evaluation.evaluate` (held-out
phantoms, real subjects) and the report of ``brainldm demo`` into Markdown tables, so a model
card's numbers are always produced by the same commands a user can rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainldm.machine import machine_description  # re-exported: the model card script imports it from here

METHOD_NAMES = {
    "model": "BrainLDM (this model)",
    "autoencoder": "first-stage reconstruction error",
    "flair-percentile": "FLAIR percentile threshold",
    "flair-otsu": "FLAIR Otsu threshold",
    "ablation": "uniform-sampler ablation",
}


def _fmt_stat(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    low, high = stat.get("ci95", [None, None])
    if low is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summary_table(results: dict[str, Any], groups: tuple[str, ...] | None = None) -> str:
    """Mean Dice and specificity (95 % bootstrap CI) per size group and method."""
    summary = results["summary"]
    groups = groups or tuple(summary)
    methods = [m for m in METHOD_NAMES if any(m in summary.get(g, {}) for g in groups)]
    lines = ["| subjects | method | n | Dice (95 % CI) | specificity (95 % CI) |", "|---|---|---:|---|---|"]
    for group in groups:
        for method in methods:
            stats = summary.get(group, {}).get(method)
            if not stats:
                continue
            lines.append(f"| {group} | {METHOD_NAMES[method]} | {stats['n']} | {_fmt_stat(stats.get('dice'))} | "
                         f"{_fmt_stat(stats.get('specificity'), 4)} |")
    return "\n".join(lines)


def label_type(subject_id: str, data_dir: str | Path) -> str:
    """How a subject's reference was made: ``pseudo`` (``*-seg-pseudo``), ``phantom`` (exact) or ``manual``."""
    folder = Path(data_dir) / subject_id
    if subject_id.startswith("Phantom") or subject_id.startswith("Demo"):
        return "phantom (exact)"
    if folder.is_dir() and any("seg-pseudo" in p.name for p in folder.iterdir()):
        return "pseudo-label (not expert)"
    return "manual"


def per_subject_table(results: dict[str, Any]) -> str:
    """Dice and specificity per subject, the model beside the FLAIR baselines."""
    methods = [m for m in ("model", "flair-percentile", "flair-otsu", "autoencoder")
               if any(f"{m}_dice" in row for row in results["subjects"])]
    header = "| subject | reference | " + " | ".join(f"{METHOD_NAMES[m]} Dice / spec." for m in methods) + " |"
    lines = [header, "|---|---|" + "---|" * len(methods)]
    for row in results["subjects"]:
        cells = []
        for m in methods:
            dice, spec = row.get(f"{m}_dice"), row.get(f"{m}_specificity")
            cells.append("-" if dice is None else f"{dice:.3f} / {spec:.4f}")
        lines.append(f"| {row['subject']} | {label_type(row['subject'], results.get('data_dir', ''))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_text(s: dict[str, Any]) -> str:
    """"N = 50, C = 2, ..." for the detection settings ``s`` (a DetectionSettings dict)."""
    text = f"N = {s['steps']}"
    if s.get("noise_level"):
        text += f" (inversion to timestep L = {s['noise_level']})"
    text += f", C = {s['guidance']:g}" + (f", omega = {s['mix']:g}" if s.get("encoder") == "edict" else "")
    if s.get("smoothing"):
        text += f", anomaly map smoothed (Gaussian sigma {s['smoothing']:g} voxels)"
    if s.get("threshold") == "fixed":
        return text + f", fixed threshold {s['threshold_value']:g} (chosen on the validation phantoms)"
    return text + f", {s['threshold']} threshold"


def measured_section(phantoms: dict[str, Any] | None, real: dict[str, Any] | None,
                     demo: dict[str, Any] | None, machine: str | None = None) -> str:
    """Markdown for the "Measured" part of a model card."""
    machine = machine or machine_description()
    parts = [f"## Measured\n\nAll numbers below were produced on {machine} by "
             "`python Resources/models/make_default_model.py` (see Resources/models/README.md); "
             "`brainldm evaluate` reproduces them."]
    if phantoms is not None:
        s = phantoms["settings"]
        parts.append(
            f"### Held-out phantoms\n\n{len(phantoms['subjects'])} phantom subjects never used in training "
            f"(`{Path(phantoms['data_dir']).name}`, exact ground truth), detection with {s['encoder'].upper()}, "
            f"{settings_text(s)}:\n\n"
            + summary_table(phantoms))
    if real is not None:
        parts.append("### Real subjects (`../shared/data/brats_like`)\n\nThe model never saw real MRI; these "
                     "show how far a phantom-trained model carries over.\n\n" + per_subject_table(real))
    if demo is not None:
        metrics = demo.get("metrics", {})
        base = demo.get("baseline_flair_percentile", {})
        timings = demo.get("timings_s", {}) or {}
        parts.append(
            f"### `brainldm demo`\n\nThe demo phantom (seed {demo.get('demo_seed', '?')}, 20 mm tumour): Dice "
            f"{metrics.get('dice', float('nan')):.3f}, specificity {metrics.get('specificity', float('nan')):.4f} "
            f"(FLAIR percentile baseline Dice {base.get('dice', float('nan')):.3f}); detection "
            f"{timings.get('total', float('nan')):.1f} s, peak memory {demo.get('peak_memory_mb', float('nan')):.0f} MB.")
    return "\n\n".join(parts) + "\n"
