"""Deterministic DDIM steps (Song et al. 2021) on explicit cumulative alphas.

Pure functions: the caller supplies ``abar`` values (``NoiseSchedule.alpha_bar(t)``; use
``1.0`` for ``t_prev = -1``) and the noise prediction. Alphas may be Python floats or
tensors broadcastable against the latent (e.g. shape ``(B, 1, 1, 1, 1)``).
"""

from __future__ import annotations

import math

import torch

AlphaBar = float | torch.Tensor


def _sqrt(value: AlphaBar) -> AlphaBar:
    if isinstance(value, torch.Tensor):
        return value.sqrt()
    if value < 0:
        raise ValueError(f"cumulative alpha must be non-negative, got {value}")
    return math.sqrt(value)


def predict_x0(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: AlphaBar) -> torch.Tensor:
    """Predicted clean latent from ``z_t`` and its noise estimate (Eq. 2.13 solved for x_0).

    ``x0_hat = (z_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)`` (the "predicted x_0" term of Eq. 2.33).
    """
    return (z_t - _sqrt(1.0 - alpha_bar_t) * eps) / _sqrt(alpha_bar_t)


def ddim_step(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: AlphaBar, alpha_bar_prev: AlphaBar) -> torch.Tensor:
    """One deterministic DDIM generation step ``z_t -> z_{t_prev}`` (Eq. 2.33 with sigma_t = 0).

    ``z_prev = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps`` with
    ``x0_hat = predict_x0(z_t, eps, abar_t)`` and ``eps = eps_theta(z_t, t)``.
    """
    x0 = predict_x0(z_t, eps, alpha_bar_t)
    return _sqrt(alpha_bar_prev) * x0 + _sqrt(1.0 - alpha_bar_prev) * eps


def ddim_inversion_step(
    z_prev: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: AlphaBar, alpha_bar_t: AlphaBar
) -> torch.Tensor:
    """One DDIM inversion (encoding) step ``z_{t_prev} -> z_t`` (Eq. 2.47).

    ``z_t = sqrt(abar_t) * (z_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev) + sqrt(1 - abar_t) eps``.
    The noise is estimated at the *known* latent, ``eps = eps_theta(z_prev, t)``, in place of
    the unknown ``eps_theta(z_t, t)`` that an exact inverse of Eq. 2.33 would need: this
    Euler approximation (Eq. 2.46) is why a DDIM round trip is not exact.
    """
    x0 = predict_x0(z_prev, eps, alpha_bar_prev)
    return _sqrt(alpha_bar_t) * x0 + _sqrt(1.0 - alpha_bar_t) * eps
