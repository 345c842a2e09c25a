"""Classifier-free guidance (Ho & Salimans 2021; thesis Eq. 2.45).

    eps_hat(x, t) = (1 + C) * eps(x, t, L) - C * eps(x, t, null)

(The thesis prints Eq. 2.45 with a ``+`` before the second term; the guidance of Ho & Salimans
and of the reference code subtracts it, as here.) ``C = 0`` is plain conditional sampling.

The difference ``eps(x, t, L) - eps(x, t, null)`` is GradDiff's latent *pseudo-gradient*
(thesis §4.4.1), so the helpers return it with the guided noise in a :class:`GuidedNoise`.

A denoiser is any callable ``model(z, t, labels, **model_kwargs) -> eps`` with ``z`` of shape
``(B, C, *S)``, ``t`` and ``labels`` ``(B,)`` long tensors (see ``brainldm.nets.denoiser``:
``HEALTHY``, ``DISEASED``, ``NULL_LABEL``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

Denoiser = Callable[..., torch.Tensor]


@dataclass
class GuidedNoise:
    """A noise prediction plus, when guidance was evaluated, GradDiff's pseudo-gradient.

    ``eps``: the noise the sampler steps with (guided when ``C > 0``).
    ``pseudo_gradient``: ``eps(x, t, L) - eps(x, t, null)`` or ``None`` when the unconditional
    branch was not evaluated.
    """

    eps: torch.Tensor
    pseudo_gradient: torch.Tensor | None = None


def guided_noise(eps_cond: torch.Tensor, eps_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guided noise ``(1 + C) eps_cond - C eps_null`` (Eq. 2.45)."""
    if eps_cond.shape != eps_null.shape:
        raise ValueError(f"conditional {tuple(eps_cond.shape)} and null {tuple(eps_null.shape)} shapes differ")
    return (1.0 + scale) * eps_cond - scale * eps_null


def composed_guided_noise(eps_cond: torch.Tensor, *negatives: tuple[torch.Tensor, float]) -> torch.Tensor:
    """Guidance away from several other conditions at once:
    ``eps_cond + sum_k C_k (eps_cond - eps_k)`` (Eq. 2.45 with one guidance term per other
    condition, in the spirit of Liu et al. 2022's composed guidance). With one ``(eps_null, C)`` it is
    :func:`guided_noise`. The synthesis models use it to guide toward the window's label
    (negative: the null label) and toward the painted lesion (negative: the same brain with an
    empty lesion channel, "mask guidance")."""
    out = eps_cond
    for eps_other, scale in negatives:
        if eps_other.shape != eps_cond.shape:
            raise ValueError(f"conditional {tuple(eps_cond.shape)} and other {tuple(eps_other.shape)} shapes differ")
        out = out + float(scale) * (eps_cond - eps_other)
    return out


def _timestep_tensor(t: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), int(t), dtype=torch.long, device=device)


def _label_tensor(label: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), int(label), dtype=torch.long, device=device)


def _repeat_batch_kwargs(model_kwargs: Mapping[str, Any], batch: int, times: int) -> dict[str, Any]:
    out = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
            out[key] = torch.cat([value] * times, dim=0)
        else:
            out[key] = value
    return out


def batched_guided_noise(
    model: Denoiser,
    z: torch.Tensor,
    t: int,
    label: int,
    null_label: int,
    scale: float,
    model_kwargs: Mapping[str, Any] | None = None,
) -> GuidedNoise:
    """Evaluate ``eps(z, t, label)`` and ``eps(z, t, null)`` in ONE network call and guide them (Eq. 2.45).

    The batch is doubled (``[z; z]`` with labels ``[label...; null...]``); tensors in
    ``model_kwargs`` whose first dimension equals the batch size (e.g. patch ``start``/``extent``)
    are doubled alike, anything else is passed unchanged.
    """
    model_kwargs = dict(model_kwargs or {})
    batch = z.shape[0]
    device = z.device
    z2 = torch.cat([z, z], dim=0)
    t2 = _timestep_tensor(t, 2 * batch, device)
    labels = torch.cat([_label_tensor(label, batch, device), _label_tensor(null_label, batch, device)])
    eps2 = model(z2, t2, labels, **_repeat_batch_kwargs(model_kwargs, batch, 2))
    eps_cond, eps_null = eps2[:batch], eps2[batch:]
    return GuidedNoise(eps=guided_noise(eps_cond, eps_null, scale), pseudo_gradient=eps_cond - eps_null)


def make_noise_fn(
    model: Denoiser,
    label: int,
    null_label: int,
    scale: float = 0.0,
    model_kwargs: Mapping[str, Any] | None = None,
    with_pseudo_gradient: bool = False,
    model_dtype: torch.dtype | None = None,
) -> Callable[[torch.Tensor, int], GuidedNoise]:
    """Bind a denoiser, its labels and the guidance scale into the sampler's ``eps_fn(z, t)``.

    - inversion: ``make_noise_fn(model, label=NULL_LABEL, null_label=NULL_LABEL)`` (one call per step);
    - generation: ``make_noise_fn(model, label=HEALTHY, null_label=NULL_LABEL, scale=C)``: both labels in
      one batched call (:func:`batched_guided_noise`) when ``C != 0`` or ``with_pseudo_gradient``.

    ``model_dtype``: cast ``z`` to this dtype for the network and the noise back to ``z``'s dtype
    (e.g. float64 latents for exact EDICT arithmetic with a float32 network).
    """
    model_kwargs = dict(model_kwargs or {})
    two_branches = label != null_label and (scale != 0.0 or with_pseudo_gradient)

    def eps_fn(z: torch.Tensor, t: int) -> GuidedNoise:
        z_in = z.to(model_dtype) if model_dtype is not None else z
        if two_branches:
            out = batched_guided_noise(model, z_in, t, label, null_label, scale, model_kwargs)
        else:
            batch = z_in.shape[0]
            eps = model(z_in, _timestep_tensor(t, batch, z_in.device), _label_tensor(label, batch, z_in.device),
                        **model_kwargs)
            out = GuidedNoise(eps=eps)
        if out.eps.dtype != z.dtype:
            out = GuidedNoise(
                eps=out.eps.to(z.dtype),
                pseudo_gradient=None if out.pseudo_gradient is None else out.pseudo_gradient.to(z.dtype),
            )
        return out

    return eps_fn
