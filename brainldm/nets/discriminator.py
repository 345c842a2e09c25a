"""Patch discriminator and hinge losses for adversarial first-stage training (§2.3.2,
Table 3.1: 3 layers, 64 channels, hinge loss)."""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator as MonaiPatchDiscriminator
from torch import nn

from brainldm.errors import SettingsError
from brainldm.nets.config import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """MONAI ``PatchDiscriminator`` returning only the final patch logits
    ``(B, 1, *patches)`` (MONAI returns every intermediate feature map as well)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.net = MonaiPatchDiscriminator(
            spatial_dims=config.spatial_dims,
            channels=config.channels,
            in_channels=config.in_channels,
            out_channels=1,
            num_layers_d=config.num_layers,
            norm=config.norm,
        )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All intermediate feature maps, last entry = logits (for feature matching)."""
        return list(self.net(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def build_discriminator(config: DiscriminatorConfig) -> PatchDiscriminator:
    if not isinstance(config, DiscriminatorConfig):
        raise SettingsError(f"build_discriminator needs a DiscriminatorConfig, got {type(config).__name__}.")
    return PatchDiscriminator(config)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])``."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator (autoencoder) side of the hinge GAN: ``-E[D(x_hat)]``."""
    return -logits_fake.mean()


__all__ = ["PatchDiscriminator", "build_discriminator", "generator_adversarial_loss", "hinge_d_loss"]
