"""BrainLDM Studio, Synthesize and Train panels, in headless Chromium: paint a lesion with the
segment editor and synthesise (a clear error until a synthesis model exists); start, follow and
stop a tiny training run. This module's server starts without --model."""

from __future__ import annotations

import pytest
from studio_browser import (
    bright_fraction,
    keep_picture,
    start_studio,
    view_locator,
    view_pixels,
    wait_for_text,
    wait_for_view,
)

pytestmark = pytest.mark.browser
expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'brainldm[test]')"
                             ).expect

MAIN = "view_main"


@pytest.fixture(scope="module")
def studio(tmp_path_factory, browser_requirements):
    server = start_studio(tmp_path_factory.mktemp("studio-synth-train"), model=None)
    yield server
    server.stop()


def green_fraction(pixels) -> float:
    """The painted lesion is green (brainldm.studio.session.LESION_COLOUR)."""
    p = pixels.astype(int)
    return float(((p[..., 1] - p[..., 0] > 40) & (p[..., 1] - p[..., 2] > 40)).mean())


def test_without_a_model_the_detect_panel_says_so(page, studio):
    from brainldm.logic.catalogue import default_model

    if default_model() is not None:
        pytest.skip("a default model is installed: nothing to warn about")
    warning = page.locator("#model-problem")
    warning.wait_for()
    assert "No default model is installed" in warning.inner_text()


def test_paint_a_lesion_then_synthesize_reports_the_missing_model(page, screenshots):
    page.click("#make-phantom")
    wait_for_text(page, "#subject-name", lambda text: "Phantom-00001" in text, timeout=180)
    wait_for_view(page, MAIN, lambda p: bright_fraction(p) > 0.05, what="the phantom's FLAIR")
    page.click("#tab-synth")
    page.click("#paint-button")
    wait_for_text(page, "#paint-button", lambda text: "STOP PAINTING" in text.upper(), timeout=30)
    before = view_pixels(page, MAIN)

    box = view_locator(page, MAIN).bounding_box()
    x, y = box["x"] + 0.42 * box["width"], box["y"] + 0.45 * box["height"]
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 16):
        page.mouse.move(x + 3 * step, y + 2 * step, steps=2)
    page.mouse.up()
    voxels = wait_for_text(page, "#lesion-voxels", lambda text: not text.rstrip().endswith(": 0 voxels"), timeout=30)
    assert int(voxels.split(":")[1].split()[0]) > 50
    wait_for_view(page, MAIN, lambda p: green_fraction(p) > green_fraction(before) + 0.002,
                  what="the painted lesion in green")

    page.click("#synthesize-button")
    error = page.locator("#synth-error")
    error.wait_for(timeout=30_000)
    assert "synthesis model not yet available" in error.inner_text()
    shot = screenshots / "05-synthesize.png"
    page.screenshot(path=str(shot))
    keep_picture(screenshots, shot, "studio-synthesize.png")
    page.click("#paint-button")  # stop painting
    wait_for_text(page, "#paint-button", lambda text: "PAINT LESION" in text.upper(), timeout=30)


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
