"""Synthesis model bundles: one folder holding everything lesion synthesis (thesis §4.3) needs.

Layout (the same rules as the detection bundles of :mod:`brainldm.nets.bundle`)::

    <bundle>/
      bundle.json              format "brainldm-synthesis-bundle" + version, model id, the
                               configs of the image autoencoder, the mask autoencoder, the
                               denoiser and the conditioning (mechanism G3/G3wide = "concat",
                               G4 = "structural"), preprocessing, both latent scales, noise
                               schedule, training patch size, recommended inference settings,
                               training summary, SHA-256 and size of each weight file
      autoencoder.pt           image first stage (4 sequences)
      mask_autoencoder.pt      mask first stage (2 channels: brain, lesion)
      denoiser.pt              the conditioned denoiser (concat) or the frozen backbone (structural)
      structural_encoder.pt    structural only: the trained structural encoder
      MODEL_CARD.md

:meth:`SynthesisBundle.load` checks the format, version and every checksum before building the
networks, and fails with one :class:`~brainldm.errors.ModelBundleError` saying what is wrong. A
detection bundle given where a synthesis bundle is expected (or the other way round) is named as
such. Bundles are written by :func:`brainldm.train.synthesis.export_synthesis_bundle`.
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

SYNTHESIS_BUNDLE_FORMAT = "brainldm-synthesis-bundle"
#: Version of the synthesis bundle layout; bump when older readers would misread new bundles.
SYNTHESIS_BUNDLE_FORMAT_VERSION = 1

AUTOENCODER_FILE = "autoencoder.pt"
MASK_AUTOENCODER_FILE = "mask_autoencoder.pt"
DENOISER_FILE = "denoiser.pt"
ENCODER_FILE = "structural_encoder.pt"
_DESCRIBED_KEYS = ("format", "format_version", "kind", "model_id", "created", "autoencoder", "mask_autoencoder",
                   "denoiser", "conditioning", "preprocess", "latent_scale", "mask_latent_scale", "schedule",
                   "patch_size", "inference", "training", "files")
_REQUIRED_KEYS = ("model_id", "autoencoder", "mask_autoencoder", "denoiser", "conditioning", "preprocess",
                  "latent_scale", "mask_latent_scale", "schedule")

#: What to tell a user who has no synthesis model (none given and none in Resources/models).
HOW_TO_TRAIN = ("train one with 'brainldm train synthesis --config synth-2d --data SUBJECTS --out RUN' "
                "(phantoms work: 'brainldm phantom --out SUBJECTS --count 24'), then pass --model RUN/bundle")


def weight_files(conditioning: dict[str, Any] | Any) -> tuple[str, ...]:
    mechanism = conditioning.get("mechanism") if isinstance(conditioning, dict) else conditioning.mechanism
    files = (AUTOENCODER_FILE, MASK_AUTOENCODER_FILE, DENOISER_FILE)
    return files + (ENCODER_FILE,) if mechanism == "structural" else files


@dataclass
class SynthesisBundle(BundleCommon):
    """The synthesis networks plus everything needed to use them.

    ``model`` is a :class:`~brainldm.nets.conditioning.ConditionedDenoiser` (``model.denoiser``,
    ``model.encoder``). ``latent_scale`` multiplies image latents, ``mask_latent_scale`` mask
    latents, before diffusion. ``inference`` holds recommended sampling settings.
    """

    autoencoder: torch.nn.Module
    mask_autoencoder: torch.nn.Module
    model: torch.nn.Module
    autoencoder_config: Any
    mask_autoencoder_config: Any
    denoiser_config: Any
    conditioning_config: Any
    preprocess_config: Any
    latent_scale: float
    mask_latent_scale: float
    schedule_config: dict[str, Any]
    model_id: str
    patch_size: tuple[int, ...] = ()
    inference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    format_version: int = SYNTHESIS_BUNDLE_FORMAT_VERSION
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ properties
    @property
    def spatial_dims(self) -> int:
        return int(getattr(self.autoencoder_config, "spatial_dims", 2))

    @property
    def mechanism(self) -> str:
        return self.conditioning_config.mechanism

    def to(self, device: str | torch.device) -> SynthesisBundle:
        for module in (self.autoencoder, self.mask_autoencoder, self.model):
            module.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """The bundle.json contents (without checksums)."""
        return self.common_description(
            SYNTHESIS_BUNDLE_FORMAT, kind="synthesis",
            mask_autoencoder={"config": config_to_dict(self.mask_autoencoder_config)},
            conditioning=config_to_dict(self.conditioning_config),
            mask_latent_scale=float(self.mask_latent_scale),
        )

    # ------------------------------------------------------------------ save
    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the bundle folder (built in a temporary sibling, then moved into place)."""
        modules = {AUTOENCODER_FILE: self.autoencoder, MASK_AUTOENCODER_FILE: self.mask_autoencoder,
                   DENOISER_FILE: self.model.denoiser}
        if self.mechanism == "structural":
            modules[ENCODER_FILE] = self.model.encoder
        self.path = write_bundle_folder(folder, modules, self.model_card or f"# {self.model_id}\n", self.describe(),
                                        overwrite)
        return self.path

    # ------------------------------------------------------------------ load
    @staticmethod
    def read_description(folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Read and check ``bundle.json`` only (no weights are loaded)."""
        return read_bundle_json(Path(folder).expanduser(), SYNTHESIS_BUNDLE_FORMAT, SYNTHESIS_BUNDLE_FORMAT_VERSION, tuple(_REQUIRED_KEYS), "synthesis model",
                                HOW_TO_TRAIN, {BUNDLE_FORMAT: "detection model"})

    @classmethod
    def verify(cls, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Check bundle.json and the presence, size and SHA-256 of every weight file."""
        folder = Path(folder).expanduser()
        description = cls.read_description(folder)
        check_weight_files(folder, weight_files(description["conditioning"]), description.get("files", {}),
                           what="synthesis bundle")
        return description

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu",
             verify: bool = True) -> SynthesisBundle:
        """Load a synthesis bundle onto ``device`` (networks in eval mode, gradients off)."""
        from brainldm.data.preprocess import PreprocessConfig
        from brainldm.nets.autoencoder import build_autoencoder
        from brainldm.nets.conditioning import build_conditioned_denoiser
        from brainldm.nets.config import (
            AutoencoderConfig,
            ConditioningConfig,
            DenoiserConfig,
        )

        folder = Path(folder).expanduser().resolve()
        description = cls.verify(folder) if verify else cls.read_description(folder)
        ae_config = config_from_dict(AutoencoderConfig, description["autoencoder"].get("config"), "autoencoder")
        mask_config = config_from_dict(AutoencoderConfig, description["mask_autoencoder"].get("config"),
                                       "mask autoencoder")
        dn_config = config_from_dict(DenoiserConfig, description["denoiser"].get("config"), "denoiser")
        conditioning = config_from_dict(ConditioningConfig, description["conditioning"], "conditioning")
        pre_config = config_from_dict(PreprocessConfig, description["preprocess"], "preprocessing")
        try:
            latent_scale = float(description["latent_scale"])
            mask_latent_scale = float(description["mask_latent_scale"])
        except (TypeError, ValueError) as error:
            raise ModelBundleError("The synthesis bundle's latent scales are not numbers.") from error
        try:
            autoencoder = build_autoencoder(ae_config)
            mask_autoencoder = build_autoencoder(mask_config)
            model = build_conditioned_denoiser(dn_config, conditioning)
        except Exception as error:
            raise ModelBundleError(f"The networks described by {folder / BUNDLE_FILE} cannot be built with this "
                                   f"BrainLDM version: {error}") from error
        _load_weights(autoencoder, folder / AUTOENCODER_FILE, "autoencoder")
        _load_weights(mask_autoencoder, folder / MASK_AUTOENCODER_FILE, "mask autoencoder")
        _load_weights(model.denoiser, folder / DENOISER_FILE, "denoiser")
        if model.encoder is not None:
            _load_weights(model.encoder, folder / ENCODER_FILE, "structural encoder")
        freeze_for_inference((autoencoder, mask_autoencoder, model), device)
        return cls(
            autoencoder=autoencoder,
            mask_autoencoder=mask_autoencoder,
            model=model,
            autoencoder_config=ae_config,
            mask_autoencoder_config=mask_config,
            denoiser_config=dn_config,
            conditioning_config=conditioning,
            preprocess_config=pre_config,
            latent_scale=latent_scale,
            mask_latent_scale=mask_latent_scale,
            **cls.common_fields(description, folder, _DESCRIBED_KEYS),
        )


def is_synthesis_bundle(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a bundle.json of the synthesis format (nothing else is checked)."""
    return bundle_format(folder) == SYNTHESIS_BUNDLE_FORMAT


__all__ = [
    "HOW_TO_TRAIN",
    "SYNTHESIS_BUNDLE_FORMAT",
    "SYNTHESIS_BUNDLE_FORMAT_VERSION",
    "SynthesisBundle",
    "is_synthesis_bundle",
]
