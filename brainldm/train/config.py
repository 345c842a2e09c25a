"""Training configuration: typed dataclasses, loaded from YAML presets or files.

A configuration has shared settings (seed, device, precision, preprocessing, split) and
one section per stage::

    name: cpu-small
    seed: 0
    preprocess: {margin: 4, multiple: 16, ...}        # brainldm.data.preprocess.PreprocessConfig
    split: {train: 0.8, val: 0.1, test: 0.1, ...}     # brainldm.data.split.SplitConfig
    autoencoder:                                      # AutoencoderStage
      model: {kind: kl, channels: [16, 32, 64], ...}  # brainldm.nets.config.AutoencoderConfig
      patch_size: [64, 64, 64]
      batch_size: 2
      lr: 1.0e-4
      ...
    denoiser:                                         # DenoiserStage
      model: {channels: [32, 64, 64], position_embedding: coords, ...}
      schedule: {kind: linear, num_train_timesteps: 1000, ...}
      ...
    synthesis:                                        # SynthesisSettings, only in synthesis presets
      conditioning: {mechanism: concat, ...}          # brainldm.nets.config.ConditioningConfig
      mask_autoencoder: {model: {in_channels: 2, ...}, lesion_weight: 10, ...}
      denoiser: {model: {condition_channels: 4, ...}, ...}
    sr:                                               # brainldm.sr.config.SRSettings, only in SR presets
      conditioning: {mechanism: structural, ...}
      denoiser: {model: {...}, patch_size: [64, 64], pipelines: [mri, esrgan], ...}
      inference: {steps: 10, strength: 0.5, overlap: 0.25, ...}

Presets live in ``brainldm/presets/<name>.yaml`` (package data): ``thesis-3d``,
``thesis-2d``, ``cpu-small``, ``default``, ``tiny`` and the lesion synthesis presets
``synth-2d``, ``thesis-synth-2d``, ``thesis-synth-2d-g3wide`` and ``tiny-synth``, and the super-resolution
presets ``tiny-sr``, ``cpu-sr`` and ``thesis-sr``. A preset or file may start with
``extends: <preset>`` to inherit another preset and change only some keys.
:func:`load_config` accepts a preset name, a YAML path or a dict, plus ``key=value``
overrides (``--set autoencoder.lr=3e-5``). Unknown keys raise
:class:`~brainldm.errors.SettingsError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from brainldm.data.preprocess import PreprocessConfig
from brainldm.data.split import SplitConfig
from brainldm.diffusion.schedule import ScheduleConfig
from brainldm.errors import SettingsError
from brainldm.nets.config import (
    AutoencoderConfig,
    ConditioningConfig,
    DenoiserConfig,
    DiscriminatorConfig,
    cpu_mask_kl_2d,
)
from brainldm.sr.config import SRSettings
from brainldm.train.loop_settings import LoopSettings
from brainldm.train.settings import (
    apply_overrides,
    deep_merge,
    from_dict,
    read_yaml,
    to_dict,
)

PRESET_PACKAGE = "brainldm.presets"

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class StageSettings(LoopSettings):
    """Settings shared by the detection and synthesis stages: those of every training loop
    (:class:`~brainldm.train.loop_settings.LoopSettings`: optimiser, loop, checkpoints, stopping,
    ``freeze`` for fine-tuning with ``--init``) and, for 2D models, the stacked sampler: when the
    training volumes (first stage) or latents (denoiser) take at most ``stacked_sampler_mb`` they
    are stacked on the training device and whole batches are drawn at once
    (:mod:`brainldm.train.slice_sampler`, same distribution; 0 = always the per-patch sampler).
    The denoiser's latent patch is ``patch_size / compression``.
    """

    stacked_sampler_mb: float = 2048.0

    def validate_common(self, section: str, spatial_dims: int) -> None:
        self.validate_loop(section, spatial_dims)
        if self.stacked_sampler_mb < 0:
            raise SettingsError(f"{section}.stacked_sampler_mb must be >= 0, got {self.stacked_sampler_mb}.")


@dataclass
class AdversarialSettings:
    """Optional patch-discriminator (hinge) loss of the first stage (Table 3.1/3.2).

    ``weight = 0`` disables it. The generator term starts at ``start_step`` (warm-up with
    L1 + regularisation only); ``lr`` 0 means the stage's ``lr``.
    """

    weight: float = 0.0
    start_step: int = 0
    lr: float = 0.0
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class AutoencoderStage(StageSettings):
    """First-stage training: L1 + regularisation (KL weight, or the VQ commitment loss)
    + optional adversarial loss. Validation reports the mean absolute error inside the
    brain in normalised [-1, 1] units (the early-stopping criterion)."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    kl_weight: float = 1e-6
    vq_weight: float = 1.0
    adversarial: AdversarialSettings = field(default_factory=AdversarialSettings)

    def validate(self) -> None:
        self.validate_common("autoencoder", self.model.spatial_dims)
        c = self.model.compression
        if any(s % c for s in self.patch_size):
            raise SettingsError(f"autoencoder.patch_size {list(self.patch_size)} must be a multiple of the "
                                f"compression {c} in every axis.")
        if self.kl_weight < 0 or self.vq_weight < 0 or self.adversarial.weight < 0:
            raise SettingsError("autoencoder loss weights must be >= 0.")


@dataclass
class DenoiserStage(StageSettings):
    """Latent denoiser training: epsilon-prediction MSE (Eq. 2.31) on latent patches with
    classifier-free label dropout (``label_dropout``, Table 3.2: 0.2).

    Patches are drawn by the healthy-patch distance sampler (§3.3.2) with
    ``diseased_fraction`` diseased patches (0.5 in the thesis), or uniformly
    (``sampler: uniform``, the ablation). ``latent_scale`` null = 1 / std of the training
    latents, computed once and stored with the model.
    """

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_dropout: float = 0.2
    diseased_fraction: float = 0.5
    sampler: Literal["distance", "uniform"] = "distance"
    latent_scale: float | None = None

    def validate(self, autoencoder: AutoencoderConfig) -> None:
        self.validate_common("denoiser", self.model.spatial_dims)
        self.schedule.validate()
        if self.model.spatial_dims != autoencoder.spatial_dims:
            raise SettingsError(f"denoiser.model.spatial_dims ({self.model.spatial_dims}) must equal "
                                f"autoencoder.model.spatial_dims ({autoencoder.spatial_dims}).")
        if self.model.latent_channels != autoencoder.latent_channels:
            raise SettingsError(f"denoiser.model.latent_channels ({self.model.latent_channels}) must equal "
                                f"autoencoder.model.latent_channels ({autoencoder.latent_channels}).")
        c = autoencoder.compression
        if any(s % c for s in self.patch_size):
            raise SettingsError(f"denoiser.patch_size {list(self.patch_size)} must be a multiple of the "
                                f"autoencoder's compression {c}.")
        m = self.model.size_multiple
        latent = [s // c for s in self.patch_size]
        if any(s % m for s in latent):
            raise SettingsError(f"The latent patch {latent} (= denoiser.patch_size / {c}) must be a multiple of "
                                f"{m} (the denoiser's {len(self.model.channels)} levels) in every axis.")
        if not 0.0 <= self.label_dropout <= 1.0 or not 0.0 <= self.diseased_fraction <= 1.0:
            raise SettingsError("denoiser.label_dropout and denoiser.diseased_fraction must be in [0, 1].")
        if self.latent_scale is not None and self.latent_scale <= 0:
            raise SettingsError(f"denoiser.latent_scale must be positive (or null), got {self.latent_scale}.")

    def latent_patch_size(self, compression: int) -> tuple[int, ...]:
        return tuple(int(s) // compression for s in self.patch_size)


@dataclass
class MaskAutoencoderStage(AutoencoderStage):
    """Training of the mask autoencoder of lesion synthesis (thesis §4.3.3, Table B.4).

    It reconstructs the two-channel one-hot (brain, lesion) conditioning mask
    (:func:`brainldm.synth.lesions.conditioning_mask`) of training slices or patches. The thesis
    trains it like the image autoencoder (L1 pixel loss, optional patch discriminator) and notes
    small errors at lesion borders; as small lesions must survive the encoding (§4.3.3: that is why
    the mask gets its own first stage), BrainLDM adds two things the thesis does not state:

    * ``lesion_weight``: the L1 error of lesion voxels (where either the mask or the reconstruction
      marks lesion) counts ``lesion_weight`` times - a 5 mm lesion covers ~20 of ~30 000 voxels of
      a slice and would otherwise barely move the loss;
    * ``small_lesion_fraction``: that fraction of training masks gets a real training lesion
      resized to a random diameter in ``small_lesion_diameters`` (mm) placed in the brain instead
      of its own lesion (:func:`brainldm.synth.lesions.resize_lesion`), so small lesions are seen
      often.

    ``lesion_fraction`` of the training slices (patches in 3D) hold a lesion, the rest only brain.
    """

    model: AutoencoderConfig = field(default_factory=cpu_mask_kl_2d)
    patch_size: tuple[int, ...] = (192, 192)
    lesion_weight: float = 10.0
    lesion_fraction: float = 0.5
    small_lesion_fraction: float = 0.25
    small_lesion_diameters: tuple[float, float] = (3.0, 20.0)

    def validate(self) -> None:
        section = "synthesis.mask_autoencoder"
        self.validate_common(section, self.model.spatial_dims)
        c = self.model.compression
        if any(s % c for s in self.patch_size):
            raise SettingsError(f"{section}.patch_size {list(self.patch_size)} must be a multiple of the compression "
                                f"{c} in every axis.")
        if self.model.in_channels != 2:
            raise SettingsError(f"{section}.model.in_channels must be 2 (brain and lesion channels), got "
                                f"{self.model.in_channels}.")
        if self.model.kind != "kl":
            raise SettingsError(f"{section}.model.kind must be 'kl': the thesis encodes masks with a KL autoencoder.")
        if self.kl_weight < 0 or self.adversarial.weight < 0 or self.lesion_weight < 0:
            raise SettingsError(f"{section}: loss weights must be >= 0.")
        if not 0.0 <= self.lesion_fraction <= 1.0 or not 0.0 <= self.small_lesion_fraction <= 1.0:
            raise SettingsError(f"{section}.lesion_fraction and small_lesion_fraction must be in [0, 1].")
        low, high = self.small_lesion_diameters
        if not 0 < low <= high:
            raise SettingsError(f"{section}.small_lesion_diameters must be [low, high] mm with 0 < low <= high.")


@dataclass
class SynthesisDenoiserStage(DenoiserStage):
    """Training of the lesion-mask conditioned denoiser (G3/G3wide) or of the structural encoder
    beside a frozen denoiser (G4). ``model`` is the conditioned denoiser for ``concat`` and the
    frozen backbone's architecture for ``structural`` (replaced by the backbone actually used).
    ``mask_latent_scale`` null = 1 / std of the training mask latents. ``label_dropout`` is the
    classifier-free dropout of the healthy / diseased label (the mask stays)."""

    model: DenoiserConfig = field(default_factory=lambda: DenoiserConfig(spatial_dims=2, condition_channels=4,
                                                                         position_embedding="none"))
    patch_size: tuple[int, ...] = (192, 192)
    mask_latent_scale: float | None = None

    def validate_synthesis(self, autoencoder: AutoencoderConfig, conditioning: ConditioningConfig) -> None:
        section = "synthesis.denoiser"
        self.validate_common(section, self.model.spatial_dims)
        self.schedule.validate()
        if self.model.spatial_dims != autoencoder.spatial_dims or self.model.latent_channels != autoencoder.latent_channels:
            raise SettingsError(f"{section}.model (spatial_dims {self.model.spatial_dims}, latent_channels "
                                f"{self.model.latent_channels}) must fit the image autoencoder (spatial_dims "
                                f"{autoencoder.spatial_dims}, latent_channels {autoencoder.latent_channels}).")
        c = autoencoder.compression
        if any(s % c for s in self.patch_size):
            raise SettingsError(f"{section}.patch_size {list(self.patch_size)} must be a multiple of the compression {c}.")
        m = self.model.size_multiple
        if any((s // c) % m for s in self.patch_size):
            raise SettingsError(f"The latent patch {[s // c for s in self.patch_size]} (= {section}.patch_size / {c}) "
                                f"must be a multiple of {m} (the denoiser's {len(self.model.channels)} levels).")
        wanted = conditioning.mask_latent_channels if conditioning.mechanism == "concat" else 0
        if self.model.condition_channels != wanted:
            raise SettingsError(
                f"{section}.model.condition_channels must be {wanted} for the '{conditioning.mechanism}' mechanism "
                + ("(the mask latent's channels are concatenated)." if wanted else
                   "(the structural encoder feeds the mask to a denoiser without extra input channels)."))
        if not 0.0 <= self.label_dropout <= 1.0 or not 0.0 <= self.diseased_fraction <= 1.0:
            raise SettingsError(f"{section}.label_dropout and diseased_fraction must be in [0, 1].")
        for name in ("latent_scale", "mask_latent_scale"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"{section}.{name} must be positive (or null), got {value}.")


@dataclass
class SynthesisSettings:
    """The lesion synthesis models (``brainldm train synthesis``, thesis §4.3): the mask
    autoencoder, then the mask-conditioned denoiser (``conditioning.mechanism: concat``, G3/G3wide)
    or the structural encoder beside a frozen denoiser (``structural``, G4; the frozen denoiser is
    the ``denoiser`` section's model, trained first or taken from ``--init BUNDLE``). The image
    autoencoder is the ``autoencoder`` section's."""

    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    mask_autoencoder: MaskAutoencoderStage = field(default_factory=MaskAutoencoderStage)
    denoiser: SynthesisDenoiserStage = field(default_factory=SynthesisDenoiserStage)

    def validate(self, autoencoder: AutoencoderConfig) -> None:
        self.mask_autoencoder.validate()
        mask = self.mask_autoencoder.model
        if mask.spatial_dims != autoencoder.spatial_dims or mask.compression != autoencoder.compression:
            raise SettingsError(
                f"The mask autoencoder ({mask.spatial_dims}D, compression {mask.compression}) must match the image "
                f"autoencoder ({autoencoder.spatial_dims}D, compression {autoencoder.compression}) so that both "
                "latents share one grid; change synthesis.mask_autoencoder.model.channels.")
        if mask.latent_channels != self.conditioning.mask_latent_channels:
            raise SettingsError(f"synthesis.conditioning.mask_latent_channels ({self.conditioning.mask_latent_channels}) "
                                f"must equal synthesis.mask_autoencoder.model.latent_channels ({mask.latent_channels}).")
        self.denoiser.validate_synthesis(autoencoder, self.conditioning)


@dataclass
class TrainingConfig:
    """Everything that defines a training run (saved as ``<run>/config.yaml``).

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
    ``precision``: ``auto`` = CUDA mixed precision (bf16 when supported, else fp16 with
    gradient scaling) and fp32 on the CPU; ``bf16`` on the CPU is allowed but off by default.
    ``num_threads`` > 0 sets torch's CPU threads. ``max_subjects`` > 0 uses only the first
    subjects (quick trials). ``cache`` keeps preprocessed subjects and latents as ``.npy``
    files (memory-mapped, so data sets larger than RAM work) in ``cache_dir``, or in
    ``<run>/cache`` when it is empty; several runs on the same data may share one cache folder
    (entries are keyed by the source files, the preprocessing and the first stage).
    """

    name: str = "custom"
    description: str = ""
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    num_threads: int = 0
    max_subjects: int = 0
    cache: bool = True
    cache_dir: str = ""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    autoencoder: AutoencoderStage = field(default_factory=AutoencoderStage)
    denoiser: DenoiserStage = field(default_factory=DenoiserStage)
    synthesis: SynthesisSettings | None = None
    sr: SRSettings | None = None  # super-resolution (brainldm train sr; brainldm.sr.config)

    def validate(self) -> TrainingConfig:
        self.autoencoder.validate()
        self.denoiser.validate(self.autoencoder.model)
        if self.synthesis is not None:
            self.synthesis.validate(self.autoencoder.model)
        if self.sr is not None:
            self.sr.validate(self.autoencoder.model)
        if self.precision == "fp16" and not self.device.startswith("cuda") and self.device != "auto":
            raise SettingsError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: Path) -> None:
        from brainldm.train.rundir import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())


# --------------------------------------------------------------------------- loading


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a preset, with ``extends`` resolved."""
    if name in _seen:
        raise SettingsError(f"Presets extend each other in a loop: {' -> '.join((*_seen, name))}.")
    path = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
    if not path.is_file():
        raise SettingsError(f"Unknown training preset {name!r}. Available presets: {', '.join(list_presets())}; "
                            "or give the path of a YAML file.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return _resolve_extends(data, (*_seen, name))


def _resolve_extends(data: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SettingsError("A training configuration must be a mapping of settings.")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SettingsError(f"'extends' must name a preset, got {parent!r}.")
    return deep_merge(preset_dict(parent, seen), data)


def load_config(
    source: str | Path | dict[str, Any] | TrainingConfig | None = None,
    overrides: list[str] | tuple[str, ...] | None = None,
) -> TrainingConfig:
    """Build a validated :class:`TrainingConfig`.

    ``source``: a preset name (``cpu-small``), a YAML file path, a dict, a config (copied
    through its dict), or ``None`` for the ``default`` preset. ``overrides``: ``key=value``
    strings with dotted keys, values parsed as YAML (``denoiser.model.channels=[32,64,64]``).
    """
    if isinstance(source, TrainingConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = _resolve_extends(source)
    elif source is None:
        data = preset_dict("default")
    else:
        text = str(source)
        path = Path(text).expanduser()
        if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
            data = _resolve_extends(read_yaml(path))
        else:
            data = preset_dict(text)
    data = apply_overrides(data, overrides)
    config = from_dict(TrainingConfig, data)
    return config.validate()
