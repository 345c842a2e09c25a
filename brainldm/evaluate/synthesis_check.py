"""The acceptance check of lesion synthesis (issue 6): ``brainldm synth-check``.

For every held-out reference subject (a folder of subjects in BraTS naming, e.g. phantoms never
used in training):

1. **Paint** a lesion of exactly ``diameter_mm`` in-plane: a real lesion shape resized and placed
   at random inside the brain (:func:`brainldm.synth.subjects.make_lesion`, as ``brainldm synth
   --diameter`` does; deterministic from ``seed`` and the reference's position in the list). A
   reference that already holds a tumour (its ``-seg`` labels > 0) gets the lesion at least
   ``clearance_mm`` away from it. The painted mask is written to ``masks/<id>-painted.nii.gz``.
2. **Synthesise** it (:func:`brainldm.synth.subjects.synthesise_subject`, the function behind
   ``brainldm synth``) into ``subjects/<id>-lesion``, and a **healthy-masked** synthesis with the
   same noise over the same region (``SynthSettings(healthy=True)``: the conditioning mask's lesion
   channel is all zero and the windows are labelled healthy) into ``subjects/<id>-healthy``.
3. **Detect** on the written synthetic subjects (read back from disk) and on the unmodified
   reference: the FLAIR 98th-percentile baseline (:func:`brainldm.evaluate.baselines.flair_percentile`
   inside :func:`brainldm.data.preprocess.brain_mask`), and the diffusion detector
   (:func:`brainldm.detect.pipeline.detect` with ``DetectionSettings.for_model(bundle.inference)``)
   when a detection bundle is given.

Rules, per case and detection method (``M`` = the painted mask, ``R`` = ``M`` dilated by
``region_dilation`` voxels (Euclidean), ``D`` = the detection):

* **found**: a connected component of ``D`` (26-connectivity) overlaps ``M`` *and* the detected
  fraction of the mask ``|D ∩ M| / |M|`` is at least ``found_min_fraction`` (0.2). Reported:
  ``mask_fraction``, ``components`` (how many components of ``D`` touch ``M``) and
  ``component_voxels`` (their total size - a detection that floods the brain touches ``M`` too, so
  read it beside the fraction), ``detected_voxels`` (all of ``D``), and ``reference_mask_fraction``, the same fraction on the
  unmodified reference (what was bright there before). A case counts as found when the FLAIR
  baseline *or* the detector finds it (the issue's "found by the FLAIR baseline or the detector").
* **adds none**: on the healthy-masked synthesis the detection inside ``R`` is not larger than on
  the unmodified reference inside ``R`` by more than ``adds_tolerance`` (10 %) of ``|M|``:
  ``|D_healthy ∩ R| - |D_reference ∩ R| <= adds_tolerance * |M|``. A case adds none when every
  method run adds none. Reported: both voxel counts and their difference.
* **acceptance** (issue 6): found in at least 90 % of the cases and a healthy-masked synthesis
  adding none (reported as a rate too; ``adds_none_every_case`` says whether it held in all).

Generative metrics per case (thesis Eq. 2.3-2.5, :mod:`brainldm.evaluate.generative`), on the
axial slices holding the painted lesion, all images on the reference's cropped grid normalised
with the reference's own normalisation to [-1, 1] (both subjects read back from disk):

* ``lesion_outside_*``: PSNR / SSIM / MS-SSIM of the lesion synthesis against the reference with the
  painted lesion's voxels taken from the reference in both (how much of the rest is kept);
* ``healthy_inside_*``: the healthy-masked synthesis against the reference in the in-plane
  bounding box of ``R`` on those slices (at least 32 voxels a side, inside the image): how close
  the regenerated healthy tissue is to the tissue that was there;
* FAD (2D models): Fréchet distance on the synthesis bundle's image autoencoder features
  (:func:`~brainldm.evaluate.generative.autoencoder_features`) between windows of the bundle's
  patch size centred on the lesion per slice: ``fad.lesion`` real tumour slices of the references
  (their own labels; none when all references are healthy) against the synthetic lesion slices,
  ``fad.healthy`` the references against the healthy-masked syntheses at the painted place.

Outputs in ``out_dir``: ``check.json`` (request, rules, cases, summary: rates with percentile
bootstrap 95 % intervals, metric means), ``check.csv`` (one row per case), ``check.png`` (the
first cases: reference, synthetic lesion with the painted mask, detections, healthy-masked
synthesis), and the synthetic subjects and painted masks.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from brainldm.data.sequences import FLAIR_INDEX
from brainldm.errors import InputDataError, ModelBundleError, SettingsError
from brainldm.synth.generate import SynthSettings

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

#: Detection method names in the outputs.
FLAIR_METHOD = "flair-percentile"
DETECTOR_METHOD = "detector"

#: Per-case generative metrics (columns of check.csv, means in the summary).
METRICS = ("lesion_outside_psnr", "lesion_outside_ssim", "lesion_outside_ms_ssim",
           "healthy_inside_psnr", "healthy_inside_ssim", "healthy_inside_ms_ssim")

#: Found rate the issue asks for.
TARGET_FOUND_RATE = 0.9

#: Real tumour slices per reference used for FAD (evenly spaced when it holds more).
MAX_REAL_SLICES = 32


@dataclass
class SynthCheckRequest:
    """What ``brainldm synth-check`` measures; the rules are described in the module docstring."""

    references: Path
    out_dir: Path
    diameter_mm: float = 20.0
    limit: int | None = None
    seed: int = 0
    settings: SynthSettings = field(default_factory=SynthSettings)
    lesion_sources: list[Path] = field(default_factory=list)
    clearance_mm: float = 10.0  # distance of the painted lesion from a tumour already in the reference
    found_min_fraction: float = 0.2
    region_dilation: int = 3  # voxels around the painted mask for "adds none"
    adds_tolerance: float = 0.1  # of the painted mask's voxels
    percentile: float = 98.0  # FLAIR baseline
    inside_box: int = 32  # minimum side (voxels) of the box of the healthy_inside metrics
    bootstrap: int = 1000
    figure_cases: int = 4
    overwrite: bool = False

    def validate(self) -> SynthCheckRequest:
        if not 0 < float(self.diameter_mm) <= 100:
            raise SettingsError(f"The lesion diameter must lie in (0, 100] mm, got {self.diameter_mm}.")
        if self.limit is not None and int(self.limit) < 1:
            raise SettingsError(f"--limit must be at least 1, got {self.limit}.")
        if not 0.0 < float(self.found_min_fraction) <= 1.0:
            raise SettingsError(f"The found fraction must lie in (0, 1], got {self.found_min_fraction}.")
        if not 0.0 <= float(self.adds_tolerance) <= 1.0:
            raise SettingsError(f"The adds-none tolerance must lie in [0, 1], got {self.adds_tolerance}.")
        if int(self.region_dilation) < 0 or float(self.clearance_mm) < 0:
            raise SettingsError("The region dilation and the clearance from a tumour must be >= 0.")
        if not 50.0 <= float(self.percentile) < 100.0:
            raise SettingsError(f"The FLAIR percentile must lie in [50, 100), got {self.percentile}.")
        if int(self.inside_box) < 11:
            raise SettingsError("The box of the inside-region metrics needs at least 11 voxels a side (SSIM window).")
        self.settings.validate()
        return self


def check_request(request: SynthCheckRequest):
    """Validate the request, find the reference subjects and check ``out_dir`` - before any model
    is loaded. Returns the references' files (the first ``limit``, sorted by id)."""
    from brainldm.data.io import OutputExistsError, find_subjects

    request.validate()
    found, skipped = find_subjects(request.references, return_skipped=True)
    for s in skipped:
        log.warning("skipped %s: %s", s.subject_id, s.reason)
    if not found:
        raise InputDataError(f"No complete reference subject in {request.references}: each needs <id>-t1n/-t1c/-t2w/"
                             "-t2f.nii.gz (BraTS 2023) or <id>_t1/_t1ce/_t2/_flair.nii.gz (BraTS 2021) files; give "
                             "the folder of held-out subjects with --references.")
    out = Path(request.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder.")
    if out.is_dir() and any(out.iterdir()) and not request.overwrite:
        raise OutputExistsError(f"--out {out} is not empty; choose an empty or new folder, or pass --overwrite "
                                "(files of an earlier check there are replaced).")
    return found[: request.limit] if request.limit else found


# --------------------------------------------------------------------------- rules (pure functions)


def placement_region(brain: np.ndarray, tumour: np.ndarray | None, spacing, clearance_mm: float) -> np.ndarray:
    """Where a painted lesion may lie: the brain, at least ``clearance_mm`` from any tumour voxel."""
    brain = np.asarray(brain, dtype=bool)
    if tumour is None or not np.any(tumour):
        return brain.copy()
    distance = ndi.distance_transform_edt(~np.asarray(tumour, dtype=bool), sampling=[float(s) for s in spacing])
    return brain & (distance > float(clearance_mm))


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` grown by ``voxels`` (Euclidean distance in voxels), computed on its bounding box."""
    mask = np.asarray(mask, dtype=bool)
    if voxels <= 0 or not mask.any():
        return mask.copy()
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    grown = tuple(slice(max(0, s.start - voxels - 1), min(n, s.stop + voxels + 1)) for s, n in zip(box, mask.shape))
    out = np.zeros_like(mask)
    out[grown] = ndi.distance_transform_edt(~mask[grown]) <= float(voxels)
    return out


def found_numbers(detection: np.ndarray, painted: np.ndarray, min_fraction: float = 0.2) -> dict[str, Any]:
    """The "found inside the painted mask" rule of the module docstring for one detection."""
    detection = np.asarray(detection, dtype=bool)
    painted = np.asarray(painted, dtype=bool)
    if not painted.any():
        raise SettingsError("The painted mask is empty.")
    labels, _ = ndi.label(detection, structure=np.ones((3,) * detection.ndim))
    touching = np.unique(labels[painted & detection])
    touching = touching[touching > 0]
    fraction = float(np.count_nonzero(detection & painted)) / float(np.count_nonzero(painted))
    return {"mask_fraction": fraction, "components": int(touching.size),
            "component_voxels": int(np.count_nonzero(np.isin(labels, touching))) if touching.size else 0,
            "detected_voxels": int(np.count_nonzero(detection)),
            "found": bool(touching.size > 0 and fraction >= float(min_fraction))}


def adds_numbers(healthy_detection: np.ndarray, reference_detection: np.ndarray, painted: np.ndarray,
                 region: np.ndarray, tolerance: float = 0.1) -> dict[str, Any]:
    """The "adds none" rule of the module docstring for one detection method."""
    region = np.asarray(region, dtype=bool)
    healthy = int(np.count_nonzero(np.asarray(healthy_detection, dtype=bool) & region))
    reference = int(np.count_nonzero(np.asarray(reference_detection, dtype=bool) & region))
    allowed = float(tolerance) * float(np.count_nonzero(painted))
    return {"healthy_region_voxels": healthy, "reference_region_voxels": reference, "added_voxels": healthy - reference,
            "adds_none": bool(healthy - reference <= allowed)}


# --------------------------------------------------------------------------- detection and metrics


def detections(subject, detector=None, detection_settings=None, percentile: float = 98.0) -> dict[str, np.ndarray]:
    """Boolean detections of one subject per method: the FLAIR percentile baseline inside
    :func:`~brainldm.data.preprocess.brain_mask`, and the detector's segmentation when given."""
    from brainldm.data.preprocess import brain_mask
    from brainldm.evaluate.baselines import flair_percentile

    out = {FLAIR_METHOD: flair_percentile(subject.images, brain_mask(subject.images), percentile).mask.astype(bool)}
    if detector is not None:
        from brainldm.detect.pipeline import detect

        out[DETECTOR_METHOD] = detect(subject, detector, detection_settings).segmentation > 0
    return out


def normalised_like(prepared, subject) -> np.ndarray:
    """``subject``'s images on the reference's cropped grid with the reference's normalisation."""
    return prepared.normaliser.normalise(prepared.crop.apply(subject.images, fill=0), prepared.mask)


def _slices(volume: np.ndarray, zs) -> np.ndarray:
    """``(C, x, y, z)`` -> ``(S, C, x, y)`` (or ``(x, y, z)`` -> ``(S, x, y)``) at the axial slices ``zs``."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(volume)[..., list(zs)], -1, 0))


def _box(mask2d: np.ndarray, minimum: int) -> tuple[slice, slice]:
    """In-plane bounding box of ``mask2d``, grown to at least ``minimum`` voxels a side, inside the image."""
    out = []
    for axis in range(2):
        n = mask2d.shape[axis]
        idx = np.flatnonzero(mask2d.any(axis=1 - axis))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        size = min(n, max(hi - lo, int(minimum)))
        start = int(np.clip((lo + hi) // 2 - size // 2, 0, n - size))
        out.append(slice(start, start + size))
    return out[0], out[1]


def generative_numbers(reference_n: np.ndarray, lesion_n: np.ndarray, healthy_n: np.ndarray, painted_c: np.ndarray,
                       region_c: np.ndarray, inside_box: int = 32) -> dict[str, float]:
    """The per-case generative metrics of the module docstring, from normalised ``(4, x, y, z)``
    volumes on one cropped grid and the painted mask / region there."""
    from brainldm.evaluate.generative import ms_ssim, psnr, ssim

    zs = np.flatnonzero(painted_c.any(axis=(0, 1)))
    real = _slices(reference_n, zs)
    lesion = _slices(painted_c, zs)[:, None]
    outside = np.where(lesion, real, _slices(lesion_n, zs))
    bx, by = _box(region_c[..., zs].any(axis=2), inside_box)
    real_in = real[..., bx, by]
    healthy_in = _slices(healthy_n, zs)[..., bx, by]
    out = {}
    for name, (a, b) in {"lesion_outside": (real, outside), "healthy_inside": (real_in, healthy_in)}.items():
        out[f"{name}_psnr"] = psnr(a, b)
        out[f"{name}_ssim"] = ssim(a, b)
        out[f"{name}_ms_ssim"] = ms_ssim(a, b)
    return out


def lesion_windows(volume_n: np.ndarray, mask_c: np.ndarray, size, max_slices: int | None = None) -> np.ndarray:
    """``(S, 4, *size)`` windows of a normalised ``(4, x, y, z)`` volume centred on the in-plane
    centre of ``mask_c`` on each axial slice holding it (moved inside the image; padded with -1
    where the image is smaller)."""
    size = tuple(int(s) for s in size)
    zs = np.flatnonzero(np.asarray(mask_c).any(axis=(0, 1)))
    if max_slices is not None and zs.size > max_slices:
        zs = zs[np.linspace(0, zs.size - 1, max_slices).round().astype(int)]
    pad = [(0, 0)] + [(0, max(0, s - n)) for s, n in zip(size, volume_n.shape[1:3])] + [(0, 0)]
    volume = np.pad(volume_n, pad, constant_values=-1.0)
    windows = []
    for z in zs:
        centre = np.argwhere(mask_c[..., z]).mean(axis=0)
        start = [int(np.clip(round(c) - s // 2, 0, n - s)) for c, s, n in zip(centre, size, volume.shape[1:3])]
        windows.append(volume[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1], z])
    return np.stack(windows).astype(np.float32) if windows else np.zeros((0, volume_n.shape[0], *size), np.float32)


def _fad(real: list[np.ndarray], fake: list[np.ndarray]) -> dict[str, Any]:
    from brainldm.evaluate.generative import frechet_distance, gaussian_fit

    r = np.concatenate(real) if real else np.zeros((0, 0))
    f = np.concatenate(fake) if fake else np.zeros((0, 0))
    entry: dict[str, Any] = {"value": None, "real": int(r.shape[0]), "synthetic": int(f.shape[0])}
    if r.shape[0] < 2 or f.shape[0] < 2:
        entry["reason"] = "needs at least two real and two synthetic windows"
        return entry
    entry["value"] = frechet_distance(*gaussian_fit(r), *gaussian_fit(f))
    return entry


# --------------------------------------------------------------------------- the check


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rate(values: list[bool], n_bootstrap: int) -> dict[str, Any]:
    from brainldm.evaluate.metrics import bootstrap_ci

    if not values:
        return {"rate": None, "ci95": None, "count": 0, "n": 0}
    mean, low, high = bootstrap_ci([float(v) for v in values], n=n_bootstrap, seed=0)
    return {"rate": mean, "ci95": [low, high], "count": int(sum(values)), "n": len(values)}


def _mean(values: list, n_bootstrap: int) -> dict[str, Any]:
    from brainldm.evaluate.metrics import bootstrap_ci

    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "ci95": None, "n": 0}
    mean, low, high = bootstrap_ci(finite, n=n_bootstrap, seed=0)
    return {"mean": mean, "ci95": [low, high], "n": len(finite)}


def summarise(rows: list[dict], methods: list[str], n_bootstrap: int = 1000) -> dict[str, Any]:
    """Rates (found per method and by either, adds none per method and by all) with bootstrap
    95 % intervals, and metric means, over the cases that ran."""
    ok = [r for r in rows if r.get("status") == "ok"]
    found = {m: _rate([r[f"{m}_found"] for r in ok], n_bootstrap) for m in methods}
    found["either"] = _rate([r["found"] for r in ok], n_bootstrap)
    adds = {m: _rate([r[f"{m}_adds_none"] for r in ok], n_bootstrap) for m in methods}
    adds["all"] = _rate([r["adds_none"] for r in ok], n_bootstrap)
    metrics = {k: _mean([r.get(k) for r in ok], n_bootstrap) for k in METRICS}
    found_rate, adds_rate = found["either"]["rate"], adds["all"]["rate"]
    acceptance = {
        "found_rate": found_rate, "target_found_rate": TARGET_FOUND_RATE, "adds_none_rate": adds_rate,
        "adds_none_every_case": bool(ok) and all(r["adds_none"] for r in ok),
        "met": bool(ok) and found_rate >= TARGET_FOUND_RATE and adds_rate >= TARGET_FOUND_RATE,
    }
    return {"n": len(ok), "failed": len(rows) - len(ok), "found": found, "adds_none": adds, "metrics": metrics,
            "acceptance": acceptance}


def _bundle_summary(bundle) -> dict[str, Any]:
    return {"model_id": bundle.model_id, "path": str(bundle.path) if getattr(bundle, "path", None) else None}


def _held_out_warnings(request: SynthCheckRequest, bundle) -> list[str]:
    data = (getattr(bundle, "training", None) or {}).get("synthesis", {}).get("data", {}) or {}
    trained_on = data.get("data_dir")
    if trained_on and Path(str(trained_on)).expanduser().resolve() == Path(request.references).expanduser().resolve():
        return [(f"the references {request.references} are the folder the synthesis model was trained on "
                 f"({data.get('n_train')} training subjects); the check is meant for held-out subjects")]
    return []


def _case_figure_data(z: int, reference, lesion, healthy, painted, region, found: dict, healthy_det: dict,
                      brain) -> dict[str, Any]:
    return {"z": z, "reference": reference.images[FLAIR_INDEX][..., z], "lesion": lesion.images[FLAIR_INDEX][..., z],
            "healthy": healthy.images[FLAIR_INDEX][..., z], "painted": painted[..., z], "region": region[..., z],
            "found": {m: d[..., z] for m, d in found.items()},
            "healthy_detection": {m: d[..., z] for m, d in healthy_det.items()}, "brain": brain}


def run_synth_check(request: SynthCheckRequest, bundle, detector=None, detection_settings=None,
                    progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run the acceptance check (module docstring) with a synthesis bundle (and a detection bundle);
    writes ``check.json``, ``check.csv``, ``check.png`` and the synthetic subjects, returns the results."""
    from brainldm.data.io import find_subjects, load_subject, save_like
    from brainldm.data.lesion_geometry import inplane_diameter_mm
    from brainldm.data.preprocess import preprocess_subject
    from brainldm.synth.subjects import (
        canonical_to_file_voxel,
        lesion_library,
        make_lesion,
        synthesise_subject,
        write_synthetic_subject,
    )

    references = check_request(request)
    if not hasattr(bundle, "mask_autoencoder"):
        raise ModelBundleError("--model must be a lesion synthesis bundle (brainldm train synthesis ... -> RUN/bundle), "
                               "not a detection model; give a detection model with --detector-model.")
    if detector is not None and hasattr(detector, "mask_autoencoder"):
        raise ModelBundleError("--detector-model is a lesion synthesis bundle; give a detection model bundle there.")
    if detector is not None and detection_settings is None:
        from brainldm.detect.settings import DetectionSettings

        detection_settings = DetectionSettings.for_model(getattr(detector, "inference", None),
                                                         device=request.settings.device)
    report = progress or (lambda stage, fraction: None)
    methods = [FLAIR_METHOD] + ([DETECTOR_METHOD] if detector is not None else [])
    out = Path(request.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    warnings = _held_out_warnings(request, bundle)
    for warning in warnings:
        log.warning(warning)
    shapes = lesion_library(request.lesion_sources)
    fad_ok = bundle.spatial_dims == 2
    window = tuple(bundle.patch_size) if len(tuple(bundle.patch_size)) == 2 else (64, 64)
    features: dict[str, list[np.ndarray]] = {"real": [], "lesion": [], "reference": [], "healthy": []}
    rows: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    started = time.perf_counter()
    n = len(references)

    def write(final: bool) -> dict[str, Any]:
        results = {
            "references": str(request.references), "model": _bundle_summary(bundle),
            "detector": _bundle_summary(detector) if detector is not None else None,
            "diameter_mm": float(request.diameter_mm), "seed": int(request.seed), "limit": request.limit,
            "synthesis_settings": request.settings.to_dict(),
            "detection_settings": detection_settings.to_dict() if detection_settings is not None else None,
            "rules": {"found_min_fraction": request.found_min_fraction, "region_dilation_voxels": request.region_dilation,
                      "adds_tolerance_of_mask": request.adds_tolerance, "flair_percentile": request.percentile,
                      "clearance_mm": request.clearance_mm, "inside_box_voxels": request.inside_box,
                      "connectivity": 26},
            "methods": methods, "warnings": warnings, "seconds": round(time.perf_counter() - started, 1),
            "finished": final, "cases": rows, "summary": summarise(rows, methods, request.bootstrap),
        }
        if final:
            if not fad_ok:
                results["summary"]["fad"] = {"reason": "FAD windows are computed for 2D synthesis models only"}
            else:
                results["summary"]["fad"] = {
                    "lesion": _fad(features["real"], features["lesion"]),
                    "healthy": _fad(features["reference"], features["healthy"]),
                    "window": list(window), "autoencoder": "the synthesis bundle's image autoencoder, pooled 4x4",
                }
        (out / "check.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
        _write_csv(out / "check.csv", rows, methods)
        return results

    for index, files in enumerate(references):
        case_started = time.perf_counter()

        def stage(name: str, a: float, b: float, case: str = f"{files.subject_id} ({index + 1}/{n})",
                  offset: int = index) -> Progress:
            """A progress callback mapping this case's stage ``name`` onto [a, b] of the case."""
            return lambda _stage, fraction: report(f"{case}: {name}", (offset + a + (b - a) * float(fraction)) / n)

        stage("load", 0.0, 0.0)("load", 0.0)
        subject = load_subject(files)
        row: dict[str, Any] = {"reference": subject.subject_id, "status": "ok",
                               "reference_tumour_voxels": int(np.count_nonzero(subject.seg)) if subject.seg is not None else 0}
        try:
            prepared = preprocess_subject(subject, bundle.preprocess_config)
            brain = prepared.crop.invert(prepared.mask, fill=False)
            tumour = subject.seg > 0 if subject.seg is not None else None
            rng = np.random.default_rng([int(request.seed), index])
            allowed = placement_region(brain, tumour, subject.spacing, request.clearance_mm)
            choice = make_lesion(subject, allowed, float(request.diameter_mm), shapes, rng=rng)
        except SettingsError as error:
            row.update({"status": "failed", "reason": str(error)})
            rows.append(row)
            log.warning("%s: %s", subject.subject_id, error)
            write(False)
            continue
        painted = choice.labels > 0
        settings = replace(request.settings, seed=int(rng.integers(2**31)), healthy=False)
        lesion_id, healthy_id = f"{subject.subject_id}-lesion", f"{subject.subject_id}-healthy"
        lesion_dir, healthy_dir = out / "subjects" / lesion_id, out / "subjects" / healthy_id
        result = synthesise_subject(subject, choice.labels, bundle, settings, subject_id=lesion_id, prepared=prepared,
                                    progress=stage("lesion synthesis", 0.0, 0.35), cancel=cancel)
        lesion_info = {"source": choice.source, "target_diameter_mm": float(request.diameter_mm),
                       "diameter_mm": inplane_diameter_mm(painted, subject.spacing), "voxels": int(painted.sum()),
                       "centre_voxel": list(canonical_to_file_voxel(choice.centre, subject))}
        write_synthetic_subject(result, subject, lesion_dir, overwrite=True,
                                report={"subject": lesion_id, "reference": subject.subject_id, "lesion": lesion_info,
                                        "model": _bundle_summary(bundle), "settings": settings.to_dict()})
        healthy_settings = replace(settings, healthy=True)
        healthy_result = synthesise_subject(subject, choice.labels, bundle, healthy_settings, subject_id=healthy_id,
                                            prepared=prepared, progress=stage("healthy-masked synthesis", 0.35, 0.7),
                                            cancel=cancel)
        write_synthetic_subject(healthy_result, subject, healthy_dir, overwrite=True,
                                report={"subject": healthy_id, "reference": subject.subject_id, "region": lesion_info,
                                        "model": _bundle_summary(bundle), "settings": healthy_settings.to_dict()})
        (out / "masks").mkdir(parents=True, exist_ok=True)
        mask_name = Path("masks") / f"{subject.subject_id}-painted.nii.gz"
        save_like(painted.astype(np.uint8), subject, out / mask_name, dtype=np.uint8, overwrite=True)
        synth_seconds = time.perf_counter() - case_started

        # Everything below is measured on the subjects as written.
        detecting = stage("detection", 0.7, 1.0)
        detecting("detection", 0.0)
        lesion_subject = load_subject(find_subjects(lesion_dir)[0])
        healthy_subject = load_subject(find_subjects(healthy_dir)[0])
        region = dilate(painted, int(request.region_dilation))
        det_lesion = detections(lesion_subject, detector, detection_settings, request.percentile)
        detecting("detection", 1 / 3)
        det_healthy = detections(healthy_subject, detector, detection_settings, request.percentile)
        detecting("detection", 2 / 3)
        det_reference = detections(subject, detector, detection_settings, request.percentile)
        row.update({"lesion_source": choice.source, "diameter_mm": lesion_info["diameter_mm"],
                    "painted_voxels": lesion_info["voxels"], "region_voxels": int(region.sum()),
                    "centre_voxel": lesion_info["centre_voxel"], "slices": len(result.slices),
                    "synthesis_seed": settings.seed, "painted_mask": str(mask_name),
                    "lesion_subject": f"subjects/{lesion_id}", "healthy_subject": f"subjects/{healthy_id}"})
        for method in methods:
            f = found_numbers(det_lesion[method], painted, request.found_min_fraction)
            a = adds_numbers(det_healthy[method], det_reference[method], painted, region, request.adds_tolerance)
            row.update({f"{method}_{k}": v for k, v in f.items()})
            row[f"{method}_reference_mask_fraction"] = float(np.count_nonzero(det_reference[method] & painted)) / float(
                painted.sum())
            row.update({f"{method}_{k}": v for k, v in a.items()})
        row["found"] = any(row[f"{m}_found"] for m in methods)
        row["adds_none"] = all(row[f"{m}_adds_none"] for m in methods)

        reference_n = prepared.images
        lesion_n = normalised_like(prepared, lesion_subject)
        healthy_n = normalised_like(prepared, healthy_subject)
        painted_c = prepared.crop.apply(painted, fill=False)
        region_c = prepared.crop.apply(region, fill=False)
        row.update(generative_numbers(reference_n, lesion_n, healthy_n, painted_c, region_c, request.inside_box))
        if fad_ok:
            from brainldm.evaluate.generative import autoencoder_features

            def feats(windows: np.ndarray) -> np.ndarray:
                return autoencoder_features(windows, bundle.autoencoder) if len(windows) else np.zeros((0, 0))

            if tumour is not None and tumour.any():
                features["real"].append(feats(lesion_windows(reference_n, prepared.crop.apply(tumour, fill=False),
                                                             window, MAX_REAL_SLICES)))
            features["lesion"].append(feats(lesion_windows(lesion_n, painted_c, window)))
            features["reference"].append(feats(lesion_windows(reference_n, painted_c, window)))
            features["healthy"].append(feats(lesion_windows(healthy_n, painted_c, window)))
        row["synthesis_seconds"] = round(synth_seconds, 2)
        row["seconds"] = round(time.perf_counter() - case_started, 2)
        rows.append(row)
        if len(figures) < int(request.figure_cases):
            z = int(np.argmax(painted.sum(axis=(0, 1))))
            figures.append({"row": row, **_case_figure_data(z, subject, lesion_subject, healthy_subject, painted, region,
                                                            det_lesion, det_healthy, brain)})
        report(f"{files.subject_id} ({index + 1}/{n}): done", (index + 1) / n)
        write(False)
    results = write(True)
    if figures:
        check_figure(figures, methods, out / "check.png",
                     title=f"{bundle.model_id}: {float(request.diameter_mm):g} mm lesions in {Path(request.references).name}"
                           f" (N {request.settings.steps}, C {request.settings.guidance:g}, "
                           f"M {request.settings.mask_guidance:g})")
    return results


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(float(value))
    return value


def _write_csv(path: Path, rows: list[dict], methods: list[str]) -> None:
    columns = ["reference", "status", "reason", "lesion_source", "diameter_mm", "painted_voxels", "region_voxels",
               "centre_voxel", "slices", "reference_tumour_voxels", "found", "adds_none"]
    for method in methods:
        columns += [f"{method}_{k}" for k in ("found", "mask_fraction", "components", "component_voxels",
                                              "detected_voxels", "reference_mask_fraction", "adds_none", "healthy_region_voxels",
                                              "reference_region_voxels", "added_voxels")]
    columns += [*METRICS, "synthesis_seed", "synthesis_seconds", "seconds"]
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in columns})


def _csv_value(value):
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


# --------------------------------------------------------------------------- figure


def check_figure(cases: list[dict[str, Any]], methods: list[str], path: str | Path, title: str = "") -> Path:
    """One row per case (axial slice of the painted lesion's largest area), in the style of the
    detection overview: reference FLAIR; synthetic lesion with the painted mask (green); the
    detections on it (FLAIR baseline orange, detector red); the healthy-masked synthesis with the
    region (cyan) and its detections."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    colours = {FLAIR_METHOD: "#ff9000", DETECTOR_METHOD: "#ff2020"}
    fig = Figure(figsize=(3.2 * 4, 3.5 * len(cases) + 0.9), facecolor="black")
    axes = np.atleast_2d(fig.subplots(len(cases), 4))
    for r, case in enumerate(cases):
        brain = case["brain"]
        xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
        x0, x1 = (max(int(xs[0]) - 4, 0), int(xs[-1]) + 5) if xs.size else (0, brain.shape[0])
        y0, y1 = (max(int(ys[0]) - 4, 0), int(ys[-1]) + 5) if ys.size else (0, brain.shape[1])

        def view(a: np.ndarray, box=(slice(x0, x1), slice(y0, y1))) -> np.ndarray:
            return np.asarray(a)[box].T[::-1, ::-1]  # radiological: anterior up, patient's right on the left

        inside = case["reference"][brain[..., case["z"]]]
        vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
        row = case["row"]
        short = {FLAIR_METHOD: "FLAIR", DETECTOR_METHOD: "detector"}
        found_text = ", ".join(f"{short[m]} {row[f'{m}_mask_fraction']:.0%} of mask" for m in methods)
        added_text = ", ".join(f"{short[m]} {row[f'{m}_added_voxels']:+d} vx" for m in methods)
        panels = [
            (f"{row['reference']}  axial slice {case['z']}\nreference FLAIR", case["reference"], [], []),
            ("synthetic lesion\n(painted mask: green)", case["lesion"], [], [(case["painted"], "#30ff60")]),
            (f"found: {'yes' if row['found'] else 'no'}\n{found_text}", case["lesion"],
             [(case["found"][m], colours[m]) for m in methods], [(case["painted"], "#30ff60")]),
            (f"healthy-masked (region: cyan): adds {'none' if row['adds_none'] else 'some'}\n{added_text}",
             case["healthy"], [(case["healthy_detection"][m], colours[m]) for m in methods],
             [(case["region"], "#30e0ff")]),
        ]
        for c, (label, image, fills, outlines) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(view(image), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            for mask, colour in fills:
                m = view(mask)
                if m.any():
                    overlay = np.zeros((*m.shape, 4), dtype=np.float32)
                    overlay[m] = matplotlib.colors.to_rgba(colour, 0.5)
                    ax.imshow(overlay, interpolation="nearest")
            for mask, colour in outlines:
                m = view(mask).astype(np.float32)
                if m.any():
                    ax.contour(m, [0.5], colors=[colour], linewidths=1.0)
            ax.set_title(label, color="white", fontsize=8)
            ax.set_axis_off()
    legend = "FLAIR baseline: orange" + (", detector: red" if DETECTOR_METHOD in methods else "")
    fig.suptitle(f"{title}\n{legend}".strip(), color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 1.2 / fig.get_figheight(), bottom=0.01, wspace=0.03,
                        hspace=0.22)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=80, facecolor="black")
    return path


__all__ = [
    "DETECTOR_METHOD",
    "FLAIR_METHOD",
    "METRICS",
    "SynthCheckRequest",
    "adds_numbers",
    "check_figure",
    "check_request",
    "detections",
    "dilate",
    "found_numbers",
    "generative_numbers",
    "lesion_windows",
    "normalised_like",
    "placement_region",
    "run_synth_check",
    "summarise",
]
