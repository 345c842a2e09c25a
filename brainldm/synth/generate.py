"""Lesion-mask conditioned generation (thesis §4.3): DDIM sampling of a synthesis model.

Small functions on tensors; :func:`synthesise` runs them for a batch of slices (2D models) or
one volume (3D models), all on the preprocessed (cropped, [-1, 1]) grid:

1. :func:`mask_latents` - the two-channel (brain, lesion) conditioning mask
   (:func:`brainldm.synth.lesions.conditioning_mask`) through the mask autoencoder, times
   ``mask_latent_scale``: the condition of every denoiser call.
2. :func:`conditioned_noise` - the noise prediction ``eps(z, t, y, condition)`` with the label
   ``y`` = diseased where the window's mask holds a lesion, healthy elsewhere, optionally guided
   toward it (classifier-free guidance, Eq. 2.45) and toward the painted lesion ("mask
   guidance": away from the same brain with an empty lesion channel and the healthy label,
   :func:`~brainldm.diffusion.guidance.composed_guided_noise`) - which makes the lesion's
   contrast stronger than plain conditional sampling of a small model gives.
3. :func:`sample` - deterministic DDIM steps (Eq. 2.33) on the explicit ``(t, t_prev)`` pairs of
   :func:`~brainldm.diffusion.schedule.timestep_pairs`. With ``known`` (the reference's own
   latent) and ``keep`` (where to keep it), every step replaces the kept region by the reference
   latent noised to the step's level (``sqrt(abar) z_ref + sqrt(1 - abar) e`` with one fixed
   ``e``, as RePaint / blended latent diffusion do), so only the region around the lesion is
   generated and the rest of the slice stays the reference's anatomy. Without ``keep`` the
   whole window is generated from noise, as the thesis's synthetic dataset (§4.3.5).
4. :func:`paste_weights` - where the decoded synthesis replaces the reference: the lesion
   dilated by a margin, inside the brain, with a soft (Gaussian) edge; 1 on the lesion itself.

Progress callbacks are ``callback(step_index, num_steps, t, info)`` as in
:mod:`brainldm.diffusion.sampler`; ``cancel()`` is polled before every step and raises
:class:`~brainldm.diffusion.sampler.Cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage as ndi

from brainldm.data.sampling import DISEASED, HEALTHY
from brainldm.diffusion.ddim import ddim_step
from brainldm.diffusion.guidance import composed_guided_noise
from brainldm.diffusion.sampler import Cancelled, StepCallback, StepInfo
from brainldm.diffusion.schedule import NoiseSchedule, timestep_pairs
from brainldm.errors import SettingsError

SynthMode = Literal["inpaint", "full"]


@dataclass(frozen=True)
class SynthSettings:
    """How to synthesise.

    ``steps``: DDIM steps N; ``guidance``: classifier-free guidance C toward the window's
    healthy / diseased label (0 = plain conditional sampling; the mask is always the condition);
    ``mask_guidance``: guidance M toward the painted lesion, away from the same brain with an
    empty lesion channel (0 = off; ignored by a healthy-masked synthesis);
    ``mode``: ``"inpaint"`` generates only the lesion's surroundings (``margin_mm``) and keeps the
    rest of the reference, ``"full"`` generates whole slices from the masks (the thesis's
    synthetic dataset); ``seed``: the noise; ``slice_batch``: slices per network call.
    ``healthy``: a healthy-masked synthesis - the lesion mask only says where to generate (the
    same region as with the lesion), the conditioning mask's lesion channel is all zero and the
    windows are labelled healthy, so the model fills the region with healthy tissue.
    """

    steps: int = 50
    guidance: float = 0.0
    mask_guidance: float = 0.0
    mode: SynthMode = "inpaint"
    margin_mm: float = 8.0
    seed: int = 0
    device: str = "cpu"
    slice_batch: int = 16
    healthy: bool = False

    def validate(self, num_train_timesteps: int = 1000) -> SynthSettings:
        if not 1 <= int(self.steps) <= num_train_timesteps:
            raise SettingsError(f"The number of synthesis steps must be between 1 and {num_train_timesteps}, "
                                f"got {self.steps}.")
        if not 0.0 <= float(self.guidance) <= 20.0:
            raise SettingsError(f"The guidance scale must lie in [0, 20], got {self.guidance}.")
        if not 0.0 <= float(self.mask_guidance) <= 20.0:
            raise SettingsError(f"The mask guidance scale must lie in [0, 20], got {self.mask_guidance}.")
        if self.mode not in ("inpaint", "full"):
            raise SettingsError(f"The synthesis mode must be 'inpaint' or 'full', got {self.mode!r}.")
        if not 0.0 <= float(self.margin_mm) <= 100.0:
            raise SettingsError(f"The margin around the lesion must lie in [0, 100] mm, got {self.margin_mm}.")
        if int(self.slice_batch) < 1:
            raise SettingsError("slice_batch must be at least 1.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_inference(cls, inference: dict | None, **overrides) -> SynthSettings:
        """The settings a synthesis bundle recommends (its ``bundle.json`` "inference": ``steps``,
        ``guidance``, ``mask_guidance``), with ``overrides`` that are not None taking precedence."""
        recommended = {k: (inference or {})[k] for k in ("steps", "guidance", "mask_guidance")
                       if isinstance((inference or {}).get(k), (int, float))}
        if "steps" in recommended:
            recommended["steps"] = int(recommended["steps"])
        chosen = {**recommended, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**chosen).validate()


# --------------------------------------------------------------------------- geometry helpers


def pad_spatial(array: np.ndarray, multiple: int, fill: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the spatial axes (all after the first two: batch, channel) at their end to a multiple
    of ``multiple``; returns the padded array and the slices that crop it back."""
    spatial = array.shape[2:]
    target = [-(-int(s) // multiple) * multiple for s in spatial]
    pad = [(0, 0), (0, 0)] + [(0, t - s) for s, t in zip(spatial, target)]
    crop = tuple(slice(0, int(s)) for s in spatial)
    return np.pad(array, pad, constant_values=fill), crop


def latent_keep_mask(generate: np.ndarray, compression: int) -> np.ndarray:
    """``(B, 1, *S/c)`` float: 1 where a latent voxel's image block holds no voxel of ``generate``
    ``(B, *S)`` (kept from the reference), 0 where it is generated."""
    generate = np.asarray(generate, dtype=bool)
    b, spatial = generate.shape[0], generate.shape[1:]
    shape = [b]
    for s in spatial:
        shape += [int(s) // compression, compression]
    blocks = generate.reshape(shape).any(axis=tuple(range(2, 2 + 2 * len(spatial), 2)))
    return (~blocks).astype(np.float32)[:, None]


def paste_weights(lesion: np.ndarray, brain: np.ndarray, margin_voxels: float, mode: SynthMode = "inpaint",
                  soften: float = 1.0) -> np.ndarray:
    """Weight ``(B, *S)`` in [0, 1] of the synthesis against the reference.

    ``inpaint``: the lesion dilated by ``margin_voxels`` (Euclidean), smoothed by a Gaussian of
    ``soften`` voxels, restricted to brain or lesion, exactly 1 on the lesion. ``full``: 1 on
    brain or lesion. The region that is generated is where the weight is > 0.
    """
    lesion = np.asarray(lesion, dtype=bool)
    inside = np.asarray(brain, dtype=bool) | lesion
    if mode == "full":
        return inside.astype(np.float32)
    out = np.zeros(lesion.shape, dtype=np.float32)
    for b in range(lesion.shape[0]):
        if not lesion[b].any():
            continue
        region = ndi.distance_transform_edt(~lesion[b]) <= float(margin_voxels)
        soft = ndi.gaussian_filter(region.astype(np.float32), soften) if soften > 0 else region.astype(np.float32)
        out[b] = np.maximum(soft, lesion[b]) * inside[b]
    return out


# --------------------------------------------------------------------------- networks


@torch.no_grad()
def mask_latents(mask_autoencoder, masks: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latent ``(B, C, *S/c)`` of conditioning masks ``(B, 2, *S)`` (posterior mean)."""
    return mask_autoencoder.encode(masks) * float(scale)


def window_labels(lesion: torch.Tensor | np.ndarray) -> torch.Tensor:
    """DISEASED for windows ``(B, *S)`` holding any lesion voxel, HEALTHY otherwise."""
    lesion = torch.as_tensor(np.asarray(lesion) if not isinstance(lesion, torch.Tensor) else lesion)
    has = lesion.reshape(lesion.shape[0], -1).bool().any(dim=1)
    return torch.where(has, torch.tensor(DISEASED), torch.tensor(HEALTHY)).long()


def conditioned_noise(model, condition: torch.Tensor, labels: torch.Tensor, guidance: float = 0.0,
                      healthy_condition: torch.Tensor | None = None, mask_guidance: float = 0.0,
                      ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``eps_fn(z, t)`` of a :class:`~brainldm.nets.conditioning.ConditionedDenoiser` for one batch of
    windows: per-window labels, the mask latent as condition, guidance ``C`` toward the labels
    (negative: the null label, Eq. 2.45) and ``M`` toward the lesion (negative: ``healthy_condition``,
    the mask latent of the same brain without the lesion, with the healthy label), all branches
    in one batched call (:func:`~brainldm.diffusion.guidance.composed_guided_noise`)."""
    labels = labels.to(condition.device)
    branches = [(labels, condition, None)]
    if guidance > 0.0:
        branches.append((torch.full_like(labels, int(model.null_label)), condition, float(guidance)))
    if mask_guidance > 0.0:
        if healthy_condition is None:
            raise ValueError("mask guidance needs the healthy condition")
        branches.append((torch.full_like(labels, HEALTHY), healthy_condition.to(condition.device), float(mask_guidance)))

    k = len(branches)
    all_labels = torch.cat([b[0] for b in branches]) if k > 1 else labels  # fixed over the steps
    all_conditions = torch.cat([b[1] for b in branches]) if k > 1 else condition
    scales = [b[2] for b in branches[1:]]

    def eps_fn(z: torch.Tensor, t: int) -> torch.Tensor:
        batch = z.shape[0]
        eps = model(torch.cat([z] * k) if k > 1 else z, torch.full((k * batch,), int(t), device=z.device),
                    all_labels, condition=all_conditions)
        parts = eps.split(batch)
        return composed_guided_noise(parts[0], *zip(parts[1:], scales))

    return eps_fn


def sample(
    eps_fn: Callable[[torch.Tensor, int], torch.Tensor],
    schedule: NoiseSchedule,
    num_steps: int,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """DDIM generation (Eq. 2.33, sigma = 0) from ``noise`` to a clean latent.

    With ``known`` (a clean latent of the same shape) and ``keep`` (broadcastable weights, 1 = keep),
    the start is ``known`` noised to the first timestep with ``noise``, and after every step the
    kept region is reset to ``known`` noised to the new level with the same ``noise``; at the end
    it is exactly ``known``. Without them, the whole latent is generated from ``noise``.
    """
    pairs = timestep_pairs(num_steps, schedule.num_train_timesteps)
    if known is not None:
        if keep is None or known.shape != noise.shape:
            raise ValueError("known needs keep weights and the noise's shape")
        a = schedule.alpha_bar(pairs[0][0])
        z = a**0.5 * known + (1.0 - a) ** 0.5 * noise
    else:
        z = noise
    n = len(pairs)
    for index, (t, t_prev) in enumerate(pairs):
        if cancel is not None and cancel():
            raise Cancelled("synthesis was cancelled")
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        eps = eps_fn(z, t)
        z = ddim_step(z, eps, a_t, a_prev)
        if known is not None:
            reference = known if t_prev < 0 else a_prev**0.5 * known + (1.0 - a_prev) ** 0.5 * noise
            z = keep * reference + (1.0 - keep) * z
        if callback is not None:
            callback(index, n, t, StepInfo("generate", t, t_prev, z, None, eps, None))
    return z


@dataclass
class SynthesisOutput:
    """Synthesised windows on the preprocessed grid: ``images`` ``(B, 4, *S)`` in [-1, 1] (the
    decoded synthesis, not yet blended) and ``weights`` ``(B, *S)`` for pasting them."""

    images: np.ndarray
    weights: np.ndarray


@torch.no_grad()
def synthesise(
    bundle,
    images: np.ndarray,
    brain: np.ndarray,
    lesion: np.ndarray,
    settings: SynthSettings,
    margin_voxels: float | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SynthesisOutput:
    """Synthesise a lesion into windows of a reference (slices of a 2D model, a volume of a 3D one).

    ``images`` ``(B, 4, *S)`` normalised reference windows, ``brain`` and ``lesion`` ``(B, *S)``
    bool. ``bundle`` is a :class:`~brainldm.nets.synthesis_bundle.SynthesisBundle`. The lesion
    sets the generated region and, unless ``settings.healthy``, the conditioning mask's lesion
    channel and the windows' diseased label; a healthy-masked synthesis conditions on an empty
    lesion channel (and the healthy label) over the same region.
    """
    from brainldm.synth.lesions import conditioning_mask

    settings = settings.validate(bundle.schedule.num_train_timesteps)
    images = np.asarray(images, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    lesion = np.asarray(lesion, dtype=bool)
    if images.ndim != bundle.spatial_dims + 2 or images.shape[1] != bundle.autoencoder_config.in_channels:
        raise SettingsError(f"This {bundle.spatial_dims}D synthesis model takes windows of shape (B, "
                            f"{bundle.autoencoder_config.in_channels}, {bundle.spatial_dims} axes); got {images.shape}.")
    if brain.shape != images.shape[:1] + images.shape[2:] or lesion.shape != brain.shape:
        raise SettingsError(f"Brain {brain.shape} and lesion {lesion.shape} masks must match the windows {images.shape}.")
    margin = float(settings.margin_mm if margin_voxels is None else margin_voxels)
    weights = paste_weights(lesion, brain, margin, settings.mode)
    condition_lesion = np.zeros_like(lesion) if settings.healthy else lesion
    masks = np.stack([conditioning_mask(b, l) for b, l in zip(brain, condition_lesion)])
    c = bundle.compression
    multiple = c * int(bundle.model.size_multiple)
    padded_images, crop = pad_spatial(images, multiple, -1.0)
    padded_masks, _ = pad_spatial(masks, multiple, 0.0)
    generate_region, _ = pad_spatial((weights > 0)[:, None], multiple, 0.0)
    device = torch.device(settings.device)
    generator = torch.Generator().manual_seed(int(settings.seed))
    schedule = bundle.schedule
    out = np.empty_like(images)
    batch = max(1, int(settings.slice_batch))
    for begin in range(0, images.shape[0], batch):
        part = slice(begin, begin + batch)
        x = torch.from_numpy(np.ascontiguousarray(padded_images[part])).to(device)
        m = torch.from_numpy(np.ascontiguousarray(padded_masks[part])).to(device)
        condition = mask_latents(bundle.mask_autoencoder, m, bundle.mask_latent_scale)
        labels = window_labels(condition_lesion[part])
        healthy_condition = None
        mask_guidance = 0.0 if settings.healthy else float(settings.mask_guidance)
        if mask_guidance > 0.0:
            healthy_masks = np.stack([conditioning_mask(b, None) for b in brain[part]])
            healthy_masks, _ = pad_spatial(healthy_masks, multiple, 0.0)
            healthy_condition = mask_latents(bundle.mask_autoencoder, torch.from_numpy(healthy_masks).to(device),
                                             bundle.mask_latent_scale)
        z_ref = bundle.autoencoder.encode(x) * float(bundle.latent_scale)
        noise = torch.randn(z_ref.shape, generator=generator).to(device=device, dtype=z_ref.dtype)
        eps_fn = conditioned_noise(bundle.model, condition, labels, settings.guidance, healthy_condition, mask_guidance)
        if settings.mode == "inpaint":
            keep = torch.from_numpy(latent_keep_mask(generate_region[part, 0], c)).to(device)
            z = sample(eps_fn, schedule, settings.steps, noise, z_ref, keep, callback, cancel)
        else:
            z = sample(eps_fn, schedule, settings.steps, noise, callback=callback, cancel=cancel)
        decoded = bundle.autoencoder.decode(z / float(bundle.latent_scale)).float().cpu().numpy()
        out[part] = np.clip(decoded[(slice(None), slice(None), *crop)], -1.0, 1.0)
    return SynthesisOutput(images=out, weights=weights)


def blend(reference: np.ndarray, synthetic: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights * synthetic + (1 - weights) * reference`` with weights ``(B, *S)`` broadcast over channels."""
    w = np.asarray(weights, dtype=np.float32)[:, None]
    return (w * synthetic + (1.0 - w) * reference).astype(np.float32)


__all__ = [
    "SynthSettings",
    "SynthesisOutput",
    "blend",
    "conditioned_noise",
    "latent_keep_mask",
    "mask_latents",
    "pad_spatial",
    "paste_weights",
    "sample",
    "synthesise",
    "window_labels",
]
