"""BrainLDM Studio: the Segment, Synth and Train modules in the browser, on Slicer's own core.

A trame-slicer application (real MRML scene, Slicer's slice and 3D views rendered on the
server, segment editor) with three panels:

* **Detect** - C, N and omega sliders, Detect (turns into Cancel) with progress, the anomaly
  or GradDiff map as an overlay with an opacity slider, the four sequences beside their
  healthy counterfactuals, the segmentation in 2D and 3D;
* **Synthesize** - paint a lesion with Slicer's segment editor, then Synthesize with the
  synthesis model (``--synth-model``, else the shipped one): the synthetic sequences appear beside
  the subject's, their files are written to the session's folder;
* **Train** - launch a background training run, follow it, stop it.

A subject comes from an upload (a BraTS subject's files) or is a generated phantom.

The app is thin: widgets and views here, every action one call of
:class:`brainldm.studio.session.StudioSession`, which calls ``brainldm.logic`` exactly as the
Slicer modules do. Run it with
``brainldm studio [--port P] [--host H] [--model BUNDLE] [--synth-model SYNTH_BUNDLE]``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # CPU rendering on a headless server

from trame.app import TrameApp  # noqa: E402
from trame.widgets import client, html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server.utils.asynchronous import create_task  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.segmentation import BrushDiameterMode, SegmentationEffectPaint  # noqa: E402
from trame_slicer.utils import write_client_files_to_dir  # noqa: E402
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402

from brainldm.errors import BrainLDMError  # noqa: E402
from brainldm.logic import mrml  # noqa: E402
from brainldm.logic import synth as synth_logic  # noqa: E402
from brainldm.logic import train as train_logic  # noqa: E402
from brainldm.studio import views as studio_views  # noqa: E402
from brainldm.studio.session import (  # noqa: E402
    LESION_SEGMENT,
    DetectControls,
    StudioSession,
    TrainControls,
    bind_slicer_globals,
)

log = logging.getLogger("brainldm.studio")

DETECT_POLL_S = 0.25
TRAIN_POLL_S = 1.0


class StudioApp(TrameApp):
    """The studio: one MRML scene, its views and the three panels (one server, one scene)."""

    def __init__(self, server=None, model: str | None = None, model_dirs: tuple[str | Path, ...] = (),
                 synth_model: synth_logic.SynthesisModel | None = None):
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)  # window.load_files_by_chunks for uploads
        self.slicer = SlicerApp()
        bind_slicer_globals(self.slicer.scene, self.slicer.volumes_logic, self.slicer.segmentations_logic,
                            self.slicer.color_logic)
        self.session = StudioSession(self.slicer.scene, model_dirs=tuple(model_dirs),
                                     default_model=str(Path(model).expanduser().resolve()) if model else "",
                                     synth_model=synth_model)
        self._uploaded: list[dict] = []
        self._detect_task = None
        self._train_task = None

        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=self._slice_view_ui,
                               three_d_view_ui_f=self._threed_view_ui)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict({"studio": studio_views.studio_layout()})
        self.layout_manager.set_layout("studio")
        main = self.slicer.view_manager.get_view(studio_views.MAIN)
        main.set_visible_in_3d(True)
        self.slicer.segmentation_editor.segmentation_modified.connect(self._on_lesion_painted)
        self._init_state()
        self._build_ui()

    # ============================================================================== state

    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "BrainLDM Studio"
        s.busy = False
        s.busy_text = ""
        s.error = ""
        s.notice = ""
        s.tab = "detect"
        s.subject_name = ""
        s.phantom_diameter = 20.0
        s.phantom_seed = 1
        s.slice_value = 0.0
        s.slice_min = 0.0
        s.slice_max = 1.0
        # detect
        d = DetectControls(model=self.session.initial_model())
        s.model = d.model
        s.model_items = [{"value": v, "title": t} for v, t in self.session.model_choices()]
        s.model_problem = self.session.model_problem(d.model)
        s.guidance, s.steps, s.mix = d.guidance, d.steps, d.mix
        s.encoder, s.threshold = d.encoder, d.threshold
        self._apply_recommended(d.model)
        s.opacity = d.overlay_opacity
        s.overlay = "anomaly"
        s.detect_running = False
        s.detect_progress = 0.0
        s.detect_status = ""
        s.results = ""
        s.has_results = False
        s.has_graddiff = False
        s.show_3d = True
        s.right_column = "counterfactual"  # or "synthetic": what the views beside the sequences show
        s.upload_key = 0
        # synthesize
        s.painting = False
        s.brush_mm = 10.0
        s.lesion_voxels = 0
        s.synth_error = ""
        s.synth_message = ""
        s.synth_folder = ""
        synthesis = self.session.synthesis_model()
        s.synth_model = synthesis.label if synthesis is not None else ""
        s.synth_strength = self.session.recommended_lesion_strength()
        s.synth_problem = self.session.synthesis_problem()
        # train
        s.train_presets = train_logic.available_presets()
        s.train_preset = "cpu-small" if "cpu-small" in s.train_presets else (s.train_presets or [""])[0]
        s.train_stage = "all"
        s.train_data = ""
        s.train_out = ""
        s.train_overrides = ""
        s.train_phantoms = 4
        s.train_running = False
        s.train_progress = 0.0
        s.train_status = ""
        s.train_error = ""

        s.change("model")(self._on_model_changed)
        s.change("opacity")(self._on_opacity_changed)
        s.change("overlay")(self._on_overlay_changed)
        s.change("slice_value")(self._on_slice_changed)
        s.change("brush_mm")(self._on_brush_changed)
        s.change("show_3d")(self._on_show_3d_changed)
        s.change("right_column")(self._on_right_column_changed)

    def _detect_controls(self) -> DetectControls:
        s = self.state
        return DetectControls(model=s.model or "", guidance=float(s.guidance), steps=int(round(float(s.steps))),
                              mix=float(s.mix), encoder=s.encoder, threshold=s.threshold,
                              overlay_opacity=float(s.opacity))

    def _train_controls(self) -> TrainControls:
        s = self.state
        return TrainControls(data_folder=s.train_data or "", output_folder=s.train_out or "", preset=s.train_preset,
                             stage=s.train_stage, overrides=s.train_overrides or "")

    # ============================================================================== helpers

    def _report(self, error: BaseException, target: str = "error") -> None:
        """Show an error in the UI: a user error's message as it is, anything else as a bug."""
        if isinstance(error, BrainLDMError):
            message = str(error)
        else:
            log.error("studio: unexpected error\n%s", "".join(traceback.format_exception(error)))
            message = f"Unexpected error ({type(error).__name__}: {error}); see the server log."
        with self.state:
            self.state[target] = message

    async def _blocking(self, text: str, action, target: str = "error"):
        """Run ``action()`` (blocking, on the server's scene) with the busy bar shown first."""
        with self.state:
            self.state.busy, self.state.busy_text, self.state[target] = True, text, ""
        await asyncio.sleep(0.05)  # let the busy state reach the browser before the loop blocks
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - every failure is shown, the server keeps running
            self._report(error, target)
            return None
        finally:
            with self.state:
                self.state.busy, self.state.busy_text = False, ""

    def _refresh_views(self, fit: bool = False) -> None:
        studio_views.show_session(self.slicer.view_manager, self.session, overlay=self.state.overlay,
                                  opacity=float(self.state.opacity), show_3d=bool(self.state.show_3d),
                                  right_column=self.state.right_column, fit=fit)
        if fit:
            main = self.slicer.view_manager.get_view(studio_views.MAIN)
            low, high = main.get_slice_range()
            with self.state:
                self.state.slice_min, self.state.slice_max = float(low), float(high)
                self.state.slice_value = float(main.get_slice_value())

    def _subject_loaded(self) -> None:
        with self.state:
            self.state.painting = False
            self.state.subject_name = self.session.subject_name
            self.state.has_results = self.state.has_graddiff = False
            self.state.results = ""
            self.state.detect_status = ""
            self.state.lesion_voxels = 0
            self.state.synth_error = self.state.synth_message = self.state.synth_folder = ""
            self.state.right_column = "counterfactual"
        self._refresh_views(fit=True)
        focus = self.session.focus_ras()
        if focus is not None:  # the slice through the reference tumour's centre
            with self.state:
                self.state.slice_value = float(min(max(focus[2], self.state.slice_min), self.state.slice_max))

    # ============================================================================== subject

    def _stop_painting(self) -> None:
        """Leave the paint effect before the lesion's segmentation node goes away with its subject."""
        self.slicer.segmentation_editor.deactivate_effect()
        with self.state:
            self.state.painting = False

    async def make_phantom(self) -> None:
        diameter, seed = float(self.state.phantom_diameter), int(self.state.phantom_seed)
        self._stop_detect_watch()
        self._stop_painting()
        if await self._blocking("Making a phantom subject...",
                                lambda: self.session.make_phantom(diameter, seed)) is not None:
            self._subject_loaded()

    async def upload_chunk(self, files: list[dict]) -> None:
        """Files arrive in chunks (window.load_files_by_chunks); an empty chunk ends the upload."""
        if files:
            self._uploaded.extend(files)
            return
        files, self._uploaded = self._uploaded, []
        if not files:
            return
        self._stop_detect_watch()
        self._stop_painting()

        def load():
            folder = self.session.workspace() / "incoming"
            folder.mkdir(parents=True, exist_ok=True)
            paths = [Path(p) for p in write_client_files_to_dir(files, folder)]
            try:
                return self.session.load_files({p.name: p.read_bytes() for p in paths})
            finally:
                for p in paths:
                    p.unlink(missing_ok=True)

        loaded = await self._blocking(f"Loading {len(files)} uploaded files...", load)
        with self.state:
            self.state.upload_key += 1  # a fresh, empty file field
        if loaded is not None:
            self._subject_loaded()

    # ============================================================================== detect

    def _on_model_changed(self, model, **_):
        self.state.model_problem = self.session.model_problem(model or "")
        with self.state:
            self._apply_recommended(model or "")

    def _apply_recommended(self, model: str) -> None:
        """The model's recommended settings into the panel's controls (what the module does too)."""
        for name, value in self.session.recommended(model).items():
            if name in ("guidance", "steps", "mix", "encoder", "threshold"):
                self.state[name] = value

    async def detect_or_cancel(self) -> None:
        if self.session.job is not None:
            self._stop_detect_watch()
            self.session.cancel_detection()
            with self.state:
                self.state.detect_running = False
                self.state.detect_status = "Cancelled: the scene was left as it was."
            return
        with self.state:
            self.state.error = ""
        try:
            self.session.start_detection(self._detect_controls())
        except Exception as error:  # noqa: BLE001
            self._report(error)
            return
        with self.state:
            self.state.detect_running = True
            self.state.detect_progress = 0.0
            self.state.detect_status = "Starting..."
            self.state.results = ""
        self._detect_task = create_task(self._watch_detection())

    def _stop_detect_watch(self) -> None:
        if self._detect_task is not None:
            self._detect_task.cancel()
            self._detect_task = None

    async def _watch_detection(self) -> None:
        """The QTimer of the Slicer module: poll the worker until it ends, then show the results."""
        while True:
            job = self.session.job
            if job is None:
                return
            if job.poll().done:
                with self.state:
                    self.state.detect_status = "Adding the results to the scene..."
                    self.state.detect_progress = 100.0
                await asyncio.sleep(0.05)
            try:
                status = self.session.poll_detection()
            except Exception as error:  # noqa: BLE001 - results that cannot be applied: say so
                self._report(error)
                with self.state:
                    self.state.detect_running = False
                    self.state.detect_status = "Detection finished, but its results could not be shown."
                return
            if status is None:
                return
            with self.state:
                self.state.detect_progress = round(100 * status.fraction, 1)
                self.state.detect_status = status.text
            if status.done:
                with self.state:
                    self.state.detect_running = False
                    if status.state == "finished" and self.session.outputs is not None:
                        self.state.results = self.session.outputs.summary
                        self.state.has_results = True
                        self.state.has_graddiff = self.session.outputs.graddiff_map is not None
                        if self.state.overlay == "graddiff" and not self.state.has_graddiff:
                            self.state.overlay = "anomaly"
                        self.state.detect_status = "Done."
                        self.state.right_column = "counterfactual"
                    elif status.state == "failed":
                        self.state.error = f"Detection failed: {status.message}"
                if status.state == "finished":
                    self._refresh_views()
                    studio_views.fit_right_column(self.slicer.view_manager, float(self.state.slice_value))
                self._detect_task = None
                return
            await asyncio.sleep(DETECT_POLL_S)

    def _on_opacity_changed(self, opacity, **_):
        self.session.set_overlay_opacity(float(opacity))
        studio_views.set_foreground_opacity(self.slicer.view_manager, float(opacity))

    def _on_overlay_changed(self, **_):
        if self.session.subject is not None:
            self._refresh_views()

    def _on_show_3d_changed(self, **_):
        if self.session.subject is not None:
            self._refresh_views()

    def _on_right_column_changed(self, **_):
        if self.session.subject is not None:
            self._refresh_views()
            studio_views.fit_right_column(self.slicer.view_manager, float(self.state.slice_value))

    def _on_slice_changed(self, slice_value, **_):
        studio_views.set_slice_offset(self.slicer.view_manager, float(slice_value))

    # ============================================================================== synthesize

    def toggle_paint(self) -> None:
        editor = self.slicer.segmentation_editor
        if self.state.painting:
            self._stop_painting()
            return
        try:
            segmentation = self.session.lesion_segmentation()
            editor.set_active_segmentation(segmentation, self.session.subject.volumes["t2f"])
            editor.set_active_segment_id(mrml.find_segment_id(segmentation, LESION_SEGMENT))
            effect = editor.set_active_effect_type(SegmentationEffectPaint)
            effect.set_brush_diameter(float(self.state.brush_mm), BrushDiameterMode.Absolute)
        except Exception as error:  # noqa: BLE001
            self._report(error, "synth_error")
            return
        self._refresh_views()
        with self.state:
            self.state.painting = True
            self.state.synth_error = ""

    def _on_brush_changed(self, brush_mm, **_):
        effect = self.slicer.segmentation_editor.active_effect
        if isinstance(effect, SegmentationEffectPaint):
            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)

    def _on_lesion_painted(self, *_):
        try:
            voxels = self.session.lesion_voxels()
        except Exception:  # noqa: BLE001 - a count is not worth breaking a paint stroke
            return
        with self.state:
            self.state.lesion_voxels = voxels

    def clear_lesion(self) -> None:
        self._stop_painting()
        self.session.clear_lesion()
        with self.state:
            self.state.lesion_voxels = 0

    async def synthesize(self) -> None:
        with self.state:
            self.state.synth_message = ""
        result = await self._blocking("Synthesising the painted lesion...", lambda: self.session.synthesize(
            float(self.state.phantom_diameter), int(self.state.phantom_seed), float(self.state.synth_strength)),
            target="synth_error")
        if result is not None:
            with self.state:
                self.state.synth_message = result.summary
                self.state.synth_folder = str(result.folder)
                self.state.right_column = "synthetic"
            self._refresh_views()
            studio_views.fit_right_column(self.slicer.view_manager, float(self.state.slice_value))

    # ============================================================================== train

    def start_training(self) -> None:
        with self.state:
            self.state.train_error = ""
        try:
            self.session.start_training(self._train_controls())
        except Exception as error:  # noqa: BLE001
            self._report(error, "train_error")
            return
        with self.state:
            self.state.train_running = True
            self.state.train_progress = 0.0
            self.state.train_status = "starting..."
        self._watch_training()

    def stop_training(self) -> None:
        try:
            if self.session.run_dir is None:
                self.session.follow_run(self.state.train_out or "")
            progress = self.session.stop_training()
        except Exception as error:  # noqa: BLE001
            self._report(error, "train_error")
            return
        with self.state:
            self.state.train_status = (progress.text if progress else "") + " | stopping (writing a checkpoint)..."
        self._watch_training()

    async def write_training_phantoms(self) -> None:
        folder, count = self.state.train_data or "", int(self.state.train_phantoms)
        written = await self._blocking(f"Writing {count} phantom subjects...",
                                       lambda: self.session.write_training_phantoms(folder, count),
                                       target="train_error")
        if written:
            with self.state:
                self.state.train_status = f"{len(written)} phantom subjects written to {folder}."

    def _watch_training(self) -> None:
        if self._train_task is None or self._train_task.done():
            self._train_task = create_task(self._train_loop())

    async def _train_loop(self) -> None:
        waited = 0.0
        while True:
            try:
                progress = self.session.training_progress()
            except Exception as error:  # noqa: BLE001
                self._report(error, "train_error")
                progress = None
            with self.state:
                if progress is not None:
                    self.state.train_progress = round(100 * progress.fraction, 1)
                    self.state.train_status = progress.text
            ended = progress is not None and not progress.alive and progress.state not in ("starting", "running")
            if ended or (progress is None and waited > 120):
                with self.state:
                    self.state.train_running = False
                    if progress is None:
                        self.state.train_error = "The training run did not start; see train.log in its folder."
                return
            await asyncio.sleep(TRAIN_POLL_S)
            waited += TRAIN_POLL_S

    # ============================================================================== views

    def _slice_view_ui(self, server, view_id, view) -> None:
        studio_views.slice_view_ui(server, view_id, view)

    def _threed_view_ui(self, server, view_id, view) -> None:
        studio_views.threed_view_ui(server, view_id, view)

    # ============================================================================== layout

    def _build_ui(self) -> None:
        chunk = self.server.trigger_name(self.upload_chunk)
        with SinglePageWithDrawerLayout(self.server, full_height=True, width=380) as layout:
            self.ui = layout
            client.Style(STYLE)
            layout.title.set_text("BrainLDM Studio")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ subject_name ? 'Subject: ' + subject_name : 'No subject loaded' }}",
                         id="subject-name", classes="mx-4 text-body-2")
                v3.VProgressLinear(indeterminate=True, absolute=True, location="bottom", v_show=("busy",),
                                   color="primary")
            with layout.drawer:
                with html.Div(classes="pa-3"):
                    v3.VAlert(v_show=("busy",), text=("busy_text",), type="info", density="compact",
                              variant="tonal", classes="mb-2", id="busy")
                    v3.VAlert(v_if=("error",), text=("error",), type="error", density="compact", closable=True,
                              classes="mb-2", id="studio-error", click_close="error = ''")
                    self._subject_card(chunk)
                    with v3.VTabs(v_model=("tab",), density="compact", grow=True, classes="mt-2"):
                        v3.VTab("Detect", value="detect", id="tab-detect")
                        v3.VTab("Synthesize", value="synth", id="tab-synth")
                        v3.VTab("Train", value="train", id="tab-train")
                    with v3.VWindow(v_model=("tab",), classes="pt-2"):
                        with v3.VWindowItem(value="detect"):
                            self._detect_panel()
                        with v3.VWindowItem(value="synth"):
                            self._synth_panel()
                        with v3.VWindowItem(value="train"):
                            self._train_panel()
            with layout.content:
                with html.Div(style="position: relative; height: 100%; display: flex; flex-direction: column;"):
                    with html.Div(classes="d-flex align-center px-3", style="height: 36px; background: #1e1e1e;"):
                        html.Span("Axial slice", classes="text-caption text-grey-lighten-1 mr-3")
                        v3.VSlider(v_model=("slice_value",), min=("slice_min",), max=("slice_max",), step=1,
                                   hide_details=True, density="compact", id="slice-slider", color="grey")
                    with html.Div(style="flex: 1; position: relative;"):
                        self.layout_manager.initialize_layout_grid(layout)

    def _subject_card(self, chunk_trigger: str) -> None:
        with v3.VCard(variant="outlined", classes="pa-2"):
            html.Div("Subject", classes="text-subtitle-2 mb-1")
            with html.Div(id="diameter-box"):
                html.Div("Phantom tumour diameter: {{ phantom_diameter }} mm", classes="text-caption")
                v3.VSlider(v_model=("phantom_diameter",), min=5, max=50, step=1, hide_details=True, density="compact")
            with html.Div(classes="d-flex align-center"):
                v3.VTextField(v_model_number=("phantom_seed",), label="Seed", type="number", density="compact",
                              hide_details=True, style="max-width: 90px;", id="phantom-seed")
                v3.VBtn("Make phantom", click=self.make_phantom, disabled=("busy || detect_running",),
                        classes="ml-2", color="primary", variant="tonal", id="make-phantom",
                        prepend_icon="mdi-brain")
            v3.VFileInput(
                label="Upload a subject (4 sequences, BraTS names)", multiple=True, density="compact",
                key=("upload_key",),
                hide_details=True, classes="mt-2", id="upload", prepend_icon="mdi-upload",
                disabled=("busy || detect_running",),
                change=(f"window.load_files_by_chunks($event.target.files, {{ trigger_name: '{chunk_trigger}' }})"),
            )

    def _detect_panel(self) -> None:
        v3.VSelect(v_model=("model",), items=("model_items",), label="Model", density="compact",
                   hide_details=True, id="model-select", item_title="title", item_value="value")
        v3.VAlert(v_if=("model_problem",), text=("model_problem",), type="warning", density="compact",
                  variant="tonal", classes="mt-2 text-caption", id="model-problem")
        with html.Div(id="guidance-box", classes="mt-2"):
            html.Div("C (guidance): {{ guidance }}", classes="text-caption")
            v3.VSlider(v_model_number=("guidance",), min=0, max=20, step=0.5, hide_details=True, density="compact")
        with html.Div(id="steps-box"):
            html.Div("N (steps): {{ steps }}", classes="text-caption")
            v3.VSlider(v_model_number=("steps",), min=10, max=250, step=1, hide_details=True, density="compact")
        with html.Div(id="mix-box"):
            html.Div("omega (EDICT mixing): {{ Number(mix).toFixed(2) }}", classes="text-caption")
            v3.VSlider(v_model_number=("mix",), min=0.90, max=0.99, step=0.01, hide_details=True, density="compact")
        with html.Div(classes="d-flex"):
            v3.VSelect(v_model=("encoder",), items=("['edict', 'ddim']",), label="Encoder", density="compact",
                       hide_details=True, classes="mr-2", id="encoder-select")
            v3.VSelect(v_model=("threshold",), items=("['otsu', 'graddiff', 'fixed']",), label="Threshold",
                       density="compact", hide_details=True, id="threshold-select")
        v3.VBtn("{{ detect_running ? 'Cancel' : 'Detect' }}", click=self.detect_or_cancel, block=True,
                classes="mt-3", color=("detect_running ? 'error' : 'primary'",), id="detect-button",
                disabled=("busy || !subject_name",), prepend_icon="mdi-magnify-scan")
        v3.VProgressLinear(v_show=("detect_running",), model_value=("detect_progress",), height=6, classes="mt-2",
                           color="primary", id="detect-progress")
        html.Div("{{ detect_status }}", classes="text-caption mt-1", id="detect-status")
        html.Div("{{ results }}", classes="text-body-2 mt-1", id="detect-results", v_show=("results",))
        v3.VDivider(classes="my-2")
        html.Div("Overlay", classes="text-subtitle-2")
        with v3.VBtnToggle(v_model=("overlay",), density="compact", mandatory=True, divided=True,
                           variant="outlined", id="overlay-toggle"):
            v3.VBtn("Anomaly", value="anomaly", size="small")
            v3.VBtn("GradDiff", value="graddiff", size="small", disabled=("has_results && !has_graddiff",),
                    title="The GradDiff map is made with the GradDiff threshold")
            v3.VBtn("None", value="none", size="small")
        with html.Div(id="opacity-box", classes="mt-1"):
            html.Div("Opacity: {{ Number(opacity).toFixed(2) }}", classes="text-caption")
            v3.VSlider(v_model_number=("opacity",), min=0, max=1, step=0.05, hide_details=True, density="compact")
        v3.VCheckbox(v_model=("show_3d",), label="Segmentations in the 3D view", density="compact",
                     hide_details=True)

    def _synth_panel(self) -> None:
        html.Div("Paint the lesion on the main view (FLAIR), then Synthesize: the synthetic sequences appear "
                 "in the right-hand column.", classes="text-caption mb-2")
        html.Div("Synthesis model: {{ synth_model }}", v_if=("synth_model",), classes="text-caption mb-2",
                 id="synth-model")
        v3.VAlert(v_if=("synth_problem",), text=("'No lesion synthesis: ' + synth_problem",), type="warning",
                  density="compact", variant="tonal", classes="mb-2 text-caption", id="synth-model-problem")
        with html.Div(classes="d-flex"):
            v3.VBtn("{{ painting ? 'Stop painting' : 'Paint lesion' }}", click=self.toggle_paint,
                    color=("painting ? 'success' : undefined",), variant="tonal", id="paint-button",
                    disabled=("busy || !subject_name",), prepend_icon="mdi-brush")
            v3.VBtn("Clear", click=self.clear_lesion, variant="text", classes="ml-2", id="clear-lesion",
                    disabled=("!lesion_voxels",))
        with html.Div(id="brush-box", classes="mt-2"):
            html.Div("Brush diameter: {{ brush_mm }} mm", classes="text-caption")
            v3.VSlider(v_model_number=("brush_mm",), min=2, max=40, step=1, hide_details=True, density="compact")
        html.Div("Painted lesion: {{ lesion_voxels }} voxels", classes="text-caption", id="lesion-voxels")
        with html.Div(id="strength-box", classes="mt-2",
                      title="Mask guidance M: how strongly each denoising step is pushed towards the painted lesion "
                            "(0 = the lesion channel alone; 6 makes dark blotches)"):
            html.Div("Lesion strength: {{ synth_strength }}", classes="text-caption", id="synth-strength")
            v3.VSlider(v_model_number=("synth_strength",), min=synth_logic.MASK_GUIDANCE_RANGE[0],
                       max=synth_logic.MASK_GUIDANCE_RANGE[1], step=0.5, hide_details=True, density="compact",
                       disabled=("busy || !!synth_problem",))
        v3.VBtn("Synthesize", click=self.synthesize, block=True, classes="mt-3", color="primary",
                id="synthesize-button", disabled=("busy || !!synth_problem",), prepend_icon="mdi-creation",
                title=("synth_problem || 'Synthesise the painted lesion into the subject'",))
        v3.VAlert(v_if=("synth_error",), text=("synth_error",), type="error", density="compact", classes="mt-2",
                  id="synth-error")
        html.Div("{{ synth_message }}", classes="text-caption mt-1", id="synth-message")
        html.Div("Files: {{ synth_folder }}", v_if=("synth_folder",), classes="text-caption", id="synth-folder",
                 style="word-break: break-all;")
        with v3.VBtnToggle(v_model=("right_column",), density="compact", mandatory=True, divided=True,
                           variant="outlined", classes="mt-2", id="right-column-toggle",
                           v_show=("synth_folder && has_results",)):
            v3.VBtn("Counterfactuals", value="counterfactual", size="small")
            v3.VBtn("Synthetic", value="synthetic", size="small")

    def _train_panel(self) -> None:
        v3.VTextField(v_model=("train_data",), label="Training data folder (on the server)", density="compact",
                      hide_details=True, id="train-data", classes="mb-2")
        with html.Div(classes="d-flex align-center mb-2"):
            v3.VTextField(v_model_number=("train_phantoms",), type="number", label="Phantoms", density="compact",
                          hide_details=True, style="max-width: 100px;")
            v3.VBtn("Write phantoms there", click=self.write_training_phantoms, variant="text", classes="ml-2",
                    disabled=("busy || !train_data",), id="train-write-phantoms")
        v3.VSelect(v_model=("train_preset",), items=("train_presets",), label="Preset", density="compact",
                   hide_details=True, id="train-preset", classes="mb-2")
        v3.VSelect(v_model=("train_stage",), items=("['all', 'autoencoder', 'denoiser']",), label="Stage",
                   density="compact", hide_details=True, classes="mb-2")
        v3.VTextField(v_model=("train_out",), label="Run folder (on the server)", density="compact",
                      hide_details=True, id="train-out", classes="mb-2")
        v3.VTextarea(v_model=("train_overrides",), label="Overrides (key=value; ...)", density="compact",
                     hide_details=True, rows=2, auto_grow=True, id="train-overrides")
        with html.Div(classes="d-flex mt-2"):
            v3.VBtn("Start", click=self.start_training, color="primary", variant="tonal", id="train-start",
                    disabled=("train_running || busy",), prepend_icon="mdi-play")
            v3.VBtn("Stop", click=self.stop_training, color="error", variant="tonal", classes="ml-2",
                    id="train-stop", disabled=("!train_running",), prepend_icon="mdi-stop")
        v3.VProgressLinear(model_value=("train_progress",), height=6, classes="mt-2", color="primary",
                           v_show=("train_running || train_progress",))
        html.Div("{{ train_status }}", classes="text-caption mt-1", id="train-status")
        v3.VAlert(v_if=("train_error",), text=("train_error",), type="error", density="compact", classes="mt-2",
                  id="train-error")

    def close(self) -> None:
        """Cancel a running detection and remove the uploads (a training run goes on)."""
        if self._detect_task is not None and not self._detect_task.done():
            self._detect_task.cancel()
        self._detect_task = None
        self.session.close()


STYLE = """
html { overflow-y: hidden; }
.brainldm-view-label { position: absolute; top: 4px; right: 6px; z-index: 2; pointer-events: none;
  color: #eee; font: 12px sans-serif; background: rgba(0, 0, 0, 0.55); padding: 0 5px; border-radius: 3px; }
"""


def check_synth_model_option(synth_model: str | Path | None) -> synth_logic.SynthesisModel | None:
    """The ``--synth-model`` bundle, checked in full before the server starts (None when not given:
    the session then uses the shipped synthesis model, if any)."""
    if synth_model is None or not str(synth_model).strip():
        return None
    try:
        return synth_logic.check_synthesis_model(synth_model)
    except BrainLDMError as error:
        raise BrainLDMError(f"--synth-model {synth_model}: {error}") from error


def serve(port: int = 8080, host: str = "localhost", model: str | None = None, open_browser: bool = False,
          model_dirs: tuple[str | Path, ...] = (), synth_model: str | None = None) -> None:
    """Start the studio server (blocks until it is stopped)."""
    from trame.app import get_server

    if model and not Path(model).expanduser().is_dir():
        raise BrainLDMError(f"--model {model}: no such model bundle folder.")
    synthesis = check_synth_model_option(synth_model)
    for name in ("trame_server", "trame_client", "trame_slicer", "wslink", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)  # trame's per-widget INFO lines drown ours
    server = get_server("brainldm-studio", client_type="vue3")
    app = StudioApp(server, model=model, model_dirs=model_dirs, synth_model=synthesis)
    atexit.register(app.close)  # no upload folder or detection worker left behind

    def terminate(signum, frame):  # SIGTERM (a service manager, the tests) ends the server like Ctrl+C
        raise KeyboardInterrupt

    # installed once serving: starting the server resets SIGTERM to its default (die at once)
    server.controller.on_server_ready.add(lambda **_: signal.signal(signal.SIGTERM, terminate))
    argv = sys.argv
    sys.argv = argv[:1]  # trame parses the command line too: keep our own options away from it
    try:
        app.server.start(port=port, host=host, open_browser=open_browser, timeout=0)
    except KeyboardInterrupt:
        pass
    finally:
        sys.argv = argv
        app.close()


__all__ = ["StudioApp", "check_synth_model_option", "serve"]
