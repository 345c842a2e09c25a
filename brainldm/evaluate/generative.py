"""Generative metrics of synthetic versus real images (thesis §2.1 "Generative metrics", Tables 4.3/4.4).

* :func:`psnr`, :func:`ssim`, :func:`ms_ssim` - paired pixel and structural similarity (Eq. 2.3-2.5),
  MONAI's ``PSNRMetric`` / ``SSIMMetric`` / ``MultiScaleSSIMMetric``. Images are BrainLDM's
  ``[-1, 1]`` normalised intensities by default (``data_range = 2``).
* :func:`frechet_distance` - the Fréchet distance between two Gaussians (Eq. 2.6), a small pure
  function; :func:`autoencoder_features` and :func:`frechet_autoencoder_distance` compute it on
  features of an in-domain first-stage autoencoder: the thesis's FAD (Fréchet autoencoder
  distance, Buzuti & Thomaz 2023) - FID with a brain-MRI autoencoder in place of Inception-v3.
* :func:`lpips_status` / :func:`lpips_distance` - LPIPS (Eq. 2.7) needs pretrained natural-image
  weights. BrainLDM never downloads anything: LPIPS is computed only when the ``lpips`` package
  and its backbone weights are already on this machine, and is reported as unavailable (with
  the reason) otherwise.
* :func:`generative_metrics` - all of them in one dictionary.

Arrays are batches ``(B, C, X, Y)`` (2-D) or ``(B, C, X, Y, Z)`` (3-D), numpy or torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainldm.errors import SettingsError

#: MONAI's (and Wang et al. 2003's) MS-SSIM weights for five scales.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

#: Default intensity range of BrainLDM images (normalised to [-1, 1]).
DEFAULT_DATA_RANGE = 2.0


def _pair(real, fake) -> tuple[torch.Tensor, torch.Tensor, int]:
    a = torch.as_tensor(np.asarray(real) if not isinstance(real, torch.Tensor) else real).detach().float().cpu()
    b = torch.as_tensor(np.asarray(fake) if not isinstance(fake, torch.Tensor) else fake).detach().float().cpu()
    if a.shape != b.shape:
        raise SettingsError(f"Real and synthetic images must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.ndim not in (4, 5):
        raise SettingsError(
            f"Images must be batches (B, C, X, Y) or (B, C, X, Y, Z); got shape {tuple(a.shape)}."
        )
    return a, b, a.ndim - 2


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean())


def psnr(real, fake, data_range: float = DEFAULT_DATA_RANGE) -> float:
    """Peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` in dB (Eq. 2.3), per image, averaged over
    the batch; ``inf`` for identical images."""
    from monai.metrics import PSNRMetric

    a, b, _ = _pair(real, fake)
    return _mean(PSNRMetric(max_val=float(data_range), reduction="none")(b, a))


def ssim(real, fake, data_range: float = DEFAULT_DATA_RANGE, win_size: int = 11) -> float:
    """Structural similarity (Eq. 2.4; Gaussian window 11, sigma 1.5), averaged over the batch; 1 for
    identical images."""
    from monai.metrics import SSIMMetric

    a, b, dims = _pair(real, fake)
    if min(a.shape[2:]) < win_size:
        raise SettingsError(f"SSIM needs images of at least {win_size} voxels per axis; got {tuple(a.shape[2:])}.")
    return _mean(SSIMMetric(spatial_dims=dims, data_range=float(data_range), win_size=win_size, reduction="none")(b, a))


def ms_ssim_weights(spatial_shape: Sequence[int], kernel_size: int = 11) -> tuple[float, ...]:
    """The MS-SSIM scale weights usable for images of ``spatial_shape``.

    Five scales (the standard weights) need more than ``(kernel_size - 1) * 16`` voxels per
    axis (MONAI's check); smaller images use the first scales only, their weights rescaled to
    sum to 1 (so 64^3 patches get three scales). Raises SettingsError below one scale.
    """
    for n in range(len(MS_SSIM_WEIGHTS), 0, -1):
        divisor = max(1, n - 1) ** 2  # MONAI's size check
        if all(int(s) // divisor > kernel_size - 1 for s in spatial_shape):
            w = MS_SSIM_WEIGHTS[:n]
            total = sum(w)
            return tuple(v / total for v in w) if n < len(MS_SSIM_WEIGHTS) else w
    raise SettingsError(
        f"MS-SSIM needs images larger than {kernel_size - 1} voxels per axis; got {tuple(spatial_shape)}."
    )


def ms_ssim(real, fake, data_range: float = DEFAULT_DATA_RANGE, kernel_size: int = 11) -> float:
    """Multi-scale SSIM (Eq. 2.5), averaged over the batch; 1 for identical images. The number of
    scales follows the image size (:func:`ms_ssim_weights`)."""
    from monai.metrics import MultiScaleSSIMMetric

    a, b, dims = _pair(real, fake)
    weights = ms_ssim_weights(a.shape[2:], kernel_size)
    metric = MultiScaleSSIMMetric(spatial_dims=dims, data_range=float(data_range), kernel_size=kernel_size,
                                  weights=weights, reduction="none")
    return _mean(metric(b, a))


# --------------------------------------------------------------------------------------------
# Fréchet distance on autoencoder features (FAD)
# --------------------------------------------------------------------------------------------


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Dowson & Landau
    1982; Heusel et al. 2017; thesis Eq. 2.6) - the FID formula. ``Tr((sigma1 sigma2)^(1/2))`` is
    computed as the sum of the square roots of the eigenvalues of the symmetric positive
    semi-definite ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (same eigenvalues as ``sigma1 sigma2``), which
    stays real and exact for singular covariances (fewer samples than features). In float64;
    scalars and 1-D inputs are accepted for one-dimensional Gaussians (variances as ``sigma``).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    n = mu1.shape[0]
    if mu1.shape != (n,) or mu2.shape != (n,) or s1.shape != (n, n) or s2.shape != (n, n):
        raise SettingsError(
            f"Fréchet distance needs means of shape (n,) and covariances (n, n); got {mu1.shape}, {s1.shape}, "
            f"{mu2.shape}, {s2.shape}."
        )
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, ``N - 1``) of ``(N, F)`` feature vectors; needs N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SettingsError(f"A Gaussian fit needs at least two feature vectors (N, F); got shape {x.shape}.")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _first_stage(autoencoder):
    """A first-stage autoencoder from a :class:`~brainldm.nets.autoencoder.FirstStage` or a model bundle."""
    model = getattr(autoencoder, "autoencoder", autoencoder)
    if not hasattr(model, "encode"):
        raise SettingsError("FAD needs a first-stage autoencoder (or a model bundle holding one).")
    return model


@torch.no_grad()
def autoencoder_features(images, autoencoder, grid: int | None = 4, batch_size: int = 8) -> np.ndarray:
    """``(N, F)`` feature vectors of images from an in-domain first-stage autoencoder's encoder.

    ``autoencoder`` is a BrainLDM first stage (``encode`` gives the deterministic latent: KL
    posterior mean / VQ quantised code) or a model bundle. The latent ``(C, *s)`` is average-
    pooled to ``grid`` cells per axis (``C * grid^d`` features: the latent's layout at a coarse
    scale, few enough dimensions to fit a covariance from hundreds of images) or, with
    ``grid=None``, flattened whole. Images must match the autoencoder's channels and have sizes
    divisible by its compression.
    """
    model = _first_stage(autoencoder)
    was_training = model.training
    model.eval()
    try:
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
        if x.ndim not in (4, 5):
            raise SettingsError(f"Images must be a batch (B, C, X, Y[, Z]); got shape {tuple(x.shape)}.")
        device = next(model.parameters()).device
        dims = x.ndim - 2
        pool = torch.nn.functional.adaptive_avg_pool2d if dims == 2 else torch.nn.functional.adaptive_avg_pool3d
        out = []
        for start in range(0, x.shape[0], batch_size):
            z = model.encode(x[start : start + batch_size].to(device)).float()
            if grid is not None:
                z = pool(z, int(grid))
            out.append(z.flatten(1).cpu().double().numpy())
        return np.concatenate(out, axis=0)
    finally:
        model.train(was_training)


def frechet_autoencoder_distance(real, fake, autoencoder, grid: int | None = 4, batch_size: int = 8) -> float:
    """FAD: :func:`frechet_distance` between Gaussian fits of the autoencoder features of the real
    and the synthetic images (FID on an in-domain autoencoder; needs two or more images each)."""
    mu_r, sigma_r = gaussian_fit(autoencoder_features(real, autoencoder, grid, batch_size))
    mu_f, sigma_f = gaussian_fit(autoencoder_features(fake, autoencoder, grid, batch_size))
    return frechet_distance(mu_r, sigma_r, mu_f, sigma_f)


# --------------------------------------------------------------------------------------------
# LPIPS, only with weights already on this machine
# --------------------------------------------------------------------------------------------

#: torchvision checkpoint of each LPIPS backbone (looked up in torch hub's cache, never fetched).
LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can be computed offline, and why not: needs the ``lpips`` package (it ships
    the linear-layer weights), torchvision, and the backbone checkpoint in torch hub's cache."""
    if net not in LPIPS_BACKBONES:
        raise SettingsError(f"LPIPS network must be one of {', '.join(LPIPS_BACKBONES)}; got {net!r}.")
    try:
        import lpips
        import torchvision  # noqa: F401 - LPIPS builds its backbone with it
    except ImportError as exc:
        return False, (f"LPIPS unavailable: the '{exc.name}' package is not installed and BrainLDM never "
                       "downloads weights (install lpips and torchvision and place the backbone weights "
                       "in torch hub's cache to enable it)")
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net]
    for path in (linear, backbone):
        if not path.is_file():
            return False, f"LPIPS unavailable: weights {path} are not on this machine (BrainLDM never downloads them)"
    return True, "available"


@torch.no_grad()
def lpips_distance(real, fake, net: str = "alex") -> float | None:
    """Mean LPIPS (Eq. 2.7) over images, channels and - for volumes - axial slices; each channel is a
    grey image given to the network as RGB. ``None`` when :func:`lpips_status` says unavailable."""
    available, _ = lpips_status(net)
    if not available:
        return None
    import lpips

    a, b, dims = _pair(real, fake)
    if dims == 3:  # (B, C, X, Y, Z) -> axial slices (B * Z, C, X, Y)
        a = a.permute(0, 4, 1, 2, 3).flatten(0, 1)
        b = b.permute(0, 4, 1, 2, 3).flatten(0, 1)
    a = a.flatten(0, 1)[:, None].repeat(1, 3, 1, 1)
    b = b.flatten(0, 1)[:, None].repeat(1, 3, 1, 1)
    model = lpips.LPIPS(net=net, verbose=False).eval()
    return _mean(model(a.clamp(-1, 1), b.clamp(-1, 1)))


# --------------------------------------------------------------------------------------------
# all together
# --------------------------------------------------------------------------------------------


def generative_metrics(
    real, fake, data_range: float = DEFAULT_DATA_RANGE, autoencoder=None, grid: int | None = 4
) -> dict[str, Any]:
    """PSNR, SSIM, MS-SSIM (paired), FAD (with ``autoencoder``) and LPIPS (when available offline).

    Returns ``{"psnr", "ssim", "ms_ssim", "fad", "lpips", "unavailable"}``; a metric that could not
    be computed is ``None`` and ``unavailable`` maps its name to the reason.
    """
    a, b, _ = _pair(real, fake)
    result: dict[str, Any] = {
        "psnr": psnr(a, b, data_range),
        "ssim": ssim(a, b, data_range),
        "ms_ssim": ms_ssim(a, b, data_range),
        "fad": None,
        "lpips": None,
        "unavailable": {},
    }
    if autoencoder is not None:
        result["fad"] = frechet_autoencoder_distance(a, b, autoencoder, grid)
    else:
        result["unavailable"]["fad"] = "no first-stage autoencoder given"
    available, reason = lpips_status()
    if available:
        result["lpips"] = lpips_distance(a, b)
    else:
        result["unavailable"]["lpips"] = reason
    return result


__all__ = [
    "DEFAULT_DATA_RANGE",
    "MS_SSIM_WEIGHTS",
    "autoencoder_features",
    "frechet_autoencoder_distance",
    "frechet_distance",
    "gaussian_fit",
    "generative_metrics",
    "lpips_distance",
    "lpips_status",
    "ms_ssim",
    "ms_ssim_weights",
    "psnr",
    "ssim",
]
