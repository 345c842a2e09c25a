"""The BrainLDMSynth use case on an MRML scene (scaffolding: phantoms now, synthesis later).

* :func:`make_phantom_in_scene` makes a realistic phantom subject (``brainldm.data.phantom``)
  with a tumour of a chosen in-plane diameter, optionally centred on a point picked in the
  views, and shows it (four volumes and the exact label map as a segmentation).
* Lesion synthesis into a real brain (thesis §4.3) needs a mask-conditioned model that does
  not exist yet; :func:`synthesis_status` says so and the module keeps its Synthesize button
  disabled with that reason instead of pretending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainldm.errors import SettingsError
from brainldm.logic import mrml

#: Diameters the phantom generator can make (mm, in-plane).
DIAMETER_RANGE = (5.0, 50.0)


@dataclass
class SynthParameters:
    """What the BrainLDMSynth module's parameter node holds (field names = parameter names)."""

    reference_volume: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821 - resolved against slicer's classes
    lesion_segmentation: "vtkMRMLSegmentationNode | None" = None  # noqa: F821
    lesion_point: "vtkMRMLMarkupsFiducialNode | None" = None  # noqa: F821
    diameter_mm: float = 20.0
    seed: int = 1
    healthy: bool = False


@dataclass
class SynthesisStatus:
    available: bool
    reason: str


def synthesis_status() -> SynthesisStatus:
    """Whether lesion synthesis can run (a synthesis model and its logic exist)."""
    return SynthesisStatus(False, "synthesis model not yet available")


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
