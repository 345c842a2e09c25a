"""BrainLDMSegment: weakly supervised brain tumour detection with a latent diffusion model.

Module / parameter node / Widget / Logic / Test, after Slicer's scripted module template.
The Widget only binds the .ui controls to the parameter node and polls a running job; all
behaviour is in ``BrainLDMSegmentLogic``, which delegates to ``brainldm.logic.segment``
(tested headless on Slicer's real MRML core: ``Testing/slicer``).

Nothing heavy is imported when Slicer starts: ``brainldm`` is imported inside methods, and
PyTorch plus the bundled core are installed the first time they are needed.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Decimals, SingleStep, WithinRange, parameterNodeWrapper
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


#
# BrainLDMSegment
#


class BrainLDMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BrainLDM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainLDM contributors"]
        self.parent.helpText = """
Detects brain tumours in four co-registered MRI sequences (T1, T1 contrast, T2, T2-FLAIR) without voxel
labels: a latent diffusion model trained on healthy-looking brain makes a <i>healthy counterfactual</i> of the scan
(DDIM or EDICT inversion, then classifier-free guided generation); the difference is the anomaly map, thresholded
into a segmentation. Detection runs in a background process and can be cancelled.
See <a href="https://github.com/brainldm/brainldm/blob/main/docs/slicer.md">docs/slicer.md</a>.
<br><b>Research software, not a medical device.</b>"""
        self.parent.acknowledgementText = """
Method: weakly supervised anomaly detection with 3D patch-based latent diffusion (PhD thesis, 2026).
Built on 3D Slicer, PyTorch and MONAI."""


#
# Parameter node
#


@parameterNodeWrapper
class BrainLDMSegmentParameterNode:
    """Field names are the parameter names and the .ui controls' SlicerParameterName
    (the same fields as ``brainldm.logic.segment.SegmentParameters``)."""

    t1n: vtkMRMLScalarVolumeNode
    t1c: vtkMRMLScalarVolumeNode
    t2w: vtkMRMLScalarVolumeNode
    t2f: vtkMRMLScalarVolumeNode
    subject_folder: Path
    model: str = ""  # bound by the widget (choices come from the model catalogue)
    encoder: Annotated[str, Choice(["edict", "ddim"])] = "edict"
    guidance: Annotated[float, WithinRange(0.0, 20.0), Decimals(1), SingleStep(0.5)] = 5.0
    steps: Annotated[float, WithinRange(10, 250), Decimals(0), SingleStep(1)] = 50
    mix: Annotated[float, WithinRange(0.90, 0.99), Decimals(2), SingleStep(0.01)] = 0.97
    threshold: Annotated[str, Choice(["otsu", "graddiff", "fixed"])] = "otsu"  # fixed: the model's value
    noise_level: Annotated[int, WithinRange(0, 1000)] = 0  # these three start at the model's recommendation
    threshold_value: Annotated[float, WithinRange(0.0, 10.0), Decimals(3), SingleStep(0.005)] = 0.0
    smoothing: Annotated[float, WithinRange(0.0, 10.0), Decimals(1), SingleStep(0.5)] = 0.0
    overlap: Annotated[float, Choice([0.0, 0.25, 0.5])] = 0.25
    mask_brain: bool = True
    reference_segmentation: vtkMRMLSegmentationNode
    overlay_opacity: Annotated[float, WithinRange(0.0, 1.0), Decimals(2), SingleStep(0.05)] = 0.5
    show_counterfactuals: bool = True
    replace_previous_results: bool = False
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# Widget
#


class BrainLDMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt only: controls, the Detect/Cancel button and the progress timer."""

    POLL_MS = 250

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobParameters = None
        self._outputs = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self._onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainLDMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainLDMSegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadSubjectButton.connect("clicked(bool)", self.onLoadSubject)
        self.ui.detectButton.connect("clicked(bool)", self.onDetectOrCancel)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.progressBar.setVisible(False)

        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:  # the inputs are going away: stop the run, add nothing
            self.onDetectOrCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BrainLDMSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectModelInCombo(self._parameterNode.model)
            self._updateButtons()

    # -- model list (choices come from the catalogue, so it is bound here, not by connectGui)
    def refreshModels(self) -> None:
        current = self._parameterNode.model if self._parameterNode else ""
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        try:
            for value, label in self.logic.modelChoices():
                self.ui.modelComboBox.addItem(label, value)
        except Exception as error:  # an unreadable catalogue must not break the module
            logging.warning("BrainLDM model catalogue: %s", error)
            self.ui.modelComboBox.addItem("default", "")
        self.ui.modelComboBox.blockSignals(False)
        self._selectModelInCombo(current)

    def _selectModelInCombo(self, value) -> None:
        index = self.ui.modelComboBox.findData(value or "")
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.modelComboBox.blockSignals(False)

    def onModelChosen(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""
            # The model's recommended diffusion settings (chosen by grid search when it was made).
            try:
                for name, value in self.logic.recommendedSettings(self._parameterNode.model).items():
                    setattr(self._parameterNode, name, value)
            except Exception as error:  # the core may not be installed yet: keep the current settings
                logging.info("BrainLDM: no recommended settings for this model (%s)", error)

    # -- actions
    def _updateButtons(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.detectButton.enabled = True
            return
        pn = self._parameterNode
        ready = bool(pn and pn.t1n and pn.t1c and pn.t2w and pn.t2f)
        self.ui.detectButton.enabled = ready
        self.ui.detectButton.toolTip = ("Compute the healthy counterfactual, the anomaly map and the segmentation in "
                                        "a background process." if ready else "Select the four sequence volumes first.")

    def onLoadSubject(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the subject.", waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda text: slicer.util.confirmOkCancelDisplay(text))
            nodes = self.logic.loadSubjectFolder(self._parameterNode.subject_folder)
            for seq, node in nodes.volumes.items():
                setattr(self._parameterNode, seq, node)
            if nodes.segmentation is not None:
                self._parameterNode.reference_segmentation = nodes.segmentation
            slicer.util.setSliceViewerLayers(background=nodes.volumes["t2f"], fit=True)

    def onDetectOrCancel(self) -> None:
        if self._job is not None:
            self._timer.stop()
            self.logic.cancel(self._job)
            self._job = None
            self._showIdle("Cancelled: the scene was left as it was.")
            return
        with slicer.util.tryWithErrorDisplay("Could not start detection.", waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda text: slicer.util.confirmOkCancelDisplay(text))
            self._jobParameters = self.logic.parameters(self._parameterNode)
            self._job = self.logic.startDetection(self._jobParameters)
            self.ui.detectButton.text = "Cancel"
            self.ui.detectButton.toolTip = "Stop detection now (kills the background process)."
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = "Starting..."
            self.ui.resultsLabel.text = ""
            self._timer.start()

    def _onPoll(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        status = self._job.poll()
        self.ui.progressBar.setValue(int(round(100 * status.fraction)))
        self.ui.statusLabel.text = status.text
        if not status.done:
            return
        self._timer.stop()
        job, self._job = self._job, None
        if status.state != "finished":
            self.logic.discard(job)
            self._showIdle(f"Detection {status.state}: {status.message}")
            if status.state == "failed":
                slicer.util.errorDisplay(f"Detection failed: {status.message}", detailedText=job.read_log()[-4000:])
            return
        with slicer.util.tryWithErrorDisplay("Could not add the results to the scene.", waitCursor=True):
            self._outputs = self.logic.applyResults(self._jobParameters, job)
            self.ui.resultsLabel.text = self._outputs.summary
        self._showIdle("Done." if self._outputs is not None else "")

    def _showIdle(self, message) -> None:
        self.ui.detectButton.text = "Detect anomalies"
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.text = message
        self._updateButtons()

    def onOpacityChanged(self, value) -> None:
        if self._outputs is not None:
            self.logic.setOverlayOpacity(value, self._outputs)


#
# Logic
#


class BrainLDMSegmentLogic(ScriptedLoadableModuleLogic):
    """All behaviour, no Qt: a thin layer over ``brainldm.logic.segment``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return BrainLDMSegmentParameterNode(super().getParameterNode())

    # -- dependencies (installed at the point of use)
    def ensureDependencies(self, confirm=None):
        return _brainldmLib().ensureDependencies(confirm)

    def parameters(self, parameterNode):
        """The parameter node as ``brainldm.logic.segment.SegmentParameters`` (same storage format)."""
        _brainldmLib().importCoreLight()
        from brainldm.logic import mrml
        from brainldm.logic.segment import SegmentParameters

        node = parameterNode.parameterNode if hasattr(parameterNode, "parameterNode") else parameterNode
        return mrml.read_parameters(node, SegmentParameters)

    def recommendedSettings(self, model):
        """The diffusion settings ``model`` recommends (``{}`` when none); JSON only, no torch."""
        lib = _brainldmLib()
        lib.importCoreLight()
        from brainldm.logic.segment import recommended_settings

        return recommended_settings(model, lib.modelDirs())

    def modelChoices(self):
        """``(value, label)`` of the catalogue's models (works before the dependencies are installed)."""
        lib = _brainldmLib()
        lib.importCoreLight()
        from brainldm.logic.catalogue import model_choices

        return model_choices(lib.modelDirs())

    def loadSubjectFolder(self, folder):
        """Load a BraTS subject folder through storage nodes (call ensureDependencies first)."""
        from brainldm.logic.segment import load_subject_folder

        return load_subject_folder(folder)

    def startDetection(self, params):
        lib = _brainldmLib()
        from brainldm.logic.segment import start_detection

        return start_detection(params, python=lib.pythonSlicerExecutable(), model_dirs=tuple(lib.modelDirs()),
                               env=lib.childEnvironment())

    def cancel(self, job) -> None:
        job.cancel()
        job.cleanup()

    def discard(self, job) -> None:
        job.cleanup()

    def applyResults(self, params, job):
        from brainldm.logic.segment import add_detection_results

        try:
            return add_detection_results(params, job.out_dir)
        finally:
            job.cleanup()

    def setOverlayOpacity(self, opacity, outputs) -> None:
        from brainldm.logic import mrml

        mrml.set_overlay_opacity(opacity, outputs.overlays())

    def process(self, params, timeout=None):
        """Detect and add the results, blocking (for scripts and the self-test)."""
        self.ensureDependencies()
        lib = _brainldmLib()
        from brainldm.logic.segment import run_detection

        return run_detection(params, timeout=timeout, python=lib.pythonSlicerExecutable(),
                             model_dirs=tuple(lib.modelDirs()))


#
# Test
#


class BrainLDMSegmentTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test, or ctest). Phantom subject -> detection
    with the default model and few steps -> nodes in the input's grid."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_detection_on_phantom()

    def test_detection_on_phantom(self):
        self.delayDisplay("Making a phantom subject")
        logic = BrainLDMSegmentLogic()
        logic.ensureDependencies()
        import numpy as np

        from brainldm.data.phantom import PhantomSpec, make_phantom
        from brainldm.logic import mrml
        from brainldm.logic.segment import SegmentParameters

        subject = make_phantom(PhantomSpec(seed=7, lesion_diameter_mm=25))
        nodes = mrml.add_subject(subject)
        params = SegmentParameters(**nodes.volumes, reference_segmentation=nodes.segmentation, steps=10)
        before = slicer.mrmlScene.GetNumberOfNodes()

        self.delayDisplay("Detecting (10 steps)")
        outputs = logic.process(params, timeout=1800)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertEqual(mrml.volume_shape(outputs.anomaly_map), mrml.volume_shape(nodes.reference))
        np.testing.assert_allclose(mrml.ijk_to_ras(outputs.anomaly_map), mrml.ijk_to_ras(nodes.reference))
        self.assertTrue(outputs.segmentation.IsA("vtkMRMLSegmentationNode"))
        self.assertIn("dice", outputs.metrics)
        self.assertEqual(outputs.anomaly_map.GetDisplayNode().GetApplyThreshold(), 1)
        self.delayDisplay(f"Test passed: {outputs.summary}")
