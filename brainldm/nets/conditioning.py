"""Lesion-mask conditioning of the latent denoiser (thesis §4.3.3, Table 4.1, Fig. B.1).

The conditioning signal is the two-channel one-hot (brain, lesion) mask of
:func:`brainldm.synth.lesions.conditioning_mask`, encoded by its own small KL autoencoder (a
:class:`~brainldm.nets.autoencoder.KLAutoencoder` with ``in_channels=2``, Table B.4) into a latent
of the image latent's size. Downsampling the mask instead would blur small lesions away (§4.3.3),
so the mask gets a first stage of its own. Two mechanisms bring that mask latent into the
denoiser:

* **Latent concatenation** (G3; G3wide is the same with wider layers): the mask latent is
  concatenated to the noisy image latent as extra input channels of the
  :class:`~brainldm.nets.denoiser.LatentDenoiser` (``DenoiserConfig.condition_channels``).
* **Structural encoder** (G4, ControlNet-like, Zhang et al. 2023): :class:`StructuralEncoder`,
  a trainable copy of a pretrained denoiser's encoder half (MONAI's ``ControlNet``, extended with
  BrainLDM's position embeddings), reads the noisy latent plus the embedded mask latent and adds
  its features through zero-initialised 1x1 convolutions to every skip connection and to the
  middle block of the frozen denoiser. At initialisation every injected feature is exactly zero,
  so the frozen denoiser's prediction is unchanged; training moves only the encoder.

:class:`ConditionedDenoiser` hides the difference: ``model(z, t, labels, condition=mask_latent)``
predicts the noise for either mechanism, so the samplers need not know which one runs.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ControlNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from brainldm.errors import SettingsError
from brainldm.nets.autoencoder import use_channels_last
from brainldm.nets.config import ConditioningConfig, DenoiserConfig
from brainldm.nets.denoiser import (
    LatentDenoiser,
    _per_axis,
    _per_sample,
    build_denoiser,
)
from brainldm.nets.position import SinusoidalPatchEmbedding, coordinate_channels

#: Parts of a denoiser's state that the structural encoder copies at initialisation.
_ENCODER_PARTS = ("conv_in.", "time_embed.", "class_embedding.", "down_blocks.", "middle_block.",
                  "position_embedding.")


class StructuralEncoder(ControlNet):
    """Trainable copy of a denoiser's encoder half that turns the mask latent into additive features.

    ``encoder(z, t, labels, condition, start=None, extent=None) -> (down_residuals, mid_residual)``
    with one residual per skip connection of the denoiser (``1 + sum(num_res_blocks) +
    levels - 1``) and one for the middle block, each the shape of the feature it is added to.
    Its blocks, the conditioning embedding and the zero convolutions are MONAI's ``ControlNet``;
    the forward pass follows :class:`~brainldm.nets.denoiser.LatentDenoiser` (coordinate channels,
    sinusoidal patch positions, class + null label, no middle attention when the denoiser has
    none), so :meth:`copy_denoiser` can load the denoiser's own weights into it.
    """

    def __init__(self, denoiser_config: DenoiserConfig, conditioning: ConditioningConfig) -> None:
        if denoiser_config.condition_channels:
            raise SettingsError(
                "The structural encoder (G4) runs beside a denoiser without concatenated condition channels; "
                f"its denoiser has condition_channels={denoiser_config.condition_channels}.")
        cfg = denoiser_config
        heads = tuple(cfg.num_head_channels if c % cfg.num_head_channels == 0 else c for c in cfg.channels)
        super().__init__(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.input_channels,
            num_res_blocks=cfg.num_res_blocks,
            channels=tuple(cfg.channels),
            attention_levels=tuple(cfg.attention_levels),
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=heads,
            num_class_embeds=cfg.num_classes + 1,
            conditioning_embedding_in_channels=conditioning.mask_latent_channels,
            conditioning_embedding_num_channels=(conditioning.embedding_channels,),
        )
        self.config = cfg
        self.conditioning = conditioning
        if not cfg.mid_attention:
            self.middle_block.attention = nn.Identity()
        self.position_embedding: SinusoidalPatchEmbedding | None = None
        if cfg.position_embedding == "sin":
            self.position_embedding = SinusoidalPatchEmbedding(cfg.spatial_dims, cfg.position_dim, cfg.channels[0] * 4)

    @torch.no_grad()
    def copy_denoiser(self, denoiser: LatentDenoiser) -> None:
        """Start from the (pretrained) denoiser's encoder weights, as ControlNet does."""
        own = self.state_dict()
        for name, value in denoiser.state_dict().items():
            if name.startswith(_ENCODER_PARTS) and name in own and own[name].shape == value.shape:
                own[name].copy_(value)

    def forward(  # type: ignore[override]
        self,
        z: torch.Tensor,
        t: torch.Tensor | int,
        labels: torch.Tensor | int,
        condition: torch.Tensor,
        start: torch.Tensor | None = None,
        extent: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        cfg = self.config
        spatial = tuple(int(s) for s in z.shape[2:])
        batch, device = z.shape[0], z.device
        if condition is None or condition.shape != (batch, self.conditioning.mask_latent_channels, *spatial):
            raise ValueError(
                f"The structural encoder needs a mask latent of shape "
                f"{(batch, self.conditioning.mask_latent_channels, *spatial)}, got "
                f"{None if condition is None else tuple(condition.shape)}.")
        timesteps = _per_sample(t, batch, "t", device)
        labels = _per_sample(labels, batch, "labels", device).long()
        start_t = _per_axis(start, batch, cfg.spatial_dims, "start", device)
        extent_t = _per_axis(extent, batch, cfg.spatial_dims, "extent", device)
        x = z
        if cfg.position_embedding == "coords":
            if start_t is None:
                start_t = torch.zeros(batch, cfg.spatial_dims, device=device)
            if extent_t is None:
                extent_t = torch.tensor(spatial, dtype=torch.float32, device=device).expand(batch, -1)
            x = torch.cat([x, coordinate_channels(start_t, extent_t, spatial, dtype=z.dtype)], dim=1)
        emb = self.time_embed(get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=z.dtype))
        emb = emb + self.class_embedding(labels).to(dtype=emb.dtype)
        if self.position_embedding is not None:
            if start_t is None:
                start_t = torch.zeros(batch, cfg.spatial_dims, device=device)
            emb = emb + self.position_embedding(start_t).to(dtype=emb.dtype)

        h = self.conv_in(x) + self.controlnet_cond_embedding(condition.to(z.dtype))
        skips: list[torch.Tensor] = [h]
        for down_block in self.down_blocks:
            h, res_samples = down_block(hidden_states=h, temb=emb, context=None)
            skips.extend(res_samples)
        h = self.middle_block(hidden_states=h, temb=emb, context=None)
        factor = self.conditioning.conditioning_scale if scale is None else float(scale)
        down = [block(s) * factor for s, block in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(h) * factor
        return down, mid


class ConditionedDenoiser(nn.Module):
    """``model(z, t, labels, start=None, extent=None, *, condition) -> eps`` for G3/G3wide or G4.

    ``condition`` is the scaled mask latent ``(B, mask_latent_channels, *S)`` of the window.
    With a structural encoder the denoiser is the frozen backbone and the encoder's features
    are added to its skip connections; otherwise the mask latent is concatenated to the input.
    """

    def __init__(self, denoiser: LatentDenoiser, conditioning: ConditioningConfig,
                 encoder: StructuralEncoder | None = None) -> None:
        super().__init__()
        structural = conditioning.mechanism == "structural"
        if structural != (encoder is not None):
            raise SettingsError("A structural (G4) model needs its structural encoder, a concatenation model none.")
        if not structural and denoiser.config.condition_channels != conditioning.mask_latent_channels:
            raise SettingsError(
                f"The concatenation denoiser takes {denoiser.config.condition_channels} condition channels, but the "
                f"mask latent has {conditioning.mask_latent_channels}; set the denoiser's condition_channels to "
                f"{conditioning.mask_latent_channels}.")
        self.denoiser = denoiser
        self.encoder = encoder
        self.conditioning = conditioning

    @property
    def config(self) -> DenoiserConfig:
        return self.denoiser.config

    @property
    def null_label(self) -> int:
        return self.denoiser.null_label

    @property
    def size_multiple(self) -> int:
        return self.denoiser.size_multiple

    def forward(self, z: torch.Tensor, t, labels, start=None, extent=None, *,  # type: ignore[override]
                condition: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return self.denoiser(z, t, labels, start, extent, condition=condition)
        down, mid = self.encoder(z, t, labels, condition, start, extent)
        return self.denoiser(z, t, labels, start, extent, down_residuals=tuple(down), mid_residual=mid)


def build_structural_encoder(denoiser_config: DenoiserConfig, conditioning: ConditioningConfig,
                             channels_last: bool = True) -> StructuralEncoder:
    encoder = StructuralEncoder(denoiser_config, conditioning)
    if channels_last:
        use_channels_last(encoder, denoiser_config.spatial_dims)
    return encoder


def build_conditioned_denoiser(denoiser_config: DenoiserConfig, conditioning: ConditioningConfig,
                               channels_last: bool = True) -> ConditionedDenoiser:
    """A fresh :class:`ConditionedDenoiser`: for ``"structural"`` the denoiser is the backbone
    (load its pretrained weights, then :meth:`StructuralEncoder.copy_denoiser`)."""
    if not isinstance(conditioning, ConditioningConfig):
        raise SettingsError(f"build_conditioned_denoiser needs a ConditioningConfig, got {type(conditioning).__name__}.")
    denoiser = build_denoiser(denoiser_config, channels_last=channels_last)
    encoder = None
    if conditioning.mechanism == "structural":
        encoder = build_structural_encoder(denoiser_config, conditioning, channels_last=channels_last)
    return ConditionedDenoiser(denoiser, conditioning, encoder)


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for ``module``'s parameters (the G4 backbone)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


__all__ = [
    "ConditionedDenoiser",
    "StructuralEncoder",
    "build_conditioned_denoiser",
    "build_structural_encoder",
    "freeze",
]
