"""Evaluate a model on a folder of subjects against the naive baselines (``brainldm evaluate``).

For every subject with a reference segmentation: the detector's Dice, specificity and
sensitivity, and on the same subject the baselines of thesis Table 3.4:

- ``flair-otsu`` and ``flair-percentile``: FLAIR intensity thresholding;
- ``autoencoder``: the first stage's reconstruction error ``|x - D(E(x))|`` (Otsu + opening),
  i.e. the reconstruction-based detector without diffusion;
- ``ablation``: a second model (e.g. trained with the uniform patch sampler) run with the same
  settings, when given.

Summary per method: mean with a percentile-bootstrap 95 % interval (thesis §4.4.1), overall
and per lesion size group (largest in-plane diameter, thesis §4.3.5). Outputs: ``results.json``,
``results.csv`` and ``results.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainldm.detect.settings import DetectionSettings
from brainldm.sr.upscale import UpscaleSettings
from brainldm.errors import BrainLDMError

log = logging.getLogger(__name__)

SIZE_GROUPS = ((0.0, 7.5, "5 mm"), (7.5, 15.0, "10 mm"), (15.0, 25.0, "20 mm"), (25.0, 1e9, ">25 mm"))


@dataclass
class EvaluationRequest:
    data_dir: Path
    out_dir: Path
    split: str = "all"  # all | train | val | test (deterministic split of the folder's subjects)
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    limit: int | None = None
    bootstrap: int = 1000
    #: detect on the scan upscaled in-plane (bicubic or SR), score on the input grid (thesis §4.4)
    upscale: UpscaleSettings = field(default_factory=UpscaleSettings)
    #: score only this many axial slices centred on the largest lesion (None: the whole volume);
    #: makes slice-wise super-resolution affordable on a CPU. The Otsu threshold is then the slab's.
    slab: int | None = None


def size_group(diameter_mm: float) -> str:
    for low, high, name in SIZE_GROUPS:
        if low <= diameter_mm < high:
            return name
    return "none"


def load_reference_subject(files):
    """Load one subject of :func:`select_subjects`; ``None`` (with a warning) when it has no reference
    segmentation to score against."""
    from brainldm.data.io import load_subject

    subject = load_subject(files)
    if subject.seg is None:
        log.warning("%s has no reference segmentation; skipped", subject.subject_id)
        return None
    return subject


def reference_row(subject) -> dict:
    """The first columns of a subject's row: id, largest lesion's in-plane diameter and its size group."""
    from brainldm.data.phantom import lesion_diameters_mm

    diameters = lesion_diameters_mm(subject.seg, subject.spacing)
    return {"subject": subject.subject_id, "diameter_mm": round(diameters[0], 1) if diameters else 0.0,
            "size_group": size_group(diameters[0]) if diameters else "healthy"}


def metric_columns(method: str, prediction, reference) -> dict[str, float]:
    """``{"<method>_dice": ..., "<method>_sensitivity": ..., "<method>_specificity": ...}`` of one prediction."""
    from brainldm.evaluate.metrics import segmentation_metrics

    return {f"{method}_{metric}": float(value) for metric, value in segmentation_metrics(prediction, reference).items()}


def select_subjects(data_dir: Path, split: str):
    """Complete subjects of ``data_dir`` in the requested split (skipped ones are logged)."""
    from brainldm.data.io import find_subjects
    from brainldm.data.split import split_subjects

    subjects, skipped = find_subjects(data_dir, return_skipped=True)
    for s in skipped:
        log.warning("skipped %s: %s", s.subject_id, s.reason)
    if not subjects:
        raise BrainLDMError(f"no complete subject in {data_dir} (each needs t1n, t1c, t2w and t2f files)")
    if split != "all":
        if split not in ("train", "val", "test"):
            raise BrainLDMError(f"--split must be all, train, val or test, got {split!r}")
        chosen = set(getattr(split_subjects([s.subject_id for s in subjects]), split))
        subjects = [s for s in subjects if s.subject_id in chosen]
        if not subjects:
            raise BrainLDMError(f"the {split} split of {data_dir} is empty; use --split all")
    return subjects


def lesion_slab(subject, slices: int):
    """The subject cut to ``slices`` axial slices centred on its largest lesion's centre of mass
    (the affine follows, so the slab stays in world coordinates)."""
    import dataclasses

    from scipy import ndimage

    if slices < 1:
        raise BrainLDMError(f"--slab must be >= 1, got {slices}")
    labels, count = ndimage.label(subject.seg > 0)
    if count:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, count + 1))
        centre = int(round(ndimage.center_of_mass(labels == 1 + int(np.argmax(sizes)))[2]))
    else:
        centre = subject.shape[2] // 2
    depth = subject.shape[2]
    start = int(np.clip(centre - slices // 2, 0, max(0, depth - slices)))
    stop = min(depth, start + slices)
    affine = np.array(subject.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(start)]) + affine[:3, 3]
    return dataclasses.replace(subject, images=np.ascontiguousarray(subject.images[..., start:stop]),
                               seg=np.ascontiguousarray(subject.seg[..., start:stop]), affine=affine, source=None)


def summarise(rows: list[dict], methods: list[str], n_bootstrap: int = 1000) -> dict:
    """Mean and bootstrap 95 % interval of Dice and specificity per method, overall and per size group."""
    from brainldm.evaluate.metrics import bootstrap_ci

    def stats(selected: list[dict]) -> dict:
        out = {}
        for method in methods:
            entry = {"n": len(selected)}
            for metric in ("dice", "specificity", "sensitivity"):
                values = [r[f"{method}_{metric}"] for r in selected if np.isfinite(r.get(f"{method}_{metric}", np.nan))]
                if values:
                    mean, low, high = bootstrap_ci(values, n=n_bootstrap, seed=0)
                    entry[metric] = {"mean": float(mean), "ci95": [float(low), float(high)]}
            out[method] = entry
        return out

    summary = {"all": stats(rows)}
    for _, _, name in SIZE_GROUPS:
        group = [r for r in rows if r["size_group"] == name]
        if group:
            summary[name] = stats(group)
    return summary


def evaluate(request: EvaluationRequest, bundle=None, ablation=None, sr_bundle=None) -> dict:
    """Run detection with ``bundle`` (and the ``ablation`` bundle) and the baselines on every
    selected subject; write and return the results. Without a bundle only the FLAIR baselines run.
    With ``request.upscale`` the models detect on the upscaled scan (``sr_bundle`` for ``sr``) and
    are scored on the input grid; the baselines always run on the input grid."""
    from tqdm.auto import tqdm

    from brainldm.data.preprocess import brain_mask
    from brainldm.detect.maps import segment_from_map, smooth_map
    from brainldm.detect.pipeline import detect
    from brainldm.sr.upscale import result_to_input_grid, upscale_subject
    from brainldm.evaluate.baselines import flair_otsu, flair_percentile

    settings = request.settings.validate()
    upscale = request.upscale
    if upscale.method == "sr" and sr_bundle is None:
        raise BrainLDMError("--upscale sr needs a super-resolution model (--sr-model FOLDER)")

    def detect_on_input_grid(subject, model):
        work, timings = upscale_subject(subject, upscale, sr_bundle)
        result = detect(work, model, settings)
        if upscale.method != "none":
            result = result_to_input_grid(result, subject, upscale.factor)
            result.timings.update(timings)
        return result

    subjects = select_subjects(Path(request.data_dir), request.split)
    if request.limit:
        subjects = subjects[: request.limit]
    if bundle is None and ablation is not None:
        raise BrainLDMError("an ablation model needs a main model to compare with")
    methods = (["model"] if bundle else []) + ["flair-otsu", "flair-percentile"] + (
        ["autoencoder"] if bundle else []) + (["ablation"] if ablation else [])
    rows: list[dict] = []
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for files in tqdm(subjects, desc="evaluate", unit="subject"):
        subject = load_reference_subject(files)
        if subject is None:
            continue
        if request.slab:
            subject = lesion_slab(subject, request.slab)
        reference = subject.seg > 0
        row = reference_row(subject)
        start = time.perf_counter()
        result = detect_on_input_grid(subject, bundle) if bundle is not None else None
        brain = result.brain_mask if result is not None else brain_mask(subject.images)
        row["seconds"] = round(time.perf_counter() - start, 2)
        predictions = {
            "flair-otsu": flair_otsu(subject.images, brain).mask,
            "flair-percentile": flair_percentile(subject.images, brain).mask,
        }
        if result is not None:
            predictions["model"] = result.segmentation > 0
            # the first stage's own error, smoothed like the model's map, with Otsu's threshold
            error = smooth_map(result.reconstruction_error, settings.smoothing, brain_mask=brain)
            predictions["autoencoder"] = segment_from_map(error, brain).mask
        if ablation is not None:
            predictions["ablation"] = detect_on_input_grid(subject, ablation).segmentation > 0
        for method, prediction in predictions.items():
            row.update(metric_columns(method, prediction, reference))
        rows.append(row)
        log.info("%s: Dice %.3f (FLAIR %.3f)", subject.subject_id, row.get("model_dice", float("nan")),
                 row["flair-percentile_dice"])
    if not rows:
        raise BrainLDMError("no subject with a reference segmentation was evaluated")
    results = {
        "data_dir": str(request.data_dir), "split": request.split, "model": bundle.model_id if bundle else None,
        "ablation_model": ablation.model_id if ablation else None, "settings": settings.to_dict(),
        "upscale": {"method": upscale.method, "factor": upscale.factor,
                    "sr_model": getattr(sr_bundle, "model_id", None)} if upscale.method != "none" else None,
        "slab": request.slab, "subjects": rows, "summary": summarise(rows, methods, request.bootstrap),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    name = bundle.model_id if bundle else "FLAIR baselines"
    title = f"{name} on {Path(request.data_dir).name}"
    if upscale.method != "none":  # the none / interpolate / SR figures must be told apart
        title += f"\nupscaled {upscale.factor}x: {upscale.method}"
    if request.slab:
        title += f" ({request.slab}-slice slabs)" if upscale.method != "none" else f"\n{request.slab}-slice slabs"
    results_figure(rows, methods, out_dir / "results.png", title=title)
    return results


def results_figure(rows: list[dict], methods: list[str], path: Path, title: str = "") -> Path:
    """Dice per subject and method (dots) with the mean (bar), grouped by lesion size."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    groups = [name for _, _, name in SIZE_GROUPS if any(r["size_group"] == name for r in rows)] or ["all"]
    fig = Figure(figsize=(2.2 + 2.2 * len(groups), 4.2))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    colours = ["#d62728", "#1f77b4", "#17becf", "#7f7f7f", "#9467bd"]
    for m, method in enumerate(methods):
        for g, group in enumerate(groups):
            values = [r[f"{method}_dice"] for r in rows if group == "all" or r["size_group"] == group]
            x = g + (m - (len(methods) - 1) / 2) * width
            if values:
                ax.bar(x, float(np.mean(values)), width * 0.9, color=colours[m % len(colours)], alpha=0.5,
                       label=method if g == 0 else None)
                ax.scatter(np.full(len(values), x), values, s=8, color=colours[m % len(colours)], zorder=3)
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={sum(r['size_group'] == g for r in rows)})" for g in groups])
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path
