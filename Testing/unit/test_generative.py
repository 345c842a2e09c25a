"""Generative metrics (thesis Eq. 2.3-2.7, Tables 4.3/4.4): PSNR, SSIM, MS-SSIM, the Fréchet distance
and FAD on a BrainLDM first-stage autoencoder, LPIPS only offline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy import ndimage as ndi

from brainldm.errors import SettingsError
from brainldm.evaluate.generative import (
    MS_SSIM_WEIGHTS,
    autoencoder_features,
    frechet_autoencoder_distance,
    frechet_distance,
    gaussian_fit,
    generative_metrics,
    lpips_status,
    ms_ssim,
    ms_ssim_weights,
    psnr,
    ssim,
)
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.config import AutoencoderConfig

torch.set_num_threads(1)


def _images(n: int, size: int, seed: int, channels: int = 1, dims: int = 2) -> np.ndarray:
    """Smooth random images in [-1, 1] (structure at several scales, like tissue)."""
    rng = np.random.default_rng(seed)
    shape = (n, channels) + (size,) * dims
    x = ndi.gaussian_filter(rng.standard_normal(shape), (0, 0) + (2.5,) * dims)
    x += 0.3 * ndi.gaussian_filter(rng.standard_normal(shape), (0, 0) + (0.8,) * dims)
    return np.clip(x / x.std() * 0.4, -1, 1).astype(np.float32)


def _noisy(x: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), -1, 1)


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    config = AutoencoderConfig(kind="kl", spatial_dims=2, in_channels=1, channels=(8, 16), latent_channels=4,
                               norm_num_groups=8)
    return build_autoencoder(config).eval()


# ----------------------------------------------------------------------------- paired metrics


def test_identical_images_score_perfectly(autoencoder):
    x = _images(4, 176, seed=0)
    assert psnr(x, x) == float("inf")
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    small = _images(24, 32, seed=2)
    assert frechet_autoencoder_distance(small, small, autoencoder) == pytest.approx(0.0, abs=1e-8)
    report = generative_metrics(x, x)
    assert report["psnr"] == float("inf") and report["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert report["fad"] is None and "fad" in report["unavailable"]


def test_noisier_images_score_worse():
    x = _images(4, 176, seed=0)
    scores = [(psnr(x, y), ssim(x, y), ms_ssim(x, y)) for y in (_noisy(x, s) for s in (0.02, 0.1, 0.3))]
    for better, worse in itertools.pairwise(scores):
        assert all(b > w for b, w in zip(better, worse)), scores
    assert all(0.0 < s[1] < 1.0 and 0.0 < s[2] < 1.0 for s in scores)


def test_psnr_matches_its_definition():
    x = _images(3, 32, seed=5)
    y = _noisy(x, 0.1)
    mse = ((x.astype(np.float64) - y) ** 2).reshape(3, -1).mean(axis=1)
    assert psnr(x, y) == pytest.approx(np.mean(10 * np.log10(2.0**2 / mse)), rel=1e-5)
    assert psnr(x, y, data_range=1.0) == pytest.approx(psnr(x, y) - 20 * np.log10(2.0), rel=1e-5)


def test_volumes_and_the_ms_ssim_scales():
    assert ms_ssim_weights((192, 192)) == MS_SSIM_WEIGHTS
    three = ms_ssim_weights((64, 64, 64))  # a 64^3 patch: three scales, weights summing to 1
    assert len(three) == 3 and sum(three) == pytest.approx(1.0)
    with pytest.raises(SettingsError):
        ms_ssim_weights((8, 64))
    v = _images(2, 48, seed=3, dims=3)
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < ms_ssim(v, _noisy(v, 0.2)) < ms_ssim(v, _noisy(v, 0.05)) < 1.0
    with pytest.raises(SettingsError):
        psnr(v, v[:1])
    with pytest.raises(SettingsError):
        psnr(v[0, 0], v[0, 0])


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(1.0 + 4.0 + 4.0 + 1.0 + 0.0)
    # a full covariance against a scaled copy: Tr(S) (1 - c)^2
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    s = m @ m.T + 0.1 * np.eye(6)
    assert frechet_distance(np.zeros(6), s, np.zeros(6), 4.0 * s) == pytest.approx(np.trace(s) * (1 - 2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    rng = np.random.default_rng(1)
    for n in (2, 5, 12):
        m1, m2 = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        s1, s2 = m1 @ m1.T, m2 @ m2.T
        mu1, mu2 = rng.standard_normal(n), rng.standard_normal(n)
        reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-7)
    singular = np.outer([1.0, 2.0, 0.0], [1.0, 2.0, 0.0])  # rank 1, as with fewer samples than features
    assert frechet_distance(np.zeros(3), singular, np.zeros(3), singular) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(SettingsError):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_gaussian_fit_needs_two_samples():
    mu, cov = gaussian_fit(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]))
    assert np.allclose(mu, [2.0, 4.0]) and np.allclose(cov, np.cov([[0, 2, 4], [1, 3, 8]]))
    with pytest.raises(SettingsError):
        gaussian_fit(np.zeros((1, 4)))


# ----------------------------------------------------------------------------- FAD


def test_fad_grows_with_the_difference(autoencoder):
    real = _images(48, 32, seed=7)
    fad = [frechet_autoencoder_distance(real, _noisy(real, s, seed=11), autoencoder) for s in (0.02, 0.1, 0.4)]
    assert 0.0 < fad[0] < fad[1] < fad[2], fad


def test_autoencoder_features(autoencoder):
    x = _images(5, 32, seed=8)
    pooled = autoencoder_features(x, autoencoder, grid=4, batch_size=2)
    assert pooled.shape == (5, 4 * 4 * 4)
    full = autoencoder_features(x, autoencoder, grid=None)
    assert full.shape == (5, 4 * 16 * 16)
    with torch.no_grad():
        z = autoencoder.encode(torch.from_numpy(x)).double()
    assert np.allclose(pooled, torch.nn.functional.adaptive_avg_pool2d(z, 4).flatten(1).numpy(), atol=1e-6)

    class Bundle:  # a model bundle exposes its first stage as .autoencoder
        pass

    bundle = Bundle()
    bundle.autoencoder = autoencoder
    other = _images(5, 32, seed=9)
    assert frechet_autoencoder_distance(x, other, bundle) == frechet_autoencoder_distance(x, other, autoencoder)
    report = generative_metrics(_images(2, 176, seed=1), _images(2, 176, seed=2), autoencoder=None)
    assert report["ssim"] < 0.5


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_only_when_available_offline():
    available, reason = lpips_status()
    x = _images(2, 176, seed=4)
    report = generative_metrics(x, _noisy(x, 0.1))
    if available:
        assert report["lpips"] is not None and report["lpips"] > 0.0
    else:
        assert report["lpips"] is None
        assert report["unavailable"]["lpips"] == reason and "never downloads" in reason
    with pytest.raises(SettingsError):
        lpips_status("resnet")
