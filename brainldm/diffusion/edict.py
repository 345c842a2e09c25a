"""EDICT: exactly invertible coupled DDIM steps (Wallace et al. 2023; thesis Eq. 2.50-2.54).

The deterministic DDIM step (Eq. 2.33, sigma = 0) is written as ``z_prev = a_t z_t + b_t eps(z_t, t)``
(Eq. 2.50) with

    a_t = sqrt(abar_prev / abar_t)                               (Eq. 2.51)
    b_t = sqrt(1 - abar_prev) - a_t * sqrt(1 - abar_t)           (Eq. 2.52)

EDICT keeps two latents ``x`` and ``y`` and evaluates the noise of each at the other, which makes
every update an affine coupling layer (Eq. 2.48/2.49, 2.53), followed by a mixing layer with
weight ``omega`` (Eq. 2.54). Generation (high ``t`` -> low):

    x = a x + b eps(y, t);  y = a y + b eps(x, t);  x = omega x + (1 - omega) y;  y = omega y + (1 - omega) x

and inversion (low ``t`` -> high) undoes it in reverse order:

    y = (y - (1 - omega) x) / omega;  x = (x - (1 - omega) y) / omega;  y = (y - b eps(x, t)) / a;  x = (x - b eps(y, t)) / a

With *leapfrog* the roles of ``x`` and ``y`` swap every other step (``x_first`` alternates); the
inversion of a step uses the same ``x_first`` flag as the generation step it undoes, which mirrors
the order. Whatever the noise model, inversion followed by generation returns the input up to
floating-point rounding.

The noise model is passed as a callable ``eps_at(latent) -> eps`` with the timestep (and labels,
guidance) already bound, so that the second evaluation inside a step sees the freshly updated latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from brainldm.errors import SettingsError

NoiseAt = Callable[[torch.Tensor], torch.Tensor]


def edict_coefficients(alpha_bar_t: float, alpha_bar_prev: float) -> tuple[float, float]:
    """``(a_t, b_t)`` of Eq. 2.51/2.52 for one step ``t -> t_prev`` (``abar_prev = 1`` at ``t_prev = -1``)."""
    alpha_bar_t = float(alpha_bar_t)
    alpha_bar_prev = float(alpha_bar_prev)
    if not (0.0 < alpha_bar_t <= 1.0 and 0.0 < alpha_bar_prev <= 1.0):
        raise ValueError(f"cumulative alphas must lie in (0, 1], got {alpha_bar_t}, {alpha_bar_prev}")
    a = math.sqrt(alpha_bar_prev / alpha_bar_t)
    b = math.sqrt(1.0 - alpha_bar_prev) - a * math.sqrt(1.0 - alpha_bar_t)
    return a, b


def check_mixing_weight(omega: float) -> float:
    omega = float(omega)
    if not 0.0 < omega <= 1.0:
        raise SettingsError(f"EDICT mixing weight omega must be in (0, 1] (thesis: 0.91-0.99), got {omega}")
    return omega


def edict_generation_step(
    x: torch.Tensor,
    y: torch.Tensor,
    eps_at: NoiseAt,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    omega: float,
    x_first: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One EDICT denoising step ``(x_t, y_t) -> (x_prev, y_prev)`` (Eq. 2.53 + mixing, Eq. 2.54).

    ``x_first=True``: ``x`` is updated first with ``eps_at(y)``, then ``y`` with ``eps_at(new x)``;
    ``x_first=False`` swaps the roles (leapfrog). The mixing layer is applied in the same order.
    """
    omega = check_mixing_weight(omega)
    a, b = edict_coefficients(alpha_bar_t, alpha_bar_prev)
    first, second = (x, y) if x_first else (y, x)
    first = a * first + b * eps_at(second)
    second = a * second + b * eps_at(first)
    first = omega * first + (1.0 - omega) * second
    second = omega * second + (1.0 - omega) * first
    return (first, second) if x_first else (second, first)


def edict_inversion_step(
    x: torch.Tensor,
    y: torch.Tensor,
    eps_at: NoiseAt,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    omega: float,
    x_first: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`edict_generation_step`: ``(x_prev, y_prev) -> (x_t, y_t)`` (Eq. 2.49 applied to 2.53/2.54).

    Pass the ``x_first`` flag of the generation step being undone: the mixing layer and the
    coupling updates are undone in the mirrored order.
    """
    omega = check_mixing_weight(omega)
    a, b = edict_coefficients(alpha_bar_t, alpha_bar_prev)
    first, second = (x, y) if x_first else (y, x)
    second = (second - (1.0 - omega) * first) / omega
    first = (first - (1.0 - omega) * second) / omega
    second = (second - b * eps_at(first)) / a
    first = (first - b * eps_at(second)) / a
    return (first, second) if x_first else (second, first)


def leapfrog_x_first(generation_index: int, leapfrog: bool = True) -> bool:
    """Whether ``x`` is updated first at generation step ``generation_index`` (0 = the highest ``t``).

    Matches Wallace et al.'s reference code: with leapfrog ``x`` leads on even steps and ``y`` on odd ones.
    """
    return (generation_index % 2 == 0) if leapfrog else True
