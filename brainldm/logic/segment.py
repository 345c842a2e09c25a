"""The BrainLDMSegment use case on an MRML scene: four volumes in, counterfactuals, maps and a
segmentation out.

Flow (all of it without Qt; the Slicer widget only binds controls and polls)::

    SegmentParameters (the module's parameter node)
      -> start_detection(): the four volume nodes are written as NIfTI in their own grid,
         a job file is written and ``python -m brainldm.logic.worker`` starts in its own
         process group; a reader thread collects its JSON progress lines
      -> DetectionJob.poll() (the widget's QTimer)   /   DetectionJob.cancel(): kills the tree
      -> add_detection_results(): new nodes (never replacing user nodes): counterfactual
         volumes, anomaly and GradDiff maps as overlays (zero transparent), a segmentation
         node, Dice / specificity against a chosen reference segmentation

Nothing is added to the scene before the worker has finished, so a cancelled or failed run
leaves the scene exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from brainldm.data.sequences import SEQUENCE_TITLES, SEQUENCES
from brainldm.detect.settings import DetectionSettings
from brainldm.errors import BrainLDMError, InputDataError, SettingsError
from brainldm.logic import mrml
from brainldm.logic import worker as worker_protocol
from brainldm.logic.catalogue import model_choices  # noqa: F401 - re-exported for the UIs

#: Attribute set on every node this module creates (value: the role), and the input it came from.
ROLE_ATTRIBUTE = "BrainLDM.Role"
INPUT_ATTRIBUTE = "BrainLDM.Input"

#: Ranges of the sliders (thesis grid, §3.4.5 / Table 3.3).
GUIDANCE_RANGE = (0.0, 20.0)
STEPS_RANGE = (10, 250)
MIX_RANGE = (0.90, 0.99)
OVERLAPS = (0.0, 0.25, 0.5)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SegmentParameters:
    """What the BrainLDMSegment module's parameter node holds (field names = parameter names).

    The Slicer module declares the same fields with ``@parameterNodeWrapper``; the ``.ui``
    controls are bound to them with the ``SlicerParameterName`` property.
    """

    t1n: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821 - resolved against slicer's classes
    t1c: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821
    t2w: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821
    t2f: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821
    subject_folder: Path = Path()
    model: str = ""  # catalogue model id or bundle folder; "" = the shipped default
    encoder: Literal["edict", "ddim"] = "edict"
    guidance: float = 5.0  # C
    steps: int = 50  # N
    mix: float = 0.97  # omega
    threshold: Literal["otsu", "graddiff", "fixed"] = "otsu"  # fixed: the model's threshold_value
    # Start at the model's recommendation: where the inversion stops, the model's fixed anomaly-map
    # threshold, the smoothing of the map before thresholding.
    noise_level: int = 0
    threshold_value: float = 0.0
    smoothing: float = 0.0
    overlap: float = 0.25
    mask_brain: bool = True
    reference_segmentation: "vtkMRMLSegmentationNode | None" = None  # noqa: F821
    overlay_opacity: float = 0.5
    show_counterfactuals: bool = True
    replace_previous_results: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def volumes(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in SEQUENCES}

    def detection_settings(self) -> DetectionSettings:
        """The core's settings, validated (a clear SettingsError for out-of-range values).

        ``device="auto"`` stays "auto": the worker resolves it where torch is imported.
        """
        if self.device not in DEVICES:
            raise SettingsError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        settings = DetectionSettings(
            encoder=self.encoder, steps=int(round(self.steps)), guidance=float(self.guidance), mix=float(self.mix),
            threshold=self.threshold, overlap=float(self.overlap), mask_brain=bool(self.mask_brain),
            noise_level=int(round(self.noise_level)), threshold_value=float(self.threshold_value),
            smoothing=float(self.smoothing), device="cpu" if self.device == "auto" else self.device,
        ).validate()
        settings.device = self.device
        return settings


def recommended_settings(model: str = "", model_dirs=()) -> dict[str, Any]:
    """The detection settings a model recommends (``bundle.json`` ``"inference"``, chosen by grid
    search when the model was made), limited to what the module's sliders hold and clipped to
    their ranges; ``{}`` when the model recommends nothing or cannot be read. Reads JSON only
    (no torch), so the widget can call it whenever a model is chosen."""
    from brainldm.logic.catalogue import resolve_model

    try:
        folder = resolve_model(model or None, extra_dirs=model_dirs)
        inference = json.loads((Path(folder) / "bundle.json").read_text()).get("inference") or {}
    except (BrainLDMError, OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    if inference.get("encoder") in ("edict", "ddim"):
        out["encoder"] = inference["encoder"]
    if inference.get("threshold") in ("otsu", "graddiff", "fixed"):
        out["threshold"] = inference["threshold"]
    for name, low, high in (("noise_level", 0, 1000), ("threshold_value", 0.0, math.inf), ("smoothing", 0.0, 10.0)):
        value = inference.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
            out[name] = int(value) if name == "noise_level" else float(value)
    if isinstance(inference.get("guidance"), (int, float)):
        out["guidance"] = float(min(max(inference["guidance"], GUIDANCE_RANGE[0]), GUIDANCE_RANGE[1]))
    if isinstance(inference.get("steps"), int):
        out["steps"] = int(min(max(inference["steps"], STEPS_RANGE[0]), STEPS_RANGE[1]))
    if isinstance(inference.get("mix"), (int, float)):
        out["mix"] = float(min(max(inference["mix"], MIX_RANGE[0]), MIX_RANGE[1]))
    return out


def apply_recommended_settings(params: SegmentParameters, model_dirs=()) -> dict[str, Any]:
    """Set ``params``' diffusion settings to what its model recommends; returns what was set."""
    recommended = recommended_settings(params.model, model_dirs)
    for name, value in recommended.items():
        setattr(params, name, value)
    return recommended


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def load_subject_folder(folder: str | Path, scene=None) -> mrml.SubjectNodes:
    """Load the one BraTS subject in ``folder`` (2023 or 2021 naming) through storage nodes.

    Volumes are named ``<id>-<seq>``; a ``-seg`` file becomes a segmentation node (one
    segment per label value). Raises :class:`InputDataError` when the folder holds no complete
    subject or several.
    """
    from brainldm.data.io import scan_subjects

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputDataError(f"Subject folder {folder} does not exist.")
    scan = scan_subjects(folder)
    subjects = scan.subjects
    if not subjects:
        skipped = "; ".join(str(s) for s in scan.skipped[:3])
        raise InputDataError(f"No complete subject in {folder}: it needs <id>-t1n/-t1c/-t2w/-t2f.nii.gz (BraTS 2023) "
                             f"or <id>_t1/_t1ce/_t2/_flair.nii.gz (BraTS 2021)" + (f" ({skipped})" if skipped else "")
                             + ".")
    if len(subjects) > 1:
        names = ", ".join(s.subject_id for s in subjects[:5])
        raise InputDataError(f"{folder} holds {len(subjects)} subjects ({names}); choose the folder of one subject.")
    files = subjects[0]
    scene = mrml.get_scene(scene)
    added = []
    try:
        volumes = {}
        for seq in SEQUENCES:
            volumes[seq] = mrml.load_volume(files.paths[seq], name=f"{files.subject_id}-{seq}", scene=scene)
            added.append(volumes[seq])
        segmentation = None
        if files.seg is not None:
            label_node = mrml.load_volume(files.seg, name="__brainldm_seg__", label=True, scene=scene)
            added.append(label_node)
            if mrml.volume_shape(label_node) != mrml.volume_shape(volumes["t1n"]) or not np.allclose(
                    mrml.ijk_to_ras(label_node), mrml.ijk_to_ras(volumes["t1n"]), atol=1e-3):
                raise InputDataError(f"Segmentation {files.seg} is not in the grid of {files.paths['t1n']}.")
            labels = mrml.volume_array(label_node)
            segmentation = mrml.segmentation_from_labels(
                labels, volumes["t1n"], f"{files.subject_id}-seg",
                segment_names={int(v): f"label {int(v)}" for v in np.unique(labels) if v > 0}, scene=scene)
            mrml.remove_nodes([label_node], scene)
            added.remove(label_node)
        return mrml.SubjectNodes(volumes, segmentation)
    except BaseException:
        mrml.remove_nodes(added, scene)
        raise


def check_inputs(params: SegmentParameters) -> None:
    """Raise :class:`InputDataError` unless four volumes on one grid are selected."""
    volumes = params.volumes()
    missing = [f"{s} ({SEQUENCE_TITLES[s]})" for s in SEQUENCES if volumes[s] is None]
    if missing:
        raise InputDataError("Select a volume for every sequence (or load a subject folder); missing: "
                             + ", ".join(missing) + ".")
    # Geometry and content checks are the ones used to build a Subject.
    reference = volumes["t1n"]
    for seq in SEQUENCES:
        problem = mrml.grid_problem(volumes[seq], reference)
        if problem:
            raise InputDataError(f"{seq}: {volumes[seq].GetName()}: {problem}. All four sequences must share one "
                                 "voxel grid; resample them onto the t1n volume first.")


def write_input_files(params: SegmentParameters, folder: Path) -> dict[str, Path]:
    """Write the four selected volumes as NIfTI files in their node grid (voxels and geometry exact)."""
    check_inputs(params)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seq, node in params.volumes().items():
        if node.GetParentTransformNode() is not None:
            raise InputDataError(f"{seq}: volume {node.GetName()} is under a transform; harden it first.")
        image = nib.Nifti1Image(mrml.volume_array(node).astype(np.float32), mrml.ijk_to_ras(node))
        image.header.set_qform(image.affine, code=1)
        image.header.set_sform(image.affine, code=1)
        image.header.set_xyzt_units("mm")
        paths[seq] = folder / f"input-{seq}.nii"
        nib.save(image, str(paths[seq]))
    return paths


# ---------------------------------------------------------------------------------------------
# the child process
# ---------------------------------------------------------------------------------------------


@dataclass
class JobProgress:
    """What :meth:`DetectionJob.poll` reports."""

    state: Literal["running", "finished", "failed", "cancelled"]
    fraction: float = 0.0
    stage: str = ""
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def text(self) -> str:
        if self.state == "running":
            return f"{self.stage or 'starting'} {100 * self.fraction:.0f}% ({self.elapsed_s:.0f} s)"
        return f"{self.state}: {self.message}" if self.message else self.state


def core_python_path() -> str:
    """The folder that holds the ``brainldm`` package (put on the child's PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[2])


def kill_process_tree(process: subprocess.Popen, grace_s: float = 3.0) -> None:
    """End a process started in its own session/group, and everything it started."""
    if process.poll() is not None:
        return
    if os.name == "nt":  # pragma: no cover - Windows
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        process.wait(timeout=10)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    # Children that outlived the leader are still in the group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class DetectionJob:
    """A running ``brainldm.logic.worker`` process and what it has reported so far.

    Start it with :func:`start_detection`. :meth:`poll` never blocks (call it from a timer);
    :meth:`wait` blocks; :meth:`cancel` kills the whole process tree. The job folder (inputs,
    outputs, ``worker.log``) is removed by :meth:`cleanup`.
    """

    def __init__(self, process: subprocess.Popen, work_dir: Path, out_dir: Path, command: list[str],
                 owns_work_dir: bool):
        self.process = process
        self.work_dir = work_dir
        self.out_dir = out_dir
        self.command = command
        self.owns_work_dir = owns_work_dir
        self.started = time.monotonic()
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.log_lines: list[str] = []
        self._progress = JobProgress("running")
        self._final: JobProgress | None = None
        self._cancelled = False
        self._reader = threading.Thread(target=self._read_stdout, name="brainldm-worker-reader", daemon=True)
        self._reader.start()

    # -- reader thread: only parses lines into the queue
    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.log_lines.append(line)
                continue
            if isinstance(event, dict) and "event" in event:
                self.events.put(event)
            else:
                self.log_lines.append(line)

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            kind = event.get("event")
            if kind == "progress":
                self._progress.fraction = float(event.get("fraction", self._progress.fraction))
                self._progress.stage = str(event.get("stage", self._progress.stage))
            elif kind == "finished":
                self._final = JobProgress("finished", 1.0, "done", "; ".join(event.get("warnings") or []))
            elif kind == "error":
                self._final = JobProgress("failed", self._progress.fraction, self._progress.stage,
                                          str(event.get("message", "detection failed")))
            elif kind == "cancelled":
                self._final = JobProgress("cancelled", self._progress.fraction, self._progress.stage, "cancelled")

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> JobProgress:
        """The latest progress; ``state`` leaves "running" once the process has ended."""
        self._drain()
        elapsed = time.monotonic() - self.started
        if self.process.poll() is None:
            return JobProgress("running", self._progress.fraction, self._progress.stage, "", elapsed)
        self._reader.join(timeout=5)
        self._drain()
        if self._cancelled:
            final = JobProgress("cancelled", self._progress.fraction, self._progress.stage, "cancelled by the user")
        elif self._final is not None and not (self._final.state == "finished" and self.process.returncode != 0):
            final = self._final
        else:
            final = JobProgress("failed", self._progress.fraction, self._progress.stage,
                                f"the detection process ended with status {self.process.returncode}; "
                                f"see {self.work_dir / 'worker.log'}")
        final.elapsed_s = elapsed
        return final

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> JobProgress:
        """Block until the process ends (or ``timeout``: then the job is cancelled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                return self.poll()
            time.sleep(interval)

    def cancel(self) -> None:
        """Stop now: kill the worker and everything it started (nothing reaches the scene)."""
        self._cancelled = True
        kill_process_tree(self.process)

    def cleanup(self) -> None:
        """Remove the job folder (when this job created it)."""
        if self.process.poll() is None:
            self.cancel()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def read_log(self) -> str:
        try:
            return (self.work_dir / "worker.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def start_detection(params: SegmentParameters, work_dir: str | Path | None = None, python: str | None = None,
                    model_dirs: tuple[str | Path, ...] = (), env: dict[str, str] | None = None) -> DetectionJob:
    """Write the inputs and start ``python -m brainldm.logic.worker`` for them; returns at once.

    ``python`` is the interpreter of the child (in Slicer: ``PythonSlicer``; default: this
    one). ``model_dirs`` are extra folders of shipped models (the extension's own).
    """
    from brainldm.logic.catalogue import resolve_model

    settings = params.detection_settings()
    model_path = resolve_model(params.model or None, extra_dirs=model_dirs)
    owns = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="brainldm-detect-")) if work_dir is None else Path(work_dir)
    try:
        inputs = write_input_files(params, work / "inputs")
        out_dir = work / "outputs"
        job_file = worker_protocol.write_job(work / "job.json", inputs, out_dir, settings.to_dict(), model_path)
        command = [python or sys.executable, "-m", "brainldm.logic.worker", str(job_file)]
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (core_python_path(), child_env.get("PYTHONPATH")) if p)
        log = open(work / "worker.log", "wb")  # noqa: SIM115 - closed when the process ends (child keeps a copy)
        try:
            kwargs: dict[str, Any] = {}
            if os.name == "nt":  # pragma: no cover
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                kwargs["start_new_session"] = True
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                       env=child_env, cwd=str(work), **kwargs)
        finally:
            log.close()
    except BaseException:
        if owns:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return DetectionJob(process, work, out_dir, command, owns)


# ---------------------------------------------------------------------------------------------
# results into the scene
# ---------------------------------------------------------------------------------------------


@dataclass
class SegmentOutputs:
    """The nodes made from one detection run, and its numbers."""

    counterfactuals: dict[str, Any] = field(default_factory=dict)
    anomaly_map: Any = None
    graddiff_map: Any = None
    segmentation: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def nodes(self) -> list:
        return [n for n in (*self.counterfactuals.values(), self.anomaly_map, self.graddiff_map, self.segmentation)
                if n is not None]

    def overlays(self) -> list:
        return [n for n in (self.anomaly_map, self.graddiff_map) if n is not None]

    @property
    def summary(self) -> str:
        parts = []
        if self.metrics:
            parts.append(f"Dice {self.metrics.get('dice', float('nan')):.3f}, "
                         f"specificity {self.metrics.get('specificity', float('nan')):.4f}")
        if self.timings.get("total") is not None:
            parts.append(f"{self.timings['total']:.1f} s")
        parts.extend(self.warnings)
        return "; ".join(parts) or "done"


def _read_output(path: Path, reference) -> np.ndarray:
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if tuple(data.shape) != mrml.volume_shape(reference):
        raise BrainLDMError(f"Detection output {path.name} has shape {data.shape}, but the input volume "
                            f"{reference.GetName()} has {mrml.volume_shape(reference)}.")
    if not np.allclose(image.affine, mrml.ijk_to_ras(reference), atol=1e-3):
        raise BrainLDMError(f"Detection output {path.name} is not in the grid of {reference.GetName()}.")
    return np.asarray(data)


def _tag(node, role: str, source) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(INPUT_ATTRIBUTE, source.GetID())


def previous_results(reference, scene=None) -> list:
    """Nodes created by earlier runs on the same input volume (found by their BrainLDM attributes)."""
    scene = mrml.get_scene(scene)
    found = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.GetAttribute(ROLE_ATTRIBUTE) and node.GetAttribute(INPUT_ATTRIBUTE) == reference.GetID():
            found.append(node)
    return found


def reference_metrics(prediction: np.ndarray, params: SegmentParameters) -> dict[str, float]:
    """Dice, sensitivity and specificity of ``prediction`` (input grid) against the chosen reference."""
    from brainldm.evaluate.metrics import segmentation_metrics

    if params.reference_segmentation is None:
        return {}
    reference = mrml.labels_from_segmentation(params.reference_segmentation, params.t1n) > 0
    return {k: float(v) for k, v in segmentation_metrics(prediction > 0, reference).items()}


def add_detection_results(params: SegmentParameters, out_dir: str | Path, scene=None,
                          name_prefix: str | None = None) -> SegmentOutputs:
    """Create the result nodes from a finished worker's ``out_dir`` (see :mod:`brainldm.logic.worker`).

    Every node gets a new unique name ``<prefix> ...``; earlier results on the same input are
    removed first only when ``params.replace_previous_results`` is set.
    """
    scene = mrml.get_scene(scene)
    out_dir = Path(out_dir)
    check_inputs(params)
    reference = params.t1n
    affine = mrml.ijk_to_ras(reference)
    prefix = name_prefix or reference.GetName().rsplit("-t1n", 1)[0]
    report = {}
    if (out_dir / "report.json").exists():
        report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    # Read every file before touching the scene: a bad output leaves the scene unchanged.
    arrays = {seq: _read_output(out_dir / f"counterfactual-{seq}.nii.gz", reference) for seq in SEQUENCES} \
        if params.show_counterfactuals else {}
    anomaly = _read_output(out_dir / "anomaly_map.nii.gz", reference).astype(np.float32)
    graddiff_path = out_dir / "graddiff_map.nii.gz"
    graddiff = _read_output(graddiff_path, reference).astype(np.float32) if graddiff_path.exists() else None
    segmentation = (_read_output(out_dir / "segmentation.nii.gz", reference) > 0).astype(np.uint8)

    if params.replace_previous_results:
        mrml.remove_nodes(previous_results(reference, scene), scene)
    outputs = SegmentOutputs(threshold=report.get("threshold"), warnings=list(report.get("warnings") or []),
                             timings=dict(report.get("timings_s") or {}))
    for seq, data in arrays.items():
        node = mrml.add_volume(data.astype(np.float32), affine, f"{prefix} counterfactual {seq}", scene=scene)
        source_display = params.volumes()[seq].GetDisplayNode()
        if source_display is not None and node.GetDisplayNode() is not None and source_display.GetWindow() > 0:
            node.GetDisplayNode().AutoWindowLevelOff()  # same window as the input, for side-by-side viewing
            node.GetDisplayNode().SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
        _tag(node, f"counterfactual-{seq}", reference)
        outputs.counterfactuals[seq] = node
    outputs.anomaly_map = mrml.add_volume(anomaly, affine, f"{prefix} anomaly map", scene=scene)
    mrml.style_overlay(outputs.anomaly_map, mrml.OverlayStyle(mrml.ANOMALY_COLOURS, params.overlay_opacity))
    _tag(outputs.anomaly_map, "anomaly-map", reference)
    if graddiff is not None:
        outputs.graddiff_map = mrml.add_volume(graddiff, affine, f"{prefix} GradDiff map", scene=scene)
        mrml.style_overlay(outputs.graddiff_map, mrml.OverlayStyle(mrml.GRADDIFF_COLOURS, params.overlay_opacity))
        _tag(outputs.graddiff_map, "graddiff-map", reference)
    outputs.segmentation = mrml.segmentation_from_labels(segmentation, reference, f"{prefix} BrainLDM segmentation",
                                                         segment_names={1: "tumour (BrainLDM)"}, scene=scene)
    _tag(outputs.segmentation, "segmentation", reference)
    outputs.metrics = reference_metrics(segmentation, params)
    mrml.show_in_slice_views(background=params.t2f, foreground=outputs.anomaly_map, opacity=params.overlay_opacity,
                             scene=scene)
    return outputs


def run_detection(params: SegmentParameters, timeout: float | None = None, python: str | None = None,
                  model_dirs: tuple[str | Path, ...] = (), scene=None) -> SegmentOutputs:
    """Start, wait for and apply one detection (blocking; for scripts, tests and self-tests)."""
    job = start_detection(params, python=python, model_dirs=model_dirs)
    try:
        status = job.wait(timeout)
        if status.state != "finished":
            detail = job.read_log().strip().splitlines()[-5:]
            raise BrainLDMError(f"Detection {status.state}: {status.message}"
                                + ("\n" + "\n".join(detail) if status.state == "failed" and detail else ""))
        return add_detection_results(params, job.out_dir, scene=scene)
    finally:
        job.cleanup()
