"""Latent denoiser training (§2.3.3, §3.3.2, Table 3.2).

The frozen first stage encodes every subject once (posterior mean / quantised latent; with
``flip_prob > 0`` also the left-right mirrored brain), the latents are scaled by
``latent_scale`` (1 / std of the training latents unless set), and each step draws labelled
latent patches (healthy-patch distance sampler) and minimises the epsilon-prediction loss
(Ho et al. 2020; thesis Eq. 2.31)::

    t ~ U{0..T-1},  eps ~ N(0, I),  z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps   (Eq. 2.13)
    L = || eps - eps_theta(z_t, t, y, position) ||^2

with the label ``y`` replaced by the classifier-free null label with probability
``label_dropout`` (0.2). The weights are averaged by EMA (0.9999 in the thesis); validation
uses the EMA weights on fixed validation patches with fixed timesteps and noise.

The first stage is copied into the run folder (``<run>/autoencoder.pt``) so the run, and
the model bundle exported from it, are self-contained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainldm.data.preprocess import PreprocessConfig
from brainldm.diffusion.schedule import NoiseSchedule
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.config import AutoencoderConfig
from brainldm.nets.denoiser import NULL_LABEL, build_denoiser
from brainldm.train.config import DenoiserStage, TrainingConfig
from brainldm.train.data import (
    LatentPatchSampler,
    LatentRecord,
    check_compression,
    encode_record,
    latent_scale_of,
    prepare_training_data,
)
from brainldm.train.distributed import wrap_ddp
from brainldm.train.loop import StageTrainer, apply_freeze
from brainldm.train.rundir import atomic_write_bytes, atomic_write_text
from brainldm.train.slice_sampler import DeviceSliceSampler, stacked_bytes
from brainldm.train.state import ExponentialMovingAverage

log = logging.getLogger("brainldm.train")

FIRST_STAGE_FILE = "autoencoder.pt"
INIT_FILE = "init.json"  # what --init was (bundle id, machine, its training), for the model card


@dataclass
class FirstStageSource:
    """A trained first stage: its config, weights and the preprocessing it was trained with."""

    config: AutoencoderConfig
    weights: dict[str, torch.Tensor]
    preprocess: PreprocessConfig
    origin: str

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        digest.update(json.dumps(self.preprocess.to_dict(), sort_keys=True).encode())
        for name in sorted(self.weights):
            tensor = self.weights[name].detach().cpu().contiguous()
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else
                          tensor.float().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        payload = {"config": self.config.to_dict(), "weights": self.weights,
                   "preprocess": self.preprocess.to_dict(), "origin": self.origin}
        atomic_write_bytes(path, lambda stream: torch.save(payload, stream))

    @classmethod
    def read(cls, path: Path) -> FirstStageSource:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return cls(AutoencoderConfig.from_dict(payload["config"]), payload["weights"],
                       PreprocessConfig.from_dict(payload["preprocess"]), str(payload.get("origin", path)))
        except Exception as error:
            raise BrainLDMError(f"The first stage saved in {path} cannot be read ({error}).") from error


class DenoiserTrainer(StageTrainer):
    """Trains the latent denoiser described by ``config.denoiser`` on a frozen first stage."""

    #: 2D: draw batches from latents stacked on the device (subclasses that wrap the per-patch
    #: sampler, like the synthesis stage, turn it off)
    stacked_sampler = True

    stage = "denoiser"

    def __init__(self, config: TrainingConfig, data_dir, run_dir, autoencoder: str | Path | None = None,
                 **kwargs):
        super().__init__(config, data_dir, run_dir, **kwargs)
        self.autoencoder_source = Path(autoencoder).expanduser() if autoencoder is not None else None
        self.latent_scale: float | None = config.denoiser.latent_scale
        self._init_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    @property
    def settings(self) -> DenoiserStage:
        return self.config.denoiser

    # ------------------------------------------------------------------ first stage
    def _first_stage(self) -> FirstStageSource:
        from brainldm.train.export import read_first_stage

        stored = self.run_dir.path / FIRST_STAGE_FILE
        if self.resume and stored.exists():
            return FirstStageSource.read(stored)
        if self.autoencoder_source is not None:
            return read_first_stage(self.autoencoder_source)
        if self.init is not None:
            return read_first_stage(self.init)
        raise SettingsError("The denoiser needs a trained first stage: give --autoencoder with an autoencoder run "
                            "folder, a checkpoint or a model bundle (or --init with a model bundle).")

    def _adopt_first_stage(self, source: FirstStageSource) -> None:
        """Make the config describe the first stage actually used (it defines the latents)."""
        if source.config.to_dict() != self.config.autoencoder.model.to_dict():
            log.info("Using the first stage of %s (its settings replace autoencoder.model).", source.origin)
            self.config.autoencoder.model = source.config
        if source.preprocess.to_dict() != self.config.preprocess.to_dict():
            log.info("Using the preprocessing the first stage was trained with (%s).", source.origin)
            self.config.preprocess = source.preprocess
        model = self.settings.model
        if model.latent_channels != source.config.latent_channels or model.spatial_dims != source.config.spatial_dims:
            raise SettingsError(
                f"The denoiser (latent_channels={model.latent_channels}, spatial_dims={model.spatial_dims}) does not "
                f"fit the first stage of {source.origin} (latent_channels={source.config.latent_channels}, "
                f"spatial_dims={source.config.spatial_dims}); set denoiser.model accordingly.")
        self.config.validate()

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        if self.data_dir is None:
            raise BrainLDMError("No data folder given: the denoiser needs training subjects.")
        source = self._first_stage()
        self._adopt_first_stage(source)
        self.first_stage_source = source
        if self.is_main:
            self.run_dir.create()
            stored = self.run_dir.path / FIRST_STAGE_FILE
            if not stored.exists() or not self.resume:
                source.save(stored)
            record = self.run_dir.path / INIT_FILE
            if self.init is not None and (not record.exists() or not self.resume):
                from brainldm.train.export import init_record

                atomic_write_text(record, json.dumps(init_record(self.init), indent=2))
        autoencoder = build_autoencoder(source.config)
        autoencoder.load_state_dict(source.weights)
        autoencoder.eval().requires_grad_(False).to(self.device)
        if self.device.type == "cpu":
            from brainldm.nets.cpu_speed import use_onednn_convolutions

            use_onednn_convolutions(autoencoder)  # encoding one volume at a time: avoid slow_conv3d
        self.autoencoder = autoencoder
        compression = int(autoencoder.compression)
        check_compression(self.config.preprocess, compression)
        cache = self.cache_folder()
        data = prepare_training_data(
            self.data_dir, self.config.preprocess, self.config.split, cache, self.context, self.config.max_subjects,
            should_stop=self.stop_requested,
        )
        self.skipped = list(data.skipped)
        s = self.settings
        flips = s.flip_prob > 0
        fingerprint = source.fingerprint()
        self.write_status("starting", "encoding subjects with the first stage")
        train = self._encode_all(data.train, flips, cache, fingerprint)
        val = self._encode_all(data.val, False, cache, fingerprint)
        if self.latent_scale is None and self._init_latent_scale() is not None:
            self.latent_scale = self._init_latent_scale()
        if self.latent_scale is None:
            self.latent_scale = latent_scale_of([r for r in train if not r.flipped])
        log.info("latent_scale = %.6g", self.latent_scale)
        latent_patch = s.latent_patch_size(compression)
        if (self.stacked_sampler and len(latent_patch) == 2
                and 0 < stacked_bytes(train) <= s.stacked_sampler_mb * 2**20):
            self.sampler = DeviceSliceSampler(train, latent_patch, s.diseased_fraction, self.rng, s.flip_prob,
                                              self.device)
            log.info("2D latents stacked on %s (%.0f MB): whole batches drawn at once", self.device,
                     self.sampler.nbytes / 2**20)
        else:
            self.sampler = LatentPatchSampler(train, latent_patch, s.diseased_fraction, s.sampler, self.rng,
                                              s.flip_prob)
        val_rng = np.random.default_rng([self.config.seed, 104729])
        self.val_sampler = LatentPatchSampler(val, latent_patch, s.diseased_fraction, s.sampler, val_rng, 0.0)
        self.val_patches = [self.val_sampler.draw() for _ in range(max(s.val_patches, 1))]
        self.data_summary = {**data.summary(), "n_train": len(data.train), "n_val": len(data.val),
                             "latent_scale": self.latent_scale, "first_stage": source.origin,
                             "first_stage_fingerprint": fingerprint}

    def _encode_all(self, records, flips: bool, cache: Path | None, fingerprint: str) -> list[LatentRecord]:
        jobs = [(r, False) for r in records] + ([(r, True) for r in records] if flips else [])
        folder = cache / "latents" / fingerprint if cache is not None else None
        results: dict[tuple[str, bool], LatentRecord] = {}
        mine = jobs if (folder is None or not self.context.enabled) else jobs[self.context.rank::self.context.world_size]
        for index, (record, flip) in enumerate(mine):
            self.check_stop()
            results[(record.subject_id, flip)] = self._encode_cached(record, flip, folder)
            if index % 5 == 0:
                self.write_status("starting", f"encoding {index + 1}/{len(mine)}")
        self.context.barrier()
        for record, flip in jobs:
            if (record.subject_id, flip) not in results:
                results[(record.subject_id, flip)] = self._encode_cached(record, flip, folder)
        return [results[(r.subject_id, f)] for r, f in jobs]

    def _encode_cached(self, record, flip: bool, folder: Path | None) -> LatentRecord:
        from brainldm.train.data import _safe_name

        patch = self.settings.patch_size
        if folder is None:
            return encode_record(self.autoencoder, record, patch, self.device, flip=flip)
        entry = folder / (_safe_name(record.subject_id) + ("-flip" if flip else ""))
        meta = {"patch_size": list(patch), "flip": flip}
        if (entry / "meta.json").is_file():
            try:
                if json.loads((entry / "meta.json").read_text()) == meta:
                    tumour = entry / "tumour.npy"
                    return LatentRecord(record.subject_id, np.load(entry / "latent.npy", mmap_mode="r"),
                                        np.load(entry / "brain.npy"),
                                        np.load(tumour) if tumour.exists() else None, flip)
            except (ValueError, OSError):
                pass
        latent = encode_record(self.autoencoder, record, patch, self.device, flip=flip)
        entry.mkdir(parents=True, exist_ok=True)
        np.save(entry / "latent.npy", latent.latent)
        np.save(entry / "brain.npy", latent.brain)
        if latent.tumour is not None:
            np.save(entry / "tumour.npy", latent.tumour)
        atomic_write_text(entry / "meta.json", json.dumps(meta))
        return latent

    # ------------------------------------------------------------------ init
    def _read_init(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if self.init is None:
            return None
        if self._init_state is None:
            from brainldm.train.export import read_stage_weights

            self._init_state = read_stage_weights(self.init, "denoiser")
        return self._init_state

    def _init_latent_scale(self) -> float | None:
        if self.init is None or (self.resume and self.run_dir.last_checkpoint.exists()):
            return None
        _, info = self._read_init()
        value = info.get("latent_scale")
        if value is None:
            return None
        if info.get("first_stage_fingerprint") not in (None, self.first_stage_source.fingerprint()):
            log.warning("The --init denoiser was trained on another first stage; its latent_scale is not reused.")
            return None
        return float(value)

    # ------------------------------------------------------------------ networks
    def build(self) -> None:
        s = self.settings
        self.schedule = NoiseSchedule.from_config(s.schedule)
        # Contiguous weights for training (see AutoencoderTrainer.build: channels-last backward crashed).
        self.denoiser = build_denoiser(s.model, channels_last=False).to(self.device)
        if self.init is not None and not (self.resume and self.run_dir.last_checkpoint.exists()):
            weights, _ = self._read_init()
            self.load_init_weights(self.denoiser, weights, "denoiser")
            log.info("denoiser initialised from %s", self.init)
        frozen = apply_freeze(self.denoiser, s.freeze, "denoiser")
        if frozen:
            log.info("frozen denoiser parameters: %d", len(frozen))
        self.model = wrap_ddp(self.denoiser, self.context, self.device)
        self.trainable = [p for p in self.denoiser.parameters() if p.requires_grad]
        self.optimizers = {"denoiser": self.make_optimizer(self.trainable)}
        self.ema = ExponentialMovingAverage(self.denoiser, s.ema_decay) if s.ema_decay > 0 else None
        self._eval_copy: torch.nn.Module | None = None

    def ema_module(self) -> torch.nn.Module:
        return self.denoiser

    def network_states(self) -> dict[str, Any]:
        return {"denoiser": self.denoiser.state_dict()}

    def load_network_states(self, states: dict[str, Any]) -> None:
        self.denoiser.load_state_dict(states["denoiser"])

    def extra_state(self) -> dict[str, Any]:
        return {"latent_scale": self.latent_scale, "denoiser_config": self.settings.model.to_dict(),
                "schedule": self.settings.schedule.to_dict(),
                "first_stage_fingerprint": self.first_stage_source.fingerprint()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if extra.get("latent_scale") is not None:
            self.latent_scale = float(extra["latent_scale"])
            self.data_summary["latent_scale"] = self.latent_scale

    # ------------------------------------------------------------------ step
    def _forward(self, model, batch: dict[str, torch.Tensor], t: torch.Tensor, eps: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        z0 = batch["z"].to(self.device) * float(self.latent_scale)
        zt = self.schedule.add_noise(z0, eps, t)
        kwargs = {}
        if self.settings.model.position_embedding != "none":
            kwargs = {"start": batch["start"].to(self.device), "extent": batch["extent"].to(self.device)}
        with self.autocast():
            prediction = model(zt, t, labels, **kwargs)
        return F.mse_loss(prediction.float(), eps)

    def train_step(self) -> dict[str, float]:
        s = self.settings
        self.denoiser.train()
        self.set_lr(self.optimizers["denoiser"], self.learning_rate(self.step))
        batch = self.sampler.sample(s.batch_size)
        n = batch["z"].shape[0]
        t = torch.randint(0, self.schedule.num_train_timesteps, (n,), device=self.device)
        eps = torch.randn(batch["z"].shape, device=self.device)
        labels = batch["labels"].to(self.device)
        drop = torch.rand(n, device=self.device) < s.label_dropout
        labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
        loss = self._forward(self.model, batch, t, eps, labels)
        if not torch.isfinite(loss.detach()) and not self.scaler.is_enabled():
            raise BrainLDMError(f"The denoiser loss became {float(loss)} at step {self.step}: training diverged. "
                                "Lower the learning rate (denoiser.lr) or resume from an earlier checkpoint.")
        grad_norm = self.optimizer_step(loss, self.optimizers["denoiser"], self.trainable)
        self.scaler.update()
        diseased = float((batch["labels"] == 1).float().mean())
        return {"loss": float(loss.detach()), "mse": float(loss.detach()), "grad_norm": grad_norm,
                "diseased_fraction": diseased}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.denoiser
        if self.ema is not None:
            if self._eval_copy is None:
                self._eval_copy = copy.deepcopy(self.denoiser)
            self.ema.copy_to(self._eval_copy)
            model = self._eval_copy
        was_training = model.training
        model.eval()
        # Fixed timesteps and noise for every validation patch (comparable across validations).
        generator = torch.Generator().manual_seed(self.config.seed + 15485863)
        T = self.schedule.num_train_timesteps
        count = len(self.val_patches)
        all_t = torch.randint(0, T, (count,), generator=generator)
        shape = self.val_sampler.batch(self.val_patches[:1])["z"].shape[1:]
        all_eps = torch.randn((count, *shape), generator=generator)
        indices = list(range(count))[self.context.rank :: self.context.world_size]
        totals = torch.zeros(2, dtype=torch.float64)
        batch_size = self.settings.batch_size
        for begin in range(0, len(indices), batch_size):
            chunk = indices[begin:begin + batch_size]
            batch = self.val_sampler.batch([self.val_patches[i] for i in chunk])
            t = all_t[chunk].to(self.device)
            eps = all_eps[chunk].to(self.device)
            loss = self._forward(model, batch, t, eps, batch["labels"].to(self.device))
            totals += torch.tensor([float(loss) * len(chunk), len(chunk)], dtype=torch.float64)
        totals = self.context.all_reduce_sum(totals)
        model.train(was_training)
        value = float(totals[0] / max(totals[1], 1))
        return {"val_loss": value, "val_mse": value}


def train_denoiser(
    config: TrainingConfig | str | Path | dict | None,
    data_dir: str | Path,
    run_dir: str | Path,
    autoencoder: str | Path | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    show_progress: bool = True,
    status_mirrors: tuple[str | Path, ...] = (),
):
    """Train (or resume, or fine-tune with ``init``) the latent denoiser; returns a TrainingResult.

    ``autoencoder``: the frozen first stage - an autoencoder run folder, one of its
    checkpoints, or a model bundle. Not needed on ``resume`` (the run keeps a copy) or when
    ``init`` is a model bundle (its first stage is used).
    """
    from brainldm.train.runner import log_to_run, resolve_run_config

    cfg = resolve_run_config(config, run_dir, resume, overrides)
    with log_to_run(run_dir):
        trainer = DenoiserTrainer(cfg, data_dir, run_dir, autoencoder=autoencoder, resume=resume, init=init,
                                  show_progress=show_progress, status_mirrors=status_mirrors)
        try:
            return trainer.run()
        finally:
            trainer.context.shutdown()
