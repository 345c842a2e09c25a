"""MRI degradation pipelines: high-resolution images -> realistic low-resolution ones.

Super-resolution (SR) models are trained on pairs (degraded low-resolution image, original)
made by a random degradation pipeline (thesis §2.3.5 "Adaptations to the degradation pipeline",
§4.4.1 "Degradation pipeline for MRI"). Two pipelines are provided, both with N = 2 levels and
the parameters of thesis Table B.5:

``"esrgan"`` - Algorithm 1, the Real-ESRGAN pipeline as adapted to MRI by Shao et al. (2023):
    per level blur (isotropic / anisotropic x regular / generalised / plateau kernels),
    resize (factor 0.3-1.5, random interpolation), noise (Gaussian or Poisson).
``"mri"`` - Algorithm 2, the thesis's extension: per level blur (isotropic or anisotropic
    Gaussian), resize, noise (Gaussian, Rician or non-central chi with a coil count, Eqs.
    2.39-2.41), bias field (Eq. 2.42) and, off by default as in Table B.5 (p = 0), k-space
    motion and ghosting artefacts.

After the levels the image is resampled to the low-resolution grid (the input divided by the
downscale factor, as Real-ESRGAN does) and, on request, to any target size, e.g. back to the
input grid (Algorithm 2, line 8), which is what an SR model is fed (§4.4.1).

Intensities
    Every operation works in a *unit magnitude domain*: non-negative intensities, brain roughly
    in [0, 1], background 0 - the domain Table B.5's noise levels refer to. :func:`degrade`
    accepts ``value_range="symmetric"`` (BrainLDM's normalisation, [-1, 1], background -1;
    mapped by (x + 1) / 2 and back), ``"unit"`` ([0, 1]) or ``"raw"`` (scanner intensities:
    negative values, which only come from interpolation, are clipped to 0 and each channel is
    divided by the 99.5th percentile of its positive voxels, and multiplied back afterwards).
    Values are clipped to [0, 1] in the bounded ranges (as Real-ESRGAN clamps), to >= 0 in raw.

Background
    Magnitude noise makes the zero background of skull-stripped data non-zero (Rician noise on
    zero signal is Rayleigh noise), which breaks "brain = non-zero voxels" downstream. With
    ``mask_background`` (default; not in the thesis) voxels outside the input's foreground
    (resampled to the output grid) are set back to the background value in the returned image.

Shapes
    A 2D slice ``(H, W)`` or ``(C, H, W)``, or a volume ``(C, X, Y, Z)``, channels first (one or
    four sequences; degradation parameters are shared by the channels, noise realisations are
    not). A volume is degraded in-plane (``axes="inplane"``: each axial slice of a RAS+ array,
    the thesis's 2D setting; every slice gets the same parameters) or along all three axes
    (``axes="all"``; motion and ghosting stay in-plane, as a 2D acquisition).

Reproducibility
    Every random draw comes from generators seeded by ``seed`` (one for the parameters, one for
    the noise realisations): the same seed, input and settings give the same output, and the
    same seed draws the same parameters whatever the image size. :attr:`Degraded.record` lists
    every parameter drawn (JSON-serialisable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from brainldm.errors import InputDataError, SettingsError

ValueRange = Literal["symmetric", "unit", "raw"]
Axes = Literal["inplane", "all"]

#: Blur kernel families of Table B.5 (Real-ESRGAN names: iso, aniso, generalized_*, plateau_*).
KERNELS: tuple[str, ...] = ("iso", "aniso", "generalised_iso", "generalised_aniso", "plateau_iso", "plateau_aniso")
#: Noise models of Table B.5.
NOISES: tuple[str, ...] = ("gaussian", "poisson", "rician", "chi")
#: Interpolations a resize draws from (Real-ESRGAN: area, bilinear, bicubic).
RESIZE_MODES: tuple[str, ...] = ("area", "linear", "cubic")
#: Names accepted by :func:`pipeline_config`.
PIPELINES: tuple[str, ...] = ("mri", "esrgan")

#: Settings used by the pipelines that Table B.5 does not give, and where they come from.
NOT_IN_THESIS: dict[str, str] = {
    "kernel_size_range": "Real-ESRGAN default: odd kernel sizes 7-21",
    "generalised_beta": "Real-ESRGAN default betag_range [0.5, 4]",
    "plateau_beta": "Real-ESRGAN default betap_range [1, 2]",
    "poisson_levels": "Poisson noise on 8-bit images (255 grey levels), as Real-ESRGAN's 8-bit inputs",
    "resize_modes": "Real-ESRGAN: area, bilinear, bicubic chosen uniformly (also for the final resize)",
    "upsample_mode": "bicubic, as the 2x upsampling of the PD dataset (§4.2)",
    "bias_order": "TorchIO RandomBiasField default order 3",
    "bias_field_normalised": "the field is divided by its mean so overall brightness is kept",
    "bias_coefficients": "Table B.5 range [0.1, 1.0] read as the bound a of coefficients drawn in [-a, a]",
    "motion_rotation_translation": "Table B.5 '10' and '2' read as rotation in [-10, 10] degrees and "
    "translation in [-2, 2] voxels (TorchIO convention), in-plane",
    "motion_times": "TorchIO RandomMotion: k-space split at k/(steps+1) +- 1/(4(steps+1))",
    "ghost_restore": "TorchIO RandomGhosting default: central 2 % of k-space restored",
    "mask_background": "background of the input kept at the background value",
    "level_resize_reference": "levels >= 2 resize relative to the low-resolution grid, as Real-ESRGAN",
}


# --------------------------------------------------------------------------------------------
# Configuration (thesis Table B.5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelConfig:
    """The parameters of one degradation level (one column entry of Table B.5).

    Ranges are ``(low, high)`` drawn uniformly; probabilities are per level.
    """

    blur_p: float  # probability of blurring at this level
    blur_sigma: tuple[float, float]  # kernel standard deviation (pixels)
    resize_probs: tuple[float, float, float]  # probabilities of resizing up, down, keep
    resize_range: tuple[float, float]  # factor: "up" draws in [1, high], "down" in [low, 1]
    noise_probs: tuple[tuple[str, float], ...]  # (noise model, probability); one model per level
    gaussian_sigma_255: tuple[float, float] = (1.0, 15.0)  # Gaussian sigma in 8-bit units (/255)
    poisson_scale: tuple[float, float] = (0.05, 2.0)  # Real-ESRGAN Poisson noise scale
    rician_sigma: tuple[float, float] = (0.01, 0.05)  # sigma of the complex noise, unit domain
    chi_sigma: tuple[float, float] = (0.002, 0.02)  # per-coil sigma, unit domain
    chi_coils: tuple[int, int] = (1, 3)  # number of receiver coils L (integer range)
    bias_p: float = 0.0  # probability of a bias field
    motion_p: float = 0.0  # probability of a motion artefact
    ghosting_p: float = 0.0  # probability of ghosting
    ghost_count: tuple[int, int] = (4, 10)  # every count-th k-space line is attenuated
    ghost_intensity: tuple[float, float] = (0.5, 1.0)  # attenuation of those lines


@dataclass(frozen=True)
class DegradationConfig:
    """A degradation pipeline: its levels and the settings shared by them (thesis Table B.5).

    Use :func:`pipeline_config` for the thesis's two pipelines and :func:`dataclasses.replace`
    (or :meth:`with_changes`) to vary them. Fields after ``ghost_axes`` are not in the thesis
    (see :data:`NOT_IN_THESIS`).
    """

    name: str
    levels: tuple[LevelConfig, ...]
    kernel_probs: tuple[tuple[str, float], ...]  # (kernel family, probability)
    downscale_factor: float = 4.0  # Table B.5 "Downscale factor"
    no_degradation_p: float = 0.01  # Table B.5: only resample, no degradation
    bias_coefficients: tuple[float, float] = (0.1, 1.0)  # Table B.5 B_F range
    motion_degrees: float = 10.0  # Table B.5 rotation range
    motion_translation: float = 2.0  # Table B.5 translation range (voxels)
    motion_steps: int = 2  # Table B.5 steps (movements during the acquisition)
    ghost_axes: tuple[int, ...] = (0, 1)  # Table B.5 ghosting axes (in-plane axis 0 or 1)
    # ---- not in the thesis (NOT_IN_THESIS says where each comes from)
    kernel_size_range: tuple[int, int] = (7, 21)
    generalised_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    poisson_levels: float = 255.0
    resize_modes: tuple[str, ...] = RESIZE_MODES
    upsample_mode: str = "cubic"
    bias_order: int = 3
    ghost_restore: float = 0.02
    mask_background: bool = True

    def __post_init__(self) -> None:
        _check_probs(f"{self.name}: kernel_probs", self.kernel_probs, KERNELS)
        if not self.levels:
            raise SettingsError(f"{self.name}: a degradation pipeline needs at least one level.")
        for i, level in enumerate(self.levels, start=1):
            _check_level(f"{self.name} level {i}", level)
        if not 1.0 <= self.downscale_factor <= 16.0:
            raise SettingsError(f"{self.name}: downscale_factor must be within 1-16; got {self.downscale_factor}.")
        for name in ("no_degradation_p",):
            _check_p(f"{self.name}: {name}", getattr(self, name))
        _check_range(f"{self.name}: bias_coefficients", self.bias_coefficients, low=0.0)
        _check_range(f"{self.name}: generalised_beta", self.generalised_beta, low=1e-3)
        _check_range(f"{self.name}: plateau_beta", self.plateau_beta, low=1e-3)
        low, high = self.kernel_size_range
        if low < 3 or low > high or low % 2 == 0 or high % 2 == 0:
            raise SettingsError(f"{self.name}: kernel_size_range must be odd sizes >= 3; got {self.kernel_size_range}.")
        if self.motion_degrees < 0 or self.motion_translation < 0 or self.motion_steps < 1:
            raise SettingsError(f"{self.name}: motion ranges must be >= 0 and motion_steps >= 1.")
        if not self.ghost_axes or any(a not in (0, 1) for a in self.ghost_axes):
            raise SettingsError(f"{self.name}: ghost_axes must be in-plane axes 0 and/or 1; got {self.ghost_axes}.")
        if not 0.0 <= self.ghost_restore < 0.5:
            raise SettingsError(f"{self.name}: ghost_restore must be within 0-0.5; got {self.ghost_restore}.")
        if not self.resize_modes or any(m not in RESIZE_MODES for m in self.resize_modes):
            raise SettingsError(f"{self.name}: resize_modes must be taken from {RESIZE_MODES}; got {self.resize_modes}.")
        if self.upsample_mode not in RESIZE_MODES:
            raise SettingsError(f"{self.name}: upsample_mode must be one of {RESIZE_MODES}; got {self.upsample_mode!r}.")
        if self.bias_order < 1 or self.poisson_levels <= 0:
            raise SettingsError(f"{self.name}: bias_order must be >= 1 and poisson_levels > 0.")

    def with_changes(self, **changes) -> DegradationConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dictionary of all settings."""
        return asdict(self)


def _check_p(what: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise SettingsError(f"{what} is a probability and must be within 0-1; got {p}.")


def _check_range(what: str, values: tuple[float, float], low: float = 0.0) -> None:
    if len(values) != 2 or not (low <= values[0] <= values[1]):
        raise SettingsError(f"{what} must be a range (low, high) with {low} <= low <= high; got {values}.")


def _check_probs(what: str, pairs: tuple[tuple[str, float], ...], names: tuple[str, ...]) -> None:
    unknown = [name for name, _ in pairs if name not in names]
    if unknown:
        raise SettingsError(f"{what}: unknown {', '.join(unknown)}; choose from {', '.join(names)}.")
    for name, p in pairs:
        _check_p(f"{what}[{name}]", p)
    if abs(sum(p for _, p in pairs) - 1.0) > 1e-6:
        raise SettingsError(f"{what}: probabilities must add up to 1; got {pairs}.")


def _check_level(what: str, level: LevelConfig) -> None:
    for name in ("blur_p", "bias_p", "motion_p", "ghosting_p"):
        _check_p(f"{what}: {name}", getattr(level, name))
    _check_range(f"{what}: blur_sigma", level.blur_sigma, low=1e-3)
    if len(level.resize_probs) != 3:
        raise SettingsError(f"{what}: resize_probs must be (up, down, keep).")
    _check_probs(f"{what}: resize_probs", tuple(zip(("up", "down", "keep"), level.resize_probs)), ("up", "down", "keep"))
    low, high = level.resize_range
    if not 0.0 < low <= 1.0 <= high:
        raise SettingsError(f"{what}: resize_range must satisfy 0 < low <= 1 <= high; got {level.resize_range}.")
    _check_probs(f"{what}: noise_probs", level.noise_probs, NOISES)
    for name in ("gaussian_sigma_255", "poisson_scale", "rician_sigma", "chi_sigma", "ghost_intensity"):
        _check_range(f"{what}: {name}", getattr(level, name))
    if level.ghost_intensity[1] > 1.0:
        raise SettingsError(f"{what}: ghost_intensity must be within 0-1; got {level.ghost_intensity}.")
    if not 1 <= level.chi_coils[0] <= level.chi_coils[1]:
        raise SettingsError(f"{what}: chi_coils must be an integer range >= 1; got {level.chi_coils}.")
    if not 2 <= level.ghost_count[0] <= level.ghost_count[1]:
        raise SettingsError(f"{what}: ghost_count must be an integer range >= 2; got {level.ghost_count}.")


def mri_config() -> DegradationConfig:
    """The extended MRI pipeline, thesis Algorithm 2 with the "Adapted for MRI" column of Table B.5."""
    common = {"ghost_count": (4, 10), "ghost_intensity": (0.5, 1.0), "motion_p": 0.0, "ghosting_p": 0.0}
    noise = (("gaussian", 0.45), ("rician", 0.45), ("chi", 0.1))
    return DegradationConfig(
        name="mri",
        levels=(
            LevelConfig(blur_p=1.0, blur_sigma=(0.2, 1.5), resize_probs=(0.2, 0.7, 0.1), resize_range=(0.3, 1.5),
                        noise_probs=noise, gaussian_sigma_255=(2.0, 15.0), rician_sigma=(0.01, 0.05),
                        chi_sigma=(0.002, 0.02), chi_coils=(1, 3), bias_p=0.2, **common),
            LevelConfig(blur_p=0.5, blur_sigma=(0.2, 1.0), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.6, 1.2),
                        noise_probs=noise, gaussian_sigma_255=(1.0, 12.0), rician_sigma=(0.005, 0.02),
                        chi_sigma=(0.001, 0.01), chi_coils=(1, 3), bias_p=0.1, **common),
        ),
        kernel_probs=(("iso", 0.40), ("aniso", 0.60)),
    )


def esrgan_config() -> DegradationConfig:
    """The ESRGAN pipeline adapted to MRI, thesis Algorithm 1 with the "ESRGAN" column of Table B.5.

    Rows that Table B.5 gives once for both pipelines (downscale factor, no-degradation p,
    resize, blur p and sigma) are shared with :func:`mri_config`.
    """
    noise = (("gaussian", 0.5), ("poisson", 0.5))
    return DegradationConfig(
        name="esrgan",
        levels=(
            LevelConfig(blur_p=1.0, blur_sigma=(0.2, 1.5), resize_probs=(0.2, 0.7, 0.1), resize_range=(0.3, 1.5),
                        noise_probs=noise, gaussian_sigma_255=(1.0, 15.0), poisson_scale=(0.05, 2.0)),
            LevelConfig(blur_p=0.5, blur_sigma=(0.2, 1.0), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.6, 1.2),
                        noise_probs=noise, gaussian_sigma_255=(1.0, 12.0), poisson_scale=(0.05, 1.0)),
        ),
        kernel_probs=(("iso", 0.45), ("aniso", 0.25), ("generalised_iso", 0.12), ("generalised_aniso", 0.03),
                      ("plateau_iso", 0.12), ("plateau_aniso", 0.03)),
    )


def pipeline_config(name: str) -> DegradationConfig:
    """The thesis pipeline ``"mri"`` (Algorithm 2) or ``"esrgan"`` (Algorithm 1)."""
    if name == "mri":
        return mri_config()
    if name == "esrgan":
        return esrgan_config()
    raise SettingsError(f"Unknown degradation pipeline {name!r}; choose one of {', '.join(PIPELINES)}.")


# --------------------------------------------------------------------------------------------
# Single operations (unit domain, arrays (C, *spatial); ``axes`` are array axes, never 0)
# --------------------------------------------------------------------------------------------


def blur_kernel(
    kind: str, sigmas: tuple[float, ...], rotation: np.ndarray | None = None, size: int = 21, beta: float = 1.0
) -> np.ndarray:
    """A normalised blur kernel of ``len(sigmas)`` dimensions (thesis Algorithms 1-2, line 3).

    The covariance is ``R diag(sigmas^2) R^T``; with ``q`` the squared Mahalanobis distance the
    kernel is ``exp(-q/2)`` (``iso``/``aniso``), ``exp(-q^beta/2)`` (``generalised_*``) or
    ``1/(1 + q^beta)`` (``plateau_*``), the Real-ESRGAN kernel families of Table B.5.
    """
    if kind not in KERNELS:
        raise SettingsError(f"Unknown blur kernel {kind!r}; choose one of {', '.join(KERNELS)}.")
    if size < 1 or size % 2 == 0:
        raise SettingsError(f"Blur kernel size must be odd; got {size}.")
    d = len(sigmas)
    rotation = np.eye(d) if rotation is None else np.asarray(rotation, dtype=np.float64)
    cov = rotation @ np.diag(np.square(np.asarray(sigmas, dtype=np.float64))) @ rotation.T
    inverse = np.linalg.inv(cov)
    r = size // 2
    grid = np.stack(np.meshgrid(*([np.arange(-r, r + 1, dtype=np.float64)] * d), indexing="ij"), axis=-1)
    q = np.einsum("...i,ij,...j->...", grid, inverse, grid)
    if kind.startswith("generalised"):
        kernel = np.exp(-0.5 * np.power(q, beta))
    elif kind.startswith("plateau"):
        kernel = 1.0 / (1.0 + np.power(q, beta))
    else:
        kernel = np.exp(-0.5 * q)
    return (kernel / kernel.sum()).astype(np.float32)


def blur(x: np.ndarray, kernel: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Convolve ``x`` with ``kernel`` along ``axes`` (reflected borders, as Real-ESRGAN's filter2D).

    The image is padded by the kernel radius and convolved through the FFT; the output keeps the
    input's shape.
    """
    from scipy import fft

    x = np.asarray(x, dtype=np.float32)
    if kernel.ndim != len(axes):
        raise ValueError(f"kernel has {kernel.ndim} dims for {len(axes)} axes")
    pad = [(0, 0)] * x.ndim
    full = [1] * x.ndim
    for axis, size in zip(axes, kernel.shape):
        pad[axis] = (size // 2, size // 2)
        full[axis] = size
    reflect = all(x.shape[a] > s // 2 for a, s in zip(axes, kernel.shape))
    padded = np.pad(x, pad, mode="reflect" if reflect else "edge")
    lengths = [padded.shape[a] for a in axes]
    spectrum = fft.rfftn(padded, s=lengths, axes=axes) * fft.rfftn(kernel.reshape(full).astype(np.float32), s=lengths, axes=axes)
    circular = fft.irfftn(spectrum, s=lengths, axes=axes)
    valid = [slice(None)] * x.ndim
    for axis, size in zip(axes, kernel.shape):  # indices free of wrap-around
        valid[axis] = slice(size - 1, padded.shape[axis])
    return np.ascontiguousarray(circular[tuple(valid)], dtype=np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights for offsets ``t`` in [0, 1) at taps -1, 0, 1, 2 (as PyTorch's bicubic)."""

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix that resamples one axis, with PyTorch's ``interpolate`` conventions.

    ``align_corners=False`` pixel centres (the field of view is kept), no anti-aliasing:
    ``"area"`` averages the input cells each output cell overlaps (adaptive average pooling),
    ``"linear"`` and ``"cubic"`` (Keys, a = -0.75, border samples repeated) interpolate,
    ``"nearest"`` takes the input cell holding the output centre.
    """
    scale = n_in / n_out
    out = np.arange(n_out)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    if mode == "area":
        starts = np.floor(out * n_in / n_out).astype(int)
        stops = np.ceil((out + 1) * n_in / n_out).astype(int)
        for i, (a, b) in enumerate(zip(starts, stops)):
            weights[i, a:b] = 1.0 / (b - a)
        return weights
    if mode == "nearest":
        weights[out, np.minimum(np.floor((out + 0.5) * scale).astype(int), n_in - 1)] = 1.0
        return weights
    source = (out + 0.5) * scale - 0.5
    if mode == "linear":
        source = np.maximum(source, 0.0)
        low = np.floor(source).astype(int)
        frac = source - low
        np.add.at(weights, (out, np.minimum(low, n_in - 1)), 1.0 - frac)
        np.add.at(weights, (out, np.minimum(low + 1, n_in - 1)), frac)
        return weights
    if mode == "cubic":
        low = np.floor(source).astype(int)
        taps = _cubic_weights(source - low)
        for k in range(4):
            np.add.at(weights, (out, np.clip(low - 1 + k, 0, n_in - 1)), taps[:, k])
        return weights
    raise SettingsError(f"Unknown interpolation {mode!r}; choose area, linear, cubic or nearest.")


def resize(x: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...], mode: str = "cubic") -> np.ndarray:
    """Resample ``x`` along ``axes`` to ``shape`` (thesis Algorithms 1-2, lines 4 and 7/8).

    ``mode`` is ``"area"``, ``"linear"``, ``"cubic"`` (Real-ESRGAN's area / bilinear / bicubic of
    ``torch.nn.functional.interpolate``, reproduced separably in numpy: no anti-aliasing, aliasing
    is part of the degradation) or ``"nearest"`` (labels). Pixel centres follow
    ``align_corners=False``: the field of view is kept.
    """
    out = np.asarray(x, dtype=np.float32)
    shape = tuple(max(1, int(s)) for s in shape)
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} does not match axes {axes}")
    if mode not in ("area", "linear", "cubic", "nearest"):
        raise SettingsError(f"Unknown interpolation {mode!r}; choose area, linear, cubic or nearest.")
    for axis, size in zip(axes, shape):
        if out.shape[axis] == size:
            continue
        matrix = interpolation_matrix(out.shape[axis], size, mode).astype(np.float32)
        moved = np.moveaxis(out, axis, -1)
        out = np.moveaxis(moved @ matrix.T, -1, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def add_gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, thesis Eq. 2.39: ``x + N(0, sigma^2)`` (independent per voxel and channel)."""
    return x + np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32)


def add_poisson_noise(x: np.ndarray, scale: float, rng: np.random.Generator, levels: float = 255.0) -> np.ndarray:
    """Real-ESRGAN Poisson noise (Algorithm 1): ``x + scale * (Poisson(x * levels) / levels - x)``."""
    x = np.clip(x, 0.0, None)
    counts = rng.poisson(x.astype(np.float64) * levels).astype(np.float32)
    return x + np.float32(scale) * (counts / np.float32(levels) - x)


def add_rician_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise, thesis Eq. 2.40: magnitude of the signal plus complex Gaussian noise.

    ``M = sqrt((A + sigma n_r)^2 + (sigma n_i)^2)``; on zero signal M is Rayleigh distributed
    with mean ``sigma sqrt(pi/2)``.
    """
    return add_chi_noise(x, sigma, 1, rng)


def add_chi_noise(x: np.ndarray, sigma: float, coils: int, rng: np.random.Generator) -> np.ndarray:
    """Non-central chi noise of ``coils`` = L receiver coils, thesis Eq. 2.41.

    Root-sum-of-squares reconstruction of L coils with complex Gaussian noise ``sigma``: the
    magnitude is non-central chi with 2L degrees of freedom and non-centrality A (simulated by
    putting the whole signal in one component, which has the same distribution). On zero
    signal its mean is ``sigma sqrt(2) Gamma(L + 1/2) / Gamma(L)``. L = 1 is Rician.
    """
    if int(coils) < 1:
        raise SettingsError(f"The coil count must be >= 1; got {coils}.")
    s = np.float32(sigma)
    total = np.square(x + s * rng.standard_normal(x.shape, dtype=np.float32))
    for _ in range(2 * int(coils) - 1):
        total += np.square(s * rng.standard_normal(x.shape, dtype=np.float32))
    return np.sqrt(total)


def noise_mean_on_zero_signal(sigma: float, coils: int = 1) -> float:
    """Expected magnitude of pure noise for L coils: ``sigma sqrt(2) Gamma(L+1/2)/Gamma(L)`` (Rayleigh for L = 1)."""
    return float(sigma * math.sqrt(2.0) * math.exp(math.lgamma(coils + 0.5) - math.lgamma(coils)))


def _polynomial_terms(ndim: int, order: int) -> list[tuple[int, ...]]:
    terms: list[tuple[int, ...]] = []

    def walk(prefix: tuple[int, ...], left: int) -> None:
        if len(prefix) == ndim:
            if 0 < sum(prefix):
                terms.append(prefix)
            return
        for power in range(left + 1):
            walk((*prefix, power), left - power)

    walk((), order)
    return terms


def bias_field(shape: tuple[int, ...], coefficients: np.ndarray, order: int = 3) -> np.ndarray:
    """A smooth, positive multiplicative bias field over ``shape`` (thesis Eq. 2.42).

    ``B = exp(sum_k c_k prod_i u_i^{p_ki})`` over the polynomial terms of total degree 1..order
    (low-degree polynomial basis, Sudre et al. 2017, Van Leemput et al. 1999; the TorchIO form),
    coordinates ``u_i`` in [-1, 1]; divided by its mean so overall brightness is kept.
    ``coefficients`` has one value per term of :func:`_polynomial_terms` (``n`` dims, ``order``).
    """
    terms = _polynomial_terms(len(shape), order)
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (len(terms),):
        raise ValueError(f"expected {len(terms)} coefficients for order {order} in {len(shape)}D")
    coords = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    log_field = np.zeros(shape, dtype=np.float64)
    for c, powers in zip(coefficients, terms):
        term = np.ones((1,) * len(shape))
        for i, p in enumerate(powers):
            if p:
                view = [1] * len(shape)
                view[i] = shape[i]
                term = term * (coords[i] ** p).reshape(view)
        log_field = log_field + c * term
    field_ = np.exp(log_field)
    return (field_ / field_.mean()).astype(np.float32)


def apply_bias_field(x: np.ndarray, field_: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Multiply ``x`` by a bias field defined over ``axes`` (broadcast over the other axes), Eq. 2.42."""
    view = [1] * x.ndim
    for axis in axes:
        view[axis] = x.shape[axis]
    return x * field_.reshape(view)


def _fft(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    from scipy import fft

    return fft.fftshift(fft.fftn(np.asarray(x, dtype=np.float32), axes=axes), axes=axes)


def _ifft_magnitude(spectrum: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    from scipy import fft

    return np.abs(fft.ifftn(fft.ifftshift(spectrum, axes=axes), axes=axes)).astype(np.float32)


def rigid_inplane(x: np.ndarray, degrees: float, shift: tuple[float, float], axes: tuple[int, int]) -> np.ndarray:
    """Rotate ``x`` by ``degrees`` about the centre of the plane ``axes`` and shift it (voxels); linear."""
    from scipy.ndimage import affine_transform

    a, b = axes
    theta = math.radians(degrees)
    matrix = np.eye(x.ndim)
    matrix[a, a], matrix[a, b] = math.cos(theta), -math.sin(theta)
    matrix[b, a], matrix[b, b] = math.sin(theta), math.cos(theta)
    centre = (np.asarray(x.shape, dtype=np.float64) - 1) / 2
    translation = np.zeros(x.ndim)
    translation[a], translation[b] = shift
    # output voxel o samples input at M (o - c - t) + c
    offset = centre - matrix @ (centre + translation)
    return affine_transform(x, matrix, offset=offset, order=1, mode="constant", cval=0.0).astype(np.float32)


def motion_artefact(
    x: np.ndarray, degrees: list[float], shifts: list[tuple[float, float]], times: list[float], axes: tuple[int, int]
) -> np.ndarray:
    """Rigid in-plane motion during the acquisition, simulated in k-space (§2.3.5, Shaw et al. 2019).

    The patient sits in ``len(degrees) + 1`` positions (the first is the original one); each
    position contributes the band of k-space lines along the phase-encoding axis (the second
    of ``axes``) acquired while it held, split at the fractions ``times``. The band holding the
    k-space centre comes from the original position (as TorchIO's RandomMotion), so the image
    stays in place and the moved positions appear as ghosts and blur.
    """
    if not (len(degrees) == len(shifts) == len(times)):
        raise ValueError("degrees, shifts and times must have one entry per movement")
    positions = [x] + [rigid_inplane(x, d, s, axes) for d, s in zip(degrees, shifts)]
    n = x.shape[axes[1]]
    bounds = [0] + [round(t * n) for t in sorted(times)] + [n]
    centre_band = next(i for i in range(len(bounds) - 1) if bounds[i] <= n // 2 < bounds[i + 1])
    order = list(range(1, len(positions)))
    order.insert(centre_band, 0)  # the original position fills the band through the centre
    result = np.empty(x.shape, dtype=np.complex64)
    for band, index in enumerate(order):
        sl = [slice(None)] * x.ndim
        sl[axes[1]] = slice(bounds[band], bounds[band + 1])
        result[tuple(sl)] = _fft(positions[index], axes)[tuple(sl)]
    return _ifft_magnitude(result, axes)


def ghosting_artefact(
    x: np.ndarray, count: int, axis: int, intensity: float, axes: tuple[int, ...], restore: float = 0.02
) -> np.ndarray:
    """Ghosting along ``axis`` (§2.3.5, Axel et al. 1986): every ``count``-th k-space line scaled by ``1 - intensity``.

    Periodic physiological motion modulates k-space lines along the phase-encoding direction,
    which shows as ``count`` shifted copies of the image. The central ``restore`` fraction of
    k-space (in every axis of ``axes``) is kept, as TorchIO's RandomGhosting does.
    """
    spectrum = _fft(x, axes)
    centre = [slice(None)] * x.ndim
    for a in axes:
        half = round(restore * x.shape[a])
        middle = x.shape[a] // 2
        centre[a] = slice(middle - half, middle + half)
    kept = spectrum[tuple(centre)].copy()
    lines = [slice(None)] * x.ndim
    lines[axis] = slice(None, None, int(count))
    spectrum[tuple(lines)] *= 1.0 - intensity
    spectrum[tuple(centre)] = kept
    return _ifft_magnitude(spectrum, axes)


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class Degraded:
    """Result of :func:`degrade`.

    ``image`` is at the target shape, ``lr`` on the low-resolution grid (input / scale along the
    degraded axes); both in the input's value range. ``record`` holds every parameter drawn.
    """

    image: np.ndarray
    lr: np.ndarray
    record: dict = field(default_factory=dict)


StepCallback = Callable[[str, np.ndarray], None]


def _choice(rng: np.random.Generator, pairs: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in pairs]
    probs = np.asarray([p for _, p in pairs], dtype=np.float64)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _random_rotation(rng: np.random.Generator, d: int) -> tuple[np.ndarray, dict]:
    if d == 2:
        theta = float(rng.uniform(-math.pi, math.pi))
        c, s = math.cos(theta), math.sin(theta)
        return np.array([[c, -s], [s, c]]), {"angle_deg": math.degrees(theta)}
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, {"rotation": q.tolist()}


def _rotation_of(params: dict, d: int) -> np.ndarray:
    """The kernel rotation of a recorded blur: ``angle_deg`` (2D), ``rotation`` (3D matrix) or none."""
    if "angle_deg" in params:
        theta = math.radians(params["angle_deg"])
        return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    if "rotation" in params:
        return np.asarray(params["rotation"], dtype=np.float64)
    return np.eye(d)


def sample_blur(config: DegradationConfig, level: LevelConfig, d: int, rng: np.random.Generator) -> dict:
    """Draw the blur of one level: kernel family, sigmas, rotation, size and shape parameter."""
    kind = _choice(rng, config.kernel_probs)
    low, high = config.kernel_size_range
    size = int(rng.choice(np.arange(low, high + 1, 2)))
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigmas = [_uniform(rng, level.blur_sigma)] * d
        rot_record: dict = {}
    else:
        sigmas = [_uniform(rng, level.blur_sigma) for _ in range(d)]
        _, rot_record = _random_rotation(rng, d)
    beta = 1.0
    if kind.startswith("generalised"):
        beta = _uniform(rng, config.generalised_beta)
    elif kind.startswith("plateau"):
        beta = _uniform(rng, config.plateau_beta)
    params = {"op": "blur", "applied": True, "kernel": kind, "sigma": sigmas, "size": size, **rot_record}
    if kind.startswith(("generalised", "plateau")):
        params["beta"] = beta
    return params


def sample_noise(config: DegradationConfig, level: LevelConfig, rng: np.random.Generator) -> dict:
    """Draw the noise of one level: one model of ``level.noise_probs`` and its strength."""
    kind = _choice(rng, level.noise_probs)
    if kind == "gaussian":
        return {"op": "noise", "applied": True, "type": kind, "sigma": _uniform(rng, level.gaussian_sigma_255) / 255.0}
    if kind == "poisson":
        return {"op": "noise", "applied": True, "type": kind, "scale": _uniform(rng, level.poisson_scale)}
    if kind == "rician":
        return {"op": "noise", "applied": True, "type": kind, "sigma": _uniform(rng, level.rician_sigma)}
    coils = int(rng.integers(level.chi_coils[0], level.chi_coils[1] + 1))
    return {"op": "noise", "applied": True, "type": kind, "sigma": _uniform(rng, level.chi_sigma), "coils": coils}


def apply_noise(x: np.ndarray, params: dict, rng: np.random.Generator, poisson_levels: float = 255.0) -> np.ndarray:
    """Apply the noise drawn by :func:`sample_noise`."""
    kind = params["type"]
    if kind == "gaussian":
        return add_gaussian_noise(x, params["sigma"], rng)
    if kind == "poisson":
        return add_poisson_noise(x, params["scale"], rng, poisson_levels)
    if kind == "rician":
        return add_rician_noise(x, params["sigma"], rng)
    return add_chi_noise(x, params["sigma"], params["coils"], rng)


def _lr_grid(shape: tuple[int, ...], axes: tuple[int, ...], scale: float) -> tuple[int, ...]:
    return tuple(max(1, round(shape[a] / scale)) for a in axes)


def _to_unit(image: np.ndarray, value_range: str) -> tuple[np.ndarray, float, np.ndarray | None, dict]:
    """Map the input to the unit magnitude domain; return (unit, upper clip, per-channel reference, notes)."""
    notes: dict = {}
    if value_range == "symmetric":
        low, high = float(image.min()), float(image.max())
        if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
            raise SettingsError(
                f"The image spans {low:.4g}..{high:.4g}, outside [-1, 1]; pass value_range='raw' for scanner "
                "intensities (or 'unit' for [0, 1])."
            )
        return np.clip((image + 1.0) * 0.5, 0.0, 1.0), 1.0, None, notes
    if value_range == "unit":
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise SettingsError(
                f"The image spans {low:.4g}..{high:.4g}, outside [0, 1]; pass value_range='raw' for scanner "
                "intensities (or 'symmetric' for [-1, 1])."
            )
        return np.clip(image, 0.0, 1.0), 1.0, None, notes
    if value_range == "raw":
        negative = int(np.count_nonzero(image < 0))
        if negative:
            notes["negative_voxels_clipped"] = negative
        unit = np.clip(image, 0.0, None)
        references = np.ones(unit.shape[0], dtype=np.float64)
        for c in range(unit.shape[0]):
            positive = unit[c][unit[c] > 0]
            if positive.size:
                references[c] = float(np.percentile(positive, 99.5))
        references[references <= 0] = 1.0
        view = (-1,) + (1,) * (unit.ndim - 1)
        notes["intensity_reference"] = references.tolist()
        return unit / references.reshape(view).astype(np.float32), math.inf, references, notes
    raise SettingsError(f"Unknown value_range {value_range!r}; choose symmetric, unit or raw.")


def _from_unit(unit: np.ndarray, value_range: str, references: np.ndarray | None) -> np.ndarray:
    if value_range == "symmetric":
        return (unit * 2.0 - 1.0).astype(np.float32)
    if value_range == "raw":
        view = (-1,) + (1,) * (unit.ndim - 1)
        return (unit * references.reshape(view)).astype(np.float32)
    return unit.astype(np.float32)


def _as_channels(image: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise InputDataError(f"The image has voxel type {array.dtype}; expected numbers.")
    if array.ndim == 2:
        return array[None].astype(np.float32), True
    if array.ndim == 3 and array.shape[0] > 4:
        raise InputDataError(
            f"An image of shape {array.shape} looks like a volume without a channel axis; pass it as "
            "image[None] (channels first: (C, X, Y, Z), or (C, H, W) for a slice)."
        )
    if array.ndim not in (3, 4):
        raise InputDataError(
            f"The image has shape {array.shape}; expected a slice (H, W) or (C, H, W), or a volume (C, X, Y, Z)."
        )
    return array.astype(np.float32), False


def describe_operation(params: dict) -> str:
    """Short label of one recorded operation (for figures and logs)."""
    op = params["op"]
    if op == "blur":
        sig = "/".join(f"{s:.2f}" for s in params["sigma"])
        return f"blur {params['kernel'].replace('_', ' ')} σ {sig}"
    if op == "resize":
        size = "x".join(str(n) for n in params["shape"])
        return f"resize {params['direction']} ×{params['factor']:.2f} → {size} {params['mode']}"
    if op == "noise":
        if params["type"] == "poisson":
            return f"Poisson noise ×{params['scale']:.2f}"
        name = {"gaussian": "Gaussian", "rician": "Rician", "chi": f"nc-χ L={params.get('coils')}"}[params["type"]]
        return f"{name} noise σ {params['sigma']:.3f}"
    if op == "bias_field":
        return f"bias field a {params['bound']:.2f}"
    if op == "motion":
        return f"motion {len(params['degrees'])} moves"
    if op == "ghosting":
        return f"ghosting {params['count']} axis {params['axis']}"
    return op




def sample_resize(level: LevelConfig, modes: tuple[str, ...], base: tuple[int, ...], rng: np.random.Generator) -> dict:
    """Draw the resize of one level (Algorithms 1-2, line 4): up / down / keep, factor and interpolation.

    ``base`` is the grid the factor applies to: the input at level 1, the low-resolution grid
    at later levels (Real-ESRGAN); "keep" at a later level still resamples to that grid.
    """
    probs = np.asarray(level.resize_probs, dtype=np.float64)
    direction = ("up", "down", "keep")[int(rng.choice(3, p=probs / probs.sum()))]
    if direction == "up":
        factor = _uniform(rng, (1.0, level.resize_range[1]))
    elif direction == "down":
        factor = _uniform(rng, (level.resize_range[0], 1.0))
    else:
        factor = 1.0
    mode = str(rng.choice(list(modes)))
    shape = [max(1, round(n * factor)) for n in base]
    return {"op": "resize", "applied": True, "direction": direction, "factor": factor, "mode": mode, "shape": shape}


def sample_bias(config: DegradationConfig, d: int, rng: np.random.Generator) -> dict:
    """Draw a bias field (Algorithm 2, line 6): bound a in Table B.5's range, coefficients in [-a, a]."""
    bound = _uniform(rng, config.bias_coefficients)
    coefficients = rng.uniform(-bound, bound, len(_polynomial_terms(d, config.bias_order)))
    return {"op": "bias_field", "applied": True, "bound": bound, "order": config.bias_order,
            "coefficients": coefficients.tolist()}


def sample_motion(config: DegradationConfig, rng: np.random.Generator) -> dict:
    """Draw a motion artefact: ``motion_steps`` in-plane rotations / shifts and their k-space split times."""
    n = config.motion_steps
    step = 1.0 / (n + 1)
    deg, tr = config.motion_degrees, config.motion_translation
    degrees = [_uniform(rng, (-deg, deg)) for _ in range(n)]
    shifts = [[_uniform(rng, (-tr, tr)), _uniform(rng, (-tr, tr))] for _ in range(n)]
    times = [(k + 1) * step + _uniform(rng, (-step / 4, step / 4)) for k in range(n)]
    return {"op": "motion", "applied": True, "degrees": degrees, "shifts": shifts, "times": times}


def sample_ghosting(config: DegradationConfig, level: LevelConfig, rng: np.random.Generator) -> dict:
    """Draw a ghosting artefact: number of ghosts, in-plane axis and intensity (Table B.5)."""
    count = int(rng.integers(level.ghost_count[0], level.ghost_count[1] + 1))
    axis = int(rng.choice(list(config.ghost_axes)))
    return {"op": "ghosting", "applied": True, "count": count, "axis": axis,
            "intensity": _uniform(rng, level.ghost_intensity)}


@dataclass
class _Run:
    """What the operations of one :func:`degrade` call share."""

    config: DegradationConfig
    rng: np.random.Generator  # parameters
    noise_rng: np.random.Generator  # noise realisations (so parameters do not depend on the image size)
    axes: tuple[int, ...]  # degraded array axes
    upper: float  # clip bound of the unit domain
    input_sizes: tuple[int, ...]
    lr_sizes: tuple[int, ...]
    on_step: StepCallback | None
    plane: tuple[int, int] = (1, 2)  # in-plane array axes (motion, ghosting)

    def clamp(self, u: np.ndarray) -> np.ndarray:
        return np.clip(u, 0.0, self.upper).astype(np.float32, copy=False)

    def step(self, label: str, u: np.ndarray) -> None:
        if self.on_step is not None:
            self.on_step(label, u)


def apply_operation(x: np.ndarray, params: dict, run: _Run) -> np.ndarray:
    """Apply one drawn operation (a record entry) to the unit-domain image ``x``."""
    op = params["op"]
    if op == "blur":
        rotation = _rotation_of(params, len(run.axes))
        kernel = blur_kernel(params["kernel"], tuple(params["sigma"]), rotation, params["size"], params.get("beta", 1.0))
        return blur(x, kernel, run.axes)
    if op == "resize":
        return resize(x, tuple(params["shape"]), run.axes, params["mode"])
    if op == "noise":
        return apply_noise(x, params, run.noise_rng, run.config.poisson_levels)
    if op == "bias_field":
        field_ = bias_field(tuple(x.shape[a] for a in run.axes), np.asarray(params["coefficients"]), params["order"])
        return apply_bias_field(x, field_, run.axes)
    if op == "motion":
        return motion_artefact(x, params["degrees"], [tuple(s) for s in params["shifts"]], params["times"], run.plane)
    if op == "ghosting":
        return ghosting_artefact(x, params["count"], run.plane[params["axis"]], params["intensity"], run.plane,
                                 run.config.ghost_restore)
    raise ValueError(f"unknown operation {op!r}")


def _run_level(index: int, level: LevelConfig, x: np.ndarray, run: _Run) -> tuple[np.ndarray, list[dict]]:
    """One degradation level: blur, resize, noise, bias field (Algorithm 2, lines 3-6), motion, ghosting."""
    cfg, rng = run.config, run.rng
    drawn: list[dict] = []
    blur_params = sample_blur(cfg, level, len(run.axes), rng) if rng.random() < level.blur_p else None
    drawn.append(blur_params or {"op": "blur", "applied": False})
    drawn.append(sample_resize(level, cfg.resize_modes, run.input_sizes if index == 1 else run.lr_sizes, rng))
    if tuple(drawn[-1]["shape"]) == tuple(x.shape[a] for a in run.axes):
        drawn[-1]["applied"] = False  # level 1 "keep": nothing to do
    drawn.append(sample_noise(cfg, level, rng))
    drawn.append(sample_bias(cfg, len(run.axes), rng) if rng.random() < level.bias_p
                 else {"op": "bias_field", "applied": False})
    drawn.append(sample_motion(cfg, rng) if rng.random() < level.motion_p else {"op": "motion", "applied": False})
    drawn.append(sample_ghosting(cfg, level, rng) if rng.random() < level.ghosting_p
                 else {"op": "ghosting", "applied": False})
    # parameters are drawn in the order above, then applied in the same order; noise realisations
    # come from their own generator, so the parameters drawn depend on the seed alone
    for params in drawn:
        if params["applied"]:
            x = run.clamp(apply_operation(x, params, run))
            run.step(f"{index}: {describe_operation(params)}", x)
    return x, drawn


def _check_finite(x: np.ndarray) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(x.size - np.count_nonzero(finite))
        n_nan = int(np.count_nonzero(np.isnan(x)))
        raise InputDataError(
            f"The image holds {bad} value(s) that are not finite ({n_nan} NaN, {bad - n_nan} infinite); "
            "replace them (e.g. numpy.nan_to_num(image, nan=background)) before degrading."
        )


def _target_sizes(
    target_shape: tuple[int, ...] | str | None, shape: tuple[int, ...], axes: tuple[int, ...], lr_sizes: tuple[int, ...]
) -> tuple[int, ...]:
    """Sizes along the degraded ``axes`` of the requested output (``shape`` includes the channel axis)."""
    if target_shape is None:
        return lr_sizes
    if isinstance(target_shape, str):
        if target_shape != "input":
            raise SettingsError(f"target_shape must be None, 'input' or a shape; got {target_shape!r}.")
        return tuple(shape[a] for a in axes)
    target = tuple(int(s) for s in target_shape)
    if len(target) != len(shape) - 1 or any(s < 1 for s in target):
        raise SettingsError(f"target_shape {tuple(target_shape)} must give {len(shape) - 1} positive sizes.")
    for a in range(1, len(shape)):
        if a not in axes and target[a - 1] != shape[a]:
            raise SettingsError(f"target_shape {target} changes axis {a - 1}, which is not degraded (size {shape[a]}).")
    return tuple(target[a - 1] for a in axes)


def degrade(
    image: np.ndarray,
    config: DegradationConfig | str = "mri",
    seed: int | np.random.Generator = 0,
    *,
    scale: float | None = None,
    target_shape: tuple[int, ...] | str | None = None,
    value_range: ValueRange = "symmetric",
    axes: Axes = "inplane",
    on_step: StepCallback | None = None,
) -> Degraded:
    """Degrade a high-resolution image with a thesis pipeline (Algorithm 1 or 2, Table B.5).

    Parameters
    ----------
    image:
        ``(H, W)``, ``(C, H, W)`` or ``(C, X, Y, Z)`` (see the module docstring); finite values.
    config:
        ``"mri"``, ``"esrgan"`` or a :class:`DegradationConfig`.
    seed:
        Integer seed (recorded) or a ``numpy.random.Generator``.
    scale:
        Downscale factor of the low-resolution grid (default ``config.downscale_factor``, 4 in
        Table B.5; the SR model of §4.4 uses 2).
    target_shape:
        Spatial shape of :attr:`Degraded.image`: ``None`` = the low-resolution grid,
        ``"input"`` = the input grid (Algorithm 2, line 8), or a tuple (non-degraded axes must
        keep their size). Resampled with ``config.upsample_mode`` (bicubic).
    value_range:
        ``"symmetric"`` ([-1, 1], background -1), ``"unit"`` ([0, 1]) or ``"raw"`` (see module docstring).
    axes:
        Volumes only: ``"inplane"`` (each axial slice) or ``"all"`` (3D blur, resize, bias field).
    on_step:
        Called as ``on_step(label, unit_image)`` with the input, after each applied operation,
        and with the final low-resolution image (unit domain; background masked when configured).

    Returns
    -------
    :class:`Degraded` with ``image``, ``lr`` (float32, the input's value range) and ``record``.
    """
    cfg = pipeline_config(config) if isinstance(config, str) else config
    if not isinstance(cfg, DegradationConfig):
        raise SettingsError(f"config must be a pipeline name or a DegradationConfig; got {type(config).__name__}.")
    x, squeeze = _as_channels(image)
    _check_finite(x)
    if axes not in ("inplane", "all"):
        raise SettingsError(f"axes must be 'inplane' or 'all'; got {axes!r}.")
    deg_axes: tuple[int, ...] = (1, 2) if (x.ndim == 3 or axes == "inplane") else (1, 2, 3)
    scale = float(cfg.downscale_factor if scale is None else scale)
    if not 1.0 <= scale <= 16.0:
        raise SettingsError(f"scale must be within 1-16; got {scale}.")
    if isinstance(seed, np.random.Generator):
        rng = seed
        noise_rng = np.random.default_rng(int(rng.integers(2**63)))
    else:
        rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))

    unit, upper, references, notes = _to_unit(x, value_range)
    lr_sizes = _lr_grid(unit.shape, deg_axes, scale)
    target_sizes = _target_sizes(target_shape, unit.shape, deg_axes, lr_sizes)
    run = _Run(config=cfg, rng=rng, noise_rng=noise_rng, axes=deg_axes, upper=upper, input_sizes=tuple(unit.shape[a] for a in deg_axes),
               lr_sizes=lr_sizes, on_step=on_step)
    record: dict = {
        "pipeline": cfg.name,
        "seed": None if isinstance(seed, np.random.Generator) else int(seed),
        "value_range": value_range,
        "degraded_axes": [a - 1 for a in deg_axes],
        "scale": scale,
        "input_shape": list(unit.shape[1:]),
        "channels": int(unit.shape[0]),
        **notes,
    }
    run.step("input", unit)
    record["no_degradation"] = bool(rng.random() < cfg.no_degradation_p)
    record["levels"] = []
    current = unit
    for index, level in enumerate([] if record["no_degradation"] else cfg.levels, start=1):
        current, ops = _run_level(index, level, current, run)
        record["levels"].append({"level": index, "ops": ops})

    # Algorithm 1 line 7 / Algorithm 2 line 8: resample to the low-resolution grid, then to the target
    final_mode = str(rng.choice(list(cfg.resize_modes)))
    lr_unit = run.clamp(resize(current, lr_sizes, deg_axes, final_mode))
    out_unit = lr_unit if target_sizes == lr_sizes else run.clamp(resize(lr_unit, target_sizes, deg_axes, cfg.upsample_mode))
    if cfg.mask_background:
        foreground = (unit > 0).any(axis=0)[None].astype(np.float32)
        lr_unit = lr_unit * (resize(foreground, lr_sizes, deg_axes, "linear") >= 0.5)
        out_unit = out_unit * (resize(foreground, target_sizes, deg_axes, "linear") >= 0.5)
    run.step(f"low-resolution {'x'.join(str(s) for s in lr_unit.shape[1:])} ({final_mode})", lr_unit)
    record.update(lr_shape=list(lr_unit.shape[1:]), lr_mode=final_mode, output_shape=list(out_unit.shape[1:]),
                  output_mode=None if target_sizes == lr_sizes else cfg.upsample_mode,
                  background_masked=bool(cfg.mask_background))
    lr = _from_unit(lr_unit, value_range, references)
    out = _from_unit(out_unit, value_range, references)
    if squeeze:
        lr, out = lr[0], out[0]
    return Degraded(image=out, lr=lr, record=record)


# --------------------------------------------------------------------------------------------
# Paired training data for super-resolution
# --------------------------------------------------------------------------------------------


@dataclass
class SRPair:
    """One super-resolution training pair (thesis §4.4.1).

    ``lr``: the degraded image on the low-resolution grid (input / scale); ``condition``: ``lr``
    resampled (bicubic) back to the high-resolution grid - what the SR model is fed, since it
    refines an already interpolated image; ``hr``: the target, the input itself.
    """

    lr: np.ndarray
    condition: np.ndarray
    hr: np.ndarray
    record: dict


def make_sr_pair(
    hr: np.ndarray,
    pipeline: DegradationConfig | str = "mri",
    seed: int | np.random.Generator = 0,
    scale: float = 2.0,
    value_range: ValueRange = "symmetric",
) -> SRPair:
    """Degrade a high-resolution slice (or volume, in-plane) into an SR training pair at ``scale`` (2x, issue 7).

    ``hr`` is ``(H, W)`` or ``(C, H, W)`` normalised to [-1, 1] by default (BrainLDM's
    normalisation, §4.2); ``lr`` has ``round(H / scale) x round(W / scale)`` pixels and
    ``condition`` the shape of ``hr``.
    """
    result = degrade(hr, pipeline, seed, scale=scale, target_shape="input", value_range=value_range)
    return SRPair(lr=result.lr, condition=result.image, hr=np.asarray(hr, dtype=np.float32), record=result.record)
