"""Install BrainLDM's Python dependencies at the point of use, never at import time.

Order matters: PyTorch first, through the PyTorch extension (``PyTorchUtils`` picks the
build that fits the GPU and driver), then the bundled core with ``slicer.util.pip_install``
(its other requirements - MONAI, nibabel, scikit-image... - come from PyPI; torch is
already satisfied so pip does not fetch a CUDA wheel of its own).

Where the bundled core is:

* installed extension: ``<qt-scripted-modules>/BrainLDMCore`` (``pyproject.toml`` +
  ``brainldm/`` + ``Resources/models``), copied there by the extension's CMakeLists.txt;
* source checkout (modules added with "Additional module paths"): the repository root,
  installed in editable mode so edits take effect after a module reload.

No Qt here: questions to the user go through the ``confirm(text) -> bool`` callable the
widget passes in.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import sys
from pathlib import Path

#: PyTorch versions the core is tested with (pyproject.toml says the same).
TORCH_REQUIREMENT = ">=2.2,<3"

_THIS_DIR = Path(__file__).resolve().parent          # .../BrainLDMLib
_MODULES_DIR = _THIS_DIR.parent                      # qt-scripted-modules, or BrainLDMSegment/ in a checkout


def coreFolder() -> Path | None:
    """The folder holding the bundled core (``pyproject.toml`` and ``brainldm/``), or None."""
    candidates = [_MODULES_DIR / "BrainLDMCore", _MODULES_DIR.parent, _MODULES_DIR.parent.parent / "BrainLDMCore"]
    for folder in candidates:
        if (folder / "pyproject.toml").is_file() and (folder / "brainldm" / "__init__.py").is_file():
            return folder
    return None


def _isSourceCheckout(folder: Path) -> bool:
    return (folder / "BrainLDMSegment").is_dir() and (folder / "CMakeLists.txt").is_file()


def bundledCoreVersion(folder: Path) -> str | None:
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']",
                      (folder / "brainldm" / "__init__.py").read_text(encoding="utf-8"))
    return match.group(1) if match else None


def modelDirs() -> list[str]:
    """Folders of the models shipped with the extension (for the model catalogue)."""
    folders = []
    core = coreFolder()
    if core is not None:
        folders.append(core / "Resources" / "models")
    folders.append(_MODULES_DIR / "Resources" / "models")
    return [str(f) for f in folders if f.is_dir()]


def pythonSlicerExecutable() -> str:
    """The interpreter for child processes: ``PythonSlicer`` (Slicer's Python with its environment)."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    executable_dir = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = executable_dir / name
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def isCoreImportable() -> bool:
    try:
        importlib.import_module("brainldm")
        return True
    except ImportError:
        return False


def _installedCoreVersion() -> str | None:
    try:
        module = importlib.import_module("brainldm")
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def ensureTorch(confirm=None):
    """Import torch, installing it through the PyTorch extension when missing; returns the module."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        pass
    try:
        import PyTorchUtils  # provided by the PyTorch extension (EXTENSION_DEPENDS)
    except ModuleNotFoundError as error:
        raise RuntimeError("BrainLDM needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                           "restart Slicer and try again.") from error
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if confirm is not None and not confirm("BrainLDM needs PyTorch, which is not installed yet. Install it now? "
                                               "(a download of up to a few GB; it may take several minutes)"):
            raise RuntimeError("PyTorch is required; installation was declined.")
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console for pip's messages.")
        return torch
    return importlib.import_module("torch")


#: Import names of the core's requirements (pyproject.toml), checked before running anything.
CORE_REQUIREMENTS = ("numpy", "scipy", "skimage", "nibabel", "nilearn", "monai", "matplotlib", "tqdm", "yaml")


def missingRequirements() -> list[str]:
    return [name for name in CORE_REQUIREMENTS if importlib.util.find_spec(name) is None]


def importCoreLight():
    """Make the pure-Python parts of the core importable without installing anything.

    Listing models (``brainldm.logic.catalogue``) needs only the standard library, so the
    bundled folder is appended to ``sys.path`` when ``brainldm`` is not installed yet.
    """
    if not isCoreImportable():
        folder = coreFolder()
        if folder is not None and str(folder) not in sys.path:
            sys.path.append(str(folder))
    return importlib.import_module("brainldm")


def ensureCore(confirm=None):
    """Import the ``brainldm`` core, pip-installing the bundled copy when missing, outdated or
    when its requirements are missing."""
    import slicer

    folder = coreFolder()
    wanted = bundledCoreVersion(folder) if folder is not None else None
    installed = _installedCoreVersion()
    if installed is not None and (wanted is None or installed == wanted) and not missingRequirements():
        return importlib.import_module("brainldm")
    if folder is None:
        raise RuntimeError("The BrainLDM core (brainldm package) is not installed and the extension's bundled copy "
                           "was not found. Reinstall the BrainLDM extension.")
    if confirm is not None and not confirm(f"BrainLDM will install its Python core {wanted} and its requirements "
                                           "(MONAI, nibabel, scikit-image, ...) into Slicer's Python. Continue?"):
        raise RuntimeError("The BrainLDM core is required; installation was declined.")
    args = ["--upgrade"] + (["-e", str(folder)] if _isSourceCheckout(folder) else [str(folder)])
    logging.info("Installing BrainLDM core: pip install %s", " ".join(args))
    slicer.util.pip_install(args)
    for name in [m for m in sys.modules if m == "brainldm" or m.startswith("brainldm.")]:
        del sys.modules[name]  # an outdated copy may have been imported
    importlib.invalidate_caches()
    return importlib.import_module("brainldm")


def ensureDependencies(confirm=None):
    """PyTorch, then the core. Raises RuntimeError with a user-facing message when impossible."""
    ensureTorch(confirm)
    return ensureCore(confirm)


def childEnvironment() -> dict[str, str]:
    """Environment additions for child processes (the core importable even when not pip-installed)."""
    folder = coreFolder()
    if folder is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)}
