"""The super-resolution latent diffusion model (thesis §4.4.1, configuration S4 of §4.3.3).

The SR model is BrainLDM's latent diffusion with a **structural encoder** fed the low-resolution
image: the low-resolution slice is upsampled 2x (bicubic, as the degradation pipelines'
Algorithm 2 line 8), encoded by the first-stage autoencoder ``E`` and scaled by ``s``; that
condition latent ``c = s E(bicubic)`` enters a trainable copy of the denoiser's encoder half
(:class:`~brainldm.nets.conditioning.StructuralEncoder`, MONAI ``ControlNet``, zero-initialised
injections) whose features are added to every skip connection and to the middle block of the
denoiser. The pair predicts the noise of the high-resolution latent ``s E(HR)``::

    eps_theta(z_t, t | c)       (epsilon parameterisation, Eq. 2.31; no class: the null label)

Sampling (:func:`sr_timestep_pairs`, :func:`sdedit_start`, :func:`sample_sr_latents`) runs a
deterministic DDIM subsequence (Eq. 2.33 with sigma = 0) of ``steps`` steps. It starts either
from pure noise (``strength = 1``, the thesis) or, SDEdit-style (Meng et al. 2022), from the
condition latent itself noised to ``t_start = strength * T - 1`` by the forward process
(Eq. 2.13): the model then only has to add the detail the bicubic image lacks, in fewer steps.

The maths are small pure functions on tensors; :class:`SRModel` only wires the networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from brainldm.diffusion.ddim import ddim_step
from brainldm.diffusion.schedule import NoiseSchedule
from brainldm.errors import SettingsError
from brainldm.nets.conditioning import ConditionedDenoiser, build_structural_encoder
from brainldm.nets.config import ConditioningConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser

# --------------------------------------------------------------------------- pure maths


def sr_timestep_pairs(steps: int, strength: float, num_train_timesteps: int = 1000) -> list[tuple[int, int]]:
    """Explicit ``(t, t_prev)`` pairs of an SR DDIM subsequence of ``steps`` steps, in generation order.

    The start timestep is ``t_start = round(strength * T) - 1`` (``strength = 1``: ``T - 1``, pure
    noise). The ``steps`` timesteps are spread evenly over ``[0, t_start]``:
    ``t_k = round((k + 1) * (t_start + 1) / steps) - 1`` for ``k = 0 .. steps - 1`` (so
    ``t_{steps-1} = t_start``); each step goes to the next lower one and the last to ``t_prev = -1``
    (``abar = 1``, the clean latent), as :func:`brainldm.diffusion.schedule.timestep_pairs`.
    Example: ``steps = 4, strength = 0.4, T = 1000`` -> ``[(399, 299), (299, 199), (199, 99), (99, -1)]``.
    """
    steps, T = int(steps), int(num_train_timesteps)
    if not 0.0 < float(strength) <= 1.0:
        raise SettingsError(f"SR strength must lie in (0, 1], got {strength}.")
    t_start = max(round(float(strength) * T) - 1, 0)
    if not 1 <= steps <= t_start + 1:
        raise SettingsError(f"The number of SR steps must lie in [1, {t_start + 1}] for strength {strength} "
                            f"(T = {T}), got {steps}.")
    ts = [round((k + 1) * (t_start + 1) / steps) - 1 for k in range(steps)]
    pairs = []
    for k in range(steps - 1, -1, -1):
        pairs.append((ts[k], ts[k - 1] if k > 0 else -1))
    return pairs


def sdedit_start(z_condition: torch.Tensor, noise: torch.Tensor, alpha_bar_start: float) -> torch.Tensor:
    """The start latent of SDEdit: the condition latent diffused to ``t_start`` (Eq. 2.12/2.13).

    ``z_start = sqrt(abar_start) * z_condition + sqrt(1 - abar_start) * noise``. With ``abar`` near 0
    (``t_start = T - 1``) this is (almost) pure noise, the usual start of DDIM generation.
    """
    if z_condition.shape != noise.shape:
        raise ValueError(f"condition {tuple(z_condition.shape)} and noise {tuple(noise.shape)} must match")
    if not 0.0 <= float(alpha_bar_start) <= 1.0:
        raise ValueError(f"cumulative alpha must lie in [0, 1], got {alpha_bar_start}")
    return float(alpha_bar_start) ** 0.5 * z_condition + (1.0 - float(alpha_bar_start)) ** 0.5 * noise


NoiseFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def sample_sr_latents(noise_fn: NoiseFn, z_condition: torch.Tensor, noise: torch.Tensor,
                      pairs: Sequence[tuple[int, int]], schedule: NoiseSchedule) -> torch.Tensor:
    """Deterministic DDIM from the SDEdit start to the clean SR latent.

    ``noise_fn(z_t, t, condition) -> eps``; ``pairs`` from :func:`sr_timestep_pairs`. Starts at
    :func:`sdedit_start` with ``abar(pairs[0][0])``, then applies
    :func:`brainldm.diffusion.ddim.ddim_step` (Eq. 2.33, sigma = 0) for each ``(t, t_prev)``; the
    last step (``t_prev = -1``) returns the predicted clean latent.
    """
    if not pairs:
        raise ValueError("An SR subsequence needs at least one (t, t_prev) pair.")
    z = sdedit_start(z_condition, noise, schedule.alpha_bar(pairs[0][0]))
    for t, t_prev in pairs:
        eps = noise_fn(z, int(t), z_condition)
        z = ddim_step(z, eps.to(z.dtype), schedule.alpha_bar(t), schedule.alpha_bar(t_prev))
    return z


# --------------------------------------------------------------------------- networks


class SRModel(nn.Module):
    """``model(z_t, t, condition) -> eps``: the SR denoiser beside its structural encoder.

    ``model.net`` is a :class:`~brainldm.nets.conditioning.ConditionedDenoiser`
    (``net.denoiser``, ``net.encoder``); the class label is always the classifier-free null label.
    """

    def __init__(self, denoiser_config: DenoiserConfig, conditioning: ConditioningConfig,
                 channels_last: bool = True) -> None:
        super().__init__()
        if conditioning.mechanism != "structural":
            raise SettingsError("The SR model conditions through a structural encoder (mechanism 'structural').")
        if conditioning.mask_latent_channels != denoiser_config.latent_channels:
            raise SettingsError(f"The SR condition latent has {conditioning.mask_latent_channels} channels but the "
                                f"denoiser's latent {denoiser_config.latent_channels}; they must be equal.")
        denoiser = build_denoiser(denoiser_config, channels_last=channels_last)
        encoder = build_structural_encoder(denoiser_config, conditioning, channels_last=channels_last)
        encoder.copy_denoiser(denoiser)  # ControlNet: start from the denoiser's own encoder weights
        self.net = ConditionedDenoiser(denoiser, conditioning, encoder)
        self.denoiser_config = denoiser_config
        self.conditioning = conditioning

    @property
    def denoiser(self) -> nn.Module:
        return self.net.denoiser

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    def forward(self, z: torch.Tensor, t: torch.Tensor | int, condition: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if condition is None or condition.shape != z.shape:
            raise ValueError(f"The SR condition latent must have the noisy latent's shape {tuple(z.shape)}, got "
                             f"{None if condition is None else tuple(condition.shape)}.")
        return self.net(z, t, self.net.null_label, condition=condition)


def build_sr_model(denoiser_config: DenoiserConfig, conditioning: ConditioningConfig,
                   channels_last: bool = True) -> SRModel:
    """A fresh :class:`SRModel` (channels-last weights for inference, contiguous for training)."""
    if not isinstance(denoiser_config, DenoiserConfig) or not isinstance(conditioning, ConditioningConfig):
        raise SettingsError("build_sr_model needs a DenoiserConfig and a ConditioningConfig.")
    return SRModel(denoiser_config, conditioning, channels_last=channels_last)


__all__ = ["SRModel", "build_sr_model", "sample_sr_latents", "sdedit_start", "sr_timestep_pairs"]
