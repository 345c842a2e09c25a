"""First-stage training (§3.3.3): L1 + regularisation + optional adversarial loss.

Loss per step: ``|x - D(E(x))|_1`` (mean over voxels and sequences) plus the
regulariser - ``kl_weight * KL(q(z|x) || N(0, I))`` for the KL autoencoder or
``vq_weight * commitment`` for the VQ autoencoder (its codebook follows by EMA) - plus,
from ``adversarial.start_step`` on, ``adversarial.weight * (-D_patch(x_hat))`` with a
patch discriminator trained by the hinge loss
``1/2 (relu(1 - D(x)) + relu(1 + D(x_hat)))`` (Tables 3.1/3.2: 3 layers, 64 channels, hinge).

Validation reconstructs a fixed set of patches from the validation subjects (posterior
mean / quantised latent) and reports ``val_mae_brain``, the mean absolute error inside the
brain mask in normalised [-1, 1] units (the early-stopping criterion ``val_loss``), the
whole-patch ``val_l1`` and the regulariser.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainldm.errors import BrainLDMError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.train.config import AutoencoderStage, TrainingConfig
from brainldm.train.data import ImagePatchSampler, TrainingData, prepare_training_data
from brainldm.train.distributed import wrap_ddp
from brainldm.train.loop import StageTrainer, _logits, apply_freeze
from brainldm.train.slice_sampler import DeviceImageSliceSampler, stacked_image_bytes
from brainldm.train.state import ExponentialMovingAverage

log = logging.getLogger("brainldm.train")


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def build_discriminator_module(config) -> torch.nn.Module:
    from brainldm.nets import discriminator as disc_module

    builder = getattr(disc_module, "build_discriminator", None)
    if builder is not None:
        return builder(config)
    return disc_module.PatchDiscriminator(config)


class AutoencoderTrainer(StageTrainer):
    """Trains the first stage described by ``config.autoencoder``."""

    stage = "autoencoder"

    @property
    def settings(self) -> AutoencoderStage:
        return self.config.autoencoder

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        if self.data_dir is None:
            raise BrainLDMError("No data folder given: the autoencoder needs training subjects.")
        cache = self.cache_folder()
        data: TrainingData = prepare_training_data(
            self.data_dir, self.config.preprocess, self.config.split, cache, self.context,
            self.config.max_subjects, should_stop=self.stop_requested,
            progress=self._data_progress,
        )
        self.data = data
        self.skipped = list(data.skipped)
        self.data_summary = {**data.summary(), "n_train": len(data.train), "n_val": len(data.val)}
        s = self.settings
        if len(s.patch_size) == 2 and 0 < stacked_image_bytes(data.train) <= s.stacked_sampler_mb * 2**20:
            self.sampler = DeviceImageSliceSampler(data.train, s.patch_size, s.flip_prob, self.rng, self.device)
            log.info("2D training slices stacked on %s (%.0f MB): whole batches drawn at once", self.device,
                     self.sampler.nbytes / 2**20)
        else:
            self.sampler = ImagePatchSampler(data.train, s.patch_size, s.flip_prob, self.rng)
        # Fixed validation patches (same for every validation and across resumes).
        val_rng = np.random.default_rng([self.config.seed, 7919])
        val_sampler = ImagePatchSampler(data.val, s.patch_size, 0.0, val_rng)
        self.val_sampler = val_sampler
        self.val_patches = [val_sampler.draw() for _ in range(max(s.val_patches, 1))]
        log.info("autoencoder data: %d train, %d val subjects, %d skipped", len(data.train), len(data.val),
                 len(data.skipped))

    def _data_progress(self, index: int, total: int, subject_id: str) -> None:
        if index % 5 == 0:
            self.write_status("starting", f"preparing subject {index + 1}/{total} ({subject_id})")

    # ------------------------------------------------------------------ networks
    def build(self) -> None:
        s = self.settings
        # Contiguous (not channels-last) weights for training: oneDNN's channels-last 3D backward
        # crashed (segmentation fault) in our tests; channels-last only pays off at inference.
        self.autoencoder = build_autoencoder(s.model, channels_last=False).to(self.device)
        if self.init is not None and not self.resume_has_checkpoint():
            from brainldm.train.export import read_stage_weights

            weights, _ = read_stage_weights(self.init, "autoencoder")
            self.load_init_weights(self.autoencoder, weights, "autoencoder")
            log.info("autoencoder initialised from %s", self.init)
        frozen = apply_freeze(self.autoencoder, s.freeze, "autoencoder")
        if frozen:
            log.info("frozen autoencoder parameters: %d", len(frozen))
        self.model = wrap_ddp(self.autoencoder, self.context, self.device)
        self.trainable = [p for p in self.autoencoder.parameters() if p.requires_grad]
        self.optimizers = {"autoencoder": self.make_optimizer(self.trainable)}
        self.discriminator = None
        adv = s.adversarial
        if adv.weight > 0:
            disc_config = copy.deepcopy(adv.discriminator)
            disc_config.spatial_dims = s.model.spatial_dims
            disc_config.in_channels = s.model.in_channels
            self.discriminator = build_discriminator_module(disc_config).to(self.device)
            self.disc_model = wrap_ddp(self.discriminator, self.context, self.device)
            self.disc_params = [p for p in self.discriminator.parameters() if p.requires_grad]
            self.optimizers["discriminator"] = self.make_optimizer(self.disc_params, lr=adv.lr or s.lr)
        self.ema = ExponentialMovingAverage(self.autoencoder, s.ema_decay) if s.ema_decay > 0 else None
        self._eval_copy: torch.nn.Module | None = None

    def resume_has_checkpoint(self) -> bool:
        return self.resume and self.run_dir.last_checkpoint.exists()

    def ema_module(self) -> torch.nn.Module:
        return self.autoencoder

    def network_states(self) -> dict[str, Any]:
        states = {"autoencoder": self.autoencoder.state_dict()}
        if self.discriminator is not None:
            states["discriminator"] = self.discriminator.state_dict()
        return states

    def load_network_states(self, states: dict[str, Any]) -> None:
        self.autoencoder.load_state_dict(states["autoencoder"])
        if self.discriminator is not None and "discriminator" in states:
            self.discriminator.load_state_dict(states["discriminator"])

    def extra_state(self) -> dict[str, Any]:
        return {"autoencoder_config": self.settings.model.to_dict(),
                "preprocess": self.config.preprocess.to_dict()}

    # ------------------------------------------------------------------ step
    def pixel_loss(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction term of the loss (logged as ``l1``): mean absolute error."""
        return (reconstruction - images).abs().mean()

    def train_step(self) -> dict[str, float]:
        s = self.settings
        self.autoencoder.train()
        lr = self.learning_rate(self.step)
        for optimizer in self.optimizers.values():
            self.set_lr(optimizer, lr)
        images, _ = self.sampler.sample(s.batch_size)
        images = images.to(self.device, non_blocking=True)
        with self.autocast():
            output = self.model(images)
        reconstruction = output.reconstruction.float()
        l1 = self.pixel_loss(reconstruction, images)
        regularisation = output.regularisation_loss.float()
        reg_weight = s.kl_weight if s.model.kind == "kl" else s.vq_weight
        loss = l1 + reg_weight * regularisation
        adversarial_on = self.discriminator is not None and self.step >= s.adversarial.start_step
        values: dict[str, float] = {}
        if adversarial_on:
            # Generator term through the plain discriminator (no DDP hooks, no gradient kept).
            self.discriminator.requires_grad_(False)
            with self.autocast():
                fake_logits = _logits(self.discriminator(reconstruction))
            generator_adv = hinge_generator_loss(fake_logits)
            self.discriminator.requires_grad_(True)
            loss = loss + s.adversarial.weight * generator_adv
            values["g_adv"] = float(generator_adv.detach())
        if not torch.isfinite(loss.detach()) and not self.scaler.is_enabled():
            raise BrainLDMError(f"The autoencoder loss became {float(loss)} at step {self.step}: training diverged. "
                                "Lower the learning rate (autoencoder.lr) or resume from an earlier checkpoint.")
        grad_norm = self.optimizer_step(loss, self.optimizers["autoencoder"], self.trainable)
        if adversarial_on:
            with self.autocast():
                real_logits = _logits(self.disc_model(images))
                fake_logits = _logits(self.disc_model(reconstruction.detach()))
            d_loss = hinge_discriminator_loss(real_logits, fake_logits)
            self.optimizer_step(d_loss, self.optimizers["discriminator"], self.disc_params)
            values["d_loss"] = float(d_loss.detach())
        self.scaler.update()
        self.sync_non_trainable(self.autoencoder)  # e.g. the VQ codebook (EMA, no gradient)
        if adversarial_on:
            self.sync_non_trainable(self.discriminator)  # BatchNorm statistics of the generator pass
        values.update({"loss": float(loss.detach()), "l1": float(l1.detach()),
                       "reg": float(regularisation.detach()), "grad_norm": grad_norm})
        return values

    # ------------------------------------------------------------------ validation
    def _evaluation_model(self) -> torch.nn.Module:
        if self.ema is None:
            return self.autoencoder
        if self._eval_copy is None:
            self._eval_copy = copy.deepcopy(self.autoencoder)
        self.ema.copy_to(self._eval_copy)
        return self._eval_copy

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self._evaluation_model()
        was_training = model.training
        model.eval()
        mine = self.val_patches[self.context.rank :: self.context.world_size]
        totals = torch.zeros(5, dtype=torch.float64)  # abs sum, voxels, brain abs sum, brain voxels, reg sum
        batch = self.settings.batch_size
        for begin in range(0, len(mine), batch):
            images, masks = self.val_sampler.batch(mine[begin:begin + batch])
            images = images.to(self.device)
            masks = masks.to(self.device)
            with self.autocast():
                output = model(images)
            error = (output.reconstruction.float() - images).abs()
            brain_error = error.mean(dim=1)[masks]
            totals += torch.tensor([float(error.sum()), error.numel(), float(brain_error.sum()),
                                    brain_error.numel(), float(output.regularisation_loss) * images.shape[0]],
                                   dtype=torch.float64)
        totals = self.context.all_reduce_sum(totals)
        model.train(was_training)
        l1 = float(totals[0] / max(totals[1], 1))
        mae_brain = float(totals[2] / totals[3]) if totals[3] > 0 else l1
        return {"val_loss": mae_brain, "val_mae_brain": mae_brain, "val_l1": l1,
                "val_reg": float(totals[4] / max(len(self.val_patches), 1))}

    def export_weights(self, checkpoint_state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return stage_weights_from_checkpoint(checkpoint_state, "autoencoder")


def stage_weights_from_checkpoint(state: dict[str, Any], network: str) -> dict[str, torch.Tensor]:
    """The weights to use from a checkpoint: the EMA weights when the run kept an EMA."""
    ema = state.get("ema")
    if ema and state.get("stage") == network:
        return {k: v.clone() for k, v in ema["shadow"].items()}
    return state["networks"][network]


def train_autoencoder(
    config: TrainingConfig | str | Path | dict | None,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    init: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    show_progress: bool = True,
    status_mirrors: tuple[str | Path, ...] = (),
):
    """Train (or resume, or fine-tune with ``init``) the first stage; returns a TrainingResult.

    ``config``: a :class:`TrainingConfig`, preset name, YAML path, dict, or ``None`` (on
    ``resume`` the run's own ``config.yaml``, else the ``default`` preset).
    """
    from brainldm.train.runner import log_to_run, resolve_run_config

    cfg = resolve_run_config(config, run_dir, resume, overrides)
    with log_to_run(run_dir):
        trainer = AutoencoderTrainer(cfg, data_dir, run_dir, resume=resume, init=init, show_progress=show_progress,
                                     status_mirrors=status_mirrors)
        try:
            return trainer.run()
        finally:
            trainer.context.shutdown()
