"""Grid search of the sampling settings N, C and omega on validation subjects (``brainldm grid-search``).

Thesis §3.4.4 picked the number of steps N, the guidance scale C and the EDICT mixing weight omega
(and compared position embeddings) by a grid search on a few validation subjects (Table 3.3,
Fig. 3.6). This module does the same for one or several model bundles (each with its own position
embedding: ``sin``, ``coords`` or ``none``): for every model and every combination it runs detection
on the selected subjects, scores Dice / specificity / sensitivity per subject against the reference,
and summarises the mean with a percentile-bootstrap 95 % interval (the helpers of
:mod:`brainldm.evaluate.evaluation`, so the numbers are exactly those of ``brainldm evaluate`` with
the same settings).

Work is shared where the result cannot change: every subject is loaded once and every bundle is
passed in loaded; per subject and model the first stage runs once (:func:`~brainldm.detect.pipeline.
encode_subject` does not depend on N, C or omega), and per (N, omega) the inversion runs once for all C
(:func:`~brainldm.detect.pipeline.invert_latent` encodes with the null label; guidance acts only in
generation). A grid of ``|N| x |C| x |omega|`` therefore costs ``|N| x |omega|`` inversions and
``|N| x |C| x |omega|`` generations per subject and model, instead of that many full detections.

Outputs in ``out_dir`` (rewritten after every combination, so an interrupted search keeps what it
has): ``grid.json`` (grid, settings, models, per-subject rows and summary per combination, time per
combination, best combination), ``grid.csv`` (one row per combination and subject) and ``grid.png``
(mean Dice against C, one line per N and omega, one panel per model). Ctrl-C (or ``cancel()``) stops
after writing the results so far, marked ``"interrupted": true``.

``thresholds`` adds fixed anomaly-map thresholds to the grid: every counterfactual is also
thresholded at each value (no extra diffusion), so the search can choose a model's operating point
(``threshold: fixed``, ``threshold_value``) beside Otsu's per-volume threshold of the thesis.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from brainldm.detect.settings import DetectionSettings
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.evaluate.evaluation import (
    load_reference_subject,
    metric_columns,
    reference_row,
    select_subjects,
    summarise,
)

log = logging.getLogger(__name__)

GRID_FILES = ("grid.json", "grid.csv", "grid.png")
GRID_FORMAT = "brainldm-grid-search"
GRID_VERSION = 1
#: The detection settings the grid varies; every other setting is fixed by ``GridSearchRequest.settings``.
GRID_KEYS = ("steps", "guidance", "mix")


@dataclass
class GridSearchRequest:
    """What to search: the values of N (``steps``), C (``guidance``) and omega (``mix``), on which subjects.

    ``settings`` fixes everything else (encoder, threshold, overlap, mode, brain mask, seed, device);
    its own steps/guidance/mix are ignored. ``split`` is a subset of the deterministic split of the
    folder's subjects (``val`` by default, ``all`` for every subject); ``limit`` keeps the first K.
    """

    data_dir: Path
    out_dir: Path
    steps: Sequence[int] = (25, 50)
    guidance: Sequence[float] = (0.0, 3.0, 5.0, 10.0)
    mix: Sequence[float] = (0.93, 0.97)
    split: str = "val"
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    limit: int | None = None
    bootstrap: int = 1000
    overwrite: bool = False
    thresholds: Sequence[float] = ()  # fixed anomaly-map thresholds scored beside settings.threshold


def parse_values(text: str | Sequence, option: str, cast: Callable = float) -> list:
    """``"25,50"`` -> ``[25, 50]`` (``cast`` each comma-separated value); a clear error for bad text."""
    if not isinstance(text, str):
        return [cast(v) for v in text]
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            number = float(part)
            if cast is int and number != int(number):
                raise ValueError
            values.append(cast(number))
        except ValueError:
            kind = "whole numbers" if cast is int else "numbers"
            raise SettingsError(f"{option} takes comma-separated {kind}, e.g. {option} "
                                f"{'25,50' if cast is int else '0,5,10'}; {part!r} is not one") from None
    return values


def grid_settings(request: GridSearchRequest) -> list[DetectionSettings]:
    """The validated settings of every combination, ordered N, then omega, then C (C varies fastest, so
    consecutive combinations share their inversion). Duplicate values are dropped."""
    base = request.settings.validate()
    values = {}
    for key, option in zip(GRID_KEYS, ("--steps", "--guidance", "--mix")):
        unique = list(dict.fromkeys(getattr(request, key) or ()))
        if not unique:
            raise SettingsError(f"the grid is empty: {option} has no value; give at least one, e.g. {option} "
                                + {"steps": "25,50", "guidance": "0,5,10", "mix": "0.93,0.97"}[key])
        values[key] = unique
    if base.encoder == "ddim" and len(values["mix"]) > 1:
        raise SettingsError("omega (--mix) only acts on EDICT; with --encoder ddim give one --mix value (or none)")
    combos = []
    for steps in values["steps"]:
        for mix in values["mix"]:
            for guidance in values["guidance"]:
                combos.append(replace(base, steps=int(steps), guidance=float(guidance), mix=float(mix)).validate())
    return combos


def threshold_options(request: GridSearchRequest) -> list[tuple[str, float]]:
    """``(threshold, threshold_value)`` pairs each counterfactual is scored with: the settings' own
    threshold first, then ``("fixed", v)`` for every value of ``request.thresholds``."""
    base = request.settings
    options = [(base.threshold, float(base.threshold_value) if base.threshold == "fixed" else 0.0)]
    for value in dict.fromkeys(float(v) for v in request.thresholds or ()):
        if not (math.isfinite(value) and value > 0):
            raise SettingsError(f"--thresholds takes positive anomaly-map values, e.g. 0.02,0.03; {value:g} is not one")
        if ("fixed", value) not in options:
            options.append(("fixed", value))
    return options


def check_request(request: GridSearchRequest) -> tuple[list[DetectionSettings], list]:
    """Validate the grid, the output folder and the subjects before any work: ``(combinations, subjects)``."""
    combos = grid_settings(request)
    threshold_options(request)
    if request.limit is not None and request.limit < 1:
        raise SettingsError(f"--limit must be at least 1, got {request.limit}")
    if int(request.bootstrap) < 1:
        raise SettingsError(f"the number of bootstrap resamples must be positive, got {request.bootstrap}")
    out_dir = Path(request.out_dir)
    existing = [name for name in GRID_FILES if (out_dir / name).exists()]
    if existing and not request.overwrite:
        raise BrainLDMError(f"{out_dir} already holds grid-search results ({', '.join(existing)}); choose another "
                            "--out folder or pass --overwrite to replace them")
    subjects = select_subjects(Path(request.data_dir), request.split)
    if request.limit:
        subjects = subjects[: request.limit]
    return combos, subjects


def describe_models(bundles: Sequence, settings: DetectionSettings) -> list[dict]:
    """Label (model id, numbered when repeated), path, position embedding and inference mode of each bundle."""
    from brainldm.detect.pipeline import resolve_mode

    models, seen = [], {}
    for bundle in bundles:
        seen[bundle.model_id] = seen.get(bundle.model_id, 0) + 1
        label = bundle.model_id if seen[bundle.model_id] == 1 else f"{bundle.model_id} ({seen[bundle.model_id]})"
        models.append({
            "label": label, "model_id": bundle.model_id, "path": str(bundle.path) if bundle.path else None,
            "position_embedding": str(getattr(bundle.denoiser_config, "position_embedding", "none")),
            "spatial_dims": bundle.spatial_dims, "mode": resolve_mode(bundle, settings),
        })
    return models


# --------------------------------------------------------------------------- the search


def grid_search(request: GridSearchRequest, bundles: Sequence, cancel: Callable[[], bool] | None = None) -> dict:
    """Run the grid for every bundle on the selected subjects; write and return the results (module doc).

    ``cancel()`` is polled between diffusion steps; when it returns True (or on Ctrl-C) the search
    stops, the finished combinations are kept and the files are written with ``"interrupted": true``.
    """
    from tqdm.auto import tqdm

    from brainldm.detect.pipeline import (
        counterfactual_from_inversion,
        encode_subject,
        invert_latent,
        threshold_anomaly_map,
    )
    from brainldm.diffusion.sampler import Cancelled

    if not bundles:
        raise SettingsError("give at least one model (--model) to search the settings of")
    combos, subjects = check_request(request)
    options = threshold_options(request)
    base = request.settings.validate()
    models = describe_models(bundles, base)
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in GRID_FILES:  # --overwrite: no stale file from an earlier search survives an interruption
        (out_dir / name).unlink(missing_ok=True)

    fixed = {k: v for k, v in base.to_dict().items() if k not in GRID_KEYS}
    results = {
        "format": GRID_FORMAT, "format_version": GRID_VERSION,
        "data_dir": str(request.data_dir), "split": request.split, "limit": request.limit,
        "subjects": [files.subject_id for files in subjects],
        "grid": {"steps": sorted({c.steps for c in combos}), "guidance": sorted({c.guidance for c in combos}),
                 "mix": sorted({c.mix for c in combos}),
                 "thresholds": [{"threshold": t, "threshold_value": v} for t, v in options]},
        "settings": fixed, "models": models,
        "combinations": [
            {"model": m["label"], "position_embedding": m["position_embedding"], "encoder": c.encoder,
             "steps": c.steps, "guidance": c.guidance, "mix": c.mix, "threshold": threshold,
             "threshold_value": value, "smoothing": c.smoothing, "noise_level": c.noise_level,
             "summary": {}, "seconds_per_subject": None, "wall_seconds": 0.0, "subjects": []}
            for m in models for c in combos for threshold, value in options
        ],
        "encoding": [], "best": None, "best_per_model": {}, "complete": False, "interrupted": False,
        "elapsed_seconds": 0.0,
    }
    start_all = time.perf_counter()
    bar = tqdm(total=len(subjects) * len(models) * len(combos), desc="grid search", unit="run")
    per_combo = len(options)
    try:
        for files in subjects:
            subject = load_reference_subject(files)
            if subject is None:
                bar.update(len(models) * len(combos))
                continue
            reference = subject.seg > 0
            info = reference_row(subject)
            for m, (model, bundle) in enumerate(zip(models, bundles)):
                encoded = encode_subject(subject, bundle, base)
                results["encoding"].append({"model": model["label"], "subject": subject.subject_id,
                                            "seconds": round(sum(encoded.timings.values()), 3)})
                inverted = None
                for c, settings in enumerate(combos):
                    bar.set_postfix_str(f"{model['label']} N={settings.steps} C={settings.guidance:g} "
                                        f"w={settings.mix:g} {subject.subject_id}", refresh=False)
                    wall = time.perf_counter()
                    if inverted is None or (inverted.steps, inverted.mix) != (settings.steps, settings.mix):
                        inverted = invert_latent(encoded, settings, cancel=cancel)
                    result = counterfactual_from_inversion(encoded, inverted, settings, cancel=cancel)
                    seconds, wall = result.timings["total"], round(time.perf_counter() - wall, 3)
                    for o, (threshold, value) in enumerate(options):
                        if o == 0:
                            segmentation = result.segmentation > 0
                        else:  # the same counterfactual, thresholded at a fixed value
                            fixed = replace(settings, threshold=threshold, threshold_value=value)
                            segmentation = threshold_anomaly_map(result.anomaly_map, result.brain_mask, fixed).mask
                        row = {**info, "seconds": seconds, "wall_seconds": wall,
                               **metric_columns("model", segmentation, reference)}
                        combination = results["combinations"][(m * len(combos) + c) * per_combo + o]
                        _add_row(combination, row, request.bootstrap)
                    _write(results, out_dir, start_all, figure=False)
                    bar.update(1)
                del encoded, inverted
        results["complete"] = True
    except (KeyboardInterrupt, Cancelled):
        results["interrupted"] = True
        log.warning("grid search interrupted: the finished combinations are kept in %s", out_dir)
    finally:
        bar.close()
    if not any(c["subjects"] for c in results["combinations"]) and results["complete"]:
        raise BrainLDMError("no subject with a reference segmentation was found; the grid search needs "
                            "subjects with a -seg file")
    _write(results, out_dir, start_all, figure=True)
    return results


def _add_row(combination: dict, row: dict, n_bootstrap: int) -> None:
    combination["subjects"].append(row)
    rows = combination["subjects"]
    combination["summary"] = summarise(rows, ["model"], n_bootstrap)
    combination["seconds_per_subject"] = round(float(np.mean([r["seconds"] for r in rows])), 3)
    combination["wall_seconds"] = round(sum(r["wall_seconds"] for r in rows), 3)


def mean_dice(combination: dict) -> float:
    """Mean Dice of a combination over its subjects (NaN before any)."""
    entry = combination.get("summary", {}).get("all", {}).get("model", {}).get("dice")
    return float(entry["mean"]) if entry else float("nan")


def best_combination(combinations: Sequence[dict], n_bootstrap: int = 1000) -> dict | None:
    """The combination with the highest mean Dice over the subjects that *every* given combination has
    (an interrupted search compares like with like); ties go to fewer steps, then to grid order.

    Returns the combination's grid values, its mean Dice with bootstrap 95 % interval on those
    subjects, and ``settings``: the values a model bundle's ``inference`` entry takes.
    """
    from brainldm.evaluate.metrics import bootstrap_ci

    if not combinations:
        return None
    common = set.intersection(*({r["subject"] for r in c["subjects"]} for c in combinations))
    if not common:
        return None

    def dice_values(c):
        return [r["model_dice"] for r in c["subjects"] if r["subject"] in common]

    scored = []
    for index, c in enumerate(combinations):
        values = [v for v in dice_values(c) if math.isfinite(v)]
        if values:
            scored.append((-round(float(np.mean(values)), 12), c["steps"], index))
    if not scored:
        return None
    _, _, index = min(scored)
    c = combinations[index]
    mean, low, high = bootstrap_ci(dice_values(c), n=n_bootstrap, seed=0)
    return {
        "model": c["model"], "position_embedding": c["position_embedding"], "encoder": c["encoder"],
        "steps": c["steps"], "guidance": c["guidance"], "mix": c["mix"],
        "threshold": c.get("threshold", "otsu"), "threshold_value": c.get("threshold_value", 0.0),
        "dice": {"mean": mean, "ci95": [low, high]}, "n_subjects": len(common), "subjects": sorted(common),
        "settings": {"encoder": c["encoder"], "steps": c["steps"], "guidance": c["guidance"], "mix": c["mix"],
                     "threshold": c.get("threshold", "otsu"), "threshold_value": c.get("threshold_value", 0.0),
                     "smoothing": c.get("smoothing", 0.0), "noise_level": c.get("noise_level", 0)},
    }


def _write(results: dict, out_dir: Path, start: float, figure: bool) -> None:
    """Best combinations, grid.json and grid.csv (atomically), and grid.png when ``figure``."""
    combinations = results["combinations"]
    done = [c for c in combinations if c["subjects"]]
    results["best"] = best_combination(done)
    results["best_per_model"] = {}
    for model in results["models"]:
        best = best_combination([c for c in done if c["model"] == model["label"]])
        if best is not None:
            results["best_per_model"][model["label"]] = best
    results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
    _atomic_write(out_dir / "grid.json", json.dumps(results, indent=2))
    head = ["model", "position_embedding", "encoder", "steps", "guidance", "mix", "threshold", "threshold_value"]
    rows = [{**{k: c.get(k) for k in head}, **row} for c in combinations for row in c["subjects"]]
    fields = head + [k for k in (rows[0] if rows else {}) if k not in head]
    tmp = out_dir / "grid.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "grid.csv")
    if figure and done:
        grid_figure(results, out_dir / "grid.png")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- figure


def grid_figure(results: dict, path: Path) -> Path:
    """Mean Dice (with its 95 % interval) against the guidance scale C: one line per N and omega (colour:
    N, line style: omega), one panel per model and position embedding; the best combination of each
    model is starred. The thesis's Fig. 3.6 shows the same grid with N on the x axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    models = results["models"]
    steps, mixes = results["grid"]["steps"], results["grid"]["mix"]
    options = [(t["threshold"], t["threshold_value"]) for t in results["grid"].get("thresholds", [])] or [("otsu", 0.0)]
    n_cols = min(len(models), 3)
    n_rows = math.ceil(len(models) / n_cols)
    fig = Figure(figsize=(1.2 + 3.8 * n_cols, 0.9 + 3.4 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    cmap = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    for ax, model in zip(axes, models):
        combos = [c for c in results["combinations"] if c["model"] == model["label"] and c["subjects"]]
        for i, n in enumerate(steps):
            for j, (mix, (threshold, value)) in enumerate((mix, option) for mix in mixes for option in options):
                line = sorted((c for c in combos if c["steps"] == n and c["mix"] == mix
                               and (c.get("threshold", "otsu"), c.get("threshold_value", 0.0)) == (threshold, value)),
                              key=lambda c: c["guidance"])
                if not line:
                    continue
                x = [c["guidance"] for c in line]
                y = [mean_dice(c) for c in line]
                ci = [c["summary"]["all"]["model"].get("dice", {}).get("ci95", [np.nan, np.nan]) for c in line]
                colour = cmap(0.85 * i / max(len(steps) - 1, 1))
                label = f"N={n}" + (f", ω={mix:g}" if line[0]["encoder"] == "edict" else "") \
                    + (f", {threshold} {value:g}" if threshold == "fixed" else f", {threshold}" if len(options) > 1 else "")
                ax.plot(x, y, styles[j % len(styles)], marker="o", ms=4, color=colour, label=label)
                ax.vlines(x, [lo for lo, _ in ci], [hi for _, hi in ci], color=colour, alpha=0.25, lw=3)
        best = results.get("best_per_model", {}).get(model["label"])
        if best is not None:
            ax.plot([best["guidance"]], [best["dice"]["mean"]], "*", ms=14, color="#d62728", zorder=5,
                    label=f"best: N={best['steps']}, C={best['guidance']:g}"
                    + (f", ω={best['mix']:g}" if len(mixes) > 1 else "")
                    + (f", fixed {best['threshold_value']:g}" if best.get("threshold") == "fixed" else ""))
        n_subjects = max((len(c["subjects"]) for c in combos), default=0)
        ax.set_title(f"{model['label']}\nposition embedding: {model['position_embedding']} "
                     f"(n={n_subjects})", fontsize=9)
        ax.set_xlabel("guidance scale C")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.set_xticks(results["grid"]["guidance"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(models):]:
        ax.set_visible(False)
    state = "" if results.get("complete") else " - interrupted, partial"
    split = "" if results["split"] == "all" else f"{results['split']} "
    fig.suptitle(f"grid search on {len(results['subjects'])} {split}subject(s) of {Path(results['data_dir']).name}, "
                 f"{results['settings']['encoder'].upper()}{state}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path
