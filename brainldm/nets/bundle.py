"""Model bundles: one folder holding everything detection needs from training.

Layout::

    <bundle>/
      bundle.json       format name + version, model id, both networks' configs, the
                        preprocessing config, latent_scale, noise schedule, training patch
                        size, recommended inference settings, training summary, and the
                        SHA-256 and size of each weight file
      autoencoder.pt    first-stage state_dict (torch.save; loaded with weights_only=True)
      denoiser.pt       latent denoiser state_dict (EMA weights when trained with EMA)
      MODEL_CARD.md     what the model is, what it was trained on, how well it does

:meth:`ModelBundle.load` verifies the format version and every weight file's checksum
before building the networks, so a truncated download, a missing file or a bundle from an
incompatible version fails with one :class:`~brainldm.errors.ModelBundleError` that says
what is wrong, never with a deep traceback from ``torch.load`` or ``load_state_dict``.

Bundles are created from finished training runs by
:func:`brainldm.train.export.export_bundle`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brainldm.errors import ModelBundleError

BUNDLE_FORMAT = "brainldm-model-bundle"
#: Version of the bundle layout; bump when a change makes older readers misread new bundles.
BUNDLE_FORMAT_VERSION = 1

BUNDLE_FILE = "bundle.json"
AUTOENCODER_FILE = "autoencoder.pt"
DENOISER_FILE = "denoiser.pt"
MODEL_CARD_FILE = "MODEL_CARD.md"
WEIGHT_FILES = (AUTOENCODER_FILE, DENOISER_FILE)
_DESCRIBED_KEYS = ("format", "format_version", "model_id", "created", "autoencoder", "denoiser", "preprocess",
                   "latent_scale", "schedule", "patch_size", "inference", "training", "files")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    if hasattr(config, "to_dict"):
        return _jsonable(config.to_dict())
    if dataclasses.is_dataclass(config):
        return _jsonable(dataclasses.asdict(config))
    if isinstance(config, dict):
        return _jsonable(config)
    raise TypeError(f"cannot serialise {type(config).__name__}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Rebuild a config dataclass from its stored dict (lists -> tuples where the default is a tuple)."""
    if not isinstance(data, dict):
        raise ModelBundleError(f"The model bundle's {what} configuration is not a mapping.")
    if hasattr(cls, "from_dict"):
        try:
            return cls.from_dict(data)
        except Exception as error:
            raise ModelBundleError(f"The model bundle's {what} configuration is invalid or from an incompatible "
                                   f"BrainLDM version: {error}") from error
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ModelBundleError(f"The model bundle's {what} configuration has settings this BrainLDM does not know "
                               f"({', '.join(unknown)}); it was probably made by a newer version. Update BrainLDM.")
    kwargs = {}
    for key, value in data.items():
        default = names[key].default
        if isinstance(value, list) and (isinstance(default, tuple) or names[key].default_factory is tuple) or isinstance(value, list) and "tuple" in str(names[key].type):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except Exception as error:
        raise ModelBundleError(f"The model bundle's {what} configuration is invalid: {error}") from error


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while True:
            block = stream.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def write_bundle_folder(folder: str | os.PathLike[str], weights: dict[str, torch.nn.Module], model_card: str,
                        description: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a bundle folder atomically: every module's weights (CPU tensors), ``MODEL_CARD.md`` and
    ``bundle.json`` (``description`` plus the size and SHA-256 of each weight file) are built in a
    temporary sibling folder, then moved into place (an existing folder only with ``overwrite``)."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelBundleError(f"{folder} already exists and is not empty; choose another folder or "
                               "allow overwriting.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, module in weights.items():
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, staging / name)
        (staging / MODEL_CARD_FILE).write_text(model_card, encoding="utf-8")
        description = dict(description)
        description["files"] = {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in weights
        }
        (staging / BUNDLE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, backup)
            os.replace(staging, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_bundle_json(folder: Path, fmt: str, version: int, required: tuple[str, ...], what: str, how_to_train: str,
                     other_formats: dict[str, str] | None = None) -> dict[str, Any]:
    """Read and check a bundle folder's ``bundle.json`` (no weights): it exists, is JSON, declares
    ``fmt`` at ``version`` and holds the ``required`` keys; each problem is one clear message.

    ``what`` names the kind of model in messages ("synthesis model", "SR model");
    ``other_formats`` maps other bundle formats to what they are, so a wrong bundle is named.
    """
    if not folder.is_dir():
        raise ModelBundleError(f"{what[0].upper() + what[1:]} folder {folder} does not exist; {how_to_train}.")
    path = folder / "bundle.json"
    if not path.is_file():
        raise ModelBundleError(f"{folder} is not a BrainLDM {what} bundle: bundle.json is missing.")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelBundleError(f"{path} is unreadable or not valid JSON ({error}); the bundle is corrupt - "
                               "export it again.") from error
    kind = description.get("format") if isinstance(description, dict) else None
    for other, name in (other_formats or {}).items():
        if kind == other:
            raise ModelBundleError(f"{folder} is a {name} bundle, not a {what}; {how_to_train}.")
    if kind != fmt:
        raise ModelBundleError(f"{path} does not describe a BrainLDM {what} bundle.")
    found = description.get("format_version")
    if found != version:
        raise ModelBundleError(
            f"The {what} bundle {folder} has format version {found!r}, but this BrainLDM reads version {version}. "
            + ("Update BrainLDM to use it." if isinstance(found, int) and found > version
               else "Export the model again with this BrainLDM version."))
    for key in required:
        if key not in description:
            raise ModelBundleError(f"{path} lacks the entry '{key}'; the bundle is incomplete.")
    return description


def check_weight_files(folder: Path, names, recorded: dict[str, Any], what: str = "model bundle") -> None:
    """Every weight file in ``names`` is present, with the size and SHA-256 ``bundle.json`` records."""
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ModelBundleError(f"The {what} {folder} is incomplete: {name} is missing.")
        expected = recorded.get(name, {})
        size = path.stat().st_size
        if "bytes" in expected and int(expected["bytes"]) != size:
            raise ModelBundleError(
                f"{path} has {size} bytes but the bundle says {expected['bytes']}: the file is truncated or "
                "corrupt. Download or export the bundle again.")
        if "sha256" in expected and sha256_file(path) != expected["sha256"]:
            raise ModelBundleError(f"{path} does not match its checksum in {BUNDLE_FILE}: the file is corrupt. "
                                   "Download or export the bundle again.")


class BundleCommon:
    """What every bundle kind (detection, synthesis, SR) has in common: its noise schedule, its
    first stage's compression, the shared bundle.json entries and the shared parts of loading.

    Subclasses are dataclasses with the fields ``autoencoder``, ``autoencoder_config``,
    ``denoiser_config``, ``preprocess_config``, ``latent_scale``, ``schedule_config``,
    ``model_id``, ``patch_size``, ``inference``, ``training``, ``format_version`` and ``extra``.
    """

    @property
    def schedule(self):
        """The :class:`~brainldm.diffusion.schedule.NoiseSchedule` the denoiser was trained with."""
        # Imported here: the schedule is maths on top of the networks (diffusion layer).
        from brainldm.diffusion.schedule import NoiseSchedule

        return NoiseSchedule.from_config(dict(self.schedule_config))

    @property
    def compression(self) -> int:
        return int(getattr(self.autoencoder, "compression", 1))

    def common_description(self, fmt: str, **entries: Any) -> dict[str, Any]:
        """bundle.json's entries shared by every kind, with ``entries`` (the kind's own, config
        dataclasses already as dicts) placed after ``denoiser``; ``extra`` entries come last and
        cannot replace any of these."""
        described = {
            "format": fmt,
            "format_version": self.format_version,
            "model_id": self.model_id,
            "created": self.training.get("exported", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "autoencoder": {"config": config_to_dict(self.autoencoder_config)},
            "denoiser": {"config": config_to_dict(self.denoiser_config)},
            **entries,
            "preprocess": config_to_dict(self.preprocess_config),
            "latent_scale": float(self.latent_scale),
            "schedule": config_to_dict(self.schedule_config),
            "patch_size": [int(s) for s in self.patch_size],
            "inference": _jsonable(self.inference),
            "training": _jsonable(self.training),
        }
        for key, value in self.extra.items():
            described.setdefault(str(key), _jsonable(value))
        return described

    @staticmethod
    def common_fields(description: dict[str, Any], folder: Path, described_keys: tuple[str, ...]) -> dict[str, Any]:
        """The dataclass fields every kind reads the same way from ``bundle.json`` in ``folder``:
        schedule, model id, patch size, inference, training, model card, format version, path,
        and the entries outside ``described_keys`` as ``extra``."""
        card_path = folder / MODEL_CARD_FILE
        return {
            "schedule_config": dict(description["schedule"]),
            "model_id": str(description["model_id"]),
            "patch_size": tuple(int(s) for s in description.get("patch_size", ())),
            "inference": dict(description.get("inference", {})),
            "training": dict(description.get("training", {})),
            "model_card": card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else "",
            "format_version": int(description["format_version"]),
            "path": folder,
            "extra": {k: v for k, v in description.items() if k not in described_keys},
        }


def freeze_for_inference(modules, device: str | torch.device) -> None:
    """Eval mode, no gradients, on ``device``: how a loaded bundle's networks are used."""
    for module in modules:
        module.eval()
        module.requires_grad_(False)
        module.to(device)


def bundle_format(folder: str | os.PathLike[str]) -> str | None:
    """The ``format`` declared by ``folder``/bundle.json, or None when there is no readable one."""
    path = Path(folder).expanduser() / BUNDLE_FILE
    if not path.is_file():
        return None
    try:
        fmt = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return fmt if isinstance(fmt, str) else None


@dataclass
class ModelBundle(BundleCommon):
    """Both trained networks plus everything needed to use them.

    Attributes
    ----------
    autoencoder, denoiser:
        The first stage (``encode``/``decode``) and the latent denoiser, in eval mode.
    autoencoder_config, denoiser_config:
        Their :mod:`brainldm.nets.config` dataclasses.
    preprocess_config:
        How subjects were cropped and normalised for training (apply the same at inference).
    latent_scale:
        Latents are multiplied by this before diffusion (1 / std of the training latents).
    schedule_config:
        The noise schedule settings (:class:`brainldm.diffusion.schedule.ScheduleConfig` as dict).
    patch_size:
        Training patch size in image voxels (the latent window is ``patch_size / compression``).
    inference:
        Recommended detection settings (steps, guidance, mix...), may be empty.
    training:
        Summary of the training runs (steps, losses, data, dates).
    extra:
        Further top-level bundle.json entries kept as they are (e.g. a catalogue's
        ``"default": true``); they cannot replace the entries above.
    """

    autoencoder: torch.nn.Module
    denoiser: torch.nn.Module
    autoencoder_config: Any
    denoiser_config: Any
    preprocess_config: Any
    latent_scale: float
    schedule_config: dict[str, Any]
    model_id: str
    patch_size: tuple[int, ...] = ()
    inference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    format_version: int = BUNDLE_FORMAT_VERSION
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ properties
    @property
    def spatial_dims(self) -> int:
        return int(getattr(self.autoencoder_config, "spatial_dims", 3))

    @property
    def latent_patch_size(self) -> tuple[int, ...]:
        return tuple(int(s) // self.compression for s in self.patch_size)

    def to(self, device: str | torch.device) -> ModelBundle:
        self.autoencoder.to(device)
        self.denoiser.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """The bundle.json contents (without checksums)."""
        return self.common_description(BUNDLE_FORMAT)

    # ------------------------------------------------------------------ save
    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the bundle folder (built in a temporary sibling, then moved into place)."""
        self.path = write_bundle_folder(folder, {AUTOENCODER_FILE: self.autoencoder, DENOISER_FILE: self.denoiser},
                                        self.model_card or f"# {self.model_id}\n", self.describe(), overwrite)
        return self.path

    # ------------------------------------------------------------------ load
    @staticmethod
    def read_description(folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Read and check ``bundle.json`` only (fast: no weights are loaded)."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ModelBundleError(f"Model bundle folder {folder} does not exist.")
        path = folder / BUNDLE_FILE
        if not path.is_file():
            raise ModelBundleError(f"{folder} is not a BrainLDM model bundle: {BUNDLE_FILE} is missing.")
        try:
            description = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ModelBundleError(f"{path} is unreadable or not valid JSON ({error}); the bundle is corrupt - "
                                   "export or download it again.") from error
        if isinstance(description, dict) and description.get("format") == "brainldm-synthesis-bundle":
            raise ModelBundleError(f"{folder} is a lesion synthesis model bundle, not a detection model; use it with "
                                   "'brainldm synth' or choose a detection model.")
        if not isinstance(description, dict) or description.get("format") != BUNDLE_FORMAT:
            raise ModelBundleError(f"{path} does not describe a BrainLDM model bundle.")
        version = description.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise ModelBundleError(
                f"The model bundle {folder} has format version {version!r}, but this BrainLDM reads version "
                f"{BUNDLE_FORMAT_VERSION}. "
                + ("Update BrainLDM to use it." if isinstance(version, int) and version > BUNDLE_FORMAT_VERSION
                   else "Re-export the model with this BrainLDM version.")
            )
        for key in ("model_id", "autoencoder", "denoiser", "preprocess", "latent_scale", "schedule"):
            if key not in description:
                raise ModelBundleError(f"{path} lacks the entry '{key}'; the bundle is incomplete.")
        return description

    @classmethod
    def verify(cls, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Check bundle.json, presence, size and SHA-256 of every weight file; returns the description."""
        folder = Path(folder).expanduser()
        description = cls.read_description(folder)
        check_weight_files(folder, WEIGHT_FILES, description.get("files", {}))
        return description

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu",
             verify: bool = True) -> ModelBundle:
        """Load a bundle onto ``device`` (networks in eval mode, gradients off)."""
        from brainldm.data.preprocess import PreprocessConfig
        from brainldm.nets.autoencoder import build_autoencoder
        from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
        from brainldm.nets.denoiser import build_denoiser

        folder = Path(folder).expanduser().resolve()
        description = cls.verify(folder) if verify else cls.read_description(folder)
        ae_config = config_from_dict(AutoencoderConfig, description["autoencoder"].get("config"), "autoencoder")
        dn_config = config_from_dict(DenoiserConfig, description["denoiser"].get("config"), "denoiser")
        pre_config = config_from_dict(PreprocessConfig, description["preprocess"], "preprocessing")
        try:
            latent_scale = float(description["latent_scale"])
        except (TypeError, ValueError) as error:
            raise ModelBundleError(f"The bundle's latent_scale {description['latent_scale']!r} is not a number.") \
                from error
        try:
            autoencoder = build_autoencoder(ae_config)
            denoiser = build_denoiser(dn_config)
        except Exception as error:
            raise ModelBundleError(f"The networks described by {folder / BUNDLE_FILE} cannot be built with this "
                                   f"BrainLDM version: {error}") from error
        _load_weights(autoencoder, folder / AUTOENCODER_FILE, "autoencoder")
        _load_weights(denoiser, folder / DENOISER_FILE, "denoiser")
        freeze_for_inference((autoencoder, denoiser), device)
        return cls(
            autoencoder=autoencoder,
            denoiser=denoiser,
            autoencoder_config=ae_config,
            denoiser_config=dn_config,
            preprocess_config=pre_config,
            latent_scale=latent_scale,
            **cls.common_fields(description, folder, _DESCRIBED_KEYS),
        )


def _load_weights(module: torch.nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelBundleError(f"The model bundle is incomplete: {path.name} is missing.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelBundleError(f"The {what} weights {path} cannot be read ({type(error).__name__}); the file is "
                               "truncated or corrupt. Download or export the bundle again.") from error
    if not isinstance(state, dict):
        raise ModelBundleError(f"{path} does not hold {what} weights.")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelBundleError(f"The {what} weights in {path} do not fit the {what} configuration in "
                               f"{BUNDLE_FILE} ({first_line}); the bundle is inconsistent.") from error
