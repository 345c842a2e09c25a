"""Tiny synthetic training data for smoke tests and CI: small 4-sequence "brains" with a tumour.

Not anatomy (use :mod:`brainldm.data.phantom` for realistic phantoms): an ellipsoidal
brain with a smooth two-tissue texture, a brighter rim ("cortex"), and a spherical tumour
that is bright in T2/FLAIR and ring-enhancing in T1c, written as NIfTI files in the
BraTS 2023 layout (``<folder>/<id>/<id>-t1n.nii.gz`` ... ``-seg.nii.gz``). Small volumes
(e.g. 48^3) keep training tests to seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainldm.data.sequences import SEQUENCES

#: Mean intensity per sequence of (background-free) tissue 1, tissue 2, rim, tumour, tumour ring.
_INTENSITY = {
    "t1n": (600.0, 900.0, 500.0, 450.0, 500.0),
    "t1c": (650.0, 950.0, 550.0, 500.0, 1500.0),
    "t2w": (900.0, 600.0, 1100.0, 1600.0, 1400.0),
    "t2f": (500.0, 400.0, 700.0, 1300.0, 1100.0),
}


def toy_subject_arrays(shape: Sequence[int] = (48, 48, 48), seed: int = 0, tumour: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(images (4, X, Y, Z) float32, seg (X, Y, Z) uint8)`` of one toy subject."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radii = np.array([0.80, 0.85, 0.75]) * rng.uniform(0.9, 1.05, 3)
    centre = rng.uniform(-0.05, 0.05, 3)
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = r < 1.0
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 10)
    field /= field.std() + 1e-8
    tissue2 = field > 0.0
    rim = brain & (r > 0.85)
    seg = np.zeros(shape, dtype=np.uint8)
    if tumour:
        inside = np.argwhere(r < 0.55)
        tc = inside[rng.integers(len(inside))]
        radius = rng.uniform(0.10, 0.17) * min(shape)
        d = np.sqrt(((np.indices(shape) - tc[:, None, None, None]) ** 2).sum(0))
        seg[(d < radius) & brain] = 2  # oedema
        seg[(d < 0.7 * radius) & brain] = 3  # enhancing ring
        seg[(d < 0.45 * radius) & brain] = 1  # necrotic core
    images = np.zeros((4, *shape), dtype=np.float32)
    for c, name in enumerate(SEQUENCES):
        t1, t2, rim_value, core, ring = _INTENSITY[name]
        volume = np.where(tissue2, t2, t1).astype(np.float32)
        volume[rim] = rim_value
        volume[seg == 2] = 0.5 * (volume[seg == 2] + core)
        volume[seg == 3] = ring
        volume[seg == 1] = core
        volume *= 1.0 + 0.05 * rng.standard_normal(shape).astype(np.float32)
        volume = ndimage.gaussian_filter(volume, 0.6)
        volume[~brain] = 0.0
        images[c] = np.clip(volume, 0, None)
    return images, seg


def write_toy_dataset(folder: str | Path, count: int = 4, shape: Sequence[int] = (48, 48, 48), seed: int = 0,
                      healthy: int = 0, spacing: float = 1.0) -> list[Path]:
    """Write ``count`` toy subjects (the last ``healthy`` of them without tumour) in BraTS 2023
    naming under ``folder``; returns the subject folders."""
    import nibabel as nib

    folder = Path(folder)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    out = []
    for index in range(count):
        subject_id = f"Toy-{seed:03d}-{index:03d}"
        images, seg = toy_subject_arrays(shape, seed * 1000 + index, tumour=index < count - healthy)
        target = folder / subject_id
        target.mkdir(parents=True, exist_ok=True)
        for c, name in enumerate(SEQUENCES):
            nib.save(nib.Nifti1Image(images[c], affine), target / f"{subject_id}-{name}.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), target / f"{subject_id}-seg.nii.gz")
        out.append(target)
    return out


def tiny_overrides(max_steps: int = 10, every: int = 5) -> list[str]:
    """``--set`` overrides that shrink a preset to networks small enough for tests (a fraction of
    a second per step on a CPU): 16^3 patches, 8-channel autoencoder, 16-channel denoiser."""
    return [
        "num_threads=1",
        "precision=fp32",
        "device=cpu",
        "autoencoder.model.channels=[8,8]",
        "autoencoder.model.full_resolution_level=true",
        "autoencoder.model.norm_num_groups=8",
        "autoencoder.patch_size=[16,16,16]",
        "autoencoder.batch_size=2",
        "autoencoder.lr=1e-3",
        "autoencoder.warmup_steps=0",
        f"autoencoder.max_steps={max_steps}",
        f"autoencoder.val_every={every}",
        f"autoencoder.checkpoint_every={every}",
        "autoencoder.log_every=1",
        "autoencoder.val_patches=4",
        "autoencoder.max_minutes=0",
        "denoiser.model.channels=[16,16]",
        "denoiser.model.attention_levels=[false,false]",
        "denoiser.model.norm_num_groups=8",
        "denoiser.patch_size=[16,16,16]",
        "denoiser.batch_size=4",
        "denoiser.lr=1e-3",
        "denoiser.warmup_steps=0",
        f"denoiser.max_steps={max_steps}",
        f"denoiser.val_every={every}",
        f"denoiser.checkpoint_every={every}",
        "denoiser.log_every=1",
        "denoiser.val_patches=8",
        "denoiser.max_minutes=0",
    ]


def untrained_synthesis_bundle(folder: str | Path, mechanism: str = "concat", seed: int = 0,
                               preprocess=None) -> Path:
    """Write a lesion synthesis bundle with tiny, randomly initialised 2D networks (compression 4):
    for exercising the synthesis code paths (shapes, files, scene logic) without training. Its
    output is noise, not tumours. The denoiser's zero-initialised output layer is randomised too, so
    sampling does move the latent."""
    import torch

    from brainldm.data.preprocess import PreprocessConfig
    from brainldm.diffusion.schedule import ScheduleConfig
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.conditioning import build_conditioned_denoiser
    from brainldm.nets.config import (
        AutoencoderConfig,
        ConditioningConfig,
        DenoiserConfig,
    )
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    torch.manual_seed(seed)
    image = AutoencoderConfig(kind="kl", spatial_dims=2, in_channels=4, latent_channels=4, channels=(8, 16),
                              full_resolution_level=False)
    mask = AutoencoderConfig(kind="kl", spatial_dims=2, in_channels=2, latent_channels=4, channels=(8, 16),
                             full_resolution_level=False)
    conditioning = ConditioningConfig(mechanism=mechanism, embedding_channels=8)
    denoiser = DenoiserConfig(spatial_dims=2, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8,
                              num_head_channels=8, position_embedding="none",
                              condition_channels=4 if mechanism == "concat" else 0)
    model = build_conditioned_denoiser(denoiser, conditioning)
    with torch.no_grad():
        for parameter in model.denoiser.out.parameters():
            parameter.normal_(0.0, 0.02)
    bundle = SynthesisBundle(
        autoencoder=build_autoencoder(image), mask_autoencoder=build_autoencoder(mask), model=model,
        autoencoder_config=image, mask_autoencoder_config=mask, denoiser_config=denoiser,
        conditioning_config=conditioning, preprocess_config=preprocess or PreprocessConfig(),
        latent_scale=1.0, mask_latent_scale=1.0, schedule_config=ScheduleConfig().to_dict(),
        model_id=f"untrained-synthesis-{mechanism}", patch_size=(64, 64), inference={"steps": 5},
        training={"note": "untrained: random weights, for tests only"},
    )
    return bundle.save(folder, overwrite=True)
