"""Patch position information for the latent denoiser (§3.3.2).

A model trained on patches does not know where a patch lies in the brain. Two ways to
tell it:

* ``"sin"`` (thesis, Eq. 3.1): the start coordinate of the patch in each axis is encoded
  with the transformer's sinusoidal embedding, the per-axis encodings are concatenated and
  passed through a learnable layer; the result is added to the time + class embedding.
* ``"coords"``: per-voxel coordinate channels ``2 * (start + i + 0.5) / extent - 1`` in
  ``[-1, 1]`` (``i`` = voxel index inside the window, ``extent`` = size of the whole latent
  volume) are concatenated to the input. Every voxel knows its absolute position, so a model
  trained on patches runs unchanged on a window of any size, including the whole brain.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(position: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Eq. 3.1: ``PE(pos, 2n) = sin(pos / 10000^(2n/d))``, ``PE(pos, 2n+1) = cos(pos / 10000^(2n/d))``.

    ``position`` has any shape; the result has one more trailing axis of size ``dim``
    (even), sine and cosine interleaved as in the equation. Computed in float32.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"The embedding size must be a positive even number, got {dim}.")
    pos = position.to(torch.float32)
    n = torch.arange(dim // 2, dtype=torch.float32, device=pos.device)
    inv_freq = torch.exp(-(2.0 * n / dim) * math.log(max_period))  # 10000^(-2n/d)
    angles = pos[..., None] * inv_freq
    return torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)


def patch_position_encoding(start: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Eq. 3.1 encoding of a patch's start coordinates ``(B, S)``, concatenated over the S
    axes: ``(B, S * dim)``."""
    if start.ndim != 2:
        raise ValueError(f"Patch start coordinates must have shape (batch, axes), got {tuple(start.shape)}.")
    return sinusoidal_encoding(start, dim, max_period).flatten(1)


class SinusoidalPatchEmbedding(nn.Module):
    """Learnable patch position embedding of §3.3.2: Eq. 3.1 per axis, concatenated,
    then one linear layer to the U-Net's embedding size ``out_dim``."""

    def __init__(self, spatial_dims: int, dim_per_axis: int, out_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.dim_per_axis = dim_per_axis
        self.max_period = max_period
        self.linear = nn.Linear(spatial_dims * dim_per_axis, out_dim)

    def forward(self, start: torch.Tensor) -> torch.Tensor:
        encoding = patch_position_encoding(start, self.dim_per_axis, self.max_period)
        return self.linear(encoding.to(self.linear.weight.dtype))


def coordinate_channels(
    start: torch.Tensor,
    extent: torch.Tensor,
    spatial_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-voxel normalised coordinates of a window: ``(B, S, *spatial_shape)``.

    Channel ``a`` holds ``2 * (start[:, a] + i_a + 0.5) / extent[:, a] - 1`` where ``i_a``
    is the voxel index along axis ``a`` inside the window, so voxel centres of the whole
    volume span (-1, 1) whatever window they are seen through.
    """
    if start.ndim != 2 or extent.shape != start.shape or start.shape[1] != len(spatial_shape):
        raise ValueError(
            f"start and extent must both have shape (batch, {len(spatial_shape)}), "
            f"got {tuple(start.shape)} and {tuple(extent.shape)}."
        )
    if bool((extent <= 0).any()):
        raise ValueError("The volume extent must be positive in every axis.")
    batch, axes = start.shape
    channels = []
    for a, size in enumerate(spatial_shape):
        index = torch.arange(size, dtype=torch.float32, device=start.device)
        coord = 2.0 * (start[:, a : a + 1].float() + index[None, :] + 0.5) / extent[:, a : a + 1].float() - 1.0
        view = [batch] + [1] * axes
        view[1 + a] = size
        channels.append(coord.view(view).expand(batch, *spatial_shape))
    return torch.stack(channels, dim=1).to(dtype)


__all__ = [
    "SinusoidalPatchEmbedding",
    "coordinate_channels",
    "patch_position_encoding",
    "sinusoidal_encoding",
]
