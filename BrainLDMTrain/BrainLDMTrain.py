"""BrainLDMTrain: train or fine-tune BrainLDM models on your own data, in the background.

The run is a detached process (``brainldm.train.control.launch_background``): Slicer stays
responsive and may even be closed; the widget follows ``status.json`` with a timer (epoch,
loss, time left), can stop the run (it checkpoints first) and resume it, and registers the
exported model in the catalogue so BrainLDMSegment can use it. All behaviour is in
``BrainLDMTrainLogic`` -> ``brainldm.logic.train``.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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


class BrainLDMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BrainLDM Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainLDM contributors"]
        self.parent.helpText = """
Trains (or fine-tunes) the BrainLDM first-stage autoencoder and latent diffusion model on a folder of subjects in
BraTS naming, in a background process that survives closing Slicer. Follow epoch, loss and time left here; stop
and resume at any time; add the trained model to the catalogue for BrainLDMSegment.
See <a href="https://github.com/brainldm/brainldm/blob/main/docs/slicer.md">docs/slicer.md</a>."""
        self.parent.acknowledgementText = "Built on 3D Slicer, PyTorch and MONAI."


@parameterNodeWrapper
class BrainLDMTrainParameterNode:
    """Same fields as ``brainldm.logic.train.TrainParameters``."""

    data_folder: Path
    preset: str = "cpu-small"  # bound by the widget (choices are the shipped presets)
    output_folder: Path
    stage: Annotated[str, Choice(["all", "autoencoder", "denoiser"])] = "all"
    model_name: str = ""
    overrides: str = ""
    gpus: Annotated[int, WithinRange(1, 64)] = 1


class BrainLDMTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt only: controls, buttons and a QTimer that polls the run's status."""

    POLL_MS = 2000

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.updateProgress)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainLDMTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainLDMTrainLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChosen)

        self.initializeParameterNode()
        self._timer.start()  # follows a run also when it was started before Slicer was opened

    def cleanup(self) -> None:
        self._timer.stop()  # the run itself goes on in the background
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._timer.start()

    def exit(self) -> None:
        self._timer.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BrainLDMTrainParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._fillPresets()
            self.updateProgress()

    def _fillPresets(self) -> None:
        current = self._parameterNode.preset
        self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.clear()
        try:
            presets = self.logic.presets()
        except Exception as error:
            logging.warning("BrainLDM presets: %s", error)
            presets = []
        for name in presets or [current]:
            self.ui.presetComboBox.addItem(name)
        self.ui.presetComboBox.setCurrentIndex(max(self.ui.presetComboBox.findText(current), 0))
        self.ui.presetComboBox.blockSignals(False)

    def onPresetChosen(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.preset = self.ui.presetComboBox.itemText(index)

    def _confirm(self, text) -> bool:
        return slicer.util.confirmOkCancelDisplay(text)

    def onStart(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            self.logic.ensureDependencies(confirm=self._confirm)
            self.logic.start(self.logic.parameters(self._parameterNode))
            self.updateProgress()

    def onResume(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not resume training.", waitCursor=True):
            self.logic.ensureDependencies(confirm=self._confirm)
            self.logic.resume(self.logic.parameters(self._parameterNode))
            self.updateProgress()

    def onStop(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not stop training.", waitCursor=True):
            self.logic.stop(self._parameterNode.output_folder)
            self.updateProgress()

    def onRegister(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the model to the catalogue.", waitCursor=True):
            entry = self.logic.register(self._parameterNode.output_folder, self._parameterNode.model_name)
            self.ui.trainStatusLabel.text = f"Model {entry.model_id} added to the catalogue ({entry.path})."

    def updateProgress(self) -> None:
        if not self._parameterNode:
            return
        progress = self.logic.progress(self._parameterNode.output_folder)
        running = progress is not None and progress.alive
        self.ui.startButton.enabled = not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = progress is not None and not running and progress.state in ("stopped", "failed")
        self.ui.registerButton.enabled = progress is not None and progress.bundle is not None
        if progress is None:
            self.ui.epochLabel.text = self.ui.lossLabel.text = self.ui.etaLabel.text = "-"
            self.ui.trainProgressBar.setValue(0)
            self.ui.trainStatusLabel.text = "No run in the output folder yet."
            return
        self.ui.epochLabel.text = f"{progress.epoch:.2f}  (step {progress.step}/{progress.total_steps or '?'})"
        self.ui.lossLabel.text = "-" if progress.loss is None else f"{progress.loss:.5g}"
        self.ui.etaLabel.text = progress.eta_text if running else "-"
        self.ui.trainProgressBar.setValue(int(round(100 * progress.fraction)))
        self.ui.trainStatusLabel.text = progress.text


class BrainLDMTrainLogic(ScriptedLoadableModuleLogic):
    """All behaviour, no Qt: a thin layer over ``brainldm.logic.train``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return BrainLDMTrainParameterNode(super().getParameterNode())

    def ensureDependencies(self, confirm=None):
        return _brainldmLib().ensureDependencies(confirm)

    def parameters(self, parameterNode):
        _brainldmLib().importCoreLight()
        from brainldm.logic import mrml
        from brainldm.logic.train import TrainParameters

        node = parameterNode.parameterNode if hasattr(parameterNode, "parameterNode") else parameterNode
        return mrml.read_parameters(node, TrainParameters)

    def presets(self):
        _brainldmLib().importCoreLight()
        from brainldm.logic.train import available_presets

        return available_presets()

    def start(self, params):
        from brainldm.logic.train import start_training

        lib = _brainldmLib()
        return start_training(params, python=lib.pythonSlicerExecutable(), env=lib.childEnvironment())

    def resume(self, params):
        from brainldm.logic.train import resume_training

        lib = _brainldmLib()
        return resume_training(params, python=lib.pythonSlicerExecutable(), env=lib.childEnvironment())

    def stop(self, runFolder, wait=0.0):
        from brainldm.logic.train import stop_training

        return stop_training(runFolder, wait=wait)

    def progress(self, runFolder):
        """The run's progress, or None when the folder holds no run (or the core is not installed yet)."""
        folder = Path(str(runFolder)) if runFolder else None
        if folder is None or str(folder) in ("", ".") or not (folder / "status.json").exists():
            return None
        try:
            _brainldmLib().importCoreLight()
            from brainldm.logic.train import training_progress

            return training_progress(folder)
        except ImportError:
            return None

    def register(self, runFolder, title=""):
        from brainldm.logic.train import register_trained_model

        return register_trained_model(runFolder, title=title or None)


class BrainLDMTrainTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: launch a tiny training run on phantoms, follow it, stop it."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_start_follow_stop()

    def test_start_follow_stop(self):
        import tempfile
        import time

        logic = BrainLDMTrainLogic()
        logic.ensureDependencies()
        from brainldm.data.phantom import make_phantom_dataset
        from brainldm.logic.train import TrainParameters

        work = Path(tempfile.mkdtemp(prefix="BrainLDMTrainTest-"))
        self.delayDisplay("Writing two phantom subjects")
        make_phantom_dataset(work / "data", n=2, seed=3, progress=False)
        params = TrainParameters(data_folder=work / "data", output_folder=work / "run", preset="cpu-small")
        logic.start(params)
        deadline = time.monotonic() + 600
        progress = logic.progress(params.output_folder)
        while time.monotonic() < deadline and (progress is None or progress.step < 1) and (
                progress is None or progress.alive or progress.state == "starting"):
            slicer.app.processEvents()
            time.sleep(1)
            progress = logic.progress(params.output_folder)
        self.assertIsNotNone(progress)
        self.assertGreaterEqual(progress.step, 1, progress.text)
        final = logic.stop(params.output_folder, wait=120)
        self.assertFalse(final.alive)
        self.assertEqual(final.state, "stopped", final.text)
        self.delayDisplay(f"Test passed: {final.text}")
