"""A real, headless Slicer MRML scene for the logic tests (DESIGN.md section 5).

Slicer's own core (``slicer-core``, brought by ``trame-slicer[standalone]``) provides the MRML
scene, the application logic, the colour, volumes and segmentations module logics, storage
nodes and ``slicer.util``. Only Qt, CTK and the ScriptedLoadableModule base classes are
missing, which is why the Slicer modules keep all behaviour in ``brainldm.logic`` and these
tests exercise it on the real scene.

The ``headless`` fixture builds a fresh scene per test, installs it as ``slicer.mrmlScene`` and a
small ``slicer.modules`` namespace (``volumes``, ``segmentations``, ``colors``) with the
registered logics, exactly the attributes ``slicer.util`` uses, and restores what was there.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import pytest

try:
    import slicer
except ImportError:  # the test files skip themselves with pytest.importorskip("slicer")
    slicer = None


@dataclass
class HeadlessSlicer:
    """What the fixture gives a test: the scene and the module logics registered with it."""

    scene: object
    app_logic: object
    volumes_logic: object
    segmentations_logic: object
    colour_logic: object

    def add_slice_views(self, names=("Red", "Yellow", "Green")) -> list:
        """Add slice composite nodes like the desktop's three slice views have."""
        composites = []
        for name in names:
            composite = self.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)
            composites.append(composite)
        return composites


def _register(app_logic, scene, logic, name):
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic(name, logic)
    return logic


@pytest.fixture
def headless():
    """A fresh headless MRML scene with Slicer's application, colour, volumes and segmentations logics."""
    if slicer is None:
        pytest.skip("Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colour_logic = app_logic.GetColorLogic()
    colour_logic.SetMRMLScene(scene)
    colour_logic.AddDefaultColorNodes()
    volumes_logic = _register(app_logic, scene, slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations_logic = _register(app_logic, scene, slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")

    def module(logic):
        return types.SimpleNamespace(logic=lambda: logic)

    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules", "app")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(volumes=module(volumes_logic), segmentations=module(segmentations_logic),
                                           colors=module(colour_logic))
    try:
        yield HeadlessSlicer(scene, app_logic, volumes_logic, segmentations_logic, colour_logic)
    finally:
        scene.Clear(True)
        for name, value in saved.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)


def oblique_affine(spacing=(1.2, 0.9, 2.0), origin=(-30.0, 12.5, 7.0), angle_deg=20.0, flips=(-1.0, -1.0, 1.0)
                   ) -> np.ndarray:
    """An oblique voxel-to-RAS affine, LPS-like by default (x and y flipped, rotated about z).

    ``flips=(-1, 1, 1)`` gives a left-handed (LAS-like) grid, which ITK/Slicer store with the
    k axis reversed: the same world geometry in another voxel order.
    """
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    flips = np.diag(flips)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flips @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture(name="oblique_affine")
def oblique_affine_fixture():
    """:func:`oblique_affine` (a function: call it with other spacing/origin/angle if needed)."""
    return oblique_affine


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
