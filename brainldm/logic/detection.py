"""Use case: detect anomalies in a subject on disk and write every output (``brainldm segment``).

Outputs in ``out_dir`` (all volumes in the input's own grid and orientation):
``counterfactual-<seq>.nii.gz``, ``reconstruction-<seq>.nii.gz``, ``anomaly_map.nii.gz``,
``graddiff_map.nii.gz`` (when computed), ``segmentation.nii.gz`` (0/1),
``baseline_flair.nii.gz`` (the FLAIR-percentile baseline, for comparison), ``report.json``
and ``overview.png``. Existing files are never replaced unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import Subject
from brainldm.detect.settings import DetectionResult, DetectionSettings
from brainldm.errors import BrainLDMError, InputDataError

log = logging.getLogger(__name__)

OUTPUT_NAMES = (
    *(f"counterfactual-{s}.nii.gz" for s in SEQUENCES),
    *(f"reconstruction-{s}.nii.gz" for s in SEQUENCES),
    "anomaly_map.nii.gz", "graddiff_map.nii.gz", "segmentation.nii.gz", "baseline_flair.nii.gz",
    "report.json", "overview.png",
)


@dataclass
class SubjectInputs:
    """Where a subject comes from: a folder, or four explicit files (plus an optional reference)."""

    subject_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # sequence -> path
    reference: Path | None = None

    def load(self) -> Subject:
        from brainldm.data.io import (
            find_subjects,
            load_subject_from_paths,
        )

        if self.subject_dir is not None and self.files:
            raise BrainLDMError("give either --subject or the four sequence files, not both")
        if self.subject_dir is not None:
            found = find_subjects(self.subject_dir)
            if not found:
                raise InputDataError(
                    f"no complete subject found in {self.subject_dir}: it needs <id>-t1n/-t1c/-t2w/-t2f.nii.gz "
                    "(BraTS 2023) or <id>_t1/_t1ce/_t2/_flair.nii.gz (BraTS 2021)")
            if len(found) > 1:
                names = ", ".join(f.subject_id for f in found[:5])
                raise InputDataError(f"{self.subject_dir} holds {len(found)} subjects ({names}...); point to one")
            files = found[0]
            seg = self.reference or files.seg
            return load_subject_from_paths(*(files.paths[s] for s in SEQUENCES), seg=seg,
                                           subject_id=files.subject_id)
        missing = [s for s in SEQUENCES if s not in self.files or self.files[s] is None]
        if missing:
            raise InputDataError("missing sequence file(s): " + ", ".join(f"--{m}" for m in missing)
                                 + " (or give --subject DIR)")
        return load_subject_from_paths(*(self.files[s] for s in SEQUENCES), seg=self.reference)


def _check_outputs_free(out_dir: Path, overwrite: bool) -> None:
    if overwrite or not out_dir.exists():
        return
    taken = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if taken:
        raise BrainLDMError(f"{out_dir} already holds outputs ({', '.join(taken[:3])}...); "
                            "choose another --out or pass --overwrite")


def write_detection_outputs(
    subject: Subject,
    result: DetectionResult,
    out_dir: Path,
    settings: DetectionSettings,
    model_description: dict,
    overwrite: bool = False,
    extra_report: dict | None = None,
) -> dict:
    """Write the volumes, ``report.json`` and ``overview.png``; return the report."""
    from brainldm.data.io import save_like
    from brainldm.data.preprocess import brain_mask
    from brainldm.evaluate.baselines import flair_percentile
    from brainldm.evaluate.metrics import segmentation_metrics
    from brainldm.logic.overview import detection_overview_png

    out_dir = Path(out_dir)
    _check_outputs_free(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, seq in enumerate(SEQUENCES):
        save_like(result.counterfactual[i], subject, out_dir / f"counterfactual-{seq}.nii.gz", overwrite=True)
        save_like(result.reconstruction[i], subject, out_dir / f"reconstruction-{seq}.nii.gz", overwrite=True)
    save_like(result.anomaly_map, subject, out_dir / "anomaly_map.nii.gz", overwrite=True)
    if result.graddiff_map is not None:
        save_like(result.graddiff_map, subject, out_dir / "graddiff_map.nii.gz", overwrite=True)
    save_like(result.segmentation.astype(np.uint8), subject, out_dir / "segmentation.nii.gz", overwrite=True)

    mask = brain_mask(subject.images)
    baseline = flair_percentile(subject.images, mask)
    save_like(baseline.mask.astype(np.uint8), subject, out_dir / "baseline_flair.nii.gz", overwrite=True)
    reference = subject.seg > 0 if subject.seg is not None else None
    baseline_metrics = segmentation_metrics(baseline.mask, reference) if reference is not None else {}

    report = {
        "subject": subject.subject_id,
        "inputs": subject.paths,
        "model": model_description,
        "settings": settings.to_dict(),
        "threshold": result.threshold,
        "segmented_voxels": int(result.segmentation.sum()),
        "timings_s": result.timings,
        "total_seconds": result.timings.get("total"),
        "peak_memory_mb": result.peak_memory_mb,
        "metrics": result.metrics,
        "baseline_flair_percentile": baseline_metrics,
        "warnings": result.warnings,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
    }
    report.update(extra_report or {})
    metrics_text = ""
    if result.metrics:
        metrics_text = (f"Dice {result.metrics['dice']:.3f}  specificity {result.metrics['specificity']:.4f}"
                        f"   |   FLAIR baseline Dice {baseline_metrics.get('dice', float('nan')):.3f}")
    detection_overview_png(
        out_dir / "overview.png", subject.images, result.counterfactual, result.anomaly_map, result.segmentation,
        result.brain_mask, reference=reference, graddiff_map=result.graddiff_map, baseline=baseline.mask,
        title=f"{subject.subject_id} - {model_description.get('model_id', 'model')}", metrics_text=metrics_text,
    )
    report["timings_s"]["write_outputs"] = round(time.perf_counter() - start, 3)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def load_model(model: Path | str | None = None, device: str = "cpu"):
    """The model bundle at ``model`` (a folder or a catalogue id, or an already loaded bundle),
    or the shipped default model."""
    from brainldm.logic.catalogue import resolve_model
    from brainldm.nets.bundle import ModelBundle

    if isinstance(model, ModelBundle):
        return model
    return ModelBundle.load(resolve_model(model), device=device)


def model_description(bundle) -> dict:
    return {"model_id": bundle.model_id, "path": str(bundle.path) if bundle.path else None,
            "spatial_dims": bundle.spatial_dims, "compression": bundle.compression,
            "position_embedding": getattr(bundle.denoiser_config, "position_embedding", None)}


def run_segmentation(
    inputs: SubjectInputs,
    out_dir: Path,
    settings: DetectionSettings | Callable[[object], DetectionSettings],
    model=None,
    overwrite: bool = False,
    progress=None,
    cancel=None,
    upscale=None,
    sr_model=None,
) -> dict:
    """Load the subject and the model (a folder, catalogue id or loaded bundle), detect, write
    everything; return the report. ``settings`` may be a function of the loaded bundle (so that
    the model's recommended settings fill in what the user left unset).

    ``upscale`` (:class:`brainldm.sr.upscale.UpscaleSettings`) detects on an in-plane
    upscaled scan (bicubic or the SR model at ``sr_model``) and maps every output back to the
    input grid (thesis §4.4)."""
    from brainldm.detect.pipeline import detect
    from brainldm.sr.upscale import (
        UpscaleSettings,
        result_to_input_grid,
        upscale_subject,
    )

    upscale = upscale or UpscaleSettings()
    _check_outputs_free(Path(out_dir), overwrite)
    sr_bundle = None
    if upscale.method == "sr":
        from brainldm.sr.bundle import SRBundle

        if sr_model is None:
            raise BrainLDMError("--upscale sr needs a super-resolution model: pass --sr-model FOLDER "
                                "(train one with `brainldm train sr`, see docs/super-resolution.md)")
        sr_bundle = SRBundle.load(sr_model)
    subject = inputs.load()
    if callable(settings):  # settings that depend on the model (its recommended settings)
        bundle = load_model(model)
        settings = settings(bundle)
        if settings.device != "cpu":
            bundle = load_model(model, device=settings.device)
    else:
        bundle = load_model(model, device=settings.device)
    work_subject, upscale_timings = upscale_subject(subject, upscale, sr_bundle, progress=progress)
    result = detect(work_subject, bundle, settings, progress=progress, cancel=cancel)
    extra = None
    if upscale.method != "none":
        upscaled_metrics = dict(result.metrics)
        result = result_to_input_grid(result, subject, upscale.factor)
        result.timings.update(upscale_timings)
        result.timings["total"] = round(float(result.timings.get("total", 0.0)) + upscale_timings["upscale"], 3)
        extra = {"upscale": {"method": upscale.method, "factor": upscale.factor,
                             "sr_model": str(sr_model) if sr_model else None,
                             "metrics_on_upscaled_grid": upscaled_metrics}}
    return write_detection_outputs(subject, result, Path(out_dir), settings, model_description(bundle),
                                   overwrite=overwrite, extra_report=extra)


