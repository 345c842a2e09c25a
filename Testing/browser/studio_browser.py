"""Helpers of the BrainLDM Studio browser tests: the server process, pages, pixels."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 950}
SERVER_START_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               BRAINLDM_HOME=str(home))
    return env


class StudioServer:
    """A ``brainldm studio`` process serving on ``url``; ``log`` holds its output."""

    def __init__(self, folder: Path, model: Path | None, synth_model: Path | None = None):
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = folder / "studio.log"
        command = [sys.executable, "-m", "brainldm.cli", "studio", "--port", str(self.port), "--host", "127.0.0.1"]
        if model is not None:
            command += ["--model", str(model)]
        if synth_model is not None:
            command += ["--synth-model", str(synth_model)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=_child_env(folder / "home"), cwd=str(folder), start_new_session=True)

    def wait_until_serving(self, timeout: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the studio server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the studio server did not serve {self.url} within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


def start_studio(folder: Path, model: Path | None, synth_model: Path | None = None) -> StudioServer:
    server = StudioServer(folder, model, synth_model)
    try:
        server.wait_until_serving()
    except BaseException:
        server.stop()
        raise
    return server


def open_page(browser, url: str):
    """A page on the studio, once its views are on screen."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#make-phantom", timeout=120_000)
    page.wait_for_selector("#view-view_main", timeout=120_000)
    return page


# --------------------------------------------------------------------------------- pixels


def view_locator(page, tag: str):
    """The rendered image of the view whose corner title has id ``view-<tag>``."""
    return page.locator(".layout-grid-item", has=page.locator(f"#view-{tag}")).locator("img.image-display-area")


#: Screenshot style hiding what the page draws over a view's image (corner title, Slicer's gutter).
ONLY_THE_IMAGE = (".layout-grid-item * { visibility: hidden !important; } "
                  ".layout-grid-item img.image-display-area { visibility: visible !important; }")


def view_pixels(page, tag: str, image_only: bool = False, save: Path | None = None) -> np.ndarray:
    """RGB pixels (H, W, 3 uint8) of a view as the browser shows it; with ``image_only`` without the
    widgets drawn over it (the rendered slice alone). ``save``: also write the PNG there."""
    from PIL import Image

    png = view_locator(page, tag).screenshot(animations="disabled", style=ONLY_THE_IMAGE if image_only else None)
    if save is not None:
        save.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def bright_mask(pixels: np.ndarray, level: int = 40) -> np.ndarray:
    """Pixels brighter than ``level`` (H, W bool)."""
    return pixels.max(axis=2) > level


def bright_fraction(pixels: np.ndarray, level: int = 40) -> float:
    """Fraction of pixels brighter than ``level`` (an empty slice view is black)."""
    return float(bright_mask(pixels, level).mean())


def colour_fraction(pixels: np.ndarray, saturation: int = 60) -> float:
    """Fraction of clearly coloured pixels (greyscale MRI has none; overlays and segments do)."""
    p = pixels.astype(np.int16)
    return float(((p.max(axis=2) - p.min(axis=2)) > saturation).mean())


def wait_for_view(page, tag: str, condition, timeout: float = 60.0, what: str = "", capture=None) -> np.ndarray:
    """Poll a view's pixels (``capture(page, tag)``, default :func:`view_pixels`) until
    ``condition(pixels)``; the views render asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        pixels = (capture or view_pixels)(page, tag)
        if condition(pixels):
            return pixels
        if time.monotonic() > deadline:
            raise AssertionError(f"view {tag}: {what or 'condition'} not met within {timeout} s "
                                 f"(bright {bright_fraction(pixels):.3f}, colour {colour_fraction(pixels):.3f})")
        time.sleep(0.5)


def settled_view(page, tag: str, timeout: float = 30.0, image_only: bool = False) -> np.ndarray:
    """A view's pixels once two screenshots 0.5 s apart agree (the picture has stopped changing);
    ``image_only`` as in :func:`view_pixels`."""
    deadline = time.monotonic() + timeout
    previous = view_pixels(page, tag, image_only)
    while True:
        time.sleep(0.5)
        pixels = view_pixels(page, tag, image_only)
        if pixels.shape == previous.shape and np.abs(pixels.astype(int) - previous.astype(int)).mean() < 0.3:
            return pixels
        if time.monotonic() > deadline:
            raise AssertionError(f"view {tag} kept changing for {timeout} s")
        previous = pixels


def wait_for_settled_view(page, tag: str, condition, timeout: float = 60.0, what: str = "") -> np.ndarray:
    """A settled view (:func:`settled_view`) that meets ``condition``, taking settled views until one
    does: under load the stream can show a stale or intermediate frame for a second or more (seen
    on CI), so one settled view that fails is not yet the answer."""
    return wait_for_view(page, tag, condition, timeout, what, capture=lambda p, t: settled_view(p, t, timeout=30.0))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


#: Mean grey-level difference below which two views show the same picture. The server streams views
#: as JPEG, at quality 50 while "interactive" and higher once still, and on a loaded machine a
#: lower-quality frame can stay for seconds: the same content then differs by up to ~3.5 levels on
#: average (measured: the main view's pictures re-encoded at qualities 50-95 differ by 0.1-3.2 from
#: the captured ones), while the main view's states (no overlay, map at opacity 0.5, at 1.0) differ
#: from each other by 12-26 levels. Six sits between the two with a margin either side.
SAME_PICTURE_LEVELS = 6.0


def looks_the_same(a: np.ndarray, b: np.ndarray) -> bool:
    """The same picture, allowing for how the view's image was compressed (:data:`SAME_PICTURE_LEVELS`).

    (A tighter test - the same colour and bright shares within 0.003 and 0.01, the same mean within
    2 levels - took a stale lower-quality frame of the full-opacity overlay for a new picture on a
    1-core CI run: its colour share was 0.004 away and its mean 2.3 levels.)
    """
    return a.shape == b.shape and mean_difference(a, b) < SAME_PICTURE_LEVELS


def picture_stats(pixels: np.ndarray) -> str:
    return f"bright {bright_fraction(pixels):.4f}, colour {colour_fraction(pixels):.4f}, mean {pixels.mean():.2f}"


def brain_coordinates(mask: np.ndarray, brain_pixels: np.ndarray) -> np.ndarray:
    """Centre of the pixels of ``mask`` (H, W bool) relative to the brain's bounding box in the same
    view (bright pixels): (0, 0) top left, (1, 1) bottom right. Views of different sizes show one
    slice at different scales; these coordinates compare them."""
    rows, cols = np.nonzero(bright_mask(brain_pixels))
    if not len(rows) or not mask.any():
        raise AssertionError("no brain or no marked pixels in the view")
    centre = np.argwhere(mask).mean(axis=0)
    low, high = np.array([rows.min(), cols.min()]), np.array([rows.max(), cols.max()])
    return (centre - low) / np.maximum(high - low, 1)


def wait_for_text(page, selector: str, predicate, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        locator = page.locator(selector)
        text = locator.inner_text() if locator.count() else ""
        if predicate(text):
            return text
        errors = page.locator("#studio-error")
        if errors.count():
            raise AssertionError(f"the studio shows an error: {errors.inner_text()}")
        time.sleep(0.25)
    raise AssertionError(f"{selector}: got {text!r} after {timeout} s")


def slider_to(page, box_id: str, key: str) -> None:
    """Move the slider inside ``#box_id`` with the keyboard (``Home``/``End``/arrows)."""
    thumb = page.locator(f"#{box_id} .v-slider-thumb")
    thumb.focus()
    page.keyboard.press(key)


def keep_picture(screenshots: Path, source: Path, name: str) -> None:
    """With $BRAINLDM_DOC_PICTURES set, copy a screenshot there (the README's pictures)."""
    target = os.environ.get("BRAINLDM_DOC_PICTURES")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, Path(target) / name)
