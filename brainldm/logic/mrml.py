"""Adapters between BrainLDM's data (numpy arrays, :class:`Subject`) and Slicer's MRML scene.

This module needs Slicer's MRML core (the ``slicer`` package: desktop Slicer, ``PythonSlicer``,
or ``slicer-core`` from ``trame-slicer``) but no Qt: everything here works in a headless
scene. Every function takes an optional ``scene``; by default ``slicer.mrmlScene``.

Array conventions
-----------------
* BrainLDM arrays are indexed ``[i, j, k]`` (x, y, z voxel order, as nibabel reads them);
  Slicer's ``arrayFromVolume`` is indexed ``[k, j, i]``. The functions here take and return
  ``[i, j, k]`` arrays and transpose at the boundary.
* A volume node's IJK-to-RAS matrix plays the role of a NIfTI affine (both map voxel indices to
  RAS world millimetres), so a node built from ``(array, affine)`` has exactly the geometry
  nibabel reports for the file.
* A :class:`Subject` holds canonical RAS+ arrays. :func:`subject_from_volume_nodes` reorients the
  nodes' voxels to canonical order and records the node grid as the subject's ``source``
  geometry, so results can be put back into the very grid of the input nodes with
  :func:`to_source_grid`.

Nodes are always created with new, unique names (``GenerateUniqueName``): nothing here
replaces a node the user already has.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from brainldm.data.io import GridTolerance, invert_ornt
from brainldm.data.sequences import SEQUENCE_TITLES, SEQUENCES
from brainldm.data.subject import SourceGeometry, Subject
from brainldm.errors import BrainLDMError, InputDataError

_RAS_ORNT = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])

#: Colour tables used for overlays, first one present in the scene wins.
ANOMALY_COLOURS = ("Inferno", "Iron", "PET-Heat", "Warm1")
GRADDIFF_COLOURS = ("Viridis", "fMRI", "Cool1", "Ocean")

#: Segment colour of detected tumour (RGB 0-1).
TUMOUR_COLOUR = (0.95, 0.25, 0.15)


# ---------------------------------------------------------------------------------------------
# scene and matrices
# ---------------------------------------------------------------------------------------------


def get_scene(scene=None):
    """The scene to work on: ``scene`` or ``slicer.mrmlScene``."""
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise BrainLDMError("No MRML scene is available: run inside 3D Slicer or create a scene first "
                            "(slicer.mrmlScene = vtkMRMLScene()).")
    return scene


def unique_name(base: str, scene=None) -> str:
    """A node name based on ``base`` that no node of the scene has yet."""
    return get_scene(scene).GenerateUniqueName(base)


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    array = np.asarray(array, dtype=np.float64)
    if array.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {array.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node (the node's "affine")."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def volume_shape(node) -> tuple[int, int, int]:
    """``(I, J, K)`` dimensions of a volume node's image."""
    image = node.GetImageData()
    if image is None:
        raise InputDataError(f"Volume {node.GetName()} holds no image data.")
    return tuple(int(d) for d in image.GetDimensions())  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------


def _slicer_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.int64:  # "long long" volumes are rejected by Slicer
        return array.astype(np.int32)
    if array.dtype == np.uint64:
        return array.astype(np.uint32)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def add_volume(array: np.ndarray, affine: np.ndarray, name: str, label: bool = False, scene=None,
               unique: bool = True):
    """Add a volume node holding ``array`` (``[i, j, k]``) with IJK-to-RAS ``affine``.

    ``label=True`` makes a ``vtkMRMLLabelMapVolumeNode``. The name is made unique unless
    ``unique=False``. Returns the node (with default display nodes).
    """
    scene = get_scene(scene)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D [i, j, k] array, got shape {array.shape}")
    kji = np.ascontiguousarray(np.transpose(_slicer_dtype(array), (2, 1, 0)))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode",
                                   scene.GenerateUniqueName(name) if unique else name)
    node.SetIJKToRASMatrix(array_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, kji)
    node.CreateDefaultDisplayNodes()
    return node


def volume_array(node) -> np.ndarray:
    """A copy of a volume node's voxels as an ``[i, j, k]`` array."""
    if node is None or node.GetImageData() is None:
        raise InputDataError(f"Volume {node.GetName() if node is not None else '(none)'} holds no image data.")
    return np.ascontiguousarray(np.transpose(slicer.util.arrayFromVolume(node), (2, 1, 0)))


def update_volume(node, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Replace a volume node's voxels (``[i, j, k]``) and optionally its geometry."""
    if affine is not None:
        node.SetIJKToRASMatrix(array_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.transpose(_slicer_dtype(np.asarray(array)),
                                                                              (2, 1, 0))))


def load_volume(path: str | Path, name: str | None = None, label: bool = False, scene=None):
    """Read an image file (NIfTI, NRRD, MHA...) into a new volume node through a storage node.

    The storage node (``vtkMRMLVolumeArchetypeStorageNode``) stays attached, so the node knows
    its file like one loaded with Slicer's "Add data". Raises :class:`InputDataError` when the
    file is missing or unreadable.
    """
    scene = get_scene(scene)
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputDataError(f"Image file {path} not found; check the path.")
    if name is None:
        name = path.name
        for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode",
                                   scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)  # one file is one volume, never a numbered series
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputDataError(f"Image file {path} could not be read by Slicer (corrupt or unsupported format).")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def save_volume(node, path: str | Path) -> Path:
    """Write a volume node to a file through a storage node (format from the extension)."""
    scene = get_scene(node.GetScene())
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(path.name.lower().endswith(".gz"))
        if not storage.WriteData(node):
            raise BrainLDMError(f"Could not write {node.GetName()} to {path}; check the folder is writable.")
    finally:
        scene.RemoveNode(storage)
    return path


# ---------------------------------------------------------------------------------------------
# subjects
# ---------------------------------------------------------------------------------------------


@dataclass
class SubjectNodes:
    """The nodes showing one subject: a volume per sequence, optionally its segmentation."""

    volumes: dict[str, Any]
    segmentation: Any = None

    @property
    def reference(self):
        """The volume whose grid defines the subject (t1n)."""
        return self.volumes[SEQUENCES[0]]


def to_source_grid(array: np.ndarray, subject: Subject) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a canonical-grid volume put back into the subject's source grid.

    For a subject without source geometry (generated phantoms) this is the array itself with
    ``subject.affine``.
    """
    array = np.asarray(array)
    if array.shape != subject.shape:
        raise ValueError(f"array shape {array.shape} does not match subject grid {subject.shape}")
    if subject.source is None:
        return array, np.asarray(subject.affine, dtype=np.float64)
    data = np.ascontiguousarray(apply_orientation(array, invert_ornt(subject.source.to_canonical)))
    return data, np.asarray(subject.source.affine, dtype=np.float64)


def from_source_grid(array: np.ndarray, subject: Subject) -> np.ndarray:
    """A volume given in the subject's source grid, reoriented to the canonical grid."""
    if subject.source is None:
        return np.asarray(array)
    return np.ascontiguousarray(apply_orientation(np.asarray(array), subject.source.to_canonical))


def add_subject(subject: Subject, scene=None, prefix: str | None = None, include_seg: bool = True) -> SubjectNodes:
    """Show a subject: one volume node per sequence (and a segmentation node for ``subject.seg``).

    Volumes are created in the subject's source grid (the grid of the files it came from), so
    they coincide voxel for voxel with the same files loaded by Slicer. Names are
    ``<prefix or subject_id>-<seq>`` made unique.
    """
    scene = get_scene(scene)
    prefix = prefix or subject.subject_id
    volumes = {}
    for index, seq in enumerate(SEQUENCES):
        data, affine = to_source_grid(subject.images[index], subject)
        volumes[seq] = add_volume(data.astype(np.float32, copy=False), affine, f"{prefix}-{seq}", scene=scene)
    segmentation = None
    if include_seg and subject.seg is not None:
        labels, _ = to_source_grid(subject.seg, subject)
        segmentation = segmentation_from_labels(labels, volumes[SEQUENCES[0]], f"{prefix}-seg",
                                                segment_names=_brats_segment_names(labels), scene=scene)
    return SubjectNodes(volumes, segmentation)


def _brats_segment_names(labels: np.ndarray) -> dict[int, str]:
    values = [int(v) for v in np.unique(labels) if v > 0]
    return {v: f"label {v}" for v in values}


def grid_problem(node, reference, tolerance: GridTolerance = GridTolerance()) -> str | None:
    """How ``node``'s voxel grid differs from ``reference``'s (size, spacing, axes, origin), or None."""
    if volume_shape(node) != volume_shape(reference):
        return f"size {volume_shape(node)} differs from {reference.GetName()} {volume_shape(reference)}"
    a, b = ijk_to_ras(node), ijk_to_ras(reference)
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(spacing_a, spacing_b, rtol=tolerance.spacing_rtol, atol=0):
        return f"voxel size {np.round(spacing_a, 4)} differs from {reference.GetName()} {np.round(spacing_b, 4)}"
    if not np.allclose(a[:3, :3] / spacing_a, b[:3, :3] / spacing_b, atol=tolerance.direction_atol):
        return f"axis directions differ from {reference.GetName()}"
    if np.linalg.norm(a[:3, 3] - b[:3, 3]) > tolerance.origin_atol_voxels * float(spacing_b.min()):
        return f"origin {np.round(a[:3, 3], 3)} differs from {reference.GetName()} {np.round(b[:3, 3], 3)}"
    return None


def subject_from_volume_nodes(volumes: dict[str, Any], subject_id: str | None = None, seg=None,
                              tolerance: GridTolerance = GridTolerance()) -> Subject:
    """Build a canonical RAS+ :class:`Subject` from four volume nodes (``{"t1n": node, ...}``).

    All four must share one voxel grid (size, spacing, directions, origin within ``tolerance``).
    ``seg`` may be a segmentation node or a label map volume node; it becomes ``subject.seg``
    (``> 0`` = tumour). The nodes' grid becomes the subject's source geometry.
    """
    missing = [s for s in SEQUENCES if volumes.get(s) is None]
    if missing:
        titles = ", ".join(f"{s} ({SEQUENCE_TITLES[s]})" for s in missing)
        raise InputDataError(f"Select a volume for every sequence; missing: {titles}.")
    reference = volumes[SEQUENCES[0]]
    for seq in SEQUENCES:
        node = volumes[seq]
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputDataError(f"{seq}: {node.GetName()} is not a scalar (greyscale) volume.")
        if node.GetImageData() is None:
            raise InputDataError(f"{seq}: volume {node.GetName()} holds no image data.")
        if node.GetParentTransformNode() is not None:
            raise InputDataError(f"{seq}: volume {node.GetName()} is under a transform; harden the transform "
                                 "(Data module, right-click, 'Harden transform') so the voxels are resampled first.")
        problem = grid_problem(node, reference, tolerance)
        if problem:
            raise InputDataError(f"{seq}: {node.GetName()}: {problem}. All four sequences must share one voxel grid; "
                                 "resample them onto the t1n volume first (Resample Scalar/Vector/DWI Volume).")
    affine = ijk_to_ras(reference)
    shape = volume_shape(reference)
    to_canonical = ornt_transform(io_orientation(affine), _RAS_ORNT)
    canonical_affine = affine @ inv_ornt_aff(to_canonical, shape)
    images = []
    for seq in SEQUENCES:
        data = volume_array(volumes[seq]).astype(np.float32)
        if not np.all(np.isfinite(data)):
            raise InputDataError(f"{seq}: volume {volumes[seq].GetName()} has NaN or infinite voxels; "
                                 "replace them first.")
        if float(data.min()) == float(data.max()):
            raise InputDataError(f"{seq}: volume {volumes[seq].GetName()} is constant; it holds no brain.")
        images.append(apply_orientation(data, to_canonical))
    labels = None
    if seg is not None:
        if seg.IsA("vtkMRMLSegmentationNode"):
            raw = labels_from_segmentation(seg, reference)
        else:
            if grid_problem(seg, reference, tolerance):
                raise InputDataError(f"Segmentation {seg.GetName()} is not in the grid of {reference.GetName()}.")
            raw = volume_array(seg)
        labels = np.ascontiguousarray(apply_orientation(np.rint(raw).astype(np.int16), to_canonical))
    return Subject(
        subject_id=subject_id or reference.GetName().rsplit("-", 1)[0] or "subject",
        images=np.ascontiguousarray(np.stack(images)),
        affine=canonical_affine,
        seg=labels,
        source=SourceGeometry(affine=affine, shape=shape, to_canonical=to_canonical, header=None),
        paths={seq: volumes[seq].GetID() for seq in SEQUENCES},
    )


# ---------------------------------------------------------------------------------------------
# overlays
# ---------------------------------------------------------------------------------------------


def find_colour_node(names: tuple[str, ...] | list[str], scene=None):
    """The first colour node whose name is in ``names`` (Slicer's default tables), or None."""
    scene = get_scene(scene)
    for name in names:
        nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
        if nodes.GetNumberOfItems():
            return nodes.GetItemAsObject(0)
    return None


@dataclass
class OverlayStyle:
    """How a map is shown on top of the anatomy.

    ``colours``: colour table names (first available used); ``opacity``: foreground opacity
    0-1; ``upper_percentile``: the window's top (robust to hot spots); zero (and anything
    below ``lower_fraction`` of the top) is transparent through the display threshold.
    """

    colours: tuple[str, ...] = ANOMALY_COLOURS
    opacity: float = 0.5
    upper_percentile: float = 99.9
    lower_fraction: float = 1e-6


def style_overlay(node, style: OverlayStyle = OverlayStyle()):
    """Give a map volume an overlay look: colour table, window 0..top, zero transparent."""
    scene = get_scene(node.GetScene())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    values = slicer.util.arrayFromVolume(node)
    positive = values[values > 0]
    top = float(np.percentile(positive, style.upper_percentile)) if positive.size else 1.0
    top = top if top > 0 else 1.0
    colour = find_colour_node(style.colours, scene)
    with slicer.util.NodeModify(display):
        if colour is not None:
            display.SetAndObserveColorNodeID(colour.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, top)
        display.SetLowerThreshold(top * style.lower_fraction)
        display.SetUpperThreshold(max(float(values.max()), top))
        display.ApplyThresholdOn()
        display.SetOpacity(float(style.opacity))
        display.SetInterpolate(False)
    return display


def slice_composite_nodes(scene=None) -> list:
    scene = get_scene(scene)
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def show_in_slice_views(background=None, foreground=None, opacity: float | None = None, label=None, scene=None) -> int:
    """Put volumes into the slice views' layers (like ``slicer.util.setSliceViewerLayers``).

    Works on the slice composite nodes of the scene (none in a bare headless scene); returns
    how many views were updated.
    """
    composites = slice_composite_nodes(scene)
    for composite in composites:
        with slicer.util.NodeModify(composite):
            if background is not None:
                composite.SetBackgroundVolumeID(background.GetID())
            if foreground is not None:
                composite.SetForegroundVolumeID(foreground.GetID())
            if opacity is not None:
                composite.SetForegroundOpacity(float(opacity))
            if label is not None:
                composite.SetLabelVolumeID(label.GetID())
    return len(composites)


def set_overlay_opacity(opacity: float, overlays=(), scene=None) -> None:
    """Change the foreground opacity of the slice views and of the given overlay nodes."""
    opacity = float(min(max(opacity, 0.0), 1.0))
    for node in overlays:
        if node is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetOpacity(opacity)
    for composite in slice_composite_nodes(scene):
        composite.SetForegroundOpacity(opacity)


# ---------------------------------------------------------------------------------------------
# segmentations
# ---------------------------------------------------------------------------------------------


def segmentation_from_labels(labels: np.ndarray, reference, name: str, segment_names: dict[int, str] | None = None,
                             colours: dict[int, tuple[float, float, float]] | None = None, scene=None):
    """A new segmentation node with one segment per label value of ``labels`` (``[i, j, k]``).

    ``labels`` must be in the grid of the ``reference`` volume node. ``segment_names`` maps
    label values to segment names (default: every value > 0, named "label <v>"). A label
    value absent from the array still gets an (empty) segment when it is named.
    """
    scene = get_scene(scene)
    labels = np.asarray(labels)
    if labels.shape != volume_shape(reference):
        raise ValueError(f"labels shape {labels.shape} does not match {reference.GetName()} {volume_shape(reference)}")
    if segment_names is None:
        segment_names = {int(v): f"label {int(v)}" for v in np.unique(labels) if v > 0}
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segmentation = node.GetSegmentation()
    for value, segment_name in segment_names.items():
        colour = (colours or {}).get(value, TUMOUR_COLOUR if len(segment_names) == 1 else _label_colour(value))
        segment_id = segmentation.AddEmptySegment("", segment_name, list(colour))
        mask = np.ascontiguousarray(np.transpose((labels == value).astype(np.uint8), (2, 1, 0)))
        if mask.any():
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, reference)
    return node


def _label_colour(value: int) -> tuple[float, float, float]:
    palette = [(0.95, 0.25, 0.15), (0.3, 0.8, 0.3), (0.95, 0.85, 0.2), (0.3, 0.5, 0.95), (0.8, 0.4, 0.9)]
    return palette[(int(value) - 1) % len(palette)]


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def find_segment_id(segmentation_node, segment: str) -> str:
    """The id of a segment given its id or its name."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment) is not None:
        return segment
    found = segmentation.GetSegmentIdBySegmentName(segment)
    if not found:
        names = [segmentation.GetSegment(s).GetName() for s in segment_ids(segmentation_node)]
        raise InputDataError(f"Segmentation {segmentation_node.GetName()} has no segment {segment!r} "
                             f"(segments: {', '.join(names) or 'none'}).")
    return found


def segment_array(segmentation_node, segment: str, reference) -> np.ndarray:
    """A segment (by id or name) as a uint8 0/1 ``[i, j, k]`` array in the grid of ``reference``.

    Works for segments painted in the Segment Editor as well as imported ones.
    """
    segment_id = find_segment_id(segmentation_node, segment)
    kji = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference)
    return np.ascontiguousarray(np.transpose(kji, (2, 1, 0))).astype(np.uint8)


def labels_from_segmentation(segmentation_node, reference, segments: list[str] | None = None) -> np.ndarray:
    """Label map (``[i, j, k]`` uint8) of a segmentation in the grid of ``reference``.

    Segment number ``n`` (1-based, in the order given or the node's order) gets value ``n``;
    where segments overlap the later one wins.
    """
    ids = [find_segment_id(segmentation_node, s) for s in segments] if segments else segment_ids(segmentation_node)
    labels = np.zeros(volume_shape(reference), dtype=np.uint8)
    for value, segment_id in enumerate(ids, start=1):
        labels[segment_array(segmentation_node, segment_id, reference) > 0] = value
    return labels


# ---------------------------------------------------------------------------------------------
# parameter nodes: typed dataclass <-> vtkMRMLScriptedModuleNode
# ---------------------------------------------------------------------------------------------


def get_parameter_node(module_name: str, scene=None):
    """The module's singleton parameter node, created like ScriptedLoadableModuleLogic does."""
    scene = get_scene(scene)
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(module_name)
        node.SetName(scene.GenerateUniqueName(module_name))
        node.SetAttribute("ModuleName", module_name)
        node = scene.AddNode(node)
    return node


def _field_kind(tp: Any) -> tuple[str, Any]:
    """Classify a dataclass field type: ('node', cls) / ('bool'|'int'|'float'|'str'|'path'|'enum', tp)."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and all(isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode) for a in args):
            return "node", args[0]
        if len(args) == 1:
            return _field_kind(args[0])
        raise TypeError(f"unsupported parameter type {tp}")
    if origin is typing.Literal:
        return "str", str
    if isinstance(tp, type) and issubclass(tp, slicer.vtkMRMLNode):
        return "node", tp
    if tp is bool:
        return "bool", bool
    if tp is int:
        return "int", int
    if tp is float:
        return "float", float
    if tp is str:
        return "str", str
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        return "path", tp
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "enum", tp
    raise TypeError(f"unsupported parameter type {tp}")


def _hints(cls) -> dict[str, Any]:
    namespace = {name: getattr(slicer, name) for name in dir(slicer) if name.startswith("vtkMRML")}
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns={**(vars(module) if module else {}), **namespace}, include_extras=True)


def write_parameters(parameter_node, values) -> None:
    """Store a parameters dataclass in a parameter node, in ``slicer.parameterNodeWrapper``'s format.

    Numbers as ``str(value)``, booleans ``"True"``/``"False"``, strings and paths as text,
    enums by name, nodes as a node reference whose role is the field name (plus an empty
    parameter of that name). A parameter node written here reads back in a Slicer module whose
    ``@parameterNodeWrapper`` class has the same field names, and the other way round.
    """
    hints = _hints(type(values))
    with slicer.util.NodeModify(parameter_node):
        for item in dataclasses.fields(values):
            kind, _ = _field_kind(hints[item.name])
            value = getattr(values, item.name)
            if kind == "node":
                parameter_node.SetParameter(item.name, "")
                parameter_node.SetNodeReferenceID(item.name, value.GetID() if value is not None else None)
            elif kind == "bool":
                parameter_node.SetParameter(item.name, "True" if value else "False")
            elif kind == "enum":
                parameter_node.SetParameter(item.name, value.name)
            else:
                parameter_node.SetParameter(item.name, str(value))


def read_parameters(parameter_node, cls):
    """Read a parameters dataclass from a parameter node (missing values keep their defaults)."""
    hints = _hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        kind, tp = _field_kind(hints[item.name])
        if not parameter_node.HasParameter(item.name):
            continue
        text = parameter_node.GetParameter(item.name)
        try:
            if kind == "node":
                values[item.name] = parameter_node.GetNodeReference(item.name)
            elif kind == "bool":
                values[item.name] = text == "True"
            elif kind == "int":
                values[item.name] = int(round(float(text)))
            elif kind == "float":
                values[item.name] = float(text)
            elif kind == "path":
                values[item.name] = tp(text)
            elif kind == "enum":
                values[item.name] = tp[text]
            else:
                values[item.name] = text
        except (ValueError, KeyError) as error:
            raise BrainLDMError(f"Parameter {item.name!r} of {parameter_node.GetName()} holds {text!r}, which is not a "
                                f"valid {tp.__name__}; reset the module's parameters.") from error
    return cls(**values)


@dataclass
class SceneSnapshot:
    """The node ids of a scene at one moment (to check that a cancelled run left it unchanged)."""

    node_ids: set[str] = field(default_factory=set)

    @classmethod
    def take(cls, scene=None) -> "SceneSnapshot":
        scene = get_scene(scene)
        return cls({scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())})

    def added_since(self, scene=None) -> set[str]:
        return SceneSnapshot.take(scene).node_ids - self.node_ids


def remove_nodes(nodes, scene=None) -> None:
    """Remove nodes (and their display and storage nodes) from the scene."""
    scene = get_scene(scene)
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        for getter in ("GetNumberOfDisplayNodes", "GetNumberOfStorageNodes"):
            count = getattr(node, getter)() if hasattr(node, getter) else 0
            for i in reversed(range(count)):
                child = node.GetNthDisplayNode(i) if getter.endswith("DisplayNodes") else node.GetNthStorageNode(i)
                if child is not None:
                    scene.RemoveNode(child)
        scene.RemoveNode(node)


__all__ = [
    "ANOMALY_COLOURS", "GRADDIFF_COLOURS", "OverlayStyle", "SceneSnapshot", "SubjectNodes", "add_subject", "add_volume",
    "array_to_matrix", "find_colour_node", "find_segment_id", "from_source_grid", "get_parameter_node", "get_scene",
    "grid_problem",
    "ijk_to_ras", "labels_from_segmentation", "load_volume", "matrix_to_array", "read_parameters", "remove_nodes",
    "save_volume", "segment_array", "segment_ids", "segmentation_from_labels", "set_overlay_opacity",
    "show_in_slice_views", "slice_composite_nodes", "style_overlay", "subject_from_volume_nodes", "to_source_grid",
    "unique_name", "update_volume", "volume_array", "volume_shape", "write_parameters",
]
