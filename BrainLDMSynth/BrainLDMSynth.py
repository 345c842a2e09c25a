"""BrainLDMSynth: paint a lesion mask and synthesise a tumour into the brain where it was
painted (thesis §4.3), or make realistic phantom subjects with a tumour of a chosen diameter at a
chosen point (``brainldm.data.phantom``, loaded with exact labels).

Synthesize uses the synthesis model shipped in ``Resources/models`` with its recommended settings
and adds the synthetic sequences and the lesion as new nodes; without a synthesis model the button
stays disabled, saying why (``brainldm.logic.synth.synthesis_status``). All behaviour is in
``BrainLDMSynthLogic`` -> ``brainldm.logic.synth``.
"""

import os
import sys
from typing import Annotated, Optional

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Decimals, SingleStep, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _brainldmLib():
    """BrainLDMLib: installed next to the modules, or in BrainLDMSegment/ of a source checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.join(os.path.dirname(here), "BrainLDMSegment")):
        if os.path.isdir(os.path.join(folder, "BrainLDMLib")) and folder not in sys.path:
            sys.path.insert(0, folder)
    import BrainLDMLib

    return BrainLDMLib


class BrainLDMSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BrainLDM Synth"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainLDM contributors"]
        self.parent.helpText = """
Paint a lesion mask on a reference brain (the subject's four sequences must be loaded) and Synthesize: a tumour
appears where it was painted, in new volumes beside the subject's. Or make a realistic four-sequence phantom brain
with a tumour of the chosen diameter at the chosen point, with exact labels.
See <a href="https://github.com/brainldm/brainldm/blob/main/docs/slicer.md">docs/slicer.md</a>."""
        self.parent.acknowledgementText = "Built on 3D Slicer, PyTorch and MONAI."


@parameterNodeWrapper
class BrainLDMSynthParameterNode:
    """Same fields as ``brainldm.logic.synth.SynthParameters``."""

    reference_volume: vtkMRMLScalarVolumeNode
    lesion_segmentation: vtkMRMLSegmentationNode
    lesion_point: vtkMRMLMarkupsFiducialNode
    diameter_mm: Annotated[float, WithinRange(5.0, 50.0), Decimals(0), SingleStep(1)] = 20.0
    seed: Annotated[int, WithinRange(0, 1000000)] = 1
    healthy: bool = False
    mask_guidance: Annotated[float, WithinRange(0.0, 6.0), Decimals(1), SingleStep(0.5)] = 1.0


class BrainLDMSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt only: controls, the embedded Segment Editor and the buttons."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._segmentEditorNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainLDMSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainLDMSynthLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.makePhantomButton.connect("clicked(bool)", self.onMakePhantom)
        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesize)
        self.ui.lesionPointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onPointListChanged)
        self.ui.referenceVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._syncSegmentEditor)
        self.ui.lesionSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._syncSegmentEditor)

        available, reason = self.logic.synthesisStatus()
        self.ui.synthesizeButton.enabled = available
        self.ui.synthesizeButton.toolTip = "Synthesize the painted lesion into the reference brain." if available \
            else reason

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._segmentEditorNode = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if self._segmentEditorNode is None:
            self._segmentEditorNode = self.logic.segmentEditorNode()
            self.ui.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
            self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self._segmentEditorNode)
        self._syncSegmentEditor()

    def setParameterNode(self, inputParameterNode: Optional[BrainLDMSynthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _onPointListChanged(self, node) -> None:
        self.ui.lesionPointPlaceWidget.setCurrentNode(node)

    def _syncSegmentEditor(self, node=None) -> None:
        if not self._parameterNode or self._segmentEditorNode is None:
            return
        self.ui.segmentEditorWidget.setSegmentationNode(self._parameterNode.lesion_segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.reference_volume)

    def onMakePhantom(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not make the phantom subject.", waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda text: slicer.util.confirmOkCancelDisplay(text))
            nodes = self.logic.makePhantom(self.logic.parameters(self._parameterNode))
            self._parameterNode.reference_volume = nodes.volumes["t2f"]
            slicer.util.setSliceViewerLayers(background=nodes.volumes["t2f"], fit=True)
            self.ui.synthStatusLabel.text = (f"Loaded {nodes.reference.GetName().rsplit('-', 1)[0]}: four sequences"
                                             + (" and its tumour labels." if nodes.segmentation else "."))

    def onSynthesize(self) -> None:
        """Synthesise the painted lesion (about a minute on a CPU), with a progress dialog that can cancel."""
        with slicer.util.tryWithErrorDisplay("Could not synthesise the lesion.", waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda text: slicer.util.confirmOkCancelDisplay(text))
            params = self.logic.parameters(self._parameterNode)
            dialog = slicer.util.createProgressDialog(labelText="Synthesising the lesion...", maximum=100)

            def progress(stage, fraction):
                dialog.labelText = f"Synthesising the lesion: {stage}"
                dialog.value = int(round(100 * fraction))
                slicer.app.processEvents()

            try:
                nodes = self.logic.synthesize(params, progress=progress, cancel=lambda: dialog.wasCanceled)
            except self.logic.cancelledError():
                self.ui.synthStatusLabel.text = "Synthesis cancelled; nothing was added."
                return
            finally:
                dialog.close()
            slicer.util.setSliceViewerLayers(background=nodes.volumes["t2f"], fit=True)
            self.ui.synthStatusLabel.text = (f"Synthesised {nodes.reference.GetName().rsplit('-', 1)[0]} (lesion "
                                             f"strength {params.mask_guidance:g}): four new sequences and the "
                                             "painted lesion as a segmentation.")


class BrainLDMSynthLogic(ScriptedLoadableModuleLogic):
    """All behaviour, no Qt: a thin layer over ``brainldm.logic.synth``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return BrainLDMSynthParameterNode(super().getParameterNode())

    def ensureDependencies(self, confirm=None):
        return _brainldmLib().ensureDependencies(confirm)

    def parameters(self, parameterNode):
        _brainldmLib().importCoreLight()
        from brainldm.logic import mrml
        from brainldm.logic.synth import SynthParameters

        node = parameterNode.parameterNode if hasattr(parameterNode, "parameterNode") else parameterNode
        return mrml.read_parameters(node, SynthParameters)

    def synthesisStatus(self):
        """``(available, reason)``; works before the dependencies are installed."""
        try:
            _brainldmLib().importCoreLight()
            from brainldm.logic.synth import synthesis_status

            status = synthesis_status()
            return status.available, status.reason
        except ImportError:
            return False, "synthesis model not yet available"

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("BrainLDMSynth", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("BrainLDMSynth")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def makePhantom(self, params):
        from brainldm.logic.synth import make_phantom_in_scene

        return make_phantom_in_scene(params)

    def synthesize(self, params, progress=None, cancel=None):
        """The painted lesion synthesised into the subject (the shipped synthesis model, its steps and
        guidance; the lesion strength ``params.mask_guidance``)."""
        from brainldm.logic.synth import synthesize_in_scene

        return synthesize_in_scene(params, progress=progress, cancel=cancel)

    @staticmethod
    def cancelledError():
        from brainldm.diffusion.sampler import Cancelled

        return Cancelled


class BrainLDMSynthTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: a phantom with a 20 mm tumour centred on a placed point."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_phantom_at_point()

    def test_phantom_at_point(self):
        import numpy as np

        logic = BrainLDMSynthLogic()
        logic.ensureDependencies()
        from brainldm.logic import mrml
        from brainldm.logic.synth import SynthParameters

        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion centre")
        points.AddControlPoint(vtk.vtkVector3d(-30.0, -10.0, 20.0))
        nodes = logic.makePhantom(SynthParameters(lesion_point=points, diameter_mm=20.0, seed=5))
        labels = mrml.labels_from_segmentation(nodes.segmentation, nodes.reference) > 0
        self.assertGreater(int(labels.sum()), 100)
        centre = np.argwhere(labels).mean(axis=0)
        world = mrml.ijk_to_ras(nodes.reference) @ np.array([*centre, 1.0])
        self.assertLess(float(np.linalg.norm(world[:3] - np.array([-30.0, -10.0, 20.0]))), 10.0)
        self.delayDisplay("Test passed")
