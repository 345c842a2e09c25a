"""End-to-end tests of BrainLDM Studio in real headless Chromium (DESIGN.md section 5).

Each test module gets a fresh ``brainldm studio`` server (a subprocess on a free port: trame
state lives in the server process) and one Chromium page driven by Playwright's Python API
with Debian's ``/usr/bin/chromium`` (never a downloaded browser). Views are checked by their
pixels (screenshots of the view elements), not only by the DOM. Screenshots go to
``$BRAINLDM_SCREENSHOTS`` or a pytest temporary folder (its path is printed).

Detection uses an untrained model bundle with the networks of the ``tiny`` training preset
(:func:`brainldm.evaluate.benchmark.untrained_bundle`): real loading, real diffusion, seconds
per run, meaningless maps. Synthesis uses an untrained synthesis bundle
(:func:`brainldm.train.toy.untrained_synthesis_bundle`): real loading, real conditioned DDIM,
noise for tumours.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from studio_browser import CHROMIUM, CHROMIUM_ARGS, open_page


def _requirements() -> str:
    """Why the browser tests cannot run here, or ""."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium; CI runs ci/system-packages.sh)"
    for module, extra in (("playwright", "test"), ("trame_slicer", "studio")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'brainldm[{extra}]')"
    return ""


@pytest.fixture(scope="session")
def browser_requirements():
    reason = _requirements()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    configured = os.environ.get("BRAINLDM_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("studio-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nstudio screenshots: {folder}")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, browser_requirements) -> Path:
    """An untrained model bundle with the ``tiny`` preset's networks (detection in seconds)."""
    from brainldm.evaluate.benchmark import untrained_bundle

    return untrained_bundle("tiny").save(tmp_path_factory.mktemp("model") / "tiny-untrained")


@pytest.fixture(scope="session")
def tiny_synthesis_model(tmp_path_factory, browser_requirements) -> Path:
    """An untrained lesion synthesis bundle with tiny 2D networks (a synthesis in seconds)."""
    from brainldm.train.toy import untrained_synthesis_bundle

    return untrained_synthesis_bundle(tmp_path_factory.mktemp("synth-model") / "synth-untrained", seed=1)


@pytest.fixture(scope="module")
def chromium(browser_requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(chromium, studio):
    """One page per test module on that module's own ``studio`` server (a fresh server per module)."""
    page = open_page(chromium, studio.url)
    yield page
    page.close()
