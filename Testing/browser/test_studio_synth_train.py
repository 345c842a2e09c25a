"""BrainLDM Studio, Synthesize and Train panels, in headless Chromium: paint a lesion with the
segment editor and synthesise it with a real (untrained) synthesis bundle given by --synth-model
(the synthetic sequences appear beside the subject's, changed only where the lesion was painted;
the files land in the session's folder on the reference grid); start, follow and stop a tiny
training run. This module's server starts with --synth-model and without --model."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from studio_browser import (
    brain_coordinates,
    bright_fraction,
    keep_picture,
    settled_view,
    start_studio,
    view_locator,
    view_pixels,
    wait_for_text,
    wait_for_view,
)

from brainldm.data.sequences import SEQUENCES

pytestmark = pytest.mark.browser
expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'brainldm[test]')"
                             ).expect

MAIN = "view_main"
FLAIR_IN, FLAIR_SYNTH = "view_in_t2f", "view_cf_t2f"
SYNTHETIC = [f"view_cf_{s}" for s in SEQUENCES]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, browser_requirements, tiny_synthesis_model):
    server = start_studio(tmp_path_factory.mktemp("studio-synth-train"), model=None,
                          synth_model=tiny_synthesis_model)
    yield server
    server.stop()


def green_mask(pixels) -> np.ndarray:
    """The painted lesion is green (brainldm.studio.session.LESION_COLOUR)."""
    p = pixels.astype(int)
    return (p[..., 1] - p[..., 0] > 40) & (p[..., 1] - p[..., 2] > 40)


def green_fraction(pixels) -> float:
    return float(green_mask(pixels).mean())


def changed_mask(a: np.ndarray, b: np.ndarray, level: int = 25) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2) > level


def test_the_detect_panel_warns_only_without_a_model(page, studio):
    from brainldm.logic.catalogue import default_model

    warning = page.locator("#model-problem")
    if default_model() is not None:  # the shipped model is chosen: nothing to warn about
        page.locator("#detect-button").wait_for()
        assert warning.count() == 0 or not warning.is_visible(), warning.inner_text()
        return
    warning.wait_for()
    assert "No default model is installed" in warning.inner_text()


def paint_stroke(page) -> None:
    """Drag the brush across the main view, left of its centre (inside the phantom's brain)."""
    box = view_locator(page, MAIN).bounding_box()
    x, y = box["x"] + 0.42 * box["width"], box["y"] + 0.45 * box["height"]
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 16):
        page.mouse.move(x + 3 * step, y + 2 * step, steps=2)
    page.mouse.up()


def test_paint_a_lesion_and_synthesize_it(page, studio, tiny_synthesis_model, screenshots):
    page.click("#make-phantom")
    wait_for_text(page, "#subject-name", lambda text: "Phantom-00001" in text, timeout=180)
    wait_for_view(page, MAIN, lambda p: bright_fraction(p) > 0.05, what="the phantom's FLAIR")
    page.click("#tab-synth")
    # the panel says which synthesis model --synth-model loaded, and nothing is missing
    model = page.locator("#synth-model")
    model.wait_for(timeout=30_000)
    assert "untrained-synthesis-concat" in model.inner_text() and str(tiny_synthesis_model) in model.inner_text()
    assert page.locator("#synth-model-problem").count() == 0
    for tag in SYNTHETIC:
        assert bright_fraction(view_pixels(page, tag)) < 0.05, f"{tag} shows a brain before any synthesis"

    page.click("#paint-button")
    wait_for_text(page, "#paint-button", lambda text: "STOP PAINTING" in text.upper(), timeout=30)
    before = view_pixels(page, MAIN, image_only=True)  # the phantom's own labels have a green one too
    paint_stroke(page)
    voxels_text = wait_for_text(page, "#lesion-voxels", lambda text: not text.rstrip().endswith(": 0 voxels"),
                                timeout=30)
    painted_voxels = int(voxels_text.split(":")[1].split()[0])
    assert painted_voxels > 50
    wait_for_view(page, MAIN, lambda p: green_fraction(p) > green_fraction(before) + 0.002,
                  what="the painted lesion in green")
    painted = view_pixels(page, MAIN, image_only=True, save=screenshots / "05-painted-main.png")
    lesion_at = brain_coordinates(green_mask(painted) & ~green_mask(before), painted)

    started = time.monotonic()
    page.click("#synthesize-button")
    message = wait_for_text(page, "#synth-message", lambda text: text.startswith("Synthesised"), timeout=180)
    print(f"synthesis in the browser: {time.monotonic() - started:.1f} s ({message})")
    assert f"({painted_voxels} voxels)" in message and "untrained-synthesis-concat" in message
    assert page.locator("#synth-error").count() == 0

    # PIXELS: the synthetic sequences fill the right-hand column ...
    for tag in SYNTHETIC:
        wait_for_view(page, tag, lambda p: bright_fraction(p) > 0.05, what="a synthetic sequence")
        assert "synthetic" in page.inner_text(f"#view-{tag}")
    # settled pictures: a frame still at the stream's interactive JPEG quality differs at every edge
    original = settled_view(page, FLAIR_IN, image_only=True)
    synthetic = settled_view(page, FLAIR_SYNTH, image_only=True)
    for picture, name in ((original, "05-flair.png"), (synthetic, "05-flair-synthetic.png")):
        Image.fromarray(picture).save(screenshots / name)
    assert original.shape == synthetic.shape
    # ... and differ from the subject's only around the painted lesion: same slice, same brain outside it
    changed = changed_mask(original, synthetic)
    brain = bright_fraction(original)
    assert 0.0005 < changed.mean() < 0.25 * brain, f"changed {changed.mean():.4f} of the view, brain {brain:.3f}"
    synthesised_at = brain_coordinates(changed, synthetic)
    assert np.abs(synthesised_at - lesion_at).max() < 0.12, (synthesised_at, lesion_at)
    shot = screenshots / "05-synthesize.png"
    page.screenshot(path=str(shot))
    keep_picture(screenshots, shot, "studio-synthesize.png")

    # FILES: the synthetic subject in the session's folder, on the reference grid, lesion = painted mask
    folder = Path(page.inner_text("#synth-folder").split("Files:", 1)[1].strip())
    check_synthesis_files(folder, painted_voxels)

    page.click("#paint-button")  # stop painting
    wait_for_text(page, "#paint-button", lambda text: "PAINT LESION" in text.upper(), timeout=30)


def check_synthesis_files(folder: Path, painted_voxels: int) -> None:
    import nibabel as nib

    from brainldm.data.phantom import PhantomSpec, make_phantom

    assert folder.is_dir(), f"no synthesis folder {folder}"
    sid = "Phantom-00001-synth"
    files = {kind: folder / f"{sid}-{kind}.nii.gz" for kind in (*SEQUENCES, "seg")}
    assert all(path.is_file() for path in files.values()), sorted(p.name for p in folder.iterdir())
    reference = make_phantom(PhantomSpec(seed=1, lesion_diameter_mm=20.0))  # the page's phantom, again
    images = {kind: nib.load(str(path)) for kind, path in files.items()}
    for kind, image in images.items():
        assert image.shape == reference.shape, kind
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4, err_msg=kind)
    lesion = np.asarray(images["seg"].dataobj) > 0
    assert int(lesion.sum()) == painted_voxels, "the synthetic subject's lesion is the painted mask"
    lesion_slices = np.flatnonzero(lesion.any(axis=(0, 1)))
    report = json.loads((folder / "synth.json").read_text())
    assert report["lesion"]["voxels"] == painted_voxels and report["model"]["model_id"] == "untrained-synthesis-concat"
    synthesised_everywhere = np.ones(lesion.shape, dtype=bool)
    dilated = np.zeros_like(lesion)
    low, high = np.argwhere(lesion).min(axis=0) - 14, np.argwhere(lesion).max(axis=0) + 15
    dilated[tuple(slice(max(a, 0), b) for a, b in zip(low, high))] = True
    for index, seq in enumerate(SEQUENCES):
        changed = np.abs(np.asarray(images[seq].dataobj, dtype=np.float32) - reference.images[index]) > 1e-3
        assert changed[lesion].mean() > 0.5, f"{seq}: the painted lesion was not synthesised"
        synthesised_everywhere &= changed
        if changed[~dilated].any():
            # Known defect, open in issue 9: in the browser flow the FLAIR (the painted view's volume)
            # can differ from a regenerated phantom away from the lesion before synthesis runs.
            warnings.warn(f"{seq}: {int(changed[~dilated].sum())} voxels far from the painted lesion differ "
                          "from the phantom", stacklevel=1)
    # synthesis writes all four sequences, and only on and near the painted slices
    changed_slices = np.flatnonzero(synthesised_everywhere.any(axis=(0, 1)))
    assert set(changed_slices) <= set(lesion_slices), "slices without the painted lesion were synthesised"
    assert not synthesised_everywhere[~dilated].any(), "voxels far from the painted lesion were synthesised"


def test_start_follow_and_stop_a_tiny_training_run(page, tmp_path, screenshots):
    from brainldm.logic import train as train_logic
    from brainldm.train.toy import write_toy_dataset

    write_toy_dataset(tmp_path / "data", count=3, shape=(32, 32, 32))
    run = tmp_path / "run"
    page.click("#tab-train")
    page.fill("#train-data", str(tmp_path / "data"))
    page.fill("#train-out", str(run))
    page.fill("#train-overrides", "autoencoder.max_steps=100000")  # never finishes before Stop
    page.locator(".v-select:has(#train-preset) .v-field").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    try:
        page.click("#train-start")
        running = wait_for_text(page, "#train-status", lambda text: text.startswith("running") and "step " in text
                                and not text.split("step ")[1].startswith("0/"), timeout=240)
        assert "autoencoder" in running and "loss" in running
        shot = screenshots / "06-training.png"
        page.screenshot(path=str(shot))
        keep_picture(screenshots, shot, "studio-train.png")
        page.click("#train-stop")
        stopped = wait_for_text(page, "#train-status", lambda text: text.startswith("stopped"), timeout=180)
        assert "step" in stopped
        expect(page.locator("#train-start")).to_be_enabled(timeout=60_000)  # once the process has ended
    finally:
        progress = train_logic.training_progress(run) if (run / "status.json").exists() else None
        if progress is not None and progress.alive:
            train_logic.stop_training(run, wait=60)
    assert list(run.rglob("last.pt")), "stopping must leave a checkpoint to resume from"
