"""Shared pytest fixtures.

``shared_data``: the folder of real development images (``../shared/data`` beside the repository,
or ``$BRAINLDM_SHARED_DATA``). Tests using it are marked ``@pytest.mark.shared_data`` and are
skipped, with the reason, where the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder, or skip the test when it is not there."""
    configured = os.environ.get("BRAINLDM_SHARED_DATA")
    candidate = Path(configured).expanduser() if configured else REPOSITORY_ROOT.parent / "shared" / "data"
    if not candidate.is_dir():
        pytest.skip(f"shared data folder {candidate} not found; set BRAINLDM_SHARED_DATA")
    return candidate
