"""Shared pytest fixtures.

``shared_data``: the folder of real development images (``../shared/data`` beside the repository,
or ``$BRAINLDM_SHARED_DATA``). Tests using it are marked ``@pytest.mark.shared_data`` and are
skipped, with the reason, where the folder is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# pytest puts this folder on sys.path to import this file. slicer-core's ``slicer`` meta-package
# imports every module of every ``slicer`` folder on sys.path (pkgutil.extend_path), so our
# Testing/slicer/test_*.py would be imported as ``slicer.test_*`` whenever ``slicer`` is first
# imported - in the middle of importing brainldm.logic, a circular import. Nothing imports from
# this folder by name, so it is taken off again.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if not entry or Path(entry).resolve() != _HERE]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder, or skip the test when it is not there."""
    configured = os.environ.get("BRAINLDM_SHARED_DATA")
    candidate = Path(configured).expanduser() if configured else REPOSITORY_ROOT.parent / "shared" / "data"
    if not candidate.is_dir():
        pytest.skip(f"shared data folder {candidate} not found; set BRAINLDM_SHARED_DATA")
    return candidate
