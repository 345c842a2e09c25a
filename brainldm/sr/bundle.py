"""SR model bundles: one folder holding everything super-resolution needs.

Layout (the rules of the detection bundles of :mod:`brainldm.nets.bundle`)::

    <bundle>/
      bundle.json              format "brainldm-sr-bundle" + version, model id, the configs of the
                               image autoencoder, the denoiser and the structural encoder
                               (conditioning), preprocessing (intensity normalisation), latent
                               scale, noise schedule, scale factor, training patch size, the
                               degradation pipelines trained on, recommended inference settings,
                               training summary, SHA-256 and size of each weight file
      autoencoder.pt           image first stage (the sequences of ``channels``)
      denoiser.pt              SR denoiser
      structural_encoder.pt    its structural encoder (fed the latent of the bicubic-upsampled image)
      MODEL_CARD.md

:meth:`SRBundle.load` checks the format, version and every checksum before building the
networks and fails with one :class:`~brainldm.errors.ModelBundleError` that says what is wrong;
a detection or synthesis bundle given where an SR bundle is expected is named as such. Bundles
are written by :func:`brainldm.train.sr.export_sr_bundle`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brainldm.errors import ModelBundleError
from brainldm.nets.bundle import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    BundleCommon,
    _load_weights,
    bundle_format,
    check_weight_files,
    config_from_dict,
    config_to_dict,
    freeze_for_inference,
    read_bundle_json,
    write_bundle_folder,
)

SR_BUNDLE_FORMAT = "brainldm-sr-bundle"
#: Version of the SR bundle layout; bump when older readers would misread new bundles.
SR_BUNDLE_FORMAT_VERSION = 1

AUTOENCODER_FILE = "autoencoder.pt"
DENOISER_FILE = "denoiser.pt"
ENCODER_FILE = "structural_encoder.pt"
WEIGHT_FILES = (AUTOENCODER_FILE, DENOISER_FILE, ENCODER_FILE)
_DESCRIBED_KEYS = ("format", "format_version", "kind", "model_id", "created", "autoencoder", "denoiser",
                   "conditioning", "preprocess", "latent_scale", "schedule", "scale", "patch_size", "pipelines",
                   "inference", "training", "files")
_REQUIRED_KEYS = ("model_id", "autoencoder", "denoiser", "conditioning", "preprocess", "latent_scale", "schedule",
                  "scale")

#: What to tell a user who has no SR model (none is shipped).
HOW_TO_TRAIN = ("train one with 'brainldm train sr --config cpu-sr --data SUBJECTS --out RUN' (phantoms work: "
                "'brainldm phantom --out SUBJECTS --count 24'), then pass --model RUN/bundle")


@dataclass
class SRBundle(BundleCommon):
    """The SR networks plus everything needed to use them.

    ``model`` is an :class:`~brainldm.sr.model.SRModel`; ``latent_scale`` multiplies latents
    before diffusion; ``scale`` is the resolution factor (2); ``inference`` holds the recommended
    :class:`~brainldm.sr.config.SRInferenceSettings` as a dict.
    """

    autoencoder: torch.nn.Module
    model: torch.nn.Module
    autoencoder_config: Any
    denoiser_config: Any
    conditioning_config: Any
    preprocess_config: Any
    latent_scale: float
    schedule_config: dict[str, Any]
    model_id: str
    scale: float = 2.0
    patch_size: tuple[int, ...] = ()
    pipelines: tuple[str, ...] = ()
    inference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    format_version: int = SR_BUNDLE_FORMAT_VERSION
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ properties
    @property
    def channels(self) -> int:
        return int(self.autoencoder_config.in_channels)

    @property
    def train_strength(self) -> float:
        """The highest SDEdit strength the model was trained for (``sr.denoiser.train_strength``; 1 if unknown)."""
        config = (self.training.get("sr") or {}).get("config") or {}
        try:
            return float(config.get("train_strength", 1.0))
        except (TypeError, ValueError):
            return 1.0

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def inference_settings(self, **changes: Any):
        """The bundle's recommended :class:`~brainldm.sr.config.SRInferenceSettings`, with ``changes``."""
        from brainldm.sr.config import SRInferenceSettings

        known = {k: v for k, v in self.inference.items() if k in SRInferenceSettings.__dataclass_fields__}
        return SRInferenceSettings.from_dict(known).with_changes(**changes)

    def to(self, device: str | torch.device) -> SRBundle:
        self.autoencoder.to(device)
        self.model.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """The bundle.json contents (without checksums)."""
        return self.common_description(
            SR_BUNDLE_FORMAT, kind="super-resolution",
            conditioning=config_to_dict(self.conditioning_config),
            scale=float(self.scale),
            pipelines=list(self.pipelines),
        )

    # ------------------------------------------------------------------ save
    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the bundle folder (built in a temporary sibling, then moved into place)."""
        modules = {AUTOENCODER_FILE: self.autoencoder, DENOISER_FILE: self.model.denoiser,
                   ENCODER_FILE: self.model.encoder}
        self.path = write_bundle_folder(folder, modules, self.model_card or f"# {self.model_id}\n", self.describe(),
                                        overwrite)
        return self.path

    # ------------------------------------------------------------------ load
    @staticmethod
    def read_description(folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Read and check ``bundle.json`` only (no weights are loaded)."""
        return read_bundle_json(Path(folder).expanduser(), SR_BUNDLE_FORMAT, SR_BUNDLE_FORMAT_VERSION, tuple(_REQUIRED_KEYS), "SR model",
                                HOW_TO_TRAIN, {BUNDLE_FORMAT: "detection model", "brainldm-synthesis-bundle": "lesion synthesis model"})

    @classmethod
    def verify(cls, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Check bundle.json and the presence, size and SHA-256 of every weight file."""
        folder = Path(folder).expanduser()
        description = cls.read_description(folder)
        check_weight_files(folder, WEIGHT_FILES, description.get("files", {}), what="SR model bundle")
        return description

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu",
             verify: bool = True) -> SRBundle:
        """Load an SR bundle onto ``device`` (networks in eval mode, gradients off)."""
        from brainldm.data.preprocess import PreprocessConfig
        from brainldm.nets.autoencoder import build_autoencoder
        from brainldm.nets.config import (
            AutoencoderConfig,
            ConditioningConfig,
            DenoiserConfig,
        )
        from brainldm.sr.model import build_sr_model

        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = Path(folder).expanduser().resolve()
        description = cls.verify(folder) if verify else cls.read_description(folder)
        ae_config = config_from_dict(AutoencoderConfig, description["autoencoder"].get("config"), "autoencoder")
        dn_config = config_from_dict(DenoiserConfig, description["denoiser"].get("config"), "denoiser")
        conditioning = config_from_dict(ConditioningConfig, description["conditioning"], "conditioning")
        pre_config = config_from_dict(PreprocessConfig, description["preprocess"], "preprocessing")
        try:
            latent_scale = float(description["latent_scale"])
            scale = float(description["scale"])
        except (TypeError, ValueError) as error:
            raise ModelBundleError("The SR bundle's latent_scale or scale is not a number.") from error
        try:
            autoencoder = build_autoencoder(ae_config)
            model = build_sr_model(dn_config, conditioning)
        except Exception as error:
            raise ModelBundleError(f"The networks described by {folder / BUNDLE_FILE} cannot be built with this "
                                   f"BrainLDM version: {error}") from error
        _load_weights(autoencoder, folder / AUTOENCODER_FILE, "autoencoder")
        _load_weights(model.denoiser, folder / DENOISER_FILE, "denoiser")
        _load_weights(model.encoder, folder / ENCODER_FILE, "structural encoder")
        freeze_for_inference((autoencoder, model), device)
        return cls(
            autoencoder=autoencoder,
            model=model,
            autoencoder_config=ae_config,
            denoiser_config=dn_config,
            conditioning_config=conditioning,
            preprocess_config=pre_config,
            latent_scale=latent_scale,
            scale=scale,
            pipelines=tuple(str(p) for p in description.get("pipelines", ())),
            **cls.common_fields(description, folder, _DESCRIBED_KEYS),
        )


def is_sr_bundle(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a bundle.json of the SR format (nothing else is checked)."""
    return bundle_format(folder) == SR_BUNDLE_FORMAT


__all__ = ["HOW_TO_TRAIN", "SR_BUNDLE_FORMAT", "SR_BUNDLE_FORMAT_VERSION", "SRBundle", "is_sr_bundle"]
