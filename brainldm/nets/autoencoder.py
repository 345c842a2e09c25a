"""First-stage autoencoders of the LDM (§2.3.2, §3.3.3, §4.3.3).

Two regularisations, both from MONAI and wrapped behind one interface
(:class:`FirstStage`):

* :class:`KLAutoencoder` - MONAI ``AutoencoderKL``; the encoder predicts a Gaussian
  posterior ``q(z|x) = N(mu, sigma^2)``; training samples ``z = mu + sigma * e`` and adds
  the KL divergence to ``N(0, I)``. :meth:`KLAutoencoder.encode` returns the posterior
  **mean** so that anomaly maps are deterministic (MONAI's ``encode_stage_2_inputs``
  samples).
* :class:`VQAutoencoder` - MONAI ``VQVAE`` with an EMA codebook (van den Oord et al.
  2017): the encoder output snaps to its nearest codebook vector; the loss is the
  commitment term ``beta * ||z_e - sg(e)||^2`` (beta = 0.25, Table 3.1) and the codebook
  follows the encoder outputs by exponential moving averages. The nearest-code search is
  done here in chunks (MONAI builds an ``N x K`` distance matrix and an ``N x K`` one-hot
  matrix, which for a whole-brain latent and a 16384-code book would be tens of GB); the
  parameters and buffers are MONAI's own, so state dicts stay compatible.

Image sizes must be multiples of :attr:`FirstStage.compression` per axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from monai.networks.nets import VQVAE, AutoencoderKL
from monai.networks.nets.vqvae import Decoder as VQVAEDecoder
from monai.networks.nets.vqvae import Encoder as VQVAEEncoder
from torch import nn

from brainldm.errors import SettingsError
from brainldm.nets.config import AutoencoderConfig


@dataclass
class AutoencoderOutput:
    """What one training pass of a first stage returns.

    reconstruction:
        Decoded image, same shape as the input.
    regularisation_loss:
        KL: ``KL(q(z|x) || N(0, I))`` summed over latent channels and voxels, averaged
        over the batch (weight it in the training loss). VQ: commitment loss.
    latent:
        The latent that was decoded (KL: the sample ``mu + sigma * e`` in training mode,
        ``mu`` in eval mode; VQ: the quantised latent with straight-through gradients).
    """

    reconstruction: torch.Tensor
    regularisation_loss: torch.Tensor
    latent: torch.Tensor


class FirstStage(nn.Module):
    """Common interface of the first-stage autoencoders."""

    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def compression(self) -> int:
        """Down-sampling factor per spatial axis (image voxels per latent voxel)."""
        return self.config.compression

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Latent ``(C, *spatial)`` for an image of spatial shape ``image_shape``."""
        return (self.latent_channels, *(int(s) // self.compression for s in image_shape))

    def check_image(self, x: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` unless ``x`` is ``(B, in_channels, *S)`` with S divisible."""
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"Expected an image batch of shape (B, {cfg.in_channels}, {'X, Y, Z' if cfg.spatial_dims == 3 else 'X, Y'}), "
                f"got {tuple(x.shape)}."
            )
        bad = [int(s) for s in x.shape[2:] if int(s) % self.compression]
        if bad:
            raise ValueError(
                f"Image size {tuple(x.shape[2:])} is not a multiple of the autoencoder's compression "
                f"{self.compression} in every axis; pad or crop the image first."
            )

    def check_latent(self, z: torch.Tensor) -> None:
        cfg = self.config
        if z.ndim != cfg.spatial_dims + 2 or z.shape[1] != cfg.latent_channels:
            raise ValueError(
                f"Expected a latent batch of shape (B, {cfg.latent_channels}, ...) with {cfg.spatial_dims} "
                f"spatial axes, got {tuple(z.shape)}."
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def _vqvae_layout(config: AutoencoderConfig) -> tuple[tuple, tuple]:
    """Down/upsampling parameters of MONAI's VQVAE encoder/decoder for ``config``.

    Each level opens with a stride-2 convolution (kernel 4); with ``full_resolution_level``
    the first level keeps the resolution (stride 1, kernel 3) instead, so that
    ``compression = 2 ** (levels - 1)`` as in the thesis' channel-factor convention.
    """
    levels = len(config.channels)
    keep_first = config.full_resolution_level
    down = tuple((1, 3, 1, 1) if (i == 0 and keep_first) else (2, 4, 1, 1) for i in range(levels))
    up = tuple((1, 3, 1, 1, 0) if (i == levels - 1 and keep_first) else (2, 4, 1, 1, 0) for i in range(levels))
    return down, up


class KLAutoencoder(FirstStage):
    """KL-regularised autoencoder.

    With ``full_resolution_level=True`` this is MONAI's ``AutoencoderKL`` (GroupNorm + SiLU
    ResNet blocks, optional deepest-level attention). With ``False`` it is MONAI's VQVAE
    encoder/decoder (strided convolutions, ReLU residual units) whose encoder predicts
    ``2 * latent_channels`` maps: the posterior mean and log-variance (clamped to
    [-30, 20] like MONAI).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        levels = len(config.channels)
        self.net: nn.Module | None = None
        if config.full_resolution_level:
            attention_levels = tuple(config.attention and i == levels - 1 for i in range(levels))
            self.net = AutoencoderKL(
                spatial_dims=config.spatial_dims,
                in_channels=config.in_channels,
                out_channels=config.in_channels,
                num_res_blocks=config.num_res_blocks,
                channels=tuple(config.channels),
                attention_levels=attention_levels,
                latent_channels=config.latent_channels,
                norm_num_groups=config.norm_num_groups,
                with_encoder_nonlocal_attn=config.attention,
                with_decoder_nonlocal_attn=config.attention,
                use_checkpoint=config.use_checkpointing,
            )
        else:
            down, up = _vqvae_layout(config)
            self.encoder = VQVAEEncoder(
                spatial_dims=config.spatial_dims,
                in_channels=config.in_channels,
                out_channels=2 * config.latent_channels,
                channels=tuple(config.channels),
                num_res_layers=config.num_res_blocks,
                num_res_channels=tuple(config.channels),
                downsample_parameters=down,
                dropout=0.0,
                act="RELU",
            )
            self.decoder = VQVAEDecoder(
                spatial_dims=config.spatial_dims,
                in_channels=config.latent_channels,
                out_channels=config.in_channels,
                channels=tuple(config.channels),
                num_res_layers=config.num_res_blocks,
                num_res_channels=tuple(config.channels),
                upsample_parameters=up,
                dropout=0.0,
                act="RELU",
                output_act=None,
            )
            self._start_nearly_deterministic()

    #: Initial posterior log-variance of the strided KL head (sigma = exp(-8 / 2) ~ 0.02).
    initial_log_variance: float = -8.0

    def _start_nearly_deterministic(self) -> None:
        """Start the strided KL head with a small posterior variance.

        With default initialisation the log-variance is ~0, so training decodes
        ``mu + 1.0 * e``: the decoder first sees mostly noise and the reconstruction error
        falls several times slower (measured on phantoms: validation MAE 0.50 vs 0.33 after
        30 steps). With the tiny KL weight of the presets (1e-6) the variance then grows only
        where it costs the reconstruction nothing, as in a trained KL autoencoder.
        """
        head = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-1]
        with torch.no_grad():
            head.weight[self.config.latent_channels:].mul_(0.01)
            if head.bias is not None:
                head.bias[self.config.latent_channels:].fill_(self.initial_log_variance)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of ``q(z|x)``."""
        self.check_image(x)
        if self.net is not None:
            z_mu, z_sigma = self.net.encode(x)
            return z_mu, z_sigma
        moments = self._run(self.encoder, x)
        z_mu, z_log_var = torch.chunk(moments, 2, dim=1)
        z_sigma = torch.exp(torch.clamp(z_log_var, -30.0, 20.0) / 2)
        return z_mu, z_sigma

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.config.use_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.net is not None:
            return self.net.decode(z)
        return self._run(self.decoder, z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (deterministic latent)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.check_latent(z)
        return self._decode(z)

    @staticmethod
    def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, sigma^2) || N(0, 1)) = 1/2 sum(mu^2 + sigma^2 - log sigma^2 - 1)`` per
        sample (summed over channels and voxels), averaged over the batch."""
        var = z_sigma.float().pow(2)
        kl = 0.5 * (z_mu.float().pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0)
        return kl.flatten(1).sum(dim=1).mean()

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> AutoencoderOutput:
        """Reconstruct ``x``; ``sample`` (default: training mode) decodes a posterior sample
        ``z = mu + sigma * e`` (reparameterisation), otherwise the mean."""
        z_mu, z_sigma = self.posterior(x)
        if sample is None:
            sample = self.training
        z = z_mu + torch.randn_like(z_sigma) * z_sigma if sample else z_mu
        return AutoencoderOutput(self._decode(z), self.kl_divergence(z_mu, z_sigma), z)


class VQAutoencoder(FirstStage):
    """Vector-quantised autoencoder with EMA codebook (MONAI ``VQVAE``)."""

    #: Bound of the distance block ``chunk x num_embeddings`` in the nearest-code search
    #: (2**25 floats = 128 MB; 2048 latent vectors per chunk with 16384 codes).
    search_block: int = 2**25

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        down, up = _vqvae_layout(config)
        self.net = VQVAE(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            channels=tuple(config.channels),
            num_res_layers=config.num_res_blocks,
            num_res_channels=tuple(config.channels),
            downsample_parameters=down,
            upsample_parameters=up,
            num_embeddings=config.num_embeddings,
            embedding_dim=config.latent_channels,
            commitment_cost=config.commitment_cost,
            decay=config.vq_decay,
            epsilon=config.vq_epsilon,
            ddp_sync=False,
            use_checkpointing=config.use_checkpointing,
        )

    @property
    def _ema(self) -> nn.Module:
        return self.net.quantizer.quantizer

    @property
    def codebook(self) -> torch.Tensor:
        """``(num_embeddings, latent_channels)`` code vectors."""
        return self._ema.embedding.weight

    def code_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every latent vector: ``(B, *spatial)`` long."""
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1]).float()
        book = self.codebook.float()
        book_sq = (book * book).sum(dim=1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        chunk = max(256, self.search_block // book.shape[0])
        for begin in range(0, flat.shape[0], chunk):
            part = flat[begin : begin + chunk]
            # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b ; ||a||^2 is constant per row.
            dist = book_sq[None, :] - 2.0 * part @ book.t()
            out[begin : begin + chunk] = dist.argmin(dim=1)
        return out.view(z_e.shape[0], *z_e.shape[2:])

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for indices ``(B, *spatial)`` as a channel-first latent."""
        return self.codebook[indices].movedim(-1, 1).contiguous()

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Snap ``z_e`` to the codebook. Returns (quantised latent with straight-through
        gradient, commitment loss). In training mode the codebook follows by EMA."""
        indices = self.code_indices(z_e.detach())
        quantised = self.embed(indices).to(z_e.dtype)
        if self.training:
            self._ema_update(z_e.detach(), indices)
        loss = self.config.commitment_cost * torch.nn.functional.mse_loss(quantised.detach().float(), z_e.float())
        quantised = z_e + (quantised - z_e).detach()
        return quantised, loss

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA codebook update (same arithmetic as MONAI's ``EMAQuantizer`` without one-hot)."""
        ema = self._ema
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1]).float()
        idx = indices.reshape(-1)
        counts = torch.bincount(idx, minlength=ema.num_embeddings).to(flat.dtype)
        dw = torch.zeros_like(ema.ema_w).index_add_(0, idx, flat)
        decay, eps = ema.decay, ema.epsilon
        ema.ema_cluster_size.data.mul_(decay).add_(counts, alpha=1 - decay)
        n = ema.ema_cluster_size.sum()
        weights = (ema.ema_cluster_size + eps) / (n + ema.num_embeddings * eps) * n
        ema.ema_w.data.mul_(decay).add_(dw, alpha=1 - decay)
        ema.embedding.weight.data.copy_(ema.ema_w / weights.unsqueeze(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Quantised latent (deterministic; never updates the codebook)."""
        self.check_image(x)
        z_e = self.net.encode(x)
        return self.embed(self.code_indices(z_e)).to(z_e.dtype)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Decode a latent. By default ``z`` is first snapped to the codebook (as MONAI's
        ``decode_stage_2_outputs``): a denoised latent is not exactly on the codebook."""
        self.check_latent(z)
        if quantize:
            z = self.embed(self.code_indices(z)).to(z.dtype)
        return self.net.decode(z)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        self.check_image(x)
        z_e = self.net.encode(x)
        quantised, loss = self.quantize(z_e)
        return AutoencoderOutput(self.net.decode(quantised), loss, quantised)


def use_channels_last(module: nn.Module, spatial_dims: int) -> nn.Module:
    """Store convolution weights channels-last (NDHWC / NHWC), in place.

    oneDNN then runs the convolutions in its blocked channels-last kernels: measured on the
    2-core CPU, whole-brain encode/decode and denoiser passes get 1.2-2.5x faster. Results
    change only by float rounding; ``load_state_dict`` and ``.to(device)`` keep the layout.
    """
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    return module.to(memory_format=fmt)


def build_autoencoder(config: AutoencoderConfig, channels_last: bool = True) -> FirstStage:
    """Build the first stage described by ``config`` (weights channels-last by default,
    see :func:`use_channels_last`)."""
    if not isinstance(config, AutoencoderConfig):
        raise SettingsError(f"build_autoencoder needs an AutoencoderConfig, got {type(config).__name__}.")
    model: FirstStage = KLAutoencoder(config) if config.kind == "kl" else VQAutoencoder(config)
    if channels_last:
        use_channels_last(model, config.spatial_dims)
    return model


# --------------------------------------------------------------------------- perceptual loss


def build_perceptual_loss(spatial_dims: int, weights_path: str | Path | None = None) -> nn.Module | None:
    """Optional perceptual (LPIPS-like) loss that never downloads anything.

    Returns MONAI's ``PerceptualLoss`` on a torchvision ResNet-50 whose weights are read
    from ``weights_path`` (a local torchvision ``state_dict``), in "fake 3D" mode for
    volumes (2D features on slices of the three orientations). Returns ``None`` (the
    loss is disabled) when no path is given, the file does not exist or torchvision is
    not installed; training must then rely on the L1 + adversarial losses (§3.3.3).
    """
    if weights_path is None:
        return None
    path = Path(weights_path)
    if not path.is_file():
        return None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return None
    from monai.losses import PerceptualLoss

    return PerceptualLoss(
        spatial_dims=spatial_dims,
        network_type="resnet50",
        is_fake_3d=spatial_dims == 3,
        pretrained=True,
        pretrained_path=str(path),
    )


__all__ = [
    "AutoencoderOutput",
    "FirstStage",
    "KLAutoencoder",
    "VQAutoencoder",
    "build_autoencoder",
    "build_perceptual_loss",
    "use_channels_last",
]
