"""Training curves of a run (``brainldm runs plot RUN``): loss against minutes, per stage.

Reads the run's ``metrics.jsonl`` logs (an ``all`` run keeps one per stage in
``autoencoder/`` and ``denoiser/``; records are de-duplicated by stage, split and step) and
draws the training loss and the validation loss of each stage against wall-clock minutes,
with the best validation value marked.
"""

from __future__ import annotations

import json
from pathlib import Path

from brainldm.errors import BrainLDMError

#: What each stage's validation loss measures (axis labels).
VALIDATION_LABELS = {
    "autoencoder": "validation MAE inside the brain ([-1, 1] units)",
    "denoiser": "validation noise-prediction MSE",
}


def read_metrics(run: str | Path) -> dict[str, dict[str, list[dict]]]:
    """``{stage: {"train": [...], "val": [...]}}`` from every ``metrics.jsonl`` of ``run``, by step."""
    run = Path(run)
    files = [run / "metrics.jsonl", *sorted(run.glob("*/metrics.jsonl"))]
    files = [f for f in files if f.is_file()]
    if not files:
        raise BrainLDMError(f"{run} has no metrics.jsonl: is it a training run folder (brainldm train --out)?")
    seen: dict[tuple, dict] = {}
    for path in files:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            if "stage" not in record or "step" not in record:
                continue
            seen[(record["stage"], record.get("split", "train"), record["step"])] = record
    curves: dict[str, dict[str, list[dict]]] = {}
    for (stage, split, _), record in sorted(seen.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        curves.setdefault(stage, {"train": [], "val": []}).setdefault(split, []).append(record)
    return curves


def summarise_curves(curves: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per stage: steps, minutes, last training loss, best validation loss and when it was reached."""
    summary = {}
    for stage, splits in curves.items():
        train, val = splits.get("train", []), splits.get("val", [])
        entry = {"steps": max((r["step"] for r in train + val), default=0),
                 "minutes": round(max((r.get("seconds", 0.0) for r in train + val), default=0.0) / 60, 1)}
        if train:
            entry["last_train_loss"] = train[-1].get("loss")
        if val:
            best = min(val, key=lambda r: r["val_loss"])
            entry.update(best_val_loss=best["val_loss"], best_step=best["step"],
                         best_minutes=round(best.get("seconds", 0.0) / 60, 1))
        summary[stage] = entry
    return summary


def plot_curves(run: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write a PNG with one panel per stage: training loss (thin) and validation loss (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_metrics(run)
    stages = [s for s in ("autoencoder", "denoiser") if s in curves] + sorted(
        s for s in curves if s not in ("autoencoder", "denoiser"))
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        train, val = curves[stage].get("train", []), curves[stage].get("val", [])
        if train:
            ax.plot([r.get("seconds", 0) / 60 for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6,
                    label="training loss")
        if val:
            minutes = [r.get("seconds", 0) / 60 for r in val]
            losses = [r["val_loss"] for r in val]
            ax.plot(minutes, losses, "o-", ms=3, label="validation")
            best = min(range(len(val)), key=lambda i: losses[i])
            ax.annotate(f"best {losses[best]:.4g}\n(step {val[best]['step']})", (minutes[best], losses[best]),
                        textcoords="offset points", xytext=(-10, 12), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("minutes of training")
        ax.set_ylabel(VALIDATION_LABELS.get(stage, "loss"))
        ax.set_title(stage)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"training curves: {Path(run).name}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
