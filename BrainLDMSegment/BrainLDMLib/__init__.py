"""Helpers shared by the BrainLDM Slicer modules (installed next to them as ``BrainLDMLib``).

Only what must work *before* the bundled ``brainldm`` core is importable lives here:
finding and installing the core and PyTorch at the point of use. Everything else is in
``brainldm.logic``.
"""

from .dependencies import (  # noqa: F401
    coreFolder,
    childEnvironment,
    ensureDependencies,
    importCoreLight,
    isCoreImportable,
    modelDirs,
    pythonSlicerExecutable,
)
