"""The BrainLDMSynth use case on an MRML scene: phantoms, and lesion synthesis with a synthesis model.

* :func:`make_phantom_in_scene` makes a realistic phantom subject (``brainldm.data.phantom``)
  with a tumour of a chosen in-plane diameter, optionally centred on a point picked in the
  views, and shows it (four volumes and the exact label map as a segmentation).
* :func:`synthesize_in_scene` synthesises the painted lesion (thesis §4.3) into the subject shown
  in the scene with a lesion synthesis bundle (``brainldm train synthesis``) and adds the
  synthetic subject (four volumes and the lesion as a segmentation) to the scene; with
  ``out_dir`` it also writes it as files, as ``brainldm synth`` does.
* :func:`check_synthesis_model` checks a synthesis bundle in full before it is used (a front
  end's ``--synth-model`` option) and reads its recommended sampling settings.
* Without a model given, the synthesis bundle shipped in ``Resources/models``
  (:func:`brainldm.logic.catalogue.find_synthesis_model`) is used with its recommended settings
  (``bundle.json`` "inference": steps, guidance, mask guidance); when there is none,
  :func:`synthesis_status` reports "synthesis model not yet available" and the module keeps its
  Synthesize button disabled with that reason instead of pretending.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainldm.data.sequences import SEQUENCES
from brainldm.errors import SettingsError
from brainldm.logic import mrml

#: Diameters the phantom generator can make (mm, in-plane).
DIAMETER_RANGE = (5.0, 50.0)

#: Lesion strength (mask guidance M) a user interface offers: 0 = the lesion channel alone; the
#: shipped model recommends 1; on validation phantoms M = 1-4 made every painted lesion visible and
#: M = 6 made dark blotches (docs/synthesis.md).
MASK_GUIDANCE_RANGE = (0.0, 6.0)


@dataclass
class SynthParameters:
    """What the BrainLDMSynth module's parameter node holds (field names = parameter names)."""

    reference_volume: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821 - resolved against slicer's classes
    lesion_segmentation: "vtkMRMLSegmentationNode | None" = None  # noqa: F821
    lesion_point: "vtkMRMLMarkupsFiducialNode | None" = None  # noqa: F821
    diameter_mm: float = 20.0
    seed: int = 1
    healthy: bool = False
    mask_guidance: float = 1.0  # lesion strength M of Synthesize (the shipped synthesis model's recommendation)


@dataclass
class SynthesisStatus:
    available: bool
    reason: str


#: The reason shown while no synthesis model exists.
UNAVAILABLE = "synthesis model not yet available"


@dataclass(frozen=True)
class SynthesisModel:
    """A checked lesion synthesis bundle: where it is, its id and its recommended sampling settings
    (``bundle.json`` "inference")."""

    path: Path
    model_id: str
    shipped: bool = False
    steps: int = 50
    guidance: float = 0.0
    mask_guidance: float = 0.0

    @property
    def label(self) -> str:
        """What a user interface shows: the model id and where it comes from."""
        return f"{self.model_id} ({'shipped' if self.shipped else self.path})"

    def settings(self, seed: int = 1, mask_guidance: float | None = None):
        """The :class:`~brainldm.synth.generate.SynthSettings` to synthesise with this model (its
        recommended mask guidance unless ``mask_guidance``, the lesion strength, is given)."""
        from brainldm.synth.generate import SynthSettings

        strength = self.mask_guidance if mask_guidance is None else float(mask_guidance)
        return SynthSettings(steps=self.steps, guidance=self.guidance, mask_guidance=strength,
                             seed=int(seed)).validate()


def check_synthesis_model(model: str | Path | None = None, extra_dirs=()) -> SynthesisModel | None:
    """The synthesis bundle ``model`` (a folder), or without one the shipped synthesis model, checked in
    full: ``bundle.json`` and the size and SHA-256 of every weight file (no network is built).

    Returns None when no model is given and none is shipped; raises
    :class:`~brainldm.errors.ModelBundleError` saying what is wrong with a missing or corrupt bundle.
    """
    from brainldm.errors import ModelBundleError
    from brainldm.logic.catalogue import find_synthesis_model
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    shipped = model is None or not str(model).strip()
    folder = find_synthesis_model(extra_dirs) if shipped else Path(model).expanduser()
    if folder is None:
        return None
    if not folder.is_dir():
        raise ModelBundleError(f"{folder} does not exist: give the folder of a lesion synthesis bundle "
                               "(RUN/bundle of 'brainldm train synthesis').")
    description = SynthesisBundle.verify(folder)
    inference = description.get("inference") if isinstance(description.get("inference"), dict) else {}
    try:
        steps, guidance = int(inference.get("steps", 50)), float(inference.get("guidance", 0.0))
        mask_guidance = float(inference.get("mask_guidance", 0.0))
    except (TypeError, ValueError) as error:
        raise ModelBundleError(f"{folder}: the recommended inference settings in bundle.json are not numbers "
                               f"({inference}); the bundle is corrupt - export it again.") from error
    return SynthesisModel(path=folder.resolve(), model_id=str(description["model_id"]), shipped=shipped,
                          steps=steps, guidance=guidance, mask_guidance=mask_guidance)


def synthesis_status(model: str | Path | None = None) -> SynthesisStatus:
    """Whether lesion synthesis can run: with ``model`` (a synthesis bundle folder) when it is a
    valid bundle, without one when a synthesis model is shipped."""
    from brainldm.errors import BrainLDMError
    from brainldm.logic.catalogue import find_synthesis_model

    if model is None or not str(model).strip():
        found = find_synthesis_model()
        if found is None:
            return SynthesisStatus(False, UNAVAILABLE)
        model = found
    try:
        from brainldm.nets.synthesis_bundle import SynthesisBundle

        description = SynthesisBundle.read_description(model)
    except BrainLDMError as error:
        return SynthesisStatus(False, str(error))
    return SynthesisStatus(True, f"synthesis model {description['model_id']}")


def synthesize_in_scene(params: SynthParameters, scene=None, model: str | Path | None = None, settings=None,
                        progress=None, cancel=None, out_dir: str | Path | None = None) -> mrml.SubjectNodes:
    """Synthesise the painted lesion into the subject of ``params.reference_volume`` (thesis §4.3).

    The subject's four sequences are the scene's volumes named like the reference volume with the
    sequence suffixes (``<name>-t1n`` ... as :func:`brainldm.logic.mrml.add_subject` names them);
    the lesion is every painted voxel of ``params.lesion_segmentation``. The synthetic subject is
    added as new nodes ``<name>-synth-<seq>`` plus its lesion segmentation. ``model`` is a
    synthesis bundle (default: a shipped one; an error saying how to train one when there is none).
    With ``out_dir`` (a new or empty folder) the synthetic subject is also written there as
    ``brainldm synth`` writes it: ``<name>-synth-t1n.nii.gz`` ... ``-seg.nii.gz`` (the painted lesion)
    in the reference volumes' grid, and ``synth.json``.
    """
    from brainldm.errors import InputDataError
    from brainldm.logic.catalogue import resolve_synthesis_model
    from brainldm.synth.generate import SynthSettings
    from brainldm.synth.subjects import load_synthesis_model, synthesise_subject, write_synthetic_subject

    scene = mrml.get_scene(scene)
    bundle = load_synthesis_model(resolve_synthesis_model(model))
    reference = params.reference_volume
    if reference is None:
        raise InputDataError("Choose the reference volume (a sequence of the subject to synthesise into).")
    if params.lesion_segmentation is None:
        raise InputDataError("Paint the lesion first (a segmentation on the reference volume).")
    prefix = reference.GetName().rsplit("-", 1)[0]
    volumes = {}
    for seq in SEQUENCES:
        nodes = [n for n in _volume_nodes(scene) if n.GetName() == f"{prefix}-{seq}"]
        if not nodes:
            raise InputDataError(f"The scene has no volume {prefix}-{seq}: synthesis needs all four sequences of the "
                                 "subject (load the subject folder or make a phantom).")
        volumes[seq] = nodes[-1]
    subject = mrml.subject_from_volume_nodes(volumes, subject_id=prefix)
    labels = mrml.labels_from_segmentation(params.lesion_segmentation, volumes[SEQUENCES[0]])
    lesion = mrml.from_source_grid(labels, subject)
    if not (lesion > 0).any():
        raise InputDataError("The lesion segmentation is empty: paint the lesion first.")
    settings = settings or SynthSettings.from_inference(bundle.inference, seed=params.seed,
                                                        mask_guidance=float(params.mask_guidance))
    result = synthesise_subject(subject, lesion, bundle, settings, subject_id=f"{prefix}-synth", progress=progress,
                                cancel=cancel)
    if out_dir is not None:
        write_synthetic_subject(result, subject, out_dir, report=_synthesis_report(result, subject, bundle))
    return mrml.add_subject(result.subject, scene=scene)


def _synthesis_report(result, reference, bundle) -> dict:
    """``synth.json`` of a synthesis in the scene (the fields ``brainldm synth`` writes that apply)."""
    from brainldm.data.lesion_geometry import inplane_diameter_mm

    return {"subject": result.subject.subject_id, "reference": reference.subject_id,
            "model": {"model_id": bundle.model_id, "path": str(bundle.path), "mechanism": bundle.mechanism},
            "lesion": {"source": "painted", "voxels": int(result.lesion.sum()),
                       "diameter_mm": inplane_diameter_mm(result.lesion, reference.spacing),
                       "canonical_axial_slices": result.slices},
            "seconds": round(result.seconds, 2), **result.report}


def _volume_nodes(scene) -> list:
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def point_to_phantom_voxel(point_ras, anatomy: str = "mni152") -> tuple[int, int, int]:
    """The phantom grid voxel ``(x, y, z)`` at a RAS point (mm); SettingsError when outside the grid."""
    from brainldm.data.anatomy import load_anatomy

    maps = load_anatomy(anatomy)
    ijk = np.linalg.inv(maps.affine) @ np.array([*map(float, point_ras), 1.0])
    voxel = tuple(int(round(v)) for v in ijk[:3])
    shape = maps.shape
    if not all(0 <= v < s for v, s in zip(voxel, shape)):
        raise SettingsError(f"The point {tuple(round(float(p), 1) for p in point_ras)} mm lies outside the phantom "
                            f"grid {shape}; place it inside the brain.")
    return voxel  # type: ignore[return-value]


def first_control_point(markups_node) -> tuple[float, float, float] | None:
    """The first control point of a markups node in RAS (world) coordinates, or None."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() == 0:
        return None
    point = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(0, point)
    return tuple(point)  # type: ignore[return-value]


def make_phantom_in_scene(params: SynthParameters, scene=None) -> mrml.SubjectNodes:
    """Generate a phantom subject from the parameters and add it to the scene (new nodes).

    The tumour has ``params.diameter_mm`` in-plane diameter, centred at the first point of
    ``params.lesion_point`` when there is one (else placed at random in the brain); with
    ``params.healthy`` there is none.
    """
    from brainldm.data.phantom import PhantomSpec, make_phantom

    low, high = DIAMETER_RANGE
    if not params.healthy and not low <= float(params.diameter_mm) <= high:
        raise SettingsError(f"Lesion diameter {params.diameter_mm} mm is out of range; choose {low:g}-{high:g} mm.")
    point = first_control_point(params.lesion_point)
    centre = None if point is None or params.healthy else point_to_phantom_voxel(point)
    spec = PhantomSpec(seed=int(params.seed), lesion_diameter_mm=float(params.diameter_mm), centre=centre,
                       n_tumours=0 if params.healthy else 1)
    subject = make_phantom(spec)
    return mrml.add_subject(subject, scene=scene)
