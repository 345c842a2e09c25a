#!/usr/bin/env python
"""Make the 3D Slicer pictures of docs/slicer.md and README.md by running the real code.

Desktop 3D Slicer is not needed (nor installed where these pictures were made). What runs:

* **Results** (``slicer-segment-result.png``, ``slicer-synth-phantom.png``,
  ``slicer-train-status.png``): the modules' Logic (``brainldm.logic.segment``, ``synth``,
  ``train``) on Slicer's real MRML core (``slicer-core`` from ``trame-slicer[standalone]``,
  the same headless scene as ``Testing/slicer/conftest.py``). The slice views are Slicer's
  own: trame-slicer's ``SliceView`` (``vtkMRMLSliceLogic`` and Slicer's displayable managers
  for volumes, segmentations and markups) rendered offscreen with EGL (Mesa llvmpipe) and
  captured without a browser. Only the titles, legends and captions around the views are
  drawn with matplotlib.
  - Segment: a phantom subject (``brainldm.data.phantom``, 20 mm tumour) written as a BraTS
    folder, loaded with *Load subject* (storage nodes), detected in the worker process with
    the shipped default model when ``brainldm.logic.catalogue.default_model()`` finds one,
    otherwise with a tiny **random-weight** model (registered in a private catalogue, N = 10).
    With the default model, its bundle's recommended settings (``bundle.json`` ``inference``)
    are put into the parameter node, as a user would set the sliders; ``--steps`` overrides N.
    The script prints which model it used; rerun it once a default model is installed.
  - Synth: *Make phantom subject* with the tumour centred on a placed point, and a lesion mask
    painted on the reference with the segment editor's paint effect (trame-slicer's, on
    Slicer's segment editor logic).
  - Train: a real background run of the ``tiny`` preset on toy subjects, followed with
    ``training_progress`` like the module's timer, and its curves from
    ``brainldm.train.curves.plot_curves`` (what ``brainldm runs plot RUN`` draws).
* **Module panels** (``slicer-{segment,synth,train}-panel.png``): each module's real ``.ui``
  file loaded with Qt's ``QUiLoader`` (PySide6, ``QT_QPA_PLATFORM=offscreen``). Slicer's own
  widgets (``ctkCollapsibleButton``, ``ctkSliderWidget``, ``qMRMLNodeComboBox``,
  ``qMRMLSegmentEditorWidget``, ...) exist only inside Slicer, so small stand-in classes below
  draw something close. The values shown are those of the runs above (node names, model list,
  the detection summary, the training status formatted as ``BrainLDMTrainWidget`` does).
* ``slicer-segment-overview.png``: the Segment panel beside its result (for README.md).

Requirements (for this docs tool only, not dependencies of ``brainldm``)::

    pip install -e ".[slicer]"      # trame-slicer[standalone]==2.0.0 (slicer-core, vtk 9.6.0)
    pip install PySide6             # Qt for Python: renders the .ui panels
    apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri   # offscreen OpenGL (Debian)

Run from the repository root (each stage runs in its own process; about 11 minutes on a busy
2-core CPU with the random-weight model, most of it detection; a larger model takes longer)::

    OMP_NUM_THREADS=1 python docs/tools/make_slicer_pictures.py
    python docs/tools/make_slicer_pictures.py --only segment,panels --steps 20

Working files (phantom folder, job outputs, training run) go to ``--work``
(default ``$TMPDIR/brainldm-pictures``); ``BRAINLDM_HOME`` is pointed there, so your own
model catalogue is neither read nor changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# Before VTK or Qt is imported: EGL offscreen rendering (Mesa on a CPU), Qt without a display.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[2]
PICTURES = REPO / "docs" / "pictures"
STAGES = ("synth", "segment", "train", "panels")
MAX_PNG_BYTES = 300_000

#: Slice view tiles (pixels) and the look of Slicer's view bars.
TILE = 300
VIEW_COLOURS = {"Red": "#F34A33", "Green": "#6DAD4A", "Yellow": "#EFD64D"}
REFERENCE_COLOUR = (0.2, 0.9, 0.3)  # reference segmentation outline
DETECTED_COLOUR = (1.0, 0.25, 0.1)  # BrainLDM segmentation outline
POINT_COLOUR = (1.0, 0.1, 1.0)  # the lesion centre point
LESION_COLOUR = (0.2, 0.75, 1.0)  # painted lesion mask (not a phantom label colour)

#: The tiny run: the "tiny" preset a little longer, so its curves have a few validation points.
TRAIN_OVERRIDES = "autoencoder.max_steps=120; denoiser.max_steps=120"

PHANTOM_SEGMENT_SEED = 5
PHANTOM_SYNTH_SEED = 7
TUMOUR_POINT_RAS = (-35.0, -15.0, 25.0)  # left hemisphere above the ventricles (as in the tests)
#: A short circular paint stroke in the right hemisphere (centre, radius mm, points) and the brush.
PAINT_STROKE = ((30.0, -15.0, 25.0), 4.0, 12)
PAINT_BRUSH_MM = 12.0


def log(*parts) -> None:
    print("[make_slicer_pictures]", *parts, flush=True)


def write_state(work: Path, stage: str, state: dict) -> None:
    (work / f"state-{stage}.json").write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")


def read_state(work: Path, stage: str) -> dict | None:
    path = work / f"state-{stage}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def save_small_png(image, path: Path) -> Path:
    """Save a PIL image as PNG; reduce to 256 colours when it would exceed MAX_PNG_BYTES."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = image.convert("RGB")
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    log(f"wrote {path.relative_to(REPO)} ({image.width}x{image.height}, {path.stat().st_size // 1024} KB)")
    return path


def figure_to_png(fig, path: Path, dpi: int = 100) -> Path:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    buffer.seek(0)
    return save_small_png(Image.open(buffer), path)


# =============================================================================================
# Slicer's MRML core and slice views, headless
# =============================================================================================


class HeadlessSlicer:
    """A trame-slicer ``SlicerApp`` (real MRML scene and logics) installed as ``slicer.mrmlScene``
    with the small ``slicer.modules`` namespace of ``Testing/slicer/conftest.py``, and offscreen
    slice views created without a browser (``DirectViewFactory``)."""

    def __init__(self):
        import types

        import slicer
        from trame_slicer.core import SlicerApp
        from trame_slicer.views import DirectViewFactory

        self.app = SlicerApp()
        self.scene = self.app.scene
        slicer.mrmlScene = self.scene

        def module(logic):
            return types.SimpleNamespace(logic=lambda: logic)

        slicer.modules = types.SimpleNamespace(volumes=module(self.app.volumes_logic),
                                               segmentations=module(self.app.segmentations_logic),
                                               colors=module(self.app.color_logic))
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.views = {}

    def slice_view(self, name: str, orientation: str):
        from trame_slicer.views import ViewLayoutDefinition

        definition = ViewLayoutDefinition.slice_view(orientation, label=name, color=VIEW_COLOURS.get(name))
        view = self.app.view_manager.create_view(definition)
        view.render_window().SetSize(TILE, TILE)
        view.update_size(TILE, TILE)
        self.views[name] = view
        return view

    @staticmethod
    def frame(view, through_ras=None, zoom: float = 0.0):
        """Fit the view to its background, move the slice through a RAS point, zoom in a little."""
        view.fit_view_to_content()
        if through_ras is not None:
            view.get_view_node().JumpSliceByOffsetting(*map(float, through_ras))
        if zoom:
            view.zoom(zoom)

    @staticmethod
    def capture(view):
        """The rendered view as an RGB ``uint8`` array (rows top to bottom)."""
        import numpy as np
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(view.render_window())
        grab.ReadFrontBufferOff()
        grab.SetInputBufferTypeToRGB()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])


def show_outline(segmentation_node, colour, thickness: int = 2, fill_opacity: float = 0.0) -> None:
    """Show a segmentation in the slice views as an outline of one colour (display settings only)."""
    from brainldm.logic import mrml

    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(fill_opacity > 0)
    display.SetOpacity2DFill(fill_opacity)
    display.SetSliceIntersectionThickness(thickness)
    for segment_id in mrml.segment_ids(segmentation_node):
        display.SetSegmentOverrideColor(segment_id, *colour)


def segment_legend(segmentation_node, names: dict[int, str] | None = None) -> list[tuple[tuple, str]]:
    """``(colour, text)`` of each segment of a segmentation made from a label map."""
    from brainldm.logic import mrml

    entries = []
    for segment_id in mrml.segment_ids(segmentation_node):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        name = segment.GetName()
        value = name.rsplit(" ", 1)[-1]
        if names and value.isdigit() and int(value) in names:
            name = f"{name}: {names[int(value)]}"
        entries.append((tuple(segment.GetColor()), name))
    return entries


def labels_centre_ras(segmentation_node, reference):
    import numpy as np

    from brainldm.logic import mrml

    labels = mrml.labels_from_segmentation(segmentation_node, reference) > 0
    centre = np.argwhere(labels).mean(axis=0)
    return (mrml.ijk_to_ras(reference) @ np.array([*centre, 1.0]))[:3]


def view_title(ax, view: str, orientation: str, text: str) -> None:
    """A bar over a tile in the colour of Slicer's view (Red, Green...)."""
    ax.set_title(f" {view[0]}  {orientation}:  {text} ", loc="left", fontsize=8.5, color="white",
                 backgroundcolor=VIEW_COLOURS.get(view, "#555555"), pad=3)


def tiles_figure(tiles, titles, path: Path, footer: list[str], legend: list[tuple[tuple, str]] = (),
                 columns: int = 2):
    """Compose captured view tiles in a grid with Slicer-like view bars, a legend and footer lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = (len(tiles) + columns - 1) // columns
    width = columns * 3.05 + 0.1
    footer = [wrapped for line in footer for wrapped in textwrap.wrap(line, int(width * 16.5))]
    legend_rows = (len(legend) + 3) // 4 if legend else 0
    footer_height = 0.165 * len(footer) + 0.24 * legend_rows + 0.12
    fig = plt.figure(figsize=(width, rows * 3.28 + footer_height), facecolor="white")
    top = 1.0 - 0.02
    usable = 1.0 - footer_height / fig.get_figheight() - 0.02
    for index, (tile, (view, orientation, text)) in enumerate(zip(tiles, titles)):
        row, column = divmod(index, columns)
        ax = fig.add_axes([0.01 + column * (0.98 / columns), top - (row + 1) * usable / rows,
                           0.98 / columns - 0.01, usable / rows - 0.035])
        ax.imshow(tile)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(VIEW_COLOURS.get(view, "#555555"))
        view_title(ax, view, orientation, text)
    y = footer_height / fig.get_figheight() - 0.01
    if legend:
        handles = [Line2D([0], [0], color=colour, lw=2.5) for colour, _ in legend]
        fig.legend(handles, [label for _, label in legend], loc="upper left", bbox_to_anchor=(0.01, y),
                   ncol=min(4, len(legend)), fontsize=7.8, frameon=False, handlelength=1.4, columnspacing=1.0)
        y -= (0.24 * legend_rows + 0.04) / fig.get_figheight()
    for line in footer:
        fig.text(0.015, y, line, fontsize=7.8, va="top", ha="left", color="#222222")
        y -= 0.165 / fig.get_figheight()
    figure_to_png(fig, path)
    plt.close(fig)


# =============================================================================================
# stage: synth
# =============================================================================================


def stage_synth(work: Path) -> dict:
    import numpy as np
    import vtk
    from trame_slicer.segmentation import SegmentationEffectPaint

    from brainldm.data.phantom import LABEL_NAMES
    from brainldm.logic import mrml, synth

    slicer_core = HeadlessSlicer()
    red = slicer_core.slice_view("Red", "Axial")
    green = slicer_core.slice_view("Green", "Coronal")
    scene = slicer_core.scene

    # The module's inputs: a point list with the lesion centre, then "Make phantom subject".
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion centre")
    points.AddControlPoint(vtk.vtkVector3d(*TUMOUR_POINT_RAS))
    points.CreateDefaultDisplayNodes()
    parameter_node = mrml.get_parameter_node("BrainLDMSynth")
    mrml.write_parameters(parameter_node, synth.SynthParameters(lesion_point=points, diameter_mm=20.0,
                                                                seed=PHANTOM_SYNTH_SEED))
    params = mrml.read_parameters(parameter_node, synth.SynthParameters)
    log(f"synth: making a phantom (seed {params.seed}, {params.diameter_mm:g} mm tumour at {TUMOUR_POINT_RAS} mm)")
    start = time.monotonic()
    nodes = synth.make_phantom_in_scene(params)
    log(f"synth: phantom made in {time.monotonic() - start:.0f} s")
    reference = nodes.volumes["t2f"]
    subject_name = nodes.reference.GetName().rsplit("-", 1)[0]
    params.reference_volume = reference

    # "Paint lesion mask": a new segmentation painted on the reference with the paint effect.
    lesion = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion mask")
    lesion.CreateDefaultDisplayNodes()
    editor = slicer_core.app.segmentation_editor
    editor.set_active_segmentation(lesion, reference)
    segment_id = editor.add_empty_segment(segment_name="lesion", segment_color=list(LESION_COLOUR))
    editor.set_active_effect_type(SegmentationEffectPaint)
    brush = vtk.vtkSphereSource()
    brush.SetRadius(PAINT_BRUSH_MM / 2)
    brush.SetPhiResolution(24)
    brush.SetThetaResolution(24)
    brush.Update()
    stroke = vtk.vtkPoints()
    (cx, cy, cz), radius, count = PAINT_STROKE
    for angle in np.linspace(0.0, 2.0 * np.pi, count, endpoint=False):
        stroke.InsertNextPoint(cx + radius * np.cos(angle), cy + radius * np.sin(angle), cz)
    editor.active_segment_modifier.apply_glyph(brush.GetOutput(), stroke)
    editor.deactivate_effect()  # done painting
    params.lesion_segmentation = lesion
    mrml.write_parameters(parameter_node, params)
    painted = mrml.segment_array(lesion, "lesion", reference)
    log(f"synth: painted lesion mask: {int(painted.sum())} voxels")

    mrml.show_in_slice_views(background=reference)  # what the widget does after Make phantom
    # Half-transparent outlines: here the segmentation is drawn over the markups point.
    phantom_display = nodes.segmentation.GetDisplayNode()
    phantom_display.SetVisibility2DFill(False)
    phantom_display.SetVisibility2DOutline(True)
    phantom_display.SetOpacity2DOutline(0.45)
    phantom_display.SetSliceIntersectionThickness(2)
    lesion_display = lesion.GetDisplayNode()
    lesion_display.SetVisibility2DFill(False)
    lesion_display.SetSliceIntersectionThickness(3)
    point_display = points.GetDisplayNode()
    point_display.SetSelectedColor(*POINT_COLOUR)
    point_display.SetColor(*POINT_COLOUR)
    point_display.SetPointLabelsVisibility(False)
    point_display.SetGlyphScale(2.0)

    tumour_centre = labels_centre_ras(nodes.segmentation, nodes.reference)
    through = (tumour_centre[0], TUMOUR_POINT_RAS[1], TUMOUR_POINT_RAS[2])
    tiles = []
    for view in (red, green):
        slicer_core.frame(view, through, zoom=0.1)
        tiles.append(slicer_core.capture(view))
    status = synth.synthesis_status()
    labels = sorted(int(v) for v in np.unique(mrml.labels_from_segmentation(nodes.segmentation, nodes.reference))
                    if v > 0)
    tiles_figure(
        tiles,
        [("Red", "axial", f"{reference.GetName()}, S {through[2]:.0f} mm"),
         ("Green", "coronal", f"{reference.GetName()}, A {through[1]:.0f} mm")],
        PICTURES / "slicer-synth-phantom.png",
        footer=[(f"Make phantom subject: {subject_name}, seed {params.seed}, {params.diameter_mm:g} mm tumour centred "
                 f"on the placed point {tuple(round(v) for v in TUMOUR_POINT_RAS)} mm (its labels {labels} outlined)."),
                (f"Paint lesion mask: segment 'lesion' of 'lesion mask' painted on {reference.GetName()} "
                 f"(paint effect, {PAINT_BRUSH_MM:g} mm brush, {int(painted.sum())} voxels)."),
                f"Synthesize lesion: disabled ({status.reason})."],
        legend=[(POINT_COLOUR, "lesion centre point")] + segment_legend(nodes.segmentation, LABEL_NAMES)
        + [(LESION_COLOUR, "painted lesion mask")],
    )
    return {
        "subject": subject_name, "reference_volume": reference.GetName(), "lesion_segmentation": lesion.GetName(),
        "lesion_point": points.GetName(), "segment": "lesion", "segment_colour": list(LESION_COLOUR),
        "segment_id": segment_id, "diameter_mm": params.diameter_mm, "seed": params.seed, "healthy": params.healthy,
        "status": f"Loaded {subject_name}: four sequences and its tumour labels.",
        "synthesis_available": status.available, "synthesis_reason": status.reason,
    }


# =============================================================================================
# stage: segment
# =============================================================================================


def tiny_random_bundle(folder: Path) -> Path:
    """An untrained model bundle with tiny networks (as Testing/slicer's ``tiny_bundle``)."""
    import dataclasses

    import torch

    from brainldm.data.preprocess import PreprocessConfig
    from brainldm.diffusion.schedule import ScheduleConfig
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
    from brainldm.nets.denoiser import build_denoiser

    torch.manual_seed(0)
    autoencoder = AutoencoderConfig(kind="kl", channels=(8, 16), latent_channels=2, norm_num_groups=8)
    denoiser = DenoiserConfig(latent_channels=2, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8,
                              num_head_channels=8, position_embedding="coords")
    bundle = ModelBundle(build_autoencoder(autoencoder), build_denoiser(denoiser), autoencoder, denoiser,
                         PreprocessConfig(), 1.0, dataclasses.asdict(ScheduleConfig()), "tiny-random-weights",
                         patch_size=(32, 32, 32))
    return Path(bundle.save(folder / "tiny-random-weights", overwrite=True))


def choose_model(work: Path, steps: int | None) -> dict:
    """The shipped default model when there is one, else a registered tiny random-weight model."""
    from brainldm.logic import catalogue, segment

    entry = catalogue.default_model()
    if entry is not None and entry.available:
        recommended = {}
        try:
            data = json.loads((entry.path / "bundle.json").read_text(encoding="utf-8"))
            recommended = dict(data.get("inference") or {})
        except (OSError, ValueError):
            pass
        settings = {}  # the model's recommendation, as a user would set the sliders
        for key in ("encoder", "steps", "guidance", "mix", "threshold", "mask_brain"):
            if key in recommended:
                settings[key] = recommended[key]
        if steps:
            settings["steps"] = steps
        return {"value": "", "kind": "default", "model_id": entry.model_id, "title": entry.title,
                "path": str(entry.path), "settings": settings,
                "caption": f"the shipped default model {entry.title}"
                           + (f" ({entry.model_id})" if entry.title != entry.model_id else "")}
    bundle = tiny_random_bundle(work / "bundles")
    registered = catalogue.register_model(bundle, title="tiny random weights (docs)", copy=True)
    low, high = segment.STEPS_RANGE
    return {"value": str(registered.path), "kind": "random", "model_id": registered.model_id,
            "title": registered.title, "path": str(registered.path),
            "settings": {"steps": max(low, min(high, steps or low))},
            "caption": "a tiny RANDOM-WEIGHT model (no default model is installed): the maps are noise, "
                       "not a result"}


def stage_segment(work: Path, steps: int | None) -> dict:
    from brainldm.data.phantom import PhantomSpec, make_phantom, write_phantom_subject
    from brainldm.logic import catalogue, mrml, segment

    slicer_core = HeadlessSlicer()
    red = slicer_core.slice_view("Red", "Axial")
    green = slicer_core.slice_view("Green", "Coronal")

    model = choose_model(work, steps)
    log(f"segment: MODEL USED: {model['caption']} [{model['path']}]")

    log(f"segment: writing a phantom subject (seed {PHANTOM_SEGMENT_SEED}, 20 mm tumour) as a BraTS folder")
    subject = make_phantom(PhantomSpec(seed=PHANTOM_SEGMENT_SEED, lesion_diameter_mm=20.0))
    folder = write_phantom_subject(subject, work / "data", png=False)

    # Load subject (storage nodes), then the parameter node as the widget leaves it.
    nodes = segment.load_subject_folder(folder)
    parameter_node = mrml.get_parameter_node("BrainLDMSegment")
    params = segment.SegmentParameters(**nodes.volumes, subject_folder=folder,
                                       reference_segmentation=nodes.segmentation, model=model["value"])
    for key, value in model["settings"].items():
        setattr(params, key, value)
    mrml.write_parameters(parameter_node, params)
    params = mrml.read_parameters(parameter_node, segment.SegmentParameters)
    log(f"segment: detecting ({params.encoder}, N={params.steps}, C={params.guidance:g}, omega={params.mix:g}, "
        f"{params.threshold}) in the worker process ...")

    job = segment.start_detection(params)
    stages = []
    try:
        status = job.poll()
        while not status.done:
            if not stages or stages[-1] != status.stage:
                stages.append(status.stage)
                log(f"segment:   {status.text}")
            time.sleep(1.0)
            status = job.poll()
        if status.state != "finished":
            raise SystemExit(f"detection {status.state}: {status.message}\n{job.read_log()[-3000:]}")
        log(f"segment: detection finished in {status.elapsed_s:.0f} s")
        outputs = segment.add_detection_results(params, job.out_dir)
    finally:
        job.cleanup()
    log(f"segment: {outputs.summary}")

    # Display only: outlines of the reference's whole tumour (all its labels; shown instead of the
    # nested label outlines) and of the result, on the views the logic filled.
    whole = mrml.segmentation_from_labels(mrml.labels_from_segmentation(nodes.segmentation, nodes.reference) > 0,
                                          nodes.reference, f"{nodes.segmentation.GetName()} whole tumour",
                                          segment_names={1: "whole tumour"})
    nodes.segmentation.GetDisplayNode().SetVisibility(False)
    show_outline(whole, REFERENCE_COLOUR)
    show_outline(outputs.segmentation, DETECTED_COLOUR)
    flair = nodes.volumes["t2f"]
    centre = labels_centre_ras(nodes.segmentation, nodes.reference)
    tiles = []
    for view in (red, green):
        slicer_core.frame(view, centre, zoom=0.1)
        tiles.append(slicer_core.capture(view))
    # The counterfactual beside the input: the same axial view with other layers.
    composite = mrml.slice_composite_nodes()
    red_composite = next(c for c in composite if c.GetLayoutName() == "Red")
    red_composite.SetForegroundVolumeID(None)
    for node in (whole, outputs.segmentation):
        node.GetDisplayNode().SetVisibility(False)
    tiles.append(slicer_core.capture(red))
    counterfactual = outputs.counterfactuals["t2f"]
    red_composite.SetBackgroundVolumeID(counterfactual.GetID())
    tiles.append(slicer_core.capture(red))

    metrics = outputs.metrics
    model_line = f"Model: {model['caption']}."
    tiles_figure(
        tiles,
        [("Red", "axial", f"{flair.GetName()} + anomaly map"),
         ("Green", "coronal", f"{flair.GetName()} + anomaly map"),
         ("Red", "axial", f"{flair.GetName()} (input)"),
         ("Red", "axial", counterfactual.GetName())],
        PICTURES / "slicer-segment-result.png",
        footer=[(f"BrainLDM Segment on {folder.name}: {params.encoder.upper()}, N = {params.steps}, "
                 f"C = {params.guidance:g}, omega = {params.mix:g}, {params.threshold} threshold; "
                 f"anomaly map over the FLAIR at opacity {params.overlay_opacity:g} (zero transparent)."),
                (f"Against the reference: Dice {metrics.get('dice', float('nan')):.3f}, sensitivity "
                 f"{metrics.get('sensitivity', float('nan')):.3f}, specificity "
                 f"{metrics.get('specificity', float('nan')):.4f}; detection {status.elapsed_s:.0f} s on a CPU."),
                model_line],
        legend=[(REFERENCE_COLOUR, f"reference: whole tumour of {nodes.segmentation.GetName()}"),
                (DETECTED_COLOUR, outputs.segmentation.GetName())],
    )
    return {
        "model": model, "folder": str(folder), "volumes": {s: n.GetName() for s, n in nodes.volumes.items()},
        "reference": nodes.segmentation.GetName(),
        "params": {k: getattr(params, k) for k in ("encoder", "guidance", "steps", "mix", "threshold", "overlap",
                                                   "mask_brain", "overlay_opacity", "show_counterfactuals",
                                                   "replace_previous_results", "device", "model")},
        "model_choices": catalogue.model_choices(), "summary": outputs.summary, "metrics": metrics,
        "elapsed_s": status.elapsed_s,
    }


# =============================================================================================
# stage: train
# =============================================================================================


def progress_record(progress, seconds: float) -> dict:
    """What BrainLDMTrainWidget.updateProgress shows, from a TrainingProgress."""
    return {
        "seconds": round(seconds, 1), "state": progress.state, "alive": progress.alive, "stage": progress.stage,
        "step": progress.step, "total_steps": progress.total_steps,
        "epoch_text": f"{progress.epoch:.2f}  (step {progress.step}/{progress.total_steps or '?'})",
        "loss_text": "-" if progress.loss is None else f"{progress.loss:.5g}",
        "eta_text": progress.eta_text if progress.alive else "-",
        "percent": round(100 * progress.fraction), "text": progress.text,
        "bundle": str(progress.bundle) if progress.bundle else None,
    }


def stage_train(work: Path) -> dict:
    from brainldm.logic import train as train_logic
    from brainldm.train.curves import plot_curves, read_metrics, summarise_curves
    from brainldm.train.toy import write_toy_dataset

    data = work / "train-data"
    run = work / "runs" / "tiny-demo"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    write_toy_dataset(data, count=4, shape=(48, 48, 48))
    params = train_logic.TrainParameters(data_folder=data, preset="tiny", output_folder=run, stage="all",
                                         model_name="tiny-demo", overrides=TRAIN_OVERRIDES)
    log(f"train: starting a background run of the 'tiny' preset ({TRAIN_OVERRIDES}) on 4 toy subjects ...")
    start = time.monotonic()
    train_logic.start_training(params)
    records = []
    while True:  # the module's timer polls every two seconds
        time.sleep(2.0)
        progress = train_logic.training_progress(run)
        records.append(progress_record(progress, time.monotonic() - start))
        if len(records) % 15 == 1:
            log(f"train:   {progress.text}")
        if not progress.alive and progress.state not in ("starting", "running"):
            break
        if time.monotonic() - start > 3600:
            train_logic.stop_training(run, wait=60)
            raise SystemExit("the tiny training run took more than an hour; stopped it")
    final = records[-1]
    log(f"train: run ended after {final['seconds']:.0f} s: {final['text']}")
    if final["state"] != "finished":
        raise SystemExit(f"training ended as {final['state']}: see {run / 'train.log'}")

    curves_png = plot_curves(run, work / "curves.png", title="tiny run: training curves (brainldm runs plot)")
    summary = summarise_curves(read_metrics(run))
    running = [r for r in records if r["alive"] and r["state"] == "running" and r["step"] > 0]
    middle = next((r for r in running if r["stage"] == "denoiser" and r["percent"] >= 40), None) \
        or (running[len(running) // 2] if running else final)
    status_figure(curves_png, records, middle, final, PICTURES / "slicer-train-status.png")
    return {"data_folder": str(data), "output_folder": str(run), "preset": params.preset, "stage": params.stage,
            "model_name": params.model_name, "overrides": params.overrides,
            "presets": train_logic.available_presets(), "middle": middle,
            "final": final, "summary": summary}


def status_figure(curves_png: Path, records: list[dict], middle: dict, final: dict, path: Path) -> None:
    """The run's curves over a table of what the module showed at some of its polls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    curves = mpimg.imread(str(curves_png))
    height, width = curves.shape[:2]
    picks = [records[0]]
    by_stage = {}
    for record in records:
        if record["alive"] and record["state"] == "running" and record["step"] > 0:
            by_stage.setdefault(record["stage"], []).append(record)
    for stage_records in by_stage.values():
        picks += [stage_records[len(stage_records) // 3], stage_records[(2 * len(stage_records)) // 3]]
    picks.append(final)
    picks = sorted({id(r): r for r in picks}.values(), key=lambda r: r["seconds"])
    rows = [[f"{r['seconds']:.0f} s", r["state"], r["stage"] or "-", r["epoch_text"], r["loss_text"],
             r["eta_text"], f"{r['percent']} %"] for r in picks]
    inch_w = width / 100
    table_h = 0.26 * (len(rows) + 1) + 0.7
    fig = plt.figure(figsize=(inch_w, height / 100 + table_h), facecolor="white")
    ax = fig.add_axes([0, table_h / fig.get_figheight(), 1, 1 - table_h / fig.get_figheight()])
    ax.imshow(curves)
    ax.axis("off")
    tab = fig.add_axes([0.03, 0.02, 0.94, (table_h - 0.6) / fig.get_figheight()])
    tab.axis("off")
    table = tab.table(cellText=rows, colLabels=["polled at", "state", "stage", "Epoch:", "Loss:", "Time left:",
                                                "progress"], loc="center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.15)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        if row == 0:
            cell.set_facecolor("#e8e8e8")
    caption = ("BrainLDMTrain's Progress fields at some of its 2-second polls of the run's status "
               f"(brainldm.logic.train.training_progress). Final status: {final['text']}")
    fig.text(0.03, (table_h - 0.06) / fig.get_figheight(), "\n".join(textwrap.wrap(caption, int(inch_w * 15))),
             fontsize=8, va="top")
    figure_to_png(fig, path)
    plt.close(fig)


# =============================================================================================
# stage: panels (Qt)
# =============================================================================================

PANEL_WIDTH = 520


def stand_in_widgets():
    """Small Qt classes named like Slicer's custom widgets of the .ui files, drawing something close.

    Each takes the properties its .ui entries set (``text``, ``collapsed``, ``minimum``...);
    the rest (``SlicerParameterName``, ``nodeTypes``...) become dynamic properties.
    """
    from PySide6 import QtCore, QtGui, QtWidgets

    Property = QtCore.Property

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class qSlicerWidget(QtWidgets.QWidget):
        pass

    class ctkCollapsibleButton(QtWidgets.QWidget):
        """A button-like header with an arrow; the contents below it in a thin frame."""

        HEADER = 24

        def __init__(self, parent=None):
            super().__init__(parent)
            self._text = ""
            self._collapsed = False
            self.setContentsMargins(8, self.HEADER + 6, 8, 6)

        def getText(self):
            return self._text

        def setText(self, text):
            self._text = text
            self.update()

        text = Property(str, getText, setText)

        def getCollapsed(self):
            return self._collapsed

        def setCollapsed(self, collapsed):
            self._collapsed = bool(collapsed)
            self.apply_collapsed()

        collapsed = Property(bool, getCollapsed, setCollapsed)

        def apply_collapsed(self):
            for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(not self._collapsed)
            if self._collapsed:
                self.setContentsMargins(0, self.HEADER, 0, 0)
                self.setFixedHeight(self.HEADER)
            else:
                self.setContentsMargins(8, self.HEADER + 6, 8, 6)

        def paintEvent(self, event):
            painter = QtWidgets.QStylePainter(self)
            option = QtWidgets.QStyleOptionButton()
            option.initFrom(self)
            option.rect = QtCore.QRect(0, 0, self.width(), self.HEADER)
            option.state |= QtWidgets.QStyle.State_Raised
            painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
            arrow = QtWidgets.QStyleOption()
            arrow.initFrom(self)
            arrow.rect = QtCore.QRect(6, (self.HEADER - 12) // 2, 12, 12)
            painter.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                                  else QtWidgets.QStyle.PE_IndicatorArrowDown, arrow)
            painter.drawText(QtCore.QRect(24, 0, self.width() - 28, self.HEADER),
                             QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft, self._text)
            if not self._collapsed:
                painter.setPen(self.palette().color(QtGui.QPalette.Mid))
                painter.drawRect(0, self.HEADER - 1, self.width() - 1, self.height() - self.HEADER)

    class ctkSliderWidget(QtWidgets.QWidget):
        """A horizontal slider with a spin box, like CTK's."""

        RESOLUTION = 1000

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
            self.slider.setRange(0, self.RESOLUTION)
            self.spin = QtWidgets.QDoubleSpinBox()
            self.spin.setAlignment(QtCore.Qt.AlignRight)
            self.spin.valueChanged.connect(self._sync)
            layout.addWidget(self.slider, 1)
            layout.addWidget(self.spin)

        def _sync(self, value):
            span = self.spin.maximum() - self.spin.minimum()
            self.slider.setValue(round(self.RESOLUTION * (value - self.spin.minimum()) / span) if span else 0)

        def getDecimals(self):
            return self.spin.decimals()

        def setDecimals(self, decimals):
            self.spin.setDecimals(int(decimals))

        decimals = Property(int, getDecimals, setDecimals)

        def getSingleStep(self):
            return self.spin.singleStep()

        def setSingleStep(self, step):
            self.spin.setSingleStep(float(step))

        singleStep = Property(float, getSingleStep, setSingleStep)

        def getPageStep(self):
            return 0.0

        def setPageStep(self, step):
            pass

        pageStep = Property(float, getPageStep, setPageStep)

        def getMinimum(self):
            return self.spin.minimum()

        def setMinimum(self, value):
            self.spin.setMinimum(float(value))
            self._sync(self.spin.value())

        minimum = Property(float, getMinimum, setMinimum)

        def getMaximum(self):
            return self.spin.maximum()

        def setMaximum(self, value):
            self.spin.setMaximum(float(value))
            self._sync(self.spin.value())

        maximum = Property(float, getMaximum, setMaximum)

        def getValue(self):
            return self.spin.value()

        def setValue(self, value):
            self.spin.setValue(float(value))
            self._sync(self.spin.value())

        value = Property(float, getValue, setValue)

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        """A combo box showing a node name."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._flags = {}
            self.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.setMinimumContentsLength(12)
            self.addItem("None")

        def set_node(self, name: str | None) -> None:
            self.clear()
            self.addItem(name or "None")

        def _flag(name):
            return Property(bool, lambda self: self._flags.get(name, False),
                            lambda self, value: self._flags.__setitem__(name, bool(value)))

        showChildNodeTypes = _flag("showChildNodeTypes")
        noneEnabled = _flag("noneEnabled")
        addEnabled = _flag("addEnabled")
        removeEnabled = _flag("removeEnabled")
        renameEnabled = _flag("renameEnabled")
        del _flag

        def getNodeTypes(self):
            return self._flags.get("nodeTypes", [])

        def setNodeTypes(self, types):
            self._flags["nodeTypes"] = list(types)

        nodeTypes = Property("QStringList", getNodeTypes, setNodeTypes)

    class ctkDirectoryButton(QtWidgets.QPushButton):
        """A button with a folder icon and the chosen directory."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._directory = ""
            self.setIcon(self.style().standardIcon(QtWidgets.QStyle.SP_DirIcon))
            self.setStyleSheet("text-align: left; padding: 3px 6px;")
            self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)

        def set_directory(self, path: str) -> None:
            self._directory = path
            self._elide()

        def sizeHint(self):
            return QtCore.QSize(160, super().sizeHint().height())

        def minimumSizeHint(self):
            return self.sizeHint()

        def resizeEvent(self, event):
            super().resizeEvent(event)
            self._elide()

        def _elide(self):
            self.setText(self.fontMetrics().elidedText(self._directory, QtCore.Qt.ElideMiddle,
                                                       max(40, self.width() - 40)))

    def point_icon(size=18) -> QtGui.QIcon:
        pixmap = QtGui.QPixmap(size, size)
        pixmap.fill(QtCore.Qt.transparent)
        painter = QtGui.QPainter(pixmap)
        painter.setRenderHint(QtGui.QPainter.Antialiasing)
        painter.setPen(QtGui.QPen(QtGui.QColor("#b00000"), 1.5))
        painter.setBrush(QtGui.QColor("#ff4040"))
        painter.drawEllipse(QtCore.QPointF(size / 2, size / 2 - 2), size / 4, size / 4)
        painter.drawLine(QtCore.QPointF(size / 2, size / 2 + size / 4 - 2), QtCore.QPointF(size / 2, size - 1))
        painter.end()
        return QtGui.QIcon(pixmap)

    class qSlicerMarkupsPlaceWidget(qSlicerWidget):
        """Place-point and delete buttons."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.setSpacing(2)
            place = QtWidgets.QToolButton()
            place.setIcon(point_icon())
            place.setCheckable(True)
            place.setPopupMode(QtWidgets.QToolButton.MenuButtonPopup)
            place.setMenu(QtWidgets.QMenu(place))
            delete = QtWidgets.QToolButton()
            delete.setIcon(self.style().standardIcon(QtWidgets.QStyle.SP_TrashIcon))
            layout.addWidget(place)
            layout.addWidget(delete)

    class qMRMLSegmentEditorWidget(qMRMLWidget):
        """The parts of Slicer's Segment Editor a user sees: inputs, segment list, effects, options."""

        EFFECTS = ("None", "Paint", "Draw", "Erase", "Level tracing", "Grow from seeds", "Fill between slices",
                   "Margin", "Hollow", "Smoothing", "Scissors", "Islands", "Logical operators", "Mask volume",
                   "Threshold")

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QVBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            form = QtWidgets.QFormLayout()
            self.segmentation = qMRMLNodeComboBox()
            self.source = qMRMLNodeComboBox()
            form.addRow("Segmentation:", self.segmentation)
            form.addRow("Source volume:", self.source)
            layout.addLayout(form)
            buttons = QtWidgets.QHBoxLayout()
            for text in ("Add", "Remove", "Show 3D"):
                button = QtWidgets.QPushButton(text)
                buttons.addWidget(button)
            layout.addLayout(buttons)
            self.table = QtWidgets.QTableWidget(1, 3)
            self.table.setHorizontalHeaderLabels(["", "", "Name"])
            self.table.verticalHeader().setVisible(False)
            self.table.horizontalHeader().setStretchLastSection(True)
            self.table.setColumnWidth(0, 26)
            self.table.setColumnWidth(1, 26)
            self.table.setFixedHeight(58)
            layout.addWidget(self.table)
            grid = QtWidgets.QGridLayout()
            grid.setSpacing(2)
            self.effects = {}
            for index, name in enumerate(self.EFFECTS):
                button = QtWidgets.QToolButton()
                button.setText(name)
                button.setCheckable(True)
                button.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
                grid.addWidget(button, index // 4, index % 4)
                self.effects[name] = button
            for column in range(4):
                grid.setColumnStretch(column, 1)
            layout.addLayout(grid)
            undo = QtWidgets.QHBoxLayout()
            for text in ("Undo", "Redo"):
                undo.addWidget(QtWidgets.QPushButton(text))
            undo.addStretch(1)
            layout.addLayout(undo)
            self.options = QtWidgets.QGroupBox("Paint")
            options = QtWidgets.QFormLayout(self.options)
            self.diameter = ctkSliderWidget()
            self.diameter.setDecimals(1)
            self.diameter.setMinimum(1.0)
            self.diameter.setMaximum(50.0)
            options.addRow("Diameter (mm):", self.diameter)
            sphere = QtWidgets.QCheckBox("Sphere brush")
            sphere.setChecked(True)
            options.addRow("", sphere)
            area = QtWidgets.QComboBox()
            area.addItem("Everywhere")
            options.addRow("Editable area:", area)
            layout.addWidget(self.options)

        def show_state(self, segmentation: str, source: str, segment: str, colour, effect: str,
                       brush_mm: float) -> None:
            self.segmentation.set_node(segmentation)
            self.source.set_node(source)
            visible = QtWidgets.QTableWidgetItem()
            visible.setCheckState(QtCore.Qt.Checked)
            swatch = QtWidgets.QTableWidgetItem()
            swatch.setBackground(QtGui.QColor.fromRgbF(*colour))
            self.table.setItem(0, 0, visible)
            self.table.setItem(0, 1, swatch)
            self.table.setItem(0, 2, QtWidgets.QTableWidgetItem(segment))
            self.effects[effect].setChecked(True)
            self.options.setTitle(effect)
            self.diameter.setValue(brush_mm)

    return [qMRMLWidget, qSlicerWidget, ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox,
            ctkDirectoryButton, qSlicerMarkupsPlaceWidget, qMRMLSegmentEditorWidget]


def load_ui(path: Path):
    """Load a module's .ui file with QUiLoader and the stand-in widgets."""
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    classes = stand_in_widgets()
    for cls in classes:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(path))
    if not file.open(QtCore.QFile.ReadOnly):
        raise SystemExit(f"cannot read {path}")
    widget = loader.load(file)
    file.close()
    if widget is None:
        raise SystemExit(f"QUiLoader could not load {path}: {loader.errorString()}")
    for collapsible in widget.findChildren(QtWidgets.QWidget):
        if type(collapsible).__name__ == "ctkCollapsibleButton":
            collapsible.apply_collapsed()  # "collapsed" is read before the children exist
    return widget


def child(widget, name: str):
    from PySide6 import QtWidgets

    found = widget.findChild(QtWidgets.QWidget, name)
    if found is None:
        raise SystemExit(f"{name} is not in {widget.objectName()}'s .ui file")
    return found


def select_text(combo, items: list[str], current: str) -> None:
    combo.clear()
    combo.addItems(items)
    combo.setCurrentIndex(max(combo.findText(current), 0))


def grab_panel(widget, path: Path):
    """Render the panel at a module-panel width and save it."""
    import numpy as np
    from PIL import Image
    from PySide6 import QtCore, QtGui, QtWidgets

    widget.setAttribute(QtCore.Qt.WA_DontShowOnScreen, True)
    widget.show()
    widget.resize(PANEL_WIDTH, 100)
    QtWidgets.QApplication.processEvents()
    widget.resize(PANEL_WIDTH, widget.layout().heightForWidth(PANEL_WIDTH) if widget.layout().hasHeightForWidth()
                  else widget.sizeHint().height())
    QtWidgets.QApplication.processEvents()
    image = widget.grab().toImage().convertToFormat(QtGui.QImage.Format_RGB888)
    pil = Image.frombuffer("RGB", (image.width(), image.height()), bytes(image.constBits()), "raw", "RGB",
                           image.bytesPerLine(), 1).copy()
    # Crop the empty space the bottom spacer leaves (rows of plain background colour).
    pixels = np.asarray(pil)
    background = pixels[-1, 0]
    used = np.nonzero((np.abs(pixels.astype(int) - background).sum(axis=2) > 0).any(axis=1))[0]
    if used.size:
        pil = pil.crop((0, 0, pil.width, min(pil.height, int(used[-1]) + 10)))
    return save_small_png(pil, path)


def segment_panel(state: dict | None):
    from brainldm.logic import segment

    widget = load_ui(REPO / "BrainLDMSegment" / "Resources" / "UI" / "BrainLDMSegment.ui")
    defaults = segment.SegmentParameters()
    if state:
        volumes, reference, folder = state["volumes"], state["reference"], state["folder"]
        params = state["params"]
        choices = state["model_choices"]
        status, results = "Done.", state["summary"]
    else:  # placeholder names when the segment stage was not run
        volumes = {s: f"BraTS-GLI-00001-000-{s}" for s in ("t1n", "t1c", "t2w", "t2f")}
        reference, folder = "BraTS-GLI-00001-000-seg", "BraTS-GLI-00001-000"
        params = {k: getattr(defaults, k) for k in ("encoder", "guidance", "steps", "mix", "threshold", "overlap",
                                                    "mask_brain", "overlay_opacity", "show_counterfactuals",
                                                    "replace_previous_results", "device", "model")}
        choices, status, results = [["", "default (none installed)"]], "", ""
    child(widget, "subjectFolderButton").set_directory(folder)
    for seq in ("t1n", "t1c", "t2w", "t2f"):
        child(widget, f"{seq}Selector").set_node(volumes[seq])
    child(widget, "referenceSegmentationSelector").set_node(reference)
    model = child(widget, "modelComboBox")
    for value, label in choices:
        model.addItem(label, value)
    model.setCurrentIndex(max(model.findData(params["model"] or ""), 0))
    # The Choice connectors of parameterNodeWrapper fill these with the choices' str().
    select_text(child(widget, "encoderComboBox"), ["edict", "ddim"], params["encoder"])
    select_text(child(widget, "thresholdComboBox"), ["otsu", "graddiff"], params["threshold"])
    select_text(child(widget, "overlapComboBox"), [str(v) for v in segment.OVERLAPS], str(float(params["overlap"])))
    select_text(child(widget, "deviceComboBox"), list(segment.DEVICES), params["device"])
    child(widget, "guidanceSlider").setValue(params["guidance"])
    child(widget, "stepsSlider").setValue(params["steps"])
    child(widget, "mixSlider").setValue(params["mix"])
    child(widget, "opacitySlider").setValue(params["overlay_opacity"])
    child(widget, "maskBrainCheckBox").setChecked(bool(params["mask_brain"]))
    child(widget, "showCounterfactualsCheckBox").setChecked(bool(params["show_counterfactuals"]))
    child(widget, "replacePreviousCheckBox").setChecked(bool(params["replace_previous_results"]))
    child(widget, "detectButton").setEnabled(True)
    child(widget, "progressBar").setVisible(False)  # shown only while a job runs
    child(widget, "statusLabel").setText(status)
    child(widget, "resultsLabel").setText(results)
    return grab_panel(widget, PICTURES / "slicer-segment-panel.png")


def synth_panel(state: dict | None):
    widget = load_ui(REPO / "BrainLDMSynth" / "Resources" / "UI" / "BrainLDMSynth.ui")
    state = state or {"reference_volume": "Phantom-00007-t2f", "lesion_segmentation": "lesion mask",
                      "lesion_point": "lesion centre", "segment": "lesion", "segment_colour": list(LESION_COLOUR),
                      "diameter_mm": 20.0, "seed": PHANTOM_SYNTH_SEED, "healthy": False, "status": "",
                      "synthesis_available": False, "synthesis_reason": "synthesis model not yet available"}
    child(widget, "referenceVolumeSelector").set_node(state["reference_volume"])
    child(widget, "lesionSegmentationSelector").set_node(state["lesion_segmentation"])
    child(widget, "lesionPointSelector").set_node(state["lesion_point"])
    child(widget, "segmentEditorWidget").show_state(state["lesion_segmentation"], state["reference_volume"],
                                                    state["segment"], state["segment_colour"], "Paint",
                                                    PAINT_BRUSH_MM)
    child(widget, "diameterSlider").setValue(state["diameter_mm"])
    child(widget, "seedSpinBox").setValue(int(state["seed"]))
    child(widget, "healthyCheckBox").setChecked(bool(state["healthy"]))
    synthesize = child(widget, "synthesizeButton")
    synthesize.setEnabled(bool(state["synthesis_available"]))
    synthesize.setToolTip(state["synthesis_reason"])
    child(widget, "synthStatusLabel").setText(state["status"])
    return grab_panel(widget, PICTURES / "slicer-synth-panel.png")


def train_panel(state: dict | None):
    from brainldm.logic import train as train_logic

    widget = load_ui(REPO / "BrainLDMTrain" / "Resources" / "UI" / "BrainLDMTrain.ui")
    if state is None:
        state = {"data_folder": "", "output_folder": "", "preset": "cpu-small", "stage": "all", "model_name": "",
                 "presets": train_logic.available_presets(), "middle": None}
    child(widget, "dataFolderButton").set_directory(state["data_folder"])
    child(widget, "outputFolderButton").set_directory(state["output_folder"])
    select_text(child(widget, "presetComboBox"), state["presets"], state["preset"])
    select_text(child(widget, "stageComboBox"), list(train_logic.STAGES), state["stage"])
    child(widget, "modelNameLineEdit").setText(state["model_name"])
    child(widget, "overridesLineEdit").setText(state.get("overrides", ""))  # in the collapsed Advanced section
    # What BrainLDMTrainWidget.updateProgress shows for a poll in the middle of the run.
    middle = state.get("middle")
    running = bool(middle and middle["alive"])
    child(widget, "startButton").setEnabled(not running)
    child(widget, "stopButton").setEnabled(running)
    child(widget, "resumeButton").setEnabled(bool(middle) and not running and middle["state"] in ("stopped",
                                                                                                  "failed"))
    child(widget, "registerButton").setEnabled(bool(middle and middle["bundle"]))
    if middle:
        child(widget, "epochLabel").setText(middle["epoch_text"])
        child(widget, "lossLabel").setText(middle["loss_text"])
        child(widget, "etaLabel").setText(middle["eta_text"])
        child(widget, "trainProgressBar").setValue(middle["percent"])
        child(widget, "trainStatusLabel").setText(middle["text"])
    return grab_panel(widget, PICTURES / "slicer-train-panel.png")


def overview_picture(panel: Path, result: Path, path: Path) -> Path:
    """The Segment panel beside its result (README.md)."""
    from PIL import Image

    left, right = Image.open(panel).convert("RGB"), Image.open(result).convert("RGB")
    height = max(left.height, right.height)
    if right.height != height:
        right = right.resize((round(right.width * height / right.height), height), Image.LANCZOS)
    canvas = Image.new("RGB", (left.width + 12 + right.width, height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 12, (height - right.height) // 2))
    return save_small_png(canvas, path)


def stage_panels(work: Path) -> dict:
    from PySide6 import QtCore, QtGui, QtWidgets

    def quiet(mode, context, message):  # the .ui files connect Slicer's mrmlSceneChanged signal
        if "mrmlSceneChanged" in message or "sender name" in message or "receiver name" in message:
            return
        sys.stderr.write(message + "\n")

    QtCore.qInstallMessageHandler(quiet)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["make_slicer_pictures"])
    app.setStyle("Fusion")
    app.setFont(QtGui.QFont("DejaVu Sans", 9))
    made = {"segment": str(segment_panel(read_state(work, "segment"))),
            "synth": str(synth_panel(read_state(work, "synth"))),
            "train": str(train_panel(read_state(work, "train")))}
    result = PICTURES / "slicer-segment-result.png"
    if result.is_file():
        made["overview"] = str(overview_picture(Path(made["segment"]), result,
                                                PICTURES / "slicer-segment-overview.png"))
    for stage in ("segment", "synth", "train"):
        if read_state(work, stage) is None:
            log(f"panels: no {stage} run in {work}: the {stage} panel shows placeholder values")
    return made


# =============================================================================================
# driver
# =============================================================================================


def run_stage(stage: str, work: Path, args) -> None:
    os.environ["BRAINLDM_HOME"] = str(work / "home")
    if stage == "synth":
        write_state(work, stage, stage_synth(work))
    elif stage == "segment":
        write_state(work, stage, stage_segment(work, args.steps))
    elif stage == "train":
        write_state(work, stage, stage_train(work))
    elif stage == "panels":
        write_state(work, stage, stage_panels(work))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STAGES),
                        help=f"comma-separated stages to run, in this order: {', '.join(STAGES)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="diffusion steps N for Segment (default: the model's recommendation, 10 for the "
                             "random-weight fallback)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "brainldm-pictures",
                        help="working folder (phantom data, job outputs, training run)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage in this process
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    if args.stage:
        run_stage(args.stage, work, args)
        return 0
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(unknown)}")
    for stage in (s for s in STAGES if s in wanted):
        log(f"--- stage {stage}")
        command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--work", str(work)]
        if args.steps:
            command += ["--steps", str(args.steps)]
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, check=False)
        if result.returncode != 0:
            log(f"stage {stage} failed (exit status {result.returncode})")
            return result.returncode
        log(f"--- stage {stage} done in {time.monotonic() - started:.0f} s")
    state = read_state(work, "segment")
    if state:
        log(f"Segment pictures used {state['model']['caption']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
