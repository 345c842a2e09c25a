"""The settings every training stage shares: optimiser, loop, validation, checkpoints, stopping,
augmentation and frozen sub-modules.

:class:`LoopSettings` is the base of the detection and synthesis stages
(:class:`~brainldm.train.config.StageSettings`) and of the super-resolution stage
(:class:`~brainldm.sr.config.SRStage`), which set their own defaults. It imports neither torch nor
the other settings modules, so both of them can build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brainldm.errors import SettingsError


@dataclass
class LoopSettings:
    """Optimiser, loop, validation, checkpoints and stopping of one training stage.

    ``patch_size`` is in image voxels. ``max_minutes > 0`` ends the stage (as "finished") after
    that much training time, counted across resumes. ``patience`` counts validations without an
    improvement of at least ``min_delta`` (0 = never stop early). ``freeze`` lists sub-modules
    (attribute paths, e.g. ``net.encoder``) whose weights stay fixed, for fine-tuning with
    ``--init``. ``flip_prob``: probability of a left-right flip of a training patch.
    """

    patch_size: tuple[int, ...] = (64, 64, 64)
    batch_size: int = 2
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    ema_decay: float = 0.0
    val_every: int = 100
    val_patches: int = 8
    patience: int = 0
    min_delta: float = 0.0
    checkpoint_every: int = 100
    log_every: int = 10
    max_minutes: float = 0.0
    flip_prob: float = 0.5
    freeze: list[str] = field(default_factory=list)

    def validate_loop(self, section: str, spatial_dims: int, min_val_patches: int = 0) -> None:
        """Check these settings; errors name ``section`` (e.g. ``denoiser``, ``sr.denoiser``)."""
        if len(self.patch_size) != spatial_dims:
            raise SettingsError(f"{section}.patch_size {list(self.patch_size)} must have {spatial_dims} entries "
                                f"(spatial_dims of the model).")
        if any(int(s) <= 0 for s in self.patch_size):
            raise SettingsError(f"{section}.patch_size must be positive, got {list(self.patch_size)}.")
        for name in ("batch_size", "max_steps", "val_every", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{section}.{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise SettingsError(f"{section}.lr must be positive, got {self.lr}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SettingsError(f"{section}.ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}.")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise SettingsError(f"{section}.flip_prob must be in [0, 1], got {self.flip_prob}.")
        if self.val_patches < min_val_patches:
            raise SettingsError(f"{section}.val_patches must be at least {min_val_patches}, got {self.val_patches}.")
        if self.patience < 0 or self.grad_clip < 0 or self.max_minutes < 0:
            raise SettingsError(f"{section}: patience, grad_clip and max_minutes must be >= 0.")


__all__ = ["LoopSettings"]
