"""Speed benchmark: BrainLDM's fast path against the thesis's reference configuration.

*Fast path*: the given model bundle run end to end by :func:`brainldm.detect.pipeline.detect`
(default: whole-brain latent in one piece), timed for real, with the process's peak memory.

*Reference* (thesis Tables 3.1/3.2, §3.4.5): the 3D VQ-GAN "configuration A" (compression 2)
and the thesis-size latent U-Net (hidden 128, channel factor 1,1,2,4, 4 residual blocks,
attention at 16 and 8, sinusoidal patch positions) on 64^3 image patches (32^3 latent windows)
with 25 % overlap, the same N and encoder. Running it in full would take hours on a CPU, so
it is timed on a subset and extrapolated: the first stage on a few patches, the denoiser on a
few window evaluations at batch 1 (inversion) and batch 2 (guided generation); the number of
windows holding brain is counted exactly, and the number of denoiser evaluations follows
from N and the encoder (EDICT: 2 per step). Networks are randomly initialised: weights do
not change the time of a forward pass.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from brainldm.data.subject import Subject
from brainldm.detect.settings import DetectionSettings
from brainldm.nets.cpu_speed import use_onednn_convolutions


@dataclass
class ReferenceConfig:
    patch_size: int = 64
    overlap: float = 0.25
    probe_evaluations: int = 3  # timed denoiser calls per batch size
    probe_patches: int = 2  # timed first-stage patches


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def count_brain_windows(mask: np.ndarray, window: int, overlap: float) -> int:
    """Number of ``window``^3 windows (sliding with ``overlap``) that hold any brain voxel."""
    from brainldm.detect.windows import window_starts

    starts = [window_starts(s, window, overlap) for s in mask.shape]
    count = 0
    for x in starts[0]:
        for y in starts[1]:
            for z in starts[2]:
                if mask[x:x + window, y:y + window, z:z + window].any():
                    count += 1
    return count


def denoiser_evaluations(encoder: str, steps: int) -> tuple[int, int]:
    """(batch-1 evaluations in inversion, batch-2 guided evaluations in generation) per window."""
    per_step = 2 if encoder == "edict" else 1
    return per_step * steps, per_step * steps


def reference_time(subject: Subject, settings: DetectionSettings, config: ReferenceConfig = ReferenceConfig()) -> dict:
    """Extrapolated seconds of the reference configuration on ``subject`` (see the module docstring)."""
    from brainldm.data.preprocess import brain_mask
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.config import thesis_3d, thesis_vq_3d
    from brainldm.nets.denoiser import HEALTHY, NULL_LABEL, build_denoiser

    mask = brain_mask(subject.images)
    n_windows = count_brain_windows(mask, config.patch_size, config.overlap)
    ae_config = thesis_vq_3d()
    autoencoder = build_autoencoder(ae_config).eval()
    compression = autoencoder.compression
    latent = config.patch_size // compression
    denoiser = build_denoiser(thesis_3d(latent_patch_size=latent, latent_channels=ae_config.latent_channels)).eval()
    use_onednn_convolutions(autoencoder)  # same CPU speed-up as the fast path: a fair comparison
    use_onednn_convolutions(denoiser)
    with torch.inference_mode():
        patch = torch.rand(1, 4, *(config.patch_size,) * 3) * 2 - 1
        t_encode = _time(lambda: autoencoder.encode(patch), config.probe_patches)
        z = autoencoder.encode(patch)
        t_decode = _time(lambda: autoencoder.decode(z), config.probe_patches)

        def call(batch: int):
            zb = torch.randn(batch, ae_config.latent_channels, latent, latent, latent)
            t = torch.full((batch,), 500, dtype=torch.long)
            labels = torch.tensor([HEALTHY, NULL_LABEL] * batch)[:batch]
            start = torch.zeros(batch, 3)
            extent = torch.full((batch, 3), float(latent * 4))
            return lambda: denoiser(zb, t, labels, start=start, extent=extent)

        t_eval_1 = _time(call(1), config.probe_evaluations)
        t_eval_2 = _time(call(2), config.probe_evaluations)
    inversion_evals, generation_evals = denoiser_evaluations(settings.encoder, settings.steps)
    seconds_first_stage = n_windows * (t_encode + 2 * t_decode)
    seconds_denoiser = n_windows * (inversion_evals * t_eval_1 + generation_evals * t_eval_2)
    return {
        "description": "thesis VQ-GAN config A + thesis-size 3D U-Net, 64^3 patches, 25% overlap (extrapolated)",
        "brain_windows": n_windows,
        "latent_window": latent,
        "denoiser_parameters_millions": round(sum(p.numel() for p in denoiser.parameters()) / 1e6, 2),
        "seconds_per_window_eval_batch1": round(t_eval_1, 4),
        "seconds_per_window_eval_batch2": round(t_eval_2, 4),
        "seconds_first_stage_per_patch": round(t_encode + 2 * t_decode, 4),
        "denoiser_evaluations": n_windows * (inversion_evals + 2 * generation_evals),
        "seconds": round(seconds_first_stage + seconds_denoiser, 1),
    }


def untrained_bundle(preset: str):
    """A model bundle with the networks of a training preset and random weights - for timing only.

    The time of a forward pass does not depend on the weights, so the speed of an architecture
    can be measured before (or without) training it. Its detections are meaningless.
    """
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.denoiser import build_denoiser
    from brainldm.train.config import load_config

    config = load_config(preset)
    autoencoder = build_autoencoder(config.autoencoder.model).eval()
    denoiser = build_denoiser(config.denoiser.model).eval()
    return ModelBundle(
        autoencoder=autoencoder, denoiser=denoiser, autoencoder_config=config.autoencoder.model,
        denoiser_config=config.denoiser.model, preprocess_config=config.preprocess, latent_scale=1.0,
        schedule_config=config.denoiser.schedule.to_dict(), model_id=f"untrained-{preset} (timing only)",
        patch_size=tuple(config.denoiser.patch_size),
    )


def run_benchmark(subject: Subject, bundle, settings: DetectionSettings,
                  reference: ReferenceConfig = ReferenceConfig(), progress=None) -> dict:
    """Time the fast path for real, then the reference by extrapolation; return both and the ratio."""
    from brainldm.detect.pipeline import detect

    result = detect(subject, bundle, settings, progress=progress)
    fast = {
        "model": bundle.model_id,
        "seconds": result.timings["total"],
        "timings_s": result.timings,
        "peak_memory_mb": result.peak_memory_mb,
        "denoiser_parameters_millions": round(sum(p.numel() for p in bundle.denoiser.parameters()) / 1e6, 3),
        "dice": result.metrics.get("dice"),
    }
    ref = reference_time(subject, settings, reference)
    return {
        "subject": subject.subject_id,
        "shape": list(subject.shape),
        "settings": settings.to_dict(),
        "fast": fast,
        "reference": ref,
        "speedup": round(ref["seconds"] / max(fast["seconds"], 1e-9), 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
