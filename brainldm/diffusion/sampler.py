"""High-level deterministic samplers: encode a latent to noise and generate back (DDIM or EDICT).

Counterfactual generation (thesis §2.3.6, §3.4.3) = ``invert`` the encoded input with the null label,
then ``generate`` from the result toward "healthy" with classifier-free guidance. Both walk the explicit
``(t, t_prev)`` pairs of :func:`~brainldm.diffusion.schedule.timestep_pairs`.

The noise model is ``eps_fn(z, t) -> Tensor | GuidedNoise`` with ``t`` a Python int; labels and
guidance are bound by the caller (see :func:`brainldm.diffusion.guidance.make_noise_fn`). When it
returns a :class:`~brainldm.diffusion.guidance.GuidedNoise`, its ``pseudo_gradient`` (``eps_healthy -
eps_null``) reaches the callback, which is how GradDiff records it.

Callbacks are called after every step as ``callback(step_index, num_steps, t, info)`` with
``step_index`` counting executed steps from 0, ``t`` the step's higher timestep and ``info`` a
:class:`StepInfo`. ``cancel()`` is polled before every step; when it returns True the sampler raises
:class:`Cancelled`.

Latent types: DDIM uses one tensor; EDICT a pair ``(x, y)``. ``invert`` returns a tensor (DDIM) or a
pair (EDICT) and ``generate`` accepts the same, so ``generate(invert(z))`` round-trips. ``generate``
with EDICT also accepts a single tensor (``x = y = z``); :func:`final_latent` picks ``x`` from a pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from brainldm.diffusion.ddim import ddim_inversion_step, ddim_step
from brainldm.diffusion.edict import (
    check_mixing_weight,
    edict_generation_step,
    edict_inversion_step,
    leapfrog_x_first,
)
from brainldm.diffusion.guidance import GuidedNoise
from brainldm.diffusion.schedule import NoiseSchedule, timestep_pairs
from brainldm.errors import SettingsError

Latent = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
EpsFn = Callable[[torch.Tensor, int], "torch.Tensor | GuidedNoise"]
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised by the samplers when the ``cancel`` check returns True."""


@dataclass(frozen=True)
class SamplerSettings:
    """How to walk the diffusion trajectory.

    ``method``: ``"ddim"`` (Eq. 2.33/2.47) or ``"edict"`` (Eq. 2.50-2.54); ``num_steps``: N;
    ``omega``: EDICT mixing weight (thesis grid 0.91-0.99, best 0.97); ``leapfrog``: alternate the
    EDICT update order every step; ``noise_level``: the timestep ``L`` the inversion stops at
    (None = all ``T``; see :func:`brainldm.diffusion.schedule.timestep_pairs`).
    """

    method: Literal["ddim", "edict"] = "edict"
    num_steps: int = 50
    omega: float = 0.97
    leapfrog: bool = True
    noise_level: int | None = None  # L: highest timestep the inversion reaches (None = T)

    def validate(self, num_train_timesteps: int = 1000) -> "SamplerSettings":
        if self.method not in ("ddim", "edict"):
            raise SettingsError(f"sampler method must be 'ddim' or 'edict', got {self.method!r}")
        timestep_pairs(self.num_steps, num_train_timesteps, self.noise_level)  # checks N and L
        if self.method == "edict":
            check_mixing_weight(self.omega)
        return self


@dataclass
class StepInfo:
    """What a callback learns about the step just taken.

    ``latent``: the latent after the step (``x`` for EDICT), ``latent_y``: EDICT's ``y`` (else None);
    ``eps``: the noise the step used (the last of EDICT's two evaluations); ``pseudo_gradient``:
    ``eps_label - eps_null`` when the noise function provided it (EDICT: mean of the two evaluations).
    """

    direction: Literal["invert", "generate"]
    t: int
    t_prev: int
    latent: torch.Tensor
    latent_y: torch.Tensor | None
    eps: torch.Tensor
    pseudo_gradient: torch.Tensor | None


StepCallback = Callable[[int, int, int, StepInfo], None]


def chain_callbacks(*callbacks: StepCallback | None) -> StepCallback | None:
    """One callback calling each given (non-None) callback in turn."""
    active = [cb for cb in callbacks if cb is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def chained(step_index: int, num_steps: int, t: int, info: StepInfo) -> None:
        for cb in active:
            cb(step_index, num_steps, t, info)

    return chained


def final_latent(latent: Latent) -> torch.Tensor:
    """The single latent of a sampler result: the tensor itself, or ``x`` of an EDICT pair."""
    return latent[0] if isinstance(latent, tuple) else latent


class _NoiseRecorder:
    """Binds ``t`` into ``eps_fn`` and keeps what the evaluations of one step returned."""

    def __init__(self, eps_fn: EpsFn, t: int) -> None:
        self.eps_fn = eps_fn
        self.t = t
        self.eps: torch.Tensor | None = None
        self.pseudo_gradients: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = self.eps_fn(z, self.t)
        if isinstance(out, GuidedNoise):
            eps = out.eps
            if out.pseudo_gradient is not None:
                self.pseudo_gradients.append(out.pseudo_gradient)
        elif isinstance(out, torch.Tensor):
            eps = out
        else:
            raise TypeError(f"eps_fn must return a Tensor or GuidedNoise, got {type(out).__name__}")
        if eps.shape != z.shape:
            raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for a latent of shape {tuple(z.shape)}")
        self.eps = eps
        return eps

    def pseudo_gradient(self) -> torch.Tensor | None:
        if not self.pseudo_gradients:
            return None
        if len(self.pseudo_gradients) == 1:
            return self.pseudo_gradients[0]
        return torch.stack(self.pseudo_gradients).mean(dim=0)


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("diffusion sampling was cancelled")


def invert(
    z0: torch.Tensor,
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    callback: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Latent:
    """Encode a clean latent into noise over N steps (DDIM Eq. 2.47, or EDICT's inverse of Eq. 2.53/2.54).

    Walks ``timestep_pairs(N)`` in reverse (``t_prev -> t``, from ``t_prev = -1`` upward). The thesis
    encodes with the null label (§3.4.3). Returns ``z_T`` (DDIM) or ``(x_T, y_T)`` (EDICT).
    """
    settings.validate(schedule.num_train_timesteps)
    pairs = timestep_pairs(settings.num_steps, schedule.num_train_timesteps, settings.noise_level)
    n = len(pairs)
    if settings.method == "edict":
        x, y = z0, z0
    else:
        z = z0
    for step_index, generation_index in enumerate(range(n - 1, -1, -1)):
        _check_cancel(cancel)
        t, t_prev = pairs[generation_index]
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        noise = _NoiseRecorder(eps_fn, t)
        if settings.method == "edict":
            x_first = leapfrog_x_first(generation_index, settings.leapfrog)
            x, y = edict_inversion_step(x, y, noise, a_t, a_prev, settings.omega, x_first)
            latent, latent_y = x, y
        else:
            z = ddim_inversion_step(z, noise(z), a_prev, a_t)
            latent, latent_y = z, None
        if callback is not None:
            info = StepInfo("invert", t, t_prev, latent, latent_y, noise.eps, noise.pseudo_gradient())
            callback(step_index, n, t, info)
    return (x, y) if settings.method == "edict" else z


def generate(
    z_T: Latent,
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    callback: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Latent:
    """Denoise over N steps from the highest timestep of ``timestep_pairs(N)`` to the clean latent.

    DDIM: Eq. 2.33 with sigma = 0; EDICT: Eq. 2.53 + mixing (Eq. 2.54), leapfrog optional. The thesis
    generates with the healthy label and classifier-free guidance (Eq. 2.45) bound into ``eps_fn``.
    Returns ``z_0`` (DDIM) or ``(x_0, y_0)`` (EDICT; :func:`final_latent` gives ``x_0``).
    """
    settings.validate(schedule.num_train_timesteps)
    pairs = timestep_pairs(settings.num_steps, schedule.num_train_timesteps, settings.noise_level)
    n = len(pairs)
    if settings.method == "edict":
        x, y = z_T if isinstance(z_T, tuple) else (z_T, z_T)
    else:
        z = final_latent(z_T)
    for step_index, (t, t_prev) in enumerate(pairs):
        _check_cancel(cancel)
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        noise = _NoiseRecorder(eps_fn, t)
        if settings.method == "edict":
            x_first = leapfrog_x_first(step_index, settings.leapfrog)
            x, y = edict_generation_step(x, y, noise, a_t, a_prev, settings.omega, x_first)
            latent, latent_y = x, y
        else:
            z = ddim_step(z, noise(z), a_t, a_prev)
            latent, latent_y = z, None
        if callback is not None:
            info = StepInfo("generate", t, t_prev, latent, latent_y, noise.eps, noise.pseudo_gradient())
            callback(step_index, n, t, info)
    return (x, y) if settings.method == "edict" else z
