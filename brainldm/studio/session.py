"""What BrainLDM Studio does with its MRML scene, without trame and without views.

A :class:`StudioSession` holds one user's scene state (the current subject, the last
detection's nodes, a running detection job, the painted lesion, the last synthetic subject,
the followed training run)
and turns the values of the studio's widgets into calls of ``brainldm.logic``: the very
functions the Slicer modules' Logic classes call (``segment``, ``synth``, ``train``,
``phantoms``, ``catalogue``). Nothing here computes anything itself, so the browser and the
desktop behave the same; the trame app (:mod:`brainldm.studio.app`) only binds widgets and
views to this class.

Needs Slicer's MRML core (``slicer``, from ``trame-slicer[standalone]``), never Qt.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from brainldm.data.sequences import SEQUENCE_TITLES, SEQUENCES
from brainldm.errors import BrainLDMError, InputDataError
from brainldm.logic import mrml
from brainldm.logic import segment as segment_logic
from brainldm.logic import synth as synth_logic
from brainldm.logic import train as train_logic

#: Name of the segment the user paints in the Synthesize panel.
LESION_SEGMENT = "lesion"
#: Colour of the painted lesion (RGB 0-1): green, distinct from the detected tumour's red.
LESION_COLOUR = (0.2, 0.85, 0.3)
#: The overlays a user can put on the main view.
OVERLAYS = ("anomaly", "graddiff", "none")


def bind_slicer_globals(scene, volumes_logic, segmentations_logic, colour_logic) -> None:
    """Make ``slicer.mrmlScene`` and the ``slicer.modules`` entries ``slicer.util`` uses point at
    this scene and its module logics (what desktop Slicer sets up at start; DESIGN.md §5)."""

    def module(logic):
        return types.SimpleNamespace(logic=lambda: logic)

    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(volumes=module(volumes_logic), segmentations=module(segmentations_logic),
                                           colors=module(colour_logic))


@dataclass
class DetectControls:
    """The Detect panel's controls (the same names and ranges as the BrainLDMSegment module)."""

    model: str = ""
    guidance: float = 5.0  # C
    steps: int = 50  # N
    mix: float = 0.97  # omega
    encoder: str = "edict"
    threshold: str = "otsu"
    overlay_opacity: float = 0.5
    device: str = "auto"


@dataclass
class TrainControls:
    """The Train panel's controls (the fields of ``brainldm.logic.train.TrainParameters``)."""

    data_folder: str = ""
    output_folder: str = ""
    preset: str = "cpu-small"
    stage: str = "all"
    overrides: str = ""


@dataclass
class SynthesisOutputs:
    """The last synthesis: the synthetic subject's nodes and the folder its files were written to."""

    nodes: mrml.SubjectNodes
    folder: Path
    model: synth_logic.SynthesisModel
    lesion_voxels: int
    mask_guidance: float = 0.0  # the lesion strength it was synthesised with

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.nii.gz"))

    @property
    def summary(self) -> str:
        name = self.nodes.reference.GetName().rsplit("-", 1)[0]
        return (f"Synthesised {name}: the painted lesion ({self.lesion_voxels} voxels) with "
                f"{self.model.model_id}, {self.model.steps} steps, lesion strength {self.mask_guidance:g}.")


@dataclass
class StudioSession:
    """One scene's worth of studio state; every action is one call into ``brainldm.logic``.

    ``work_dir`` receives uploaded files (removed by :meth:`close`); ``model_dirs`` are extra
    folders of shipped models; ``default_model`` (a bundle folder or catalogue id) is
    preselected in the model list, e.g. from ``brainldm studio --model``. ``synth_model`` is the
    checked lesion synthesis bundle (``brainldm studio --synth-model``,
    :func:`brainldm.logic.synth.check_synthesis_model`); without one the shipped synthesis model
    is used, if any.
    """

    scene: Any
    work_dir: Path | None = None  # made on the first upload (a temporary folder) unless given
    model_dirs: tuple[str | Path, ...] = ()
    default_model: str = ""
    python: str = field(default_factory=lambda: sys.executable)
    subject: mrml.SubjectNodes | None = None
    outputs: segment_logic.SegmentOutputs | None = None
    job: segment_logic.DetectionJob | None = None
    job_parameters: segment_logic.SegmentParameters | None = None
    lesion: Any = None  # the segmentation node the user paints on
    synth_model: synth_logic.SynthesisModel | None = None
    synthetic: SynthesisOutputs | None = None
    run_dir: Path | None = None  # the training run followed by the Train panel
    _synth_problem: str | None = None  # why there is no synthesis model (None: not looked for yet)
    _uploads: int = 0
    _syntheses: int = 0
    _owns_work_dir: bool = False

    # ------------------------------------------------------------------------------ models

    def model_choices(self) -> list[tuple[str, str]]:
        """``(value, label)`` for the model list: the ``--model`` bundle first, then the catalogue."""
        choices = segment_logic.model_choices(self.model_dirs)
        if self.default_model and all(value != self.default_model for value, _ in choices):
            choices.insert(0, (self.default_model, f"{Path(self.default_model).name} (--model)"))
        return choices

    def initial_model(self) -> str:
        return self.default_model or ""

    def recommended(self, model: str = "") -> dict:
        """The settings ``model`` recommends (``bundle.json`` "inference"; ``{}`` when none): the
        panel's controls take the visible ones, detection the others (noise level, fixed threshold,
        smoothing), as in the BrainLDMSegment module."""
        return segment_logic.recommended_settings(model or "", self.model_dirs)

    def model_problem(self, model: str = "") -> str:
        """Why detection cannot run with ``model`` ("" = the default model), or "" when it can."""
        from brainldm.logic.catalogue import resolve_model

        try:
            resolve_model(model or None, extra_dirs=self.model_dirs)
        except BrainLDMError as error:
            return str(error)
        return ""

    # ------------------------------------------------------------------------------ subjects

    def _replace_subject(self, nodes: mrml.SubjectNodes) -> mrml.SubjectNodes:
        old = self.subject
        self.cancel_detection()
        self.clear_results()
        self.clear_lesion()
        self.clear_synthetic()
        if old is not None:
            mrml.remove_nodes([*old.volumes.values(), old.segmentation], self.scene)
        self.subject = nodes
        return nodes

    def make_phantom(self, diameter_mm: float = 20.0, seed: int = 1, healthy: bool = False) -> mrml.SubjectNodes:
        """A phantom subject with a tumour of ``diameter_mm`` (the BrainLDMSynth module's action)."""
        params = synth_logic.SynthParameters(diameter_mm=float(diameter_mm), seed=int(seed), healthy=bool(healthy))
        return self._replace_subject(synth_logic.make_phantom_in_scene(params, scene=self.scene))

    def workspace(self) -> Path:
        """The folder for uploaded files (created on first use; removed by :meth:`close`)."""
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="brainldm-studio-"))
            self._owns_work_dir = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    def load_files(self, files: dict[str, bytes]) -> mrml.SubjectNodes:
        """Load one uploaded subject (its four sequence files, optionally ``-seg``), BraTS naming.

        The files are written to a folder of their own and loaded like a subject folder in the
        BrainLDMSegment module (:func:`brainldm.logic.segment.load_subject_folder`).
        """
        if not files:
            raise InputDataError("Choose the subject's files to upload (four sequences, BraTS naming).")
        self._uploads += 1
        folder = self.workspace() / "uploads" / f"{self._uploads:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            safe = Path(name).name
            if not safe or safe in (".", ".."):
                raise InputDataError(f"Uploaded file name {name!r} is not usable.")
            (folder / safe).write_bytes(content)
        try:
            nodes = segment_logic.load_subject_folder(folder, scene=self.scene)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._replace_subject(nodes)

    def focus_ras(self) -> tuple[float, float, float] | None:
        """Centre of the subject's reference segmentation (RAS mm), where the views should look; or None."""
        if self.subject is None or self.subject.segmentation is None:
            return None
        labels = mrml.labels_from_segmentation(self.subject.segmentation, self.subject.reference)
        voxels = np.argwhere(labels > 0)
        if not len(voxels):
            return None
        centre = mrml.ijk_to_ras(self.subject.reference) @ np.array([*voxels.mean(axis=0), 1.0])
        return tuple(float(v) for v in centre[:3])  # type: ignore[return-value]

    @property
    def subject_name(self) -> str:
        if self.subject is None:
            return ""
        return self.subject.reference.GetName().rsplit("-", 1)[0]

    # ------------------------------------------------------------------------------ detection

    def detection_parameters(self, controls: DetectControls) -> segment_logic.SegmentParameters:
        """The BrainLDMSegment parameters for the current subject and controls (also stored in the
        scene's parameter node, as the Slicer module keeps them)."""
        if self.subject is None:
            raise InputDataError("Load a subject first: upload its four sequence files or make a phantom.")
        hidden = {k: v for k, v in self.recommended(controls.model).items()
                  if k in ("noise_level", "threshold_value", "smoothing")}
        params = segment_logic.SegmentParameters(
            **self.subject.volumes, reference_segmentation=self.subject.segmentation, model=controls.model or "", **hidden,
            guidance=float(controls.guidance), steps=int(round(controls.steps)), mix=float(controls.mix),
            encoder=controls.encoder, threshold=controls.threshold, overlay_opacity=float(controls.overlay_opacity),
            device=controls.device,
        )
        params.detection_settings()  # clear SettingsError for out-of-range values, before anything starts
        mrml.write_parameters(mrml.get_parameter_node("BrainLDMSegment", self.scene), params)
        return params

    def start_detection(self, controls: DetectControls) -> segment_logic.DetectionJob:
        """Start detection in a worker process (:func:`brainldm.logic.segment.start_detection`)."""
        if self.job is not None:
            raise BrainLDMError("A detection is already running; cancel it first.")
        params = self.detection_parameters(controls)
        self.job = segment_logic.start_detection(params, python=self.python, model_dirs=self.model_dirs)
        self.job_parameters = params
        return self.job

    def poll_detection(self) -> segment_logic.JobProgress | None:
        """The running job's progress; once it has finished, its results are added to the scene.

        Returns None when no job runs. A failed run's message includes the end of its log.
        """
        if self.job is None:
            return None
        status = self.job.poll()
        if not status.done:
            return status
        job, params = self.job, self.job_parameters
        self.job = self.job_parameters = None
        try:
            if status.state == "finished":
                self.clear_results()
                self.outputs = segment_logic.add_detection_results(params, job.out_dir, scene=self.scene)
            elif status.state == "failed":
                tail = [line for line in job.read_log().strip().splitlines() if line.strip()][-3:]
                if tail and not status.message.endswith(tail[-1]):
                    status.message += " (" + " / ".join(tail) + ")"
        finally:
            job.cleanup()
        return status

    def cancel_detection(self) -> None:
        """Kill the running detection (nothing reaches the scene)."""
        job, self.job, self.job_parameters = self.job, None, None
        if job is not None:
            job.cancel()
            job.cleanup()

    def clear_results(self) -> None:
        if self.outputs is not None:
            mrml.remove_nodes(self.outputs.nodes(), self.scene)
            self.outputs = None

    def overlay_node(self, kind: str):
        """The map shown for ``kind`` ("anomaly", "graddiff" or "none"), or None."""
        if self.outputs is None or kind == "none":
            return None
        if kind == "graddiff":
            return self.outputs.graddiff_map
        return self.outputs.anomaly_map

    def set_overlay_opacity(self, opacity: float) -> None:
        """Opacity of both maps and of the slice views' foreground layer."""
        mrml.set_overlay_opacity(opacity, self.outputs.overlays() if self.outputs else (), scene=self.scene)

    # ------------------------------------------------------------------------------ synthesis

    def lesion_segmentation(self):
        """The segmentation node (one empty segment "lesion" on the FLAIR grid) the user paints on."""
        if self.subject is None:
            raise InputDataError("Load a subject first: upload its four sequence files or make a phantom.")
        if self.lesion is None or self.lesion.GetScene() is None:
            reference = self.subject.volumes["t2f"]
            empty = np.zeros(mrml.volume_shape(reference), np.uint8)
            self.lesion = mrml.segmentation_from_labels(empty, reference, f"{self.subject_name} lesion to synthesise",
                                                        segment_names={1: LESION_SEGMENT},
                                                        colours={1: LESION_COLOUR}, scene=self.scene)
        return self.lesion

    def lesion_voxels(self) -> int:
        if self.lesion is None or self.lesion.GetScene() is None or self.subject is None:
            return 0
        return int(mrml.segment_array(self.lesion, LESION_SEGMENT, self.subject.volumes["t2f"]).sum())

    def clear_lesion(self) -> None:
        if self.lesion is not None:
            mrml.remove_nodes([self.lesion], self.scene)
            self.lesion = None

    def synthesis_model(self) -> synth_logic.SynthesisModel | None:
        """The synthesis model: ``synth_model``, else the shipped one (looked for once), else None."""
        if self.synth_model is None and self._synth_problem is None:
            try:
                self.synth_model = synth_logic.check_synthesis_model(extra_dirs=self.model_dirs)
            except BrainLDMError as error:
                self._synth_problem = f"the shipped synthesis model is unusable ({error})"
            else:
                self._synth_problem = "" if self.synth_model is not None else synth_logic.UNAVAILABLE
        return self.synth_model

    def synthesis_problem(self) -> str:
        """Why lesion synthesis cannot run ("" when a synthesis model is there)."""
        return "" if self.synthesis_model() is not None else str(self._synth_problem)

    def recommended_lesion_strength(self) -> float:
        """The synthesis model's recommended mask guidance (the Synth module's default without a model)."""
        model = self.synthesis_model()
        return model.mask_guidance if model is not None else synth_logic.SynthParameters.mask_guidance

    def synthesis_parameters(self, diameter_mm: float = 20.0, seed: int = 1,
                             mask_guidance: float | None = None) -> synth_logic.SynthParameters:
        if mask_guidance is None:
            mask_guidance = self.recommended_lesion_strength()
        params = synth_logic.SynthParameters(
            reference_volume=self.subject.volumes["t2f"] if self.subject else None,
            lesion_segmentation=self.lesion, diameter_mm=float(diameter_mm), seed=int(seed),
            mask_guidance=float(mask_guidance))
        mrml.write_parameters(mrml.get_parameter_node("BrainLDMSynth", self.scene), params)
        return params

    def synthesis_folder(self) -> Path:
        """A new folder for the next synthetic subject's files: ``<work_dir>/synthesis/NNN``."""
        self._syntheses += 1
        return self.workspace() / "synthesis" / f"{self._syntheses:03d}"

    def synthesize(self, diameter_mm: float = 20.0, seed: int = 1, mask_guidance: float | None = None) -> SynthesisOutputs:
        """Synthesise the painted lesion into the subject (thesis §4.3) with the synthesis model, through
        the Synth logic (:func:`brainldm.logic.synth.synthesize_in_scene`, as the BrainLDMSynth module).

        The synthetic subject replaces the previous one in the scene; its files are written to
        :meth:`synthesis_folder`. ``mask_guidance`` is the lesion strength (default: the model's
        recommendation). Raises :class:`BrainLDMError` saying why while no synthesis model exists.
        """
        model = self.synthesis_model()
        if model is None:
            raise BrainLDMError(f"Lesion synthesis is not available: {self.synthesis_problem()}. "
                                "Make a phantom with a tumour of the chosen size instead.")
        if self.subject is None:
            raise InputDataError("Load a subject first: upload its four sequence files or make a phantom.")
        voxels = self.lesion_voxels()
        if voxels == 0:
            raise InputDataError("Paint the lesion first (Paint lesion, then drag in the main view).")
        params = self.synthesis_parameters(diameter_mm, seed, mask_guidance)
        folder = self.synthesis_folder()
        try:
            nodes = synth_logic.synthesize_in_scene(params, scene=self.scene, model=model.path,
                                                    settings=model.settings(seed, params.mask_guidance), out_dir=folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.clear_synthetic()
        self.synthetic = SynthesisOutputs(nodes=nodes, folder=folder, model=model, lesion_voxels=voxels,
                                          mask_guidance=params.mask_guidance)
        return self.synthetic

    def clear_synthetic(self) -> None:
        """Remove the last synthetic subject from the scene (its files stay)."""
        if self.synthetic is not None:
            nodes = self.synthetic.nodes
            mrml.remove_nodes([*nodes.volumes.values(), nodes.segmentation], self.scene)
            self.synthetic = None

    def right_column(self, kind: str) -> dict[str, Any]:
        """The volumes shown beside the subject's sequences: the healthy counterfactuals of the last
        detection (``"counterfactual"``) or the last synthetic subject (``"synthetic"``)."""
        if kind == "synthetic":
            return dict(self.synthetic.nodes.volumes) if self.synthetic is not None else {}
        return dict(self.outputs.counterfactuals) if self.outputs is not None else {}

    # ------------------------------------------------------------------------------ training

    def training_parameters(self, controls: TrainControls) -> train_logic.TrainParameters:
        return train_logic.TrainParameters(
            data_folder=Path(controls.data_folder.strip()) if controls.data_folder.strip() else Path(),
            output_folder=Path(controls.output_folder.strip()) if controls.output_folder.strip() else Path(),
            preset=controls.preset, stage=controls.stage, overrides=controls.overrides)

    def start_training(self, controls: TrainControls):
        """Launch a background run (:func:`brainldm.logic.train.start_training`) and follow it."""
        params = self.training_parameters(controls)
        run = train_logic.start_training(params, python=self.python)
        self.run_dir = Path(params.output_folder).expanduser()
        return run

    def follow_run(self, output_folder: str) -> None:
        """Follow an existing run folder (e.g. one started from the command line)."""
        self.run_dir = Path(output_folder).expanduser() if output_folder.strip() else None

    def training_progress(self) -> train_logic.TrainingProgress | None:
        if self.run_dir is None or not (self.run_dir / "status.json").exists():
            return None
        return train_logic.training_progress(self.run_dir)

    def stop_training(self) -> train_logic.TrainingProgress | None:
        """Ask the followed run to stop (it writes a checkpoint first); returns at once."""
        if self.run_dir is None:
            raise BrainLDMError("No training run to stop: start one or enter its output folder.")
        return train_logic.stop_training(self.run_dir, wait=0.0)

    def write_training_phantoms(self, folder: str, count: int = 4, seed: int = 1000) -> list[Path]:
        """Write phantom subjects to train on (:func:`brainldm.logic.phantoms.make_phantoms`)."""
        from brainldm.logic.phantoms import PhantomRequest, make_phantoms

        if not folder.strip():
            raise InputDataError("Enter the training data folder to write the phantoms to.")
        return make_phantoms(PhantomRequest(out_dir=Path(folder.strip()).expanduser(), seed=int(seed),
                                            count=int(count)))

    # ------------------------------------------------------------------------------ end

    def close(self) -> None:
        """Cancel a running detection and remove the uploads (a training run goes on)."""
        self.cancel_detection()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir / "uploads" if not self._owns_work_dir else self.work_dir, ignore_errors=True)


def sequence_title(seq: str) -> str:
    """Short view titles: T1, T1c, T2, FLAIR."""
    return {"t1n": "T1", "t1c": "T1c", "t2w": "T2", "t2f": "FLAIR"}.get(seq, SEQUENCE_TITLES.get(seq, seq))


__all__ = [
    "LESION_SEGMENT",
    "OVERLAYS",
    "SEQUENCES",
    "DetectControls",
    "StudioSession",
    "SynthesisOutputs",
    "TrainControls",
    "bind_slicer_globals",
    "sequence_title",
]
