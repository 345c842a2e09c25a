"""The model catalogue: which model bundles a user can pick, and where they are.

Two sources, listed shipped models first:

* **shipped** bundles, one folder per model holding ``bundle.json``, under
  ``<repository>/Resources/models`` (source checkout, Slicer extension) and
  ``<package>/resources/models`` (pip-installed core). A bundle whose ``bundle.json`` says
  ``"default": true`` is the default model; otherwise the first shipped bundle is.
* **user** bundles, registered with :func:`register_model` (trained with the Train module or
  ``brainldm train``) and recorded in a versioned catalogue file
  ``<home>/models/catalogue.json`` where ``<home>`` is ``$BRAINLDM_HOME`` or ``~/.brainldm``.

Listing reads only ``bundle.json`` files (no torch import), so a user interface can show the
catalogue before PyTorch is installed; :func:`register_model` checks the weight files' sizes
and checksums through :meth:`brainldm.nets.bundle.ModelBundle.verify`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from brainldm.errors import BrainLDMError, ModelBundleError

#: Name and version of the catalogue file format (``catalogue.json``).
CATALOGUE_FORMAT = "brainldm-model-catalogue"
CATALOGUE_VERSION = 1

#: What ``bundle.json`` of a model bundle declares as its format (see brainldm.nets.bundle).
_BUNDLE_FORMAT = "brainldm-model-bundle"
_BUNDLE_FILE = "bundle.json"
_SYNTHESIS_FORMAT = "brainldm-synthesis-bundle"  # brainldm.nets.synthesis_bundle


@dataclass
class ModelEntry:
    """One model of the catalogue.

    Attributes
    ----------
    model_id:
        The bundle's ``model_id`` (unique in the catalogue; a user model registered with the id
        of an existing one replaces it).
    path:
        The bundle folder.
    source:
        ``"shipped"`` or ``"user"``.
    title:
        Text for model lists (defaults to the model id).
    bundle_format_version:
        ``format_version`` from ``bundle.json``.
    registered:
        When the model was added to the catalogue (ISO time; empty for shipped models).
    description:
        One line about the model (from ``bundle.json``'s ``description`` or training summary).
    default:
        True for the model used when none is chosen.
    problem:
        Empty when the bundle looks usable, otherwise what is wrong (missing folder, bad JSON).
    """

    model_id: str
    path: Path
    source: str
    title: str = ""
    bundle_format_version: int | None = None
    registered: str = ""
    description: str = ""
    default: bool = False
    problem: str = ""

    @property
    def available(self) -> bool:
        return not self.problem

    @property
    def label(self) -> str:
        """What a model list shows: title, origin and a warning when the bundle is unusable."""
        text = f"{self.title or self.model_id} ({self.source}{', default' if self.default else ''})"
        return text + (f" - unavailable: {self.problem}" if self.problem else "")

    def to_record(self) -> dict:
        record = asdict(self)
        record["path"] = str(self.path)
        for key in ("source", "default", "problem"):
            record.pop(key)
        return record


# ---------------------------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------------------------


def brainldm_home() -> Path:
    """The user folder of BrainLDM: ``$BRAINLDM_HOME`` or ``~/.brainldm``."""
    configured = os.environ.get("BRAINLDM_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".brainldm"


def user_models_dir() -> Path:
    """Where registered (copied) user models and ``catalogue.json`` live."""
    return brainldm_home() / "models"


def catalogue_path() -> Path:
    return user_models_dir() / "catalogue.json"


def shipped_model_dirs(extra_dirs: tuple[str | Path, ...] | list[str | Path] = ()) -> list[Path]:
    """Folders searched for shipped bundles (existing ones only, no duplicates)."""
    package = Path(__file__).resolve().parents[1]
    candidates = [Path(d) for d in extra_dirs]
    candidates += [package.parent / "Resources" / "models", package / "resources" / "models"]
    found: list[Path] = []
    for folder in candidates:
        folder = folder.expanduser()
        if folder.is_dir() and all(folder.resolve() != f.resolve() for f in found):
            found.append(folder)
    return found


def _is_synthesis_bundle(folder: Path) -> bool:
    try:
        return json.loads((folder / _BUNDLE_FILE).read_text(encoding="utf-8")).get("format") == _SYNTHESIS_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def find_synthesis_model(extra_dirs: tuple[str | Path, ...] | list[str | Path] = ()) -> Path | None:
    """A lesion synthesis bundle shipped in the model folders (the first by folder name), or None."""
    for root in shipped_model_dirs(extra_dirs):
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if _is_synthesis_bundle(folder):
                return folder.resolve()
    return None


def resolve_synthesis_model(model: str | Path | None = None, extra_dirs=()) -> Path:
    """The synthesis bundle to use: ``model``, else a shipped one; a :class:`ModelBundleError` saying
    how to train one when there is none."""
    if model is not None and str(model).strip():
        return Path(model).expanduser()
    found = find_synthesis_model(extra_dirs)
    if found is None:
        raise ModelBundleError(
            "No lesion synthesis model is available (none given and none in Resources/models): train one with "
            "'brainldm train synthesis --config synth-2d --data SUBJECTS --out RUN' (phantoms work: 'brainldm "
            "phantom --out SUBJECTS --count 24'), then pass --model RUN/bundle.")
    return found


# ---------------------------------------------------------------------------------------------
# reading bundle descriptions and the catalogue file
# ---------------------------------------------------------------------------------------------


def _read_bundle_json(folder: Path) -> tuple[dict, str]:
    """``(description, problem)`` of a bundle folder; problem is empty when it looks usable."""
    path = folder / _BUNDLE_FILE
    if not folder.is_dir():
        return {}, f"folder {folder} does not exist"
    if not path.is_file():
        return {}, f"{_BUNDLE_FILE} is missing in {folder}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return {}, f"{path} is not readable JSON ({error})"
    if not isinstance(data, dict) or data.get("format") != _BUNDLE_FORMAT:
        return {}, f"{path} does not describe a BrainLDM model bundle"
    if not data.get("model_id"):
        return data, f"{path} has no model_id"
    return data, ""


def _describe(data: dict) -> str:
    if isinstance(data.get("description"), str):
        return data["description"]
    training = data.get("training")
    if isinstance(training, dict):
        for key in ("description", "data", "summary"):
            if isinstance(training.get(key), str):
                return training[key]
    return ""


def _shipped_entries(extra_dirs) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for root in shipped_model_dirs(extra_dirs):
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if not (folder / _BUNDLE_FILE).exists() or _is_synthesis_bundle(folder):
                continue  # lesion synthesis models are listed by find_synthesis_model
            data, problem = _read_bundle_json(folder)
            entries.append(ModelEntry(
                model_id=str(data.get("model_id") or folder.name), path=folder.resolve(), source="shipped",
                title=str(data.get("title") or data.get("model_id") or folder.name),
                bundle_format_version=data.get("format_version"), description=_describe(data),
                default=bool(data.get("default", False)), problem=problem,
            ))
    if entries and not any(e.default for e in entries):
        usable = [e for e in entries if e.available] or entries
        usable[0].default = True
    return entries


def _read_catalogue_file(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BrainLDMError(f"The model catalogue {path} is unreadable ({error}). Fix or delete it; "
                            "registered models can then be registered again.") from error
    if not isinstance(data, dict) or data.get("format") != CATALOGUE_FORMAT:
        raise BrainLDMError(f"{path} is not a BrainLDM model catalogue. Move it away and register the models again.")
    version = data.get("version")
    if not isinstance(version, int) or version > CATALOGUE_VERSION:
        raise BrainLDMError(f"The model catalogue {path} has version {version!r}; this BrainLDM reads version "
                            f"{CATALOGUE_VERSION}. Update BrainLDM.")
    models = data.get("models", [])
    return [m for m in models if isinstance(m, dict) and m.get("model_id") and m.get("path")]


def _write_catalogue_file(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": CATALOGUE_FORMAT, "version": CATALOGUE_VERSION, "models": records}, indent=2) + "\n"
    handle, tmp = tempfile.mkstemp(prefix=".catalogue.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _user_entries() -> list[ModelEntry]:
    entries = []
    for record in _read_catalogue_file(catalogue_path()):
        folder = Path(record["path"]).expanduser()
        data, problem = _read_bundle_json(folder)
        entries.append(ModelEntry(
            model_id=str(record["model_id"]), path=folder, source="user",
            title=str(record.get("title") or record["model_id"]),
            bundle_format_version=data.get("format_version", record.get("bundle_format_version")),
            registered=str(record.get("registered", "")), description=str(record.get("description", "")),
            problem=problem,
        ))
    return entries


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def model_catalogue(extra_dirs: tuple[str | Path, ...] | list[str | Path] = ()) -> list[ModelEntry]:
    """Every known model: shipped bundles first (the default among them), then user models.

    ``extra_dirs`` are more folders holding shipped bundles (e.g. the Slicer extension's own
    ``Resources/models``). User models whose folder vanished are listed with ``problem`` set.
    """
    # A user model registered under a shipped id (e.g. a fine-tuned default) is listed beside the
    # shipped one; the shipped one stays the default, resolve_model(id) picks the user's.
    return _shipped_entries(extra_dirs) + _user_entries()


def default_model(extra_dirs=()) -> ModelEntry | None:
    """The model used when none is chosen (a shipped one), or None when nothing is shipped."""
    for entry in model_catalogue(extra_dirs):
        if entry.default:
            return entry
    return None


def model_choices(extra_dirs=()) -> list[tuple[str, str]]:
    """``(value, label)`` pairs for a model list: ``""`` (the default model) first, then every model.

    The value is what :func:`resolve_model` takes: a shipped model's id, a user model's folder.
    """
    entries = model_catalogue(extra_dirs)
    default = next((e for e in entries if e.default), None)
    first = ("", f"default ({default.title})" if default else "default (none installed)")
    return [first] + [(e.model_id if e.source == "shipped" else str(e.path), e.label) for e in entries]


def resolve_model(model: str | Path | None = None, extra_dirs=()) -> Path:
    """The bundle folder for a catalogue model id, a folder path, or None (the default model)."""
    catalogue = model_catalogue(extra_dirs)
    if model is None or str(model) == "":
        entry = next((e for e in catalogue if e.default), None)
        if entry is None:
            raise ModelBundleError("No default model is installed (Resources/models is empty) and no model was "
                                   "chosen. Train one (brainldm train / the BrainLDMTrain module) or pick a bundle "
                                   "folder.")
        if entry.problem:
            raise ModelBundleError(f"The default model {entry.model_id} is unusable: {entry.problem}.")
        return entry.path
    candidate = Path(str(model)).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    matches = [e for e in catalogue if e.model_id == str(model)]
    if not matches:
        known = ", ".join(e.model_id for e in catalogue) or "none"
        raise ModelBundleError(f"Unknown model {model!r}: it is neither a bundle folder nor a catalogue model id "
                               f"(known models: {known}).")
    entry = matches[-1]  # a user model registered later wins over a shipped one with the same id
    if entry.problem:
        raise ModelBundleError(f"Model {entry.model_id} is unusable: {entry.problem}. Register it again.")
    return entry.path


def register_model(bundle_dir: str | Path, title: str | None = None, copy: bool = False,
                   verify: bool = True) -> ModelEntry:
    """Add a model bundle to the user catalogue and return its entry.

    With ``copy=True`` the bundle is copied to ``<home>/models/<model_id>`` first (so it
    survives deleting the training run). ``verify`` checks the weight files' sizes and
    checksums. Registering a model id again replaces the earlier entry.
    """
    folder = Path(bundle_dir).expanduser().resolve()
    data, problem = _read_bundle_json(folder)
    if problem:
        raise ModelBundleError(f"Cannot register {folder}: {problem}.")
    if verify:
        from brainldm.nets.bundle import ModelBundle  # imports torch: only when registering

        ModelBundle.verify(folder)
    model_id = str(data["model_id"])
    if copy:
        target = user_models_dir() / _safe_folder_name(model_id)
        if target.resolve() != folder:
            staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            if staging.exists():
                shutil.rmtree(staging)
            shutil.copytree(folder, staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        folder = target.resolve()
    entry = ModelEntry(
        model_id=model_id, path=folder, source="user", title=title or str(data.get("title") or model_id),
        bundle_format_version=data.get("format_version"), registered=time.strftime("%Y-%m-%dT%H:%M:%S"),
        description=_describe(data),
    )
    path = catalogue_path()
    records = [r for r in _read_catalogue_file(path) if r.get("model_id") != model_id]
    records.append(entry.to_record())
    _write_catalogue_file(path, records)
    return entry


def unregister_model(model_id: str, delete_files: bool = False) -> bool:
    """Remove a user model from the catalogue (and its copied folder with ``delete_files``)."""
    path = catalogue_path()
    records = _read_catalogue_file(path)
    keep = [r for r in records if r.get("model_id") != model_id]
    if len(keep) == len(records):
        return False
    if delete_files:
        for record in records:
            folder = Path(record["path"]).expanduser()
            if record.get("model_id") == model_id and folder.is_dir() and user_models_dir() in folder.parents:
                shutil.rmtree(folder)
    _write_catalogue_file(path, keep)
    return True


def _safe_folder_name(model_id: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id).strip("._")
    return cleaned or "model"
