"""Typed settings of the networks: first-stage autoencoders, latent denoiser, discriminator.

Every network is built from one of these dataclasses, so that a model bundle can store
the configuration as plain JSON (:func:`config_to_dict`) and rebuild the exact network
(``XConfig.from_dict``). Presets reproduce the thesis architectures (Tables 3.1, 3.2,
B.3, B.7) and small CPU configurations measured on a 2-core machine (see the
``cpu_*`` factories for the numbers).

Channel conventions follow the thesis (§A.1.2): "hidden channels" times a "channel
factor" per level; the spatial compression of a first stage is ``2 ** (levels - 1)``
(channel factor (1, 2, 4, 4) = compression 8, §4.3.3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from brainldm.errors import SettingsError

AutoencoderKind = Literal["kl", "vq"]
PositionEmbeddingKind = Literal["none", "sin", "coords"]

_T = TypeVar("_T")


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise SettingsError(f"{name} must be a list of values, got {value!r}.")


def _from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
    """Build a config dataclass from a JSON-like dict; lists become tuples."""
    if not isinstance(data, dict):
        raise SettingsError(f"{cls.__name__} settings must be a mapping, got {type(data).__name__}.")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise SettingsError(
            f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}. Known settings: {', '.join(sorted(names))}."
        )
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
    return cls(**kwargs)  # type: ignore[call-arg]


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-serialisable dict of a network config (tuples become lists)."""

    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _hidden_times(hidden: int, factors: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(hidden * f) for f in factors)


# --------------------------------------------------------------------------- first stage


@dataclass
class AutoencoderConfig:
    """First-stage autoencoder (§2.3.2, §3.3.3): KL-regularised or vector-quantised.

    Attributes
    ----------
    kind:
        ``"kl"`` (MONAI ``AutoencoderKL``: Gaussian posterior, KL regularisation) or
        ``"vq"`` (MONAI ``VQVAE``: EMA codebook, commitment loss).
    spatial_dims:
        3 for volumes, 2 for slices.
    in_channels:
        Image channels (the four MRI sequences).
    latent_channels:
        Channels of the latent ``z`` (KL "embedding dimension"; VQ codebook vector size).
    channels:
        Feature channels per level (see ``full_resolution_level`` for the compression).
    num_res_blocks:
        Residual blocks per level.
    full_resolution_level:
        ``True`` (MONAI ``AutoencoderKL`` layout, thesis convention): the first level works
        at full image resolution, so ``compression = 2 ** (len(channels) - 1)``.
        ``False`` (MONAI ``VQVAE`` layout): every level opens with a stride-2 convolution
        (kernel 4) and the decoder ends with stride-2 transposed convolutions, so no layer
        runs at full resolution and ``compression = 2 ** len(channels)``; several times
        faster on whole volumes. A KL autoencoder then uses the VQVAE encoder/decoder with
        a Gaussian head (ReLU residual units, no normalisation, no attention).
    attention:
        KL with ``full_resolution_level`` only: self-attention at the deepest level
        (MONAI's default). Attention over a whole-brain latent dominates CPU time, so CPU
        presets switch it off.
    norm_num_groups:
        KL only: groups of the GroupNorm layers (must divide every entry of ``channels``).
    num_embeddings, commitment_cost, vq_decay, vq_epsilon:
        VQ only: codebook size, commitment loss weight, EMA decay of the codebook and
        its Laplace smoothing.
    use_checkpointing:
        Activation checkpointing (saves memory during training, costs time).
    """

    kind: AutoencoderKind = "kl"
    spatial_dims: int = 3
    in_channels: int = 4
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    full_resolution_level: bool = True
    attention: bool = False
    norm_num_groups: int = 16
    num_embeddings: int = 16384
    commitment_cost: float = 0.25
    vq_decay: float = 0.9
    vq_epsilon: float = 1e-5
    use_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.channels = _as_tuple(self.channels, "channels")
        if self.kind not in ("kl", "vq"):
            raise SettingsError(f"Autoencoder kind must be 'kl' or 'vq', got {self.kind!r}.")
        if self.spatial_dims not in (2, 3):
            raise SettingsError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        if len(self.channels) < 1 or any(int(c) <= 0 for c in self.channels):
            raise SettingsError(f"channels must be positive numbers, got {self.channels!r}.")
        if self.in_channels <= 0 or self.latent_channels <= 0:
            raise SettingsError("in_channels and latent_channels must be positive.")
        if self.num_res_blocks < 0:
            raise SettingsError("num_res_blocks must be 0 or more.")
        if self.attention and not (self.kind == "kl" and self.full_resolution_level):
            raise SettingsError(
                "Attention is only available in the KL autoencoder with full_resolution_level=True "
                "(MONAI AutoencoderKL); set attention=False."
            )
        if self.kind == "kl" and self.full_resolution_level:
            if any(c % self.norm_num_groups for c in self.channels):
                raise SettingsError(
                    f"Every entry of channels {self.channels} must be a multiple of "
                    f"norm_num_groups={self.norm_num_groups}."
                )
            if self.num_res_blocks < 1:
                raise SettingsError("A KL autoencoder needs at least one residual block per level.")
        if self.kind == "vq":
            if self.num_embeddings < 2:
                raise SettingsError("num_embeddings (codebook size) must be at least 2.")
            if not 0.0 <= self.vq_decay < 1.0:
                raise SettingsError(f"vq_decay must lie in [0, 1), got {self.vq_decay}.")

    @property
    def compression(self) -> int:
        """Spatial down-sampling factor per axis between image and latent."""
        return 2 ** (len(self.channels) - (1 if self.full_resolution_level else 0))

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        return _from_dict(cls, data)


def thesis_vq_3d() -> AutoencoderConfig:
    """3D VQ-GAN "configuration A" (Tables 3.1/3.2): hidden 64, channel factor [2, 4],
    1 residual block, codebook 16384 x 8, commitment 0.25, EMA decay 0.9.

    Channel factor [2, 4] = two levels = compression 2, as the thesis adopts (§3.3.3:
    "this study adopts a compression factor of 2"); a 64^3 patch becomes an 8 x 32^3 latent.
    """
    return AutoencoderConfig(
        kind="vq",
        spatial_dims=3,
        latent_channels=8,
        channels=_hidden_times(64, (2, 4)),
        num_res_blocks=1,
        attention=False,
        num_embeddings=16384,
        commitment_cost=0.25,
        vq_decay=0.9,
    )


def thesis_kl_2d() -> AutoencoderConfig:
    """2D KL autoencoder (Table B.3): hidden 128, channel factor (1, 2, 4), embedding
    dimension 4, 2 residual blocks, compression 4 (256^2 slice -> 4 x 64^2 latent).
    MONAI's default deepest-level attention is kept (it is cheap on a 64^2 latent on GPU)."""
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=2,
        latent_channels=4,
        channels=_hidden_times(128, (1, 2, 4)),
        num_res_blocks=2,
        attention=True,
        norm_num_groups=32,
    )


def cpu_kl_3d() -> AutoencoderConfig:
    """Fast 3D KL autoencoder for CPU: VQVAE layout (no layer at full resolution),
    channels (16, 32), 1 residual block, no attention, latent 4, compression 4.

    Measured on the 2-core CPU (channels-last weights, inference mode): a whole brain
    4 x 160 x 192 x 160 encodes in ~0.45 s and decodes in ~0.65 s (73 GFLOP of convolutions
    for both), against ~10 s + ~26 s for MONAI's AutoencoderKL with channels (16, 32, 64)
    (1017 GFLOP), whose first level runs at full resolution.
    """
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=3,
        latent_channels=4,
        channels=(16, 32),
        num_res_blocks=1,
        full_resolution_level=False,
        attention=False,
    )


def cpu_kl_2d() -> AutoencoderConfig:
    """Fast 2D KL autoencoder for CPU: VQVAE layout, channels (32, 64), 1 residual block,
    latent 4, compression 4 (~1.5 s to encode + decode 40 slices of 160 x 192)."""
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=2,
        latent_channels=4,
        channels=(32, 64),
        num_res_blocks=1,
        full_resolution_level=False,
        attention=False,
    )


# --------------------------------------------------------------------------- denoiser


@dataclass
class DenoiserConfig:
    """Class-conditional latent noise-prediction U-Net (Table 3.2, §3.3.2).

    Attributes
    ----------
    spatial_dims:
        3 (latent patches / whole latent volume) or 2 (latent slices).
    latent_channels:
        Channels of the latent (input = output channels, epsilon prediction).
    channels:
        Feature channels per U-Net level (hidden channels x channel factor);
        ``len(channels) - 1`` downsamplings, so window sizes must be multiples of
        ``2 ** (len(channels) - 1)``.
    attention_levels:
        Self-attention per level (same length as ``channels``).
    mid_attention:
        Self-attention in the middle block (MONAI always has it; switch off for CPU).
    num_res_blocks:
        Residual blocks per level: one number for all levels or one per level (the
        decoder half has one more per level, as in MONAI).
    num_head_channels:
        Channels per attention head.
    norm_num_groups:
        GroupNorm groups (must divide every entry of ``channels``).
    position_embedding:
        ``"none"``; ``"sin"`` = Eq. 3.1 sinusoidal embedding of the patch start per axis,
        concatenated, through a learnable layer, added to the time + class embedding;
        ``"coords"`` = per-voxel coordinate channels concatenated to the input.
    position_dim:
        ``"sin"`` only: embedding size ``d`` per axis in Eq. 3.1 (even).
    num_classes:
        Real classes (healthy, diseased). One more learned class index
        (``NULL_LABEL = num_classes``) is the classifier-free "no label" (Eq. 2.45).
    condition_channels:
        Extra input channels concatenated to ``z`` (e.g. a mask latent for lesion
        synthesis, configuration G3 of §4.3); 0 for detection.
    """

    spatial_dims: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = False
    num_res_blocks: int | tuple[int, ...] = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16
    position_embedding: PositionEmbeddingKind = "coords"
    position_dim: int = 32
    num_classes: int = 2
    condition_channels: int = 0

    def __post_init__(self) -> None:
        self.channels = _as_tuple(self.channels, "channels")
        self.attention_levels = tuple(bool(a) for a in _as_tuple(self.attention_levels, "attention_levels"))
        if self.spatial_dims not in (2, 3):
            raise SettingsError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        if len(self.channels) < 1 or any(int(c) <= 0 for c in self.channels):
            raise SettingsError(f"channels must be positive numbers, got {self.channels!r}.")
        if len(self.attention_levels) != len(self.channels):
            raise SettingsError(
                f"attention_levels {self.attention_levels} must have one entry per level of channels {self.channels}."
            )
        if any(c % self.norm_num_groups for c in self.channels):
            raise SettingsError(
                f"Every entry of channels {self.channels} must be a multiple of norm_num_groups={self.norm_num_groups}."
            )
        for level, (c, att) in enumerate(zip(self.channels, self.attention_levels)):
            if att and c % self.num_head_channels:
                raise SettingsError(
                    f"Level {level} has attention but {c} channels is not a multiple of "
                    f"num_head_channels={self.num_head_channels}."
                )
        if self.mid_attention and self.channels[-1] % self.num_head_channels:
            raise SettingsError(
                f"Middle attention needs channels[-1]={self.channels[-1]} to be a multiple of "
                f"num_head_channels={self.num_head_channels}."
            )
        if self.position_embedding not in ("none", "sin", "coords"):
            raise SettingsError(
                f"position_embedding must be 'none', 'sin' or 'coords', got {self.position_embedding!r}."
            )
        if self.position_dim <= 0 or self.position_dim % 2:
            raise SettingsError(f"position_dim must be a positive even number, got {self.position_dim}.")
        if self.num_classes < 1:
            raise SettingsError("num_classes must be at least 1.")
        if isinstance(self.num_res_blocks, (list, tuple)):
            self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
            if len(self.num_res_blocks) != len(self.channels):
                raise SettingsError(
                    f"num_res_blocks {self.num_res_blocks} must have one entry per level of channels {self.channels}."
                )
        blocks = self.num_res_blocks if isinstance(self.num_res_blocks, tuple) else (self.num_res_blocks,)
        if any(n < 1 for n in blocks):
            raise SettingsError("num_res_blocks must be at least 1 at every level.")
        if self.latent_channels <= 0 or self.condition_channels < 0:
            raise SettingsError("latent_channels must be positive and condition_channels not negative.")

    @property
    def size_multiple(self) -> int:
        """Window sizes (latent voxels per axis) must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    @property
    def input_channels(self) -> int:
        """Channels entering the first convolution (latent + condition + coordinates)."""
        coords = self.spatial_dims if self.position_embedding == "coords" else 0
        return self.latent_channels + self.condition_channels + coords

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiserConfig:
        return _from_dict(cls, data)


def attention_levels_for(latent_size: int, num_levels: int, attention_resolutions: tuple[int, ...]) -> tuple[bool, ...]:
    """Translate thesis "attention resolutions" (spatial sizes, §A.1.2) into per-level flags
    for a U-Net whose first level sees ``latent_size`` voxels per axis."""
    return tuple((latent_size // 2**level) in attention_resolutions for level in range(num_levels))


def thesis_3d(
    latent_patch_size: int = 32, latent_channels: int = 8, position_embedding: PositionEmbeddingKind = "sin"
) -> DenoiserConfig:
    """3D-DDPM of Table 3.2: hidden 128, channel factor (1, 1, 2, 4), attention at spatial
    resolutions 8 and 16, 4 residual blocks, sinusoidal patch position embedding.

    ``latent_patch_size`` is the latent side of a training patch (64^3 patch: 32 with the
    thesis' compression 2, 16 with compression 4); it decides which levels get attention.
    """
    channels = _hidden_times(128, (1, 1, 2, 4))
    return DenoiserConfig(
        spatial_dims=3,
        latent_channels=latent_channels,
        channels=channels,
        attention_levels=attention_levels_for(latent_patch_size, len(channels), (16, 8)),
        mid_attention=True,
        num_res_blocks=4,
        num_head_channels=64,
        norm_num_groups=32,
        position_embedding=position_embedding,
        position_dim=128,
    )


def thesis_2d(latent_size: int = 64, position_embedding: PositionEmbeddingKind = "none") -> DenoiserConfig:
    """2D-LDM of Table B.7: hidden 256, channel factor (1, 2, 3, 4), attention at 32, 16
    and 8, 2 residual blocks, 64 channels per head (256^2 slices, KL compression 4)."""
    channels = _hidden_times(256, (1, 2, 3, 4))
    return DenoiserConfig(
        spatial_dims=2,
        latent_channels=4,
        channels=channels,
        attention_levels=attention_levels_for(latent_size, len(channels), (32, 16, 8)),
        mid_attention=True,
        num_res_blocks=2,
        num_head_channels=64,
        norm_num_groups=32,
        position_embedding=position_embedding,
        position_dim=128,
    )


def cpu_3d(position_embedding: PositionEmbeddingKind = "coords") -> DenoiserConfig:
    """CPU latent denoiser: channels (16, 16, 64), residual blocks (1, 1, 2), no attention,
    coordinate-channel positions (runs on a whole-brain latent window at once).

    Measured on the 2-core CPU (channels-last weights, inference mode, fp32): one pass of
    batch 2 on a 4 x 40 x 48 x 40 latent (a whole brain at compression 4) takes ~0.26 s
    (36.8 GFLOP of convolutions, 2.1 M parameters). Alternatives: (16, 16, 32) 0.21 s
    (0.5 M), (16, 32, 64) 0.37 s, (32, 32, 64) 0.84 s, (32, 64, 64) 1.17 s; middle-block
    attention adds ~0.05-0.1 s; bf16 autocast is ~30x slower on this CPU (no native bf16).
    """
    return DenoiserConfig(
        spatial_dims=3,
        latent_channels=4,
        channels=(16, 16, 64),
        attention_levels=(False, False, False),
        mid_attention=False,
        num_res_blocks=(1, 1, 2),
        num_head_channels=32,
        norm_num_groups=16,
        position_embedding=position_embedding,
        position_dim=32,
    )


def cpu_2d(position_embedding: PositionEmbeddingKind = "coords") -> DenoiserConfig:
    """CPU latent denoiser for 2D slices: channels (32, 64, 64), 1 residual block, attention
    only in the middle block (cheap in 2D)."""
    return DenoiserConfig(
        spatial_dims=2,
        latent_channels=4,
        channels=(32, 64, 64),
        attention_levels=(False, False, False),
        mid_attention=True,
        num_res_blocks=1,
        num_head_channels=32,
        norm_num_groups=16,
        position_embedding=position_embedding,
        position_dim=32,
    )


# --------------------------------------------------------------------------- discriminator


@dataclass
class DiscriminatorConfig:
    """Patch discriminator of the VQ-GAN / KL-GAN (Table 3.1: 3 layers, 64 channels, hinge)."""

    spatial_dims: int = 3
    in_channels: int = 4
    channels: int = 64
    num_layers: int = 3
    norm: str = "BATCH"

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise SettingsError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        if self.channels <= 0 or self.num_layers < 1 or self.in_channels <= 0:
            raise SettingsError("Discriminator channels, in_channels and num_layers must be positive.")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        return _from_dict(cls, data)


# --------------------------------------------------------------------------- lesion synthesis

SynthesisMechanism = Literal["concat", "structural"]

#: The thesis's names of the two conditioning mechanisms that work (Table 4.1): G3 and its wider
#: variant G3wide concatenate the mask latent to the noisy image latent; G4 adds a trainable
#: structural encoder beside a frozen pretrained denoiser.
THESIS_CONFIGURATIONS: dict[str, SynthesisMechanism] = {"G3": "concat", "G3wide": "concat", "G4": "structural"}


@dataclass
class ConditioningConfig:
    """How the lesion-mask latent conditions the synthesis denoiser (thesis §4.3.3, Table 4.1).

    Attributes
    ----------
    mechanism:
        ``"concat"`` (configurations G3 and G3wide): the scaled latent of the two-channel
        (brain, lesion) mask, encoded by its own KL autoencoder, is concatenated to the noisy
        image latent as extra input channels (``DenoiserConfig.condition_channels``).
        ``"structural"`` (G4): a trainable copy of the denoiser's encoder (ControlNet, Zhang et
        al. 2023) reads the noisy latent plus the mask latent and adds its features, through
        zero-initialised 1x1 convolutions, to every skip connection and the middle block of a
        frozen pretrained denoiser.
    mask_latent_channels:
        Channels of the mask autoencoder's latent (embedding dimension 4 in Table B.4).
    embedding_channels:
        ``"structural"`` only: channels of the convolution that embeds the mask latent before
        its zero-initialised projection onto the encoder's first features (MONAI's
        ``ControlNetConditioningEmbedding`` with one level: the mask latent already has the
        image latent's resolution, so nothing is downsampled).
    conditioning_scale:
        ``"structural"`` only: factor on the injected features (1 = as trained).
    variant:
        Free label for model cards and reports, e.g. ``"G3"``, ``"G3wide"``, ``"G4"``.
    """

    mechanism: SynthesisMechanism = "concat"
    mask_latent_channels: int = 4
    embedding_channels: int = 32
    conditioning_scale: float = 1.0
    variant: str = ""

    def __post_init__(self) -> None:
        if self.mechanism not in ("concat", "structural"):
            raise SettingsError(
                f"The conditioning mechanism must be 'concat' (G3/G3wide) or 'structural' (G4), got {self.mechanism!r}."
            )
        if self.mask_latent_channels <= 0 or self.embedding_channels <= 0:
            raise SettingsError("mask_latent_channels and embedding_channels must be positive.")
        if not self.conditioning_scale >= 0.0:
            raise SettingsError(f"conditioning_scale must be >= 0, got {self.conditioning_scale}.")

    @property
    def label(self) -> str:
        """``variant`` when it fits the mechanism, else the thesis name of the mechanism (G3 / G4)."""
        fits = THESIS_CONFIGURATIONS.get(self.variant, self.mechanism) == self.mechanism
        return self.variant if self.variant and fits else ("G3" if self.mechanism == "concat" else "G4")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditioningConfig:
        return _from_dict(cls, data)


def thesis_mask_kl_2d() -> AutoencoderConfig:
    """Mask autoencoder of Table B.4 ("KL-AE"): two input channels (brain, lesion), hidden 64,
    channel factor (1, 2, 4) -> compression 4 like the image autoencoder (Table B.3), one
    residual block, embedding dimension 4. Attention is not stated for the mask model; off."""
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=2,
        in_channels=2,
        latent_channels=4,
        channels=_hidden_times(64, (1, 2, 4)),
        num_res_blocks=1,
        attention=False,
        norm_num_groups=32,
    )


def cpu_mask_kl_2d() -> AutoencoderConfig:
    """Fast 2D mask autoencoder for CPU: the strided layout of :func:`cpu_kl_2d` with channels
    (16, 32), two input channels, latent 4, compression 4."""
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=2,
        in_channels=2,
        latent_channels=4,
        channels=(16, 32),
        num_res_blocks=1,
        full_resolution_level=False,
        attention=False,
    )


def thesis_synthesis_2d(variant: str = "G4", latent_size: int = 64) -> DenoiserConfig:
    """The synthesis denoisers of Table B.1 on 256^2 slices (64^2 latents, compression 4).

    ``"G3"``: hidden 320, channel factor (1, 2, 3, 4); ``"G3wide"``: hidden 256, channel
    factor (1, 2, 4, 8); both with the 4-channel mask latent concatenated to the input.
    ``"G4"``: hidden 256, channel factor (1, 2, 3, 4) - the frozen backbone (the 2D detection
    denoiser, Table B.7), no extra input channels. All: attention at 32, 16 and 8, two residual
    blocks, 64 channels per head.
    """
    hidden, factors = {"G3": (320, (1, 2, 3, 4)), "G3wide": (256, (1, 2, 4, 8)), "G4": (256, (1, 2, 3, 4))}.get(
        variant, (None, None))
    if hidden is None:
        raise SettingsError(f"Unknown thesis synthesis configuration {variant!r}; choose G3, G3wide or G4.")
    channels = _hidden_times(hidden, factors)
    return DenoiserConfig(
        spatial_dims=2,
        latent_channels=4,
        channels=channels,
        attention_levels=attention_levels_for(latent_size, len(channels), (32, 16, 8)),
        mid_attention=True,
        num_res_blocks=2,
        num_head_channels=64,
        norm_num_groups=32,
        position_embedding="none",
        condition_channels=0 if THESIS_CONFIGURATIONS[variant] == "structural" else 4,
    )


__all__ = [
    "THESIS_CONFIGURATIONS",
    "AutoencoderConfig",
    "ConditioningConfig",
    "DenoiserConfig",
    "DiscriminatorConfig",
    "attention_levels_for",
    "config_to_dict",
    "cpu_2d",
    "cpu_3d",
    "cpu_kl_2d",
    "cpu_kl_3d",
    "cpu_mask_kl_2d",
    "thesis_2d",
    "thesis_3d",
    "thesis_kl_2d",
    "thesis_mask_kl_2d",
    "thesis_synthesis_2d",
    "thesis_vq_3d",
]
