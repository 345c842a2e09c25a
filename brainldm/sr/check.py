"""Acceptance check of the SR model (issue 7): ``brainldm sr-check``.

On held-out subjects (never trained on, e.g. ``brainldm phantom --seed 777``) each of ``slices``
axial slices per subject is degraded by each pipeline (MRI = Algorithm 2, ESRGAN = Algorithm 1,
:func:`brainldm.sr.degrade.make_sr_pair`, scale = the model's), and the low-resolution slice is
brought back to the high-resolution grid three ways: nearest neighbour, bicubic interpolation and
the SR model (:func:`brainldm.sr.infer.super_resolve_slices`, overlapping patches). Each is
compared with the original slice by PSNR and SSIM (Eq. 2.3/2.4, BrainLDM's [-1, 1] intensities,
data range 2, on the cropped brain box) and by the PSNR inside the brain mask. The check also
times the super-resolution of one axial slice of a subject's original grid (240x240 for BraTS and
phantoms), four sequences, as :func:`~brainldm.sr.infer.super_resolve_volume` runs it.

Outputs in ``out_dir``: ``sr_check.json`` (settings, per-pipeline means with standard deviations,
the fraction of slices where SR beats bicubic, timing, per-slice rows), ``sr_check.csv`` (per-slice
rows) and ``sr_check.png`` (LR / bicubic / SR / HR of one slice per pipeline, full and zoomed).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainldm.errors import InputDataError, SettingsError
from brainldm.sr.config import PIPELINES, SRInferenceSettings
from brainldm.sr.degrade import make_sr_pair
from brainldm.sr.infer import (
    FOREGROUND_LEVEL,
    super_resolve_slices,
    super_resolve_volume,
    upsample,
    upsampled_foreground,
)

log = logging.getLogger(__name__)

METHODS = ("nearest", "bicubic", "sr")


@dataclass
class SRCheckRequest:
    """Options of ``brainldm sr-check``."""

    data_dir: Path
    model: Path
    out_dir: Path
    pipelines: tuple[str, ...] = PIPELINES
    slices: int = 4
    limit: int | None = None
    seed: int = 0
    settings: SRInferenceSettings | None = None
    timing: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        bad = [p for p in self.pipelines if p not in PIPELINES]
        if not self.pipelines or bad:
            raise SettingsError(f"--pipelines must list {' and/or '.join(PIPELINES)}, got {list(self.pipelines)}.")
        if int(self.slices) < 1:
            raise SettingsError(f"--slices must be at least 1, got {self.slices}.")
        if self.limit is not None and int(self.limit) < 1:
            raise SettingsError(f"--limit must be at least 1, got {self.limit}.")


def pick_slices(mask: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices spread over the middle 60 % of the brain's extent (distinct, sorted)."""
    zs = np.flatnonzero(np.asarray(mask).any(axis=(0, 1)))
    if zs.size == 0:
        return []
    picks = np.unique(np.rint(np.quantile(zs, np.linspace(0.2, 0.8, int(count)))).astype(int))
    return [int(z) for z in picks]


def _slice_metrics(hr: np.ndarray, estimate: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    from brainldm.evaluate.generative import psnr, ssim

    error = (hr - estimate) ** 2
    brain_mse = float(error[:, brain].mean()) if brain.any() else float("nan")
    return {"psnr": psnr(hr[None], estimate[None]), "ssim": ssim(hr[None], estimate[None]),
            "psnr_brain": float(10.0 * np.log10(4.0 / max(brain_mse, 1e-12)))}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"slices": len(rows)}
    for method in METHODS:
        out[method] = {}
        for metric in ("psnr", "ssim", "psnr_brain"):
            values = np.array([r[f"{method}_{metric}"] for r in rows], dtype=np.float64)
            out[method][metric] = {"mean": float(values.mean()), "std": float(values.std())}
    out["sr_beats_bicubic"] = {
        "psnr": float(np.mean([r["sr_psnr"] > r["bicubic_psnr"] for r in rows])),
        "ssim": float(np.mean([r["sr_ssim"] > r["bicubic_ssim"] for r in rows])),
    }
    out["sr_minus_bicubic"] = {m: out["sr"][m]["mean"] - out["bicubic"][m]["mean"] for m in ("psnr", "ssim", "psnr_brain")}
    return out


def time_one_slice(images: np.ndarray, bundle, settings: SRInferenceSettings, repeats: int = 2) -> dict[str, Any]:
    """Seconds to super-resolve the axial slice with the most brain of ``(C, X, Y, Z)`` raw images
    (all sequences), as :func:`~brainldm.sr.infer.super_resolve_volume` does; the best of ``repeats``."""
    counts = (np.asarray(images) != 0).any(axis=0).sum(axis=(0, 1))
    z = int(np.argmax(counts))
    one = np.ascontiguousarray(images[..., z:z + 1])
    seconds = []
    for _ in range(max(1, int(repeats))):
        started = time.perf_counter()
        super_resolve_volume(one, bundle, settings)
        seconds.append(time.perf_counter() - started)
    return {"slice": z, "input_shape": list(one.shape[:3]), "output_shape": [one.shape[0], *[round(s * bundle.scale)
                                                                                             for s in one.shape[1:3]]],
            "seconds": float(min(seconds)), "all_seconds": [round(s, 3) for s in seconds],
            "torch_threads": int(torch.get_num_threads())}


def sr_check(request: SRCheckRequest, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the check (module docstring); returns what ``sr_check.json`` holds."""
    from brainldm.data.io import OutputExistsError, find_subjects, load_subject
    from brainldm.data.preprocess import preprocess_subject
    from brainldm.sr.bundle import SRBundle

    request.validate()
    out_dir = Path(request.out_dir).expanduser()
    targets = [out_dir / f"sr_check.{ext}" for ext in ("json", "csv", "png")]
    if not request.overwrite and any(p.exists() for p in targets):
        raise OutputExistsError(f"{out_dir} already holds an SR check; choose another --out or pass --overwrite.")
    data_dir = Path(request.data_dir).expanduser()
    if not data_dir.is_dir():
        raise InputDataError(f"Held-out data folder {data_dir} does not exist.")
    device = request.settings.device if request.settings is not None else "cpu"
    bundle = SRBundle.load(request.model, device=device)
    settings = request.settings or bundle.inference_settings()
    subjects = find_subjects(data_dir)
    if request.limit:
        subjects = subjects[:int(request.limit)]
    if not subjects:
        raise InputDataError(f"No complete subject in {data_dir}.")
    rows: list[dict[str, Any]] = []
    examples: dict[str, dict[str, np.ndarray]] = {}
    timing = None
    started = time.perf_counter()
    sr_seconds = 0.0
    for s_index, files in enumerate(subjects):
        subject = load_subject(files)
        prepared = preprocess_subject(subject, bundle.preprocess_config)
        zs = pick_slices(prepared.mask, request.slices)
        if request.timing and timing is None:
            timing = time_one_slice(subject.images, bundle, settings)
        for p_index, pipeline in enumerate(request.pipelines):
            hrs, lrs, fgs, seeds = [], [], [], []
            for z in zs:
                hr = np.ascontiguousarray(prepared.images[..., z])
                seed = int(np.random.SeedSequence([int(request.seed), s_index, z, p_index]).generate_state(1)[0] >> 1)
                pair = make_sr_pair(hr, pipeline, seed, scale=bundle.scale)
                if tuple(round(s * bundle.scale) for s in pair.lr.shape[1:]) != hr.shape[1:]:
                    raise InputDataError(f"{files.subject_id}: the cropped slice {hr.shape[1:]} is not a multiple of the "
                                         f"scale {bundle.scale}; use preprocessing with an even crop multiple.")
                hrs.append(hr)
                lrs.append(pair.lr)
                fgs.append((pair.lr > FOREGROUND_LEVEL).any(axis=0))
                seeds.append(seed)
            if not hrs:
                continue
            lr = np.stack(lrs)
            tick = time.perf_counter()
            sr = super_resolve_slices(lr, bundle, settings, foreground=np.stack(fgs), slice_ids=zs)
            sr_seconds += time.perf_counter() - tick
            shape = sr.shape[-2:]
            fg_up = upsampled_foreground(np.stack(fgs), shape)
            bicubic = np.where(fg_up[:, None], np.clip(upsample(lr, bundle.scale), -1.0, 1.0), -1.0)
            nearest = np.where(fg_up[:, None], upsample(lr, bundle.scale, "nearest"), -1.0)
            for k, z in enumerate(zs):
                brain = np.asarray(prepared.mask[..., z], dtype=bool)
                row: dict[str, Any] = {"subject": files.subject_id, "slice": z, "pipeline": pipeline, "seed": seeds[k]}
                for method, estimate in (("nearest", nearest[k]), ("bicubic", bicubic[k]), ("sr", sr[k])):
                    for metric, value in _slice_metrics(hrs[k], estimate.astype(np.float32), brain).items():
                        row[f"{method}_{metric}"] = value
                rows.append(row)
            if pipeline not in examples:
                k = len(zs) // 2
                examples[pipeline] = {"lr": nearest[k], "bicubic": bicubic[k], "sr": sr[k], "hr": hrs[k],
                                      "title": f"{files.subject_id} z={zs[k]}"}
        if progress is not None:
            progress(f"{files.subject_id}: {len(zs)} slices x {len(request.pipelines)} pipelines")
    if not rows:
        raise InputDataError(f"No brain slices found in the subjects of {data_dir}.")
    summary = {pipeline: _summary([r for r in rows if r["pipeline"] == pipeline]) for pipeline in request.pipelines}
    summary["all"] = _summary(rows)
    result = {
        "model": str(bundle.path), "model_id": bundle.model_id, "data_dir": str(data_dir),
        "subjects": [f.subject_id for f in subjects], "scale": bundle.scale, "settings": settings.to_dict(),
        "slices_per_subject": int(request.slices), "seed": int(request.seed),
        "metrics_note": "PSNR/SSIM on BrainLDM's [-1, 1] intensities (data range 2) over the cropped brain box; "
                        "psnr_brain: PSNR inside the brain mask",
        "summary": summary, "timing_one_slice": timing,
        "seconds": {"total": round(time.perf_counter() - started, 1), "sr": round(sr_seconds, 1)},
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sr_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "sr_check.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    check_png(examples, summary, out_dir / "sr_check.png")
    return result


def check_png(examples: dict[str, dict[str, Any]], summary: dict[str, Any], path: Path, channel: int = 3) -> Path:
    """LR (nearest) / bicubic / SR / HR of one slice per pipeline (``channel`` 3 = FLAIR), whole
    slice and a zoom on the brain's centre, with the per-pipeline mean PSNR/SSIM in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = (("lr", "LR (nearest)"), ("bicubic", "bicubic"), ("sr", "SR"), ("hr", "HR"))
    rows = len(examples) * 2
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3 * rows), squeeze=False)
    for r, (pipeline, images) in enumerate(examples.items()):
        hr = images["hr"][channel]
        fg = np.argwhere(hr > -1.0)
        centre = fg.mean(axis=0).astype(int) if len(fg) else np.array(hr.shape) // 2
        half = max(16, min(hr.shape) // 5)
        box = tuple(slice(max(0, c - half), c + half) for c in centre)
        for c, (key, title) in enumerate(columns):
            image = images[key][channel]
            stats = summary[pipeline].get(key if key != "lr" else "nearest") if key != "hr" else None
            label = f"{pipeline}: {title}" + (f"\nPSNR {stats['psnr']['mean']:.2f} SSIM {stats['ssim']['mean']:.3f}"
                                               if stats else f"\n{images['title']}")
            for row, view in ((2 * r, image), (2 * r + 1, image[box])):
                ax = axes[row, c]
                ax.imshow(np.asarray(view).T, cmap="gray", origin="lower", vmin=-1, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 2 * r:
                    ax.set_title(label, fontsize=9)
    fig.suptitle("SR check: low resolution / bicubic / SR / high resolution (FLAIR; means over all held-out slices)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["METHODS", "SRCheckRequest", "check_png", "pick_slices", "sr_check", "time_one_slice"]
