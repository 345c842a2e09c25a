"""The studio's view layout and what each view shows.

Views (singleton tags): ``view_main`` - axial FLAIR with the chosen map as an overlay, the
segmentations and the painted lesion (painting happens here); ``view_3d`` - the main slice and
the segmentations as surfaces; ``view_in_<seq>`` / ``view_cf_<seq>`` - each sequence beside its healthy
counterfactual or, after Synthesize, its synthetic version (one row per sequence; the right-hand
column's titles follow the state variable ``right_column``).

Which volume goes into which view is display only; the nodes come from the session
(:class:`brainldm.studio.session.StudioSession`), made by ``brainldm.logic``.
"""

from __future__ import annotations

from trame.widgets import html
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from brainldm.data.sequences import SEQUENCES
from brainldm.studio.session import sequence_title

#: Singleton tags double as trame template names: never "main" (the page's own template).
MAIN = "view_main"
THREED = "view_3d"


def input_view(seq: str) -> str:
    return f"view_in_{seq}"


def counterfactual_view(seq: str) -> str:
    return f"view_cf_{seq}"


#: Title shown in each view's corner (also the element id ``view-<tag>`` the browser tests use).
VIEW_TITLES = {MAIN: "FLAIR + overlay", THREED: "3D",
               **{input_view(s): sequence_title(s) for s in SEQUENCES},
               **{counterfactual_view(s): f"{sequence_title(s)} counterfactual" for s in SEQUENCES}}


def studio_layout() -> Layout:
    """Main view over the 3D view on the left; a row per sequence (input | counterfactual) on the right."""
    main = ViewLayoutDefinition.slice_view("Axial", label=MAIN, color="#F34A33")
    threed = ViewLayoutDefinition.threed_view(name=THREED, label="1")
    rows = [Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.slice_view("Axial", label=input_view(s)),
                                                ViewLayoutDefinition.slice_view("Axial", label=counterfactual_view(s))])
            for s in SEQUENCES]
    return Layout(LayoutDirection.Horizontal,
                  [Layout(LayoutDirection.Vertical, [main, threed], flex_sizes=["2", "1"]),
                   Layout(LayoutDirection.Vertical, rows)],
                  flex_sizes=["1", "1"])


#: The right-hand column's views, by tag: their titles say what the column shows.
_RIGHT_COLUMN = {counterfactual_view(s): sequence_title(s) for s in SEQUENCES}


def _label(tag: str) -> None:
    text = f"{_RIGHT_COLUMN[tag]} {{{{ right_column }}}}" if tag in _RIGHT_COLUMN else VIEW_TITLES.get(tag, tag)
    html.Div(text, classes="brainldm-view-label", id=f"view-{tag}")


def slice_view_ui(server, view_id, view) -> None:
    """Corner title on every slice view; the main view also gets Slicer's gutter (reset, 3D, slider)."""
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    tag = view.get_singleton_tag()
    if tag == MAIN:
        create_vertical_slice_view_gutter_ui(server, view_id, view)
    _label(tag)


def threed_view_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    create_vertical_view_gutter_ui(server, view_id, view)
    _label(view.get_singleton_tag())


def _node_id(node) -> str | None:
    return node.GetID() if node is not None and node.GetScene() is not None else None


def show_session(view_manager, session, overlay: str = "anomaly", opacity: float = 0.5, show_3d: bool = True,
                 right_column: str = "counterfactual", fit: bool = False) -> None:
    """Put the session's nodes into the views (background, foreground, segmentations).

    ``right_column`` ("counterfactual" or "synthetic") picks what the views beside the subject's
    sequences show; synthetic sequences get their reference's window and level, so only what the
    synthesis changed looks different."""
    subject = session.subject
    if subject is None:
        return
    main = view_manager.get_view(MAIN)
    threed = view_manager.get_view(THREED)
    main.set_background_volume_id(_node_id(subject.volumes["t2f"]))
    main.set_foreground_volume_id(_node_id(session.overlay_node(overlay)))
    main.set_foreground_opacity(float(opacity))
    beside = session.right_column(right_column)
    for seq in SEQUENCES:
        view = view_manager.get_view(input_view(seq))
        view.set_background_volume_id(_node_id(subject.volumes[seq]))
        view.set_foreground_volume_id(None)
        if right_column == "synthetic" and beside.get(seq) is not None:
            match_window_level(beside[seq], subject.volumes[seq])
        view = view_manager.get_view(counterfactual_view(seq))
        view.set_background_volume_id(_node_id(beside.get(seq)))
        view.set_foreground_volume_id(None)

    main_id, threed_id = main.get_view_node_id(), threed.get_view_node_id()
    synthetic = session.synthetic.nodes.segmentation if session.synthetic is not None else None
    if _node_id(synthetic) is not None and synthetic.GetDisplayNode() is not None:
        synthetic.GetDisplayNode().SetVisibility(False)  # the painted lesion is shown already
    detected = session.outputs.segmentation if session.outputs is not None else None
    for node, fill in ((subject.segmentation, False), (detected, True), (session.lesion, True)):
        if _node_id(node) is None:
            continue
        if show_3d and node is not session.lesion:
            node.CreateClosedSurfaceRepresentation()
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        display.SetViewNodeIDs([main_id, threed_id] if show_3d else [main_id])
        display.SetVisibility2DFill(fill)
        display.SetOpacity2DFill(0.35)
        display.SetVisibility2DOutline(True)
        display.SetVisibility3D(bool(show_3d))
    if fit:
        for view in view_manager.get_views():
            view.reset_view()
        camera = threed.renderer().GetActiveCamera()  # from the front and above: the main slice is seen
        camera.Elevation(35)
        camera.Azimuth(25)
        camera.OrthogonalizeViewUp()
        threed.renderer().ResetCameraClippingRange()
        threed.schedule_render()


def match_window_level(node, reference) -> None:
    """Show ``node`` with ``reference``'s window and level (display only)."""
    source, target = reference.GetDisplayNode(), node.GetDisplayNode()
    if source is None or target is None:
        return
    target.AutoWindowLevelOff()
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())


def fit_right_column(view_manager, offset: float) -> None:
    """Fit the right-hand column's views to their new volumes, on the slice at ``offset`` (mm), so
    they line up with the subject's sequences beside them."""
    for seq in SEQUENCES:
        view = view_manager.get_view(counterfactual_view(seq))
        view.reset_view()
        low, high = view.get_slice_range()
        view.set_slice_value(min(max(float(offset), low), high))


def set_foreground_opacity(view_manager, opacity: float) -> None:
    view_manager.get_view(MAIN).set_foreground_opacity(float(opacity))


def set_slice_offset(view_manager, offset: float) -> None:
    """Move every axial view to the same slice (the views show one grid side by side)."""
    for view in view_manager.get_slice_views():
        low, high = view.get_slice_range()
        view.set_slice_value(min(max(float(offset), low), high))
