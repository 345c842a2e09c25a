"""Diffusion maths as pure functions on tensors: schedule, DDIM, EDICT, guidance, samplers."""

from brainldm.diffusion.ddim import ddim_inversion_step, ddim_step, predict_x0
from brainldm.diffusion.edict import edict_coefficients, edict_generation_step, edict_inversion_step
from brainldm.diffusion.guidance import GuidedNoise, batched_guided_noise, guided_noise, make_noise_fn
from brainldm.diffusion.sampler import (
    Cancelled,
    SamplerSettings,
    StepInfo,
    chain_callbacks,
    final_latent,
    generate,
    invert,
)
from brainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig, timestep_pairs

__all__ = [
    "Cancelled",
    "GuidedNoise",
    "NoiseSchedule",
    "SamplerSettings",
    "ScheduleConfig",
    "StepInfo",
    "batched_guided_noise",
    "chain_callbacks",
    "ddim_inversion_step",
    "ddim_step",
    "edict_coefficients",
    "edict_generation_step",
    "edict_inversion_step",
    "final_latent",
    "generate",
    "guided_noise",
    "invert",
    "make_noise_fn",
    "predict_x0",
    "timestep_pairs",
]
