"""Typed settings of the super-resolution latent diffusion model (thesis §4.4.1, Table B.7).

* :class:`SRInferenceSettings` - how a trained SR model is run: the DDIM subsequence (``steps``,
  ``strength``), the overlapping patches (``patch_size``, ``overlap``, ``blend``), the seed.
  Stored in the SR bundle as the model's recommended settings; the ``brainldm sr`` options
  override them.
* :class:`SRStage` - training of the SR denoiser and its structural encoder (``sr.denoiser`` of a
  training configuration): the usual stage settings plus the degradation pipelines the training
  pairs are made with, the pool of degraded slices and the range of training timesteps.
* :class:`SRSettings` - the ``sr`` section of a :class:`~brainldm.train.config.TrainingConfig`
  (presets ``tiny-sr``, ``cpu-sr``, ``thesis-sr``).

No torch import here: the settings load (and fail with clear messages) before any network exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from brainldm.diffusion.schedule import ScheduleConfig
from brainldm.errors import SettingsError
from brainldm.nets.config import AutoencoderConfig, ConditioningConfig, DenoiserConfig
from brainldm.train.loop_settings import LoopSettings

PIPELINES = ("mri", "esrgan")
BlendMode = Literal["gaussian", "constant"]
OutputMode = Literal["decoded", "residual"]


@dataclass
class SRInferenceSettings:
    """How the SR model super-resolves an image (``brainldm sr``, :func:`brainldm.sr.infer.super_resolve_volume`).

    Attributes
    ----------
    steps:
        N, the number of DDIM steps run (denoiser evaluations per patch): the length of the DDIM
        subsequence from the start timestep down to the clean latent.
    strength:
        Where sampling starts (SDEdit, Meng et al. 2022): at ``t_start = round(strength * T) - 1``
        from the encoded bicubic image noised to that level (Eq. 2.13). ``1.0`` starts from pure
        noise (the thesis's sampling); smaller values keep more of the bicubic image and need fewer
        steps. Must not exceed the ``train_strength`` the model was trained with.
    overlap:
        Fraction of a patch shared with its neighbour (0 <= overlap < 1; 0.25 = 25 %).
    patch_size:
        Side of the square image patches on the upsampled grid, in pixels; 0 = the model's training
        patch (recommended: models trained on patches make artefacts on other sizes, Fig. B.7).
    blend:
        Weights of overlapping patches: ``"gaussian"`` (centre-weighted, sigma = patch / 8, floored)
        or ``"constant"`` (plain average).
    output:
        ``"decoded"`` = the decoded SR latent ``D(z_hat)``; ``"residual"`` = the bicubic image plus
        the change the model made in latent space, ``bicubic + D(z_hat) - D(E(bicubic))`` (cancels
        the autoencoder's reconstruction error, keeps what the autoencoder cannot represent - noise
        included).
    batch_size:
        Patches per denoiser pass.
    seed:
        Seed of the start noise (each patch has its own stream: results do not depend on ``batch_size``).
    skip_background:
        Patches holding no foreground (every value at the background level) are not diffused.
    device:
        Torch device (``cpu``, ``cuda``).
    """

    steps: int = 10
    strength: float = 0.5
    overlap: float = 0.25
    patch_size: int = 0
    blend: BlendMode = "gaussian"
    output: OutputMode = "decoded"
    batch_size: int = 8
    seed: int = 0
    skip_background: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SRInferenceSettings:
        if int(self.steps) < 1:
            raise SettingsError(f"SR steps must be at least 1, got {self.steps}.")
        if not 0.0 < float(self.strength) <= 1.0:
            raise SettingsError(f"SR strength must lie in (0, 1] (1 = start from pure noise), got {self.strength}.")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise SettingsError(f"SR patch overlap must lie in [0, 1), got {self.overlap}.")
        if int(self.patch_size) < 0:
            raise SettingsError(f"SR patch_size must be >= 0 (0 = the model's training patch), got {self.patch_size}.")
        if self.blend not in ("gaussian", "constant"):
            raise SettingsError(f"SR blend must be 'gaussian' or 'constant', got {self.blend!r}.")
        if self.output not in ("decoded", "residual"):
            raise SettingsError(f"SR output must be 'decoded' or 'residual', got {self.output!r}.")
        if int(self.batch_size) < 1:
            raise SettingsError(f"SR batch_size must be at least 1, got {self.batch_size}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SRInferenceSettings:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"Unknown SR inference setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**data)

    def with_changes(self, **changes: Any) -> SRInferenceSettings:
        """A copy with the given settings replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()


def _sr_denoiser() -> DenoiserConfig:
    return DenoiserConfig(spatial_dims=2, channels=(32, 64, 64), attention_levels=(False, False, False),
                          mid_attention=False, num_res_blocks=1, position_embedding="none")


@dataclass
class SRStage(LoopSettings):
    """Training of the SR denoiser and its structural encoder (``sr.denoiser``).

    The loss is the noise-prediction loss of the detection denoiser (Eq. 2.31) with the scaled
    latent of the bicubic-upsampled low-resolution patch as the structural encoder's input::

        t ~ U{0 .. train_strength * T - 1},  z_t = sqrt(abar_t) s E(HR) + sqrt(1 - abar_t) eps
        L = || eps - eps_theta(z_t, t | c = s E(bicubic(LR))) ||^2

    Attributes (beyond the loop settings of :class:`~brainldm.train.loop_settings.LoopSettings`)
    ----------
    model:
        The denoiser (2D, no position embedding, no concatenated channels); the structural encoder
        copies its encoder half.
    schedule:
        Noise schedule (linear, T = 1000, Table B.7).
    patch_size:
        Training patch on the high-resolution grid, image pixels (256^2 in the thesis).
    pipelines:
        Degradation pipelines the low-resolution inputs are made with (``mri`` = Algorithm 2,
        ``esrgan`` = Algorithm 1), drawn with equal probability.
    scale:
        Downscale factor of the low-resolution grid (2: the SR model doubles the resolution).
    pool_size, pool_refresh:
        Degrading a slice costs far more than a small training step, so a pool of ``pool_size``
        degraded slices is kept and ``pool_refresh`` of them are replaced by fresh draws every step
        (every pair is still made on the fly, from a seeded stream).
    train_strength:
        Training timesteps are drawn from ``[0, train_strength * T)``; inference may start at most
        there (``SRInferenceSettings.strength``). 1 = the whole schedule.
    latent_scale:
        Latents are multiplied by this before diffusion; null = 1 / std of the training HR latents.
    """

    patch_size: tuple[int, ...] = (64, 64)
    batch_size: int = 16
    lr: float = 5e-4
    val_patches: int = 16
    model: DenoiserConfig = field(default_factory=_sr_denoiser)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    pipelines: tuple[str, ...] = PIPELINES
    scale: float = 2.0
    pool_size: int = 64
    pool_refresh: int = 1
    train_strength: float = 1.0
    latent_scale: float | None = None

    def validate(self, autoencoder: AutoencoderConfig, conditioning: ConditioningConfig) -> None:
        section = "sr.denoiser"
        if len(self.patch_size) != 2 or any(int(s) <= 0 for s in self.patch_size):
            raise SettingsError(f"{section}.patch_size must be two positive sizes (a 2D patch), got "
                                f"{list(self.patch_size)}.")
        self.validate_loop(section, 2, min_val_patches=1)
        if int(self.pool_size) < 1:
            raise SettingsError(f"{section}.pool_size must be at least 1, got {self.pool_size}.")
        if self.pool_refresh < 0 or self.pool_refresh > self.pool_size:
            raise SettingsError(f"{section}.pool_refresh must lie in [0, pool_size], got {self.pool_refresh}.")
        bad = [p for p in self.pipelines if p not in PIPELINES]
        if not self.pipelines or bad:
            raise SettingsError(f"{section}.pipelines must be a non-empty list of {list(PIPELINES)}, got "
                                f"{list(self.pipelines)}.")
        if not 1.0 < float(self.scale) <= 8.0:
            raise SettingsError(f"{section}.scale must lie in (1, 8], got {self.scale}.")
        if not 0.0 < float(self.train_strength) <= 1.0:
            raise SettingsError(f"{section}.train_strength must lie in (0, 1], got {self.train_strength}.")
        if self.latent_scale is not None and self.latent_scale <= 0:
            raise SettingsError(f"{section}.latent_scale must be positive (or null), got {self.latent_scale}.")
        self.schedule.validate()
        model = self.model
        if model.spatial_dims != 2 or autoencoder.spatial_dims != 2:
            raise SettingsError(f"The SR model works on 2D slices: {section}.model.spatial_dims and "
                                "autoencoder.model.spatial_dims must be 2.")
        if model.latent_channels != autoencoder.latent_channels:
            raise SettingsError(f"{section}.model.latent_channels ({model.latent_channels}) must equal "
                                f"autoencoder.model.latent_channels ({autoencoder.latent_channels}).")
        if model.condition_channels:
            raise SettingsError(f"{section}.model.condition_channels must be 0: the low-resolution image reaches the "
                                "denoiser through the structural encoder.")
        if model.position_embedding != "none":
            raise SettingsError(f"{section}.model.position_embedding must be 'none': SR patches are taken anywhere "
                                "on upsampled slices of any size.")
        c = autoencoder.compression
        multiple = c * model.size_multiple
        if any(int(s) % multiple for s in self.patch_size):
            raise SettingsError(f"{section}.patch_size {list(self.patch_size)} must be a multiple of {multiple} (the "
                                f"autoencoder's compression {c} x the denoiser's {model.size_multiple}).")


@dataclass
class SRSettings:
    """The ``sr`` section of a training configuration (``brainldm train sr``).

    The image first stage is the configuration's ``autoencoder`` section (trained on
    high-resolution slices); ``conditioning`` describes the structural encoder (mechanism
    ``structural``; its ``mask_latent_channels`` is the channel count of the conditioning latent,
    i.e. the image latent's); ``denoiser`` the SR denoiser training; ``inference`` the settings
    stored in the bundle as the model's recommendation.
    """

    conditioning: ConditioningConfig = field(
        default_factory=lambda: ConditioningConfig(mechanism="structural", mask_latent_channels=4, variant="SR"))
    denoiser: SRStage = field(default_factory=SRStage)
    inference: SRInferenceSettings = field(default_factory=SRInferenceSettings)

    def validate(self, autoencoder: AutoencoderConfig) -> None:
        if self.conditioning.mechanism != "structural":
            raise SettingsError("sr.conditioning.mechanism must be 'structural': the SR model feeds the "
                                "low-resolution image through a structural encoder (thesis §4.4.1).")
        if self.conditioning.mask_latent_channels != autoencoder.latent_channels:
            raise SettingsError(f"sr.conditioning.mask_latent_channels ({self.conditioning.mask_latent_channels}) "
                                f"must equal autoencoder.model.latent_channels ({autoencoder.latent_channels}): the "
                                "structural encoder reads the latent of the bicubic-upsampled image.")
        self.denoiser.validate(autoencoder, self.conditioning)
        self.inference.validate()
        if self.inference.strength > self.denoiser.train_strength + 1e-9:
            raise SettingsError(f"sr.inference.strength ({self.inference.strength}) must not exceed "
                                f"sr.denoiser.train_strength ({self.denoiser.train_strength}): the model never saw "
                                "noisier latents.")


__all__ = ["PIPELINES", "SRInferenceSettings", "SRSettings", "SRStage"]
