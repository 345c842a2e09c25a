"""Training of the super-resolution LDM (thesis §4.4.1): ``brainldm train sr``.

An SR run trains, in its own sub-folders (each a normal run folder with atomic checkpoints,
JSONL metrics and status, mirrored into the run's own ``status.json``/``metrics.jsonl``)::

    <run>/autoencoder   the image first stage on high-resolution slices (the ``autoencoder``
                        section), unless --autoencoder or --init gives one
    <run>/sr            the SR denoiser and its structural encoder (``sr.denoiser``)
    <run>/bundle        the SR model bundle (:class:`~brainldm.sr.bundle.SRBundle`)

Training pairs are made on the fly (:class:`~brainldm.sr.pairs.SRPairPool`): an axial slice of a
training subject (HR), degraded by the MRI or ESRGAN pipeline at scale 2 and upsampled back by
bicubic interpolation (the condition). Both are encoded by the frozen first stage and scaled by
``s`` (1 / std of the HR latents). The denoiser and its structural encoder are trained together
(no pretrained backbone exists here; the thesis froze a pretrained one) on the noise-prediction
loss (Eq. 2.31)::

    t ~ U{0 .. train_strength * T - 1},  z_t = sqrt(abar_t) s E(HR) + sqrt(1 - abar_t) eps   (Eq. 2.13)
    L = || eps - eps_theta(z_t, t | c = s E(bicubic(LR))) ||^2

Validation reports that loss on fixed patches, timesteps and noise (``val_loss``, the
early-stopping criterion) and, on the same patches, the PSNR of the SR output (the
``sr.inference`` settings) and of bicubic interpolation against the HR patch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainldm.errors import BrainLDMError, ModelBundleError, SettingsError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.sr.config import SRStage
from brainldm.sr.model import build_sr_model, sample_sr_latents, sr_timestep_pairs
from brainldm.sr.pairs import SRPairPool
from brainldm.train.config import TrainingConfig
from brainldm.train.data import check_compression, prepare_training_data
from brainldm.train.denoiser import FIRST_STAGE_FILE, FirstStageSource
from brainldm.train.loop import StageTrainer, apply_freeze
from brainldm.train.state import ExponentialMovingAverage, load_checkpoint

log = logging.getLogger("brainldm.train")

SR_NETWORK = "sr_model"


def _require_sr(config: TrainingConfig) -> None:
    if config.sr is None:
        raise SettingsError(f"The configuration {config.name!r} has no 'sr' section. Use a super-resolution preset "
                            "(tiny-sr, cpu-sr, thesis-sr) or add one.")


def psnr_per_image(reference: torch.Tensor, estimate: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """``10 log10(L^2 / MSE)`` per image of a batch (Eq. 2.3), in dB."""
    mse = (reference.float() - estimate.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10.0 * torch.log10(torch.tensor(float(data_range) ** 2) / mse)


def read_sr_first_stage(path: str | Path) -> FirstStageSource:
    """The first stage from an SR bundle, or (:func:`brainldm.train.export.read_first_stage`) from a
    detection bundle, an autoencoder run or checkpoint."""
    from brainldm.data.preprocess import PreprocessConfig
    from brainldm.nets.config import AutoencoderConfig
    from brainldm.sr.bundle import AUTOENCODER_FILE, SRBundle, is_sr_bundle
    from brainldm.train.export import read_first_stage

    path = Path(path).expanduser()
    if is_sr_bundle(path):
        description = SRBundle.verify(path)
        try:
            weights = torch.load(path / AUTOENCODER_FILE, map_location="cpu", weights_only=True)
            config = AutoencoderConfig.from_dict(description["autoencoder"]["config"])
            preprocess = PreprocessConfig.from_dict(description["preprocess"])
        except Exception as error:
            raise ModelBundleError(f"The autoencoder of the SR bundle {path} cannot be read: {error}") from error
        return FirstStageSource(config, weights, preprocess, f"bundle {path}")
    return read_first_stage(path)


class SRTrainer(StageTrainer):
    """Trains the SR denoiser and its structural encoder on a frozen first stage (module docstring)."""

    stage = "sr"

    def __init__(self, config: TrainingConfig, data_dir, run_dir, autoencoder: str | Path | None = None,
                 init_weights: dict[str, torch.Tensor] | None = None, **kwargs):
        kwargs.pop("init", None)
        _require_sr(config)
        super().__init__(config, data_dir, run_dir, init=None, **kwargs)
        self.autoencoder_source = Path(autoencoder).expanduser() if autoencoder is not None else None
        self.init_weights = init_weights
        self.latent_scale: float | None = self.settings.latent_scale
        self.conditioning = config.sr.conditioning

    @property
    def settings(self) -> SRStage:
        return self.config.sr.denoiser

    def model_settings(self, config: dict[str, Any]) -> dict[str, Any] | None:
        section = config.get("sr")
        if not isinstance(section, dict):
            return None
        return {"model": (section.get("denoiser") or {}).get("model"), "conditioning": section.get("conditioning")}

    # ------------------------------------------------------------------ data
    def _first_stage(self) -> FirstStageSource:
        stored = self.run_dir.path / FIRST_STAGE_FILE
        if self.resume and stored.exists():
            return FirstStageSource.read(stored)
        if self.autoencoder_source is None:
            raise SettingsError("The SR denoiser needs a trained first stage: give --autoencoder (an autoencoder run "
                                "or a bundle) or --init with an SR or detection bundle.")
        return read_sr_first_stage(self.autoencoder_source)

    def prepare_data(self) -> None:
        if self.data_dir is None:
            raise BrainLDMError("No data folder given: the SR model needs training subjects.")
        source = self._first_stage()
        if source.config.to_dict() != self.config.autoencoder.model.to_dict():
            log.info("Using the first stage of %s (its settings replace autoencoder.model).", source.origin)
            self.config.autoencoder.model = source.config
        if source.preprocess.to_dict() != self.config.preprocess.to_dict():
            log.info("Using the preprocessing the first stage was trained with (%s).", source.origin)
            self.config.preprocess = source.preprocess
        self.config.validate()
        self.first_stage_source = source
        if self.is_main:
            self.run_dir.create()
            stored = self.run_dir.path / FIRST_STAGE_FILE
            if not stored.exists() or not self.resume:
                source.save(stored)
        autoencoder = build_autoencoder(source.config, channels_last=False)
        autoencoder.load_state_dict(source.weights)
        self.autoencoder = autoencoder.eval().requires_grad_(False).to(self.device)
        check_compression(self.config.preprocess, int(autoencoder.compression))
        data = prepare_training_data(self.data_dir, self.config.preprocess, self.config.split, self.cache_folder(),
                                     self.context, self.config.max_subjects, should_stop=self.stop_requested)
        self.skipped = list(data.skipped)
        s = self.settings
        self.write_status("starting", "degrading training slices")
        self.pool = SRPairPool(data.train, s.patch_size, s.pipelines, s.scale, s.pool_size, self.rng, s.flip_prob)
        val_pool = SRPairPool(data.val, s.patch_size, s.pipelines, s.scale, 1,
                              np.random.default_rng([self.config.seed, 7877]), 0.0)
        self.val_hr, self.val_condition = val_pool.fixed_patches(s.val_patches)
        if self.latent_scale is None:
            self.latent_scale = self._measure_latent_scale()
        log.info("latent_scale = %.6g", self.latent_scale)
        self.data_summary = {**data.summary(), "n_train": len(data.train), "n_val": len(data.val),
                             "latent_scale": self.latent_scale, "first_stage": source.origin,
                             "first_stage_fingerprint": source.fingerprint(), "pipelines": list(s.pipelines),
                             "scale": s.scale}

    @torch.no_grad()
    def _measure_latent_scale(self, batches: int = 4) -> float:
        """``1 / std`` of the HR latents of a few training patches (drawn from a separate stream)."""
        saved = self.pool.rng
        self.pool.rng = np.random.default_rng([self.config.seed, 4099])
        try:
            latents = [self._encode(self.pool.sample(self.settings.batch_size)[0]) for _ in range(batches)]
        finally:
            self.pool.rng = saved
        std = float(torch.cat([z.flatten() for z in latents]).std())
        if not np.isfinite(std) or std <= 0:
            raise BrainLDMError("The first stage gives constant latents on the training patches; it cannot be used.")
        return 1.0 / std

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images.to(self.device)).float()

    # ------------------------------------------------------------------ networks
    def build(self) -> None:
        from brainldm.diffusion.schedule import NoiseSchedule

        s = self.settings
        self.schedule = NoiseSchedule.from_config(s.schedule)
        self.t_max = max(1, round(s.train_strength * self.schedule.num_train_timesteps))
        # Contiguous weights for training (see AutoencoderTrainer.build: channels-last backward crashed).
        self.sr_model = build_sr_model(s.model, self.conditioning, channels_last=False).to(self.device)
        if self.init_weights is not None and not (self.resume and self.run_dir.last_checkpoint.exists()):
            self.load_init_weights(self.sr_model, self.init_weights, "SR model")
            log.info("SR model initialised from --init")
        frozen = apply_freeze(self.sr_model, s.freeze, "SR model")
        if frozen:
            log.info("frozen SR model parameters: %d", len(frozen))
        self.trainable = [p for p in self.sr_model.parameters() if p.requires_grad]
        self.optimizers = {SR_NETWORK: self.make_optimizer(self.trainable)}
        self.ema = ExponentialMovingAverage(self.sr_model, s.ema_decay) if s.ema_decay > 0 else None
        self._eval_copy: torch.nn.Module | None = None

    def ema_module(self) -> torch.nn.Module:
        return self.sr_model

    def network_states(self) -> dict[str, Any]:
        return {SR_NETWORK: self.sr_model.state_dict()}

    def load_network_states(self, states: dict[str, Any]) -> None:
        self.sr_model.load_state_dict(states[SR_NETWORK])

    def extra_state(self) -> dict[str, Any]:
        return {"latent_scale": self.latent_scale, "denoiser_config": self.settings.model.to_dict(),
                "conditioning": self.conditioning.to_dict(), "schedule": self.settings.schedule.to_dict(),
                "first_stage_fingerprint": self.first_stage_source.fingerprint()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if extra.get("latent_scale") is not None:
            self.latent_scale = float(extra["latent_scale"])
            self.data_summary["latent_scale"] = self.latent_scale

    # ------------------------------------------------------------------ step
    def _loss(self, model, hr: torch.Tensor, condition: torch.Tensor, t: torch.Tensor,
              eps: torch.Tensor) -> torch.Tensor:
        s = float(self.latent_scale)
        z0 = self._encode(hr) * s
        c = self._encode(condition) * s
        zt = self.schedule.add_noise(z0, eps.to(self.device), t.to(self.device))
        with self.autocast():
            prediction = model(zt, t.to(self.device), c)
        return F.mse_loss(prediction.float(), eps.to(self.device))

    def train_step(self) -> dict[str, float]:
        s = self.settings
        self.sr_model.train()
        self.set_lr(self.optimizers[SR_NETWORK], self.learning_rate(self.step))
        self.pool.refresh(s.pool_refresh)
        hr, condition = self.pool.sample(s.batch_size)
        n = hr.shape[0]
        t = torch.randint(0, self.t_max, (n,))
        latent_shape = (n, self.settings.model.latent_channels,
                        *(int(p) // int(self.autoencoder.compression) for p in s.patch_size))
        eps = torch.randn(latent_shape)
        loss = self._loss(self.sr_model, hr, condition, t, eps)
        if not torch.isfinite(loss.detach()) and not self.scaler.is_enabled():
            raise BrainLDMError(f"The SR loss became {float(loss)} at step {self.step}: training diverged. Lower the "
                                "learning rate (sr.denoiser.lr) or resume from an earlier checkpoint.")
        grad_norm = self.optimizer_step(loss, self.optimizers[SR_NETWORK], self.trainable)
        self.scaler.update()
        return {"loss": float(loss.detach()), "mse": float(loss.detach()), "grad_norm": grad_norm}

    # ------------------------------------------------------------------ validation
    def _evaluation_model(self) -> torch.nn.Module:
        if self.ema is None:
            return self.sr_model
        if self._eval_copy is None:
            self._eval_copy = copy.deepcopy(self.sr_model)
        self.ema.copy_to(self._eval_copy)
        return self._eval_copy

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self._evaluation_model()
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 15485863)
        count = self.val_hr.shape[0]
        all_t = torch.randint(0, self.t_max, (count,), generator=generator)
        latent_shape = (self.settings.model.latent_channels,
                        *(int(p) // int(self.autoencoder.compression) for p in self.settings.patch_size))
        all_eps = torch.randn((count, *latent_shape), generator=generator)
        start_noise = torch.randn((count, *latent_shape), generator=generator)
        inference = self.config.sr.inference
        pairs = sr_timestep_pairs(inference.steps, min(inference.strength, self.settings.train_strength),
                                  self.schedule.num_train_timesteps)
        s = float(self.latent_scale)
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, count, psnr sr sum, psnr bicubic sum
        batch = self.settings.batch_size
        for begin in range(0, count, batch):
            sl = slice(begin, begin + batch)
            hr, condition = self.val_hr[sl], self.val_condition[sl]
            loss = self._loss(model, hr, condition, all_t[sl], all_eps[sl])
            c = self._encode(condition) * s
            z = sample_sr_latents(lambda z_t, t, cond: model(z_t, t, cond), c, start_noise[sl].to(self.device),
                                  pairs, self.schedule)
            sr = self.autoencoder.decode(z / s).clamp(-1, 1).cpu()
            if inference.output == "residual":
                sr = (condition + sr - self.autoencoder.decode(c / s).cpu()).clamp(-1, 1)
            n = hr.shape[0]
            totals += torch.tensor([float(loss) * n, n, float(psnr_per_image(hr, sr).sum()),
                                    float(psnr_per_image(hr, condition).sum())], dtype=torch.float64)
        model.train(was_training)
        value = float(totals[0] / max(totals[1], 1))
        return {"val_loss": value, "val_mse": value, "val_psnr_sr": float(totals[2] / totals[1]),
                "val_psnr_bicubic": float(totals[3] / totals[1])}


# --------------------------------------------------------------------------- bundle


def sr_model_card(model_id: str, d: dict[str, Any]) -> str:
    dn = d["denoiser"]["config"]
    ae = d["autoencoder"]["config"]
    training = d.get("training", {}).get("sr", {})
    data = training.get("data", {})
    inference = d.get("inference", {})
    return f"""# {model_id}

BrainLDM super-resolution model (thesis §4.4.1): a {d['scale']:g}x in-plane super-resolution of
multi-sequence brain MRI slices. The latent diffusion model's denoiser gets the bicubic-upsampled
low-resolution slice through a structural encoder (ControlNet-like) and is run on overlapping
{d['patch_size']} patches of the upsampled slice.

**Research use only; not for diagnosis or treatment decisions. Super-resolution invents plausible
detail: do not read fine structures in its output as measured.**

## Networks
- First stage: {ae['kind'].upper()} autoencoder, channels {ae['channels']}, {ae['in_channels']} sequences, latent scale {d['latent_scale']:.6g}.
- Denoiser: 2D U-Net, channels {dn['channels']}, with a structural encoder copying its encoder half.
- Trained on pairs from the {', '.join(d.get('pipelines', []))} degradation pipelines at scale {d['scale']:g}.

## Training
- Configuration: {d.get('training', {}).get('config_name', '?')}; {training.get('step', '?')} steps in {float(training.get('seconds', 0.0)) / 60:.1f} min, best validation noise MSE {training.get('best_val_loss')}.
- Data: {data.get('n_train', '?')} training subjects from `{Path(str(data.get('data_dir', '?'))).name}`.

## Recommended inference
- {inference.get('steps')} DDIM steps from strength {inference.get('strength')}, overlap {inference.get('overlap')}, {inference.get('blend')} blending.

## Limitations
- Trained on simulated degradations: real low-resolution scans may differ.
- Slices are super-resolved one by one (2D); nothing changes across slices.
"""


def export_sr_bundle(run: str | Path, out: str | Path, model_id: str | None = None, checkpoint: str = "best",
                     overwrite: bool = False, inference: dict[str, Any] | None = None) -> Path:
    """An :class:`~brainldm.sr.bundle.SRBundle` from a finished SR run (``<run>/sr`` or the run folder)."""
    from brainldm.nets.config import (
        AutoencoderConfig,
        ConditioningConfig,
        DenoiserConfig,
    )
    from brainldm.sr.bundle import SRBundle
    from brainldm.sr.config import SRInferenceSettings
    from brainldm.train.export import _check_finished, resolve_checkpoint
    from brainldm.train.synthesis import _checkpoint_weights

    run = Path(run).expanduser()
    if (run / "sr").is_dir():
        run = run / "sr"
    status = _check_finished(run, allow_unfinished=False)
    state = load_checkpoint(resolve_checkpoint(run, checkpoint))
    if state.get("stage") != "sr":
        raise BrainLDMError(f"{run} is not an SR run (stage {state.get('stage')!r}).")
    config = state["config"]
    extra = state.get("extra", {})
    image = FirstStageSource.read(run / FIRST_STAGE_FILE)
    autoencoder = build_autoencoder(image.config)
    autoencoder.load_state_dict(image.weights)
    section = config["sr"]
    denoiser_config = DenoiserConfig.from_dict(section["denoiser"]["model"])
    conditioning = ConditioningConfig.from_dict(section["conditioning"])
    model = build_sr_model(denoiser_config, conditioning)
    model.load_state_dict(_checkpoint_weights(state, SR_NETWORK))
    settings = SRInferenceSettings.from_dict(inference or section.get("inference") or {})
    data = dict(state.get("data", {}))
    best = state["early_stopping"]
    digest = hashlib.sha256(json.dumps([image.fingerprint(), int(state["step"]), float(extra["latent_scale"])]).encode())
    model_id = model_id or f"brainldm-sr-2d-x{float(section['denoiser']['scale']):g}-{time.strftime('%Y%m%d')}-{digest.hexdigest()[:8]}"
    training = {
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config_name": config.get("name"),
        "checkpoint": checkpoint,
        "sr": {"run": str(run), "step": int(state["step"]), "seconds": float(state.get("seconds", 0.0)),
               "state": status.get("state"), "best_val_loss": best["best"] if best["best_step"] >= 0 else None,
               "best_step": best["best_step"], "config": section["denoiser"],
               "data": {k: data.get(k) for k in ("data_dir", "n_train", "n_val", "test", "skipped")}},
        "autoencoder": {"origin": image.origin},
        "first_stage_fingerprint": image.fingerprint(),
    }
    bundle = SRBundle(
        autoencoder=autoencoder, model=model, autoencoder_config=image.config, denoiser_config=denoiser_config,
        conditioning_config=conditioning, preprocess_config=image.preprocess,
        latent_scale=float(extra["latent_scale"]), schedule_config=dict(section["denoiser"]["schedule"]),
        model_id=model_id, scale=float(section["denoiser"]["scale"]),
        patch_size=tuple(int(s) for s in section["denoiser"]["patch_size"]),
        pipelines=tuple(section["denoiser"]["pipelines"]), inference=settings.to_dict(), training=training)
    if not isinstance(image.config, AutoencoderConfig):  # pragma: no cover - FirstStageSource guarantees it
        raise BrainLDMError("The SR run's first stage is unreadable.")
    bundle.model_card = sr_model_card(model_id, bundle.describe())
    return bundle.save(out, overwrite=overwrite)


# --------------------------------------------------------------------------- the whole stage


def _init_parts(init: Path | None) -> dict[str, Any]:
    """What ``--init`` gives: an SR bundle its autoencoder and SR weights (fine-tuning); a detection
    bundle its autoencoder."""
    from brainldm.sr.bundle import DENOISER_FILE, ENCODER_FILE, SRBundle, is_sr_bundle
    from brainldm.train.export import is_bundle

    if init is None:
        return {}
    if is_sr_bundle(init):
        SRBundle.verify(init)
        denoiser = torch.load(init / DENOISER_FILE, map_location="cpu", weights_only=True)
        encoder = torch.load(init / ENCODER_FILE, map_location="cpu", weights_only=True)
        weights = {f"net.denoiser.{k}": v for k, v in denoiser.items()}
        weights.update({f"net.encoder.{k}": v for k, v in encoder.items()})
        return {"image": read_sr_first_stage(init), "trainable": weights}
    if is_bundle(init):
        return {"image_path": init}
    raise BrainLDMError(f"--init {init} is not a model bundle: give an SR bundle (fine-tuning) or a detection bundle "
                        "(its autoencoder is used).")


def train_sr(config, data_dir: str | Path, run_dir: str | Path, resume: bool = False, init: str | Path | None = None,
             autoencoder: str | Path | None = None, overrides=(), show_progress: bool = True, export: bool = True):
    """Train the SR model (see the module docstring) and export ``<run>/bundle``.

    ``config``: an SR preset (``tiny-sr``, ``cpu-sr``, ``thesis-sr``), a YAML file or dict with an
    ``sr`` section. ``autoencoder``: an image first stage to use instead of training one
    (autoencoder run, detection or SR bundle). ``init``: an SR bundle (fine-tune) or a detection
    bundle (its autoencoder). On ``resume`` finished sub-stages are not trained again. Returns the
    SR sub-stage's TrainingResult (``.bundle`` set when exported).
    """
    from brainldm.train.stages import StagedRun

    staged = StagedRun(config, run_dir, resume, overrides, show_progress, export, require=_require_sr)
    parts = _init_parts(Path(init).expanduser() if init is not None else None)
    with staged:
        given = Path(autoencoder).expanduser() if autoencoder is not None else parts.get("image_path")
        first_stage = staged.first_stage(data_dir, given=given, source=parts.get("image"))
        if not isinstance(first_stage, Path):
            return first_stage
        folder = staged.folder("sr")
        trainer = SRTrainer(staged.config, data_dir, folder, autoencoder=first_stage,
                            init_weights=parts.get("trainable"), **staged.trainer_options(folder))
        result = staged.train(trainer, last=True)
        return staged.export(result, folder, lambda run, out: export_sr_bundle(run, out, overwrite=True),
                             "SR model bundle")


__all__ = ["SRTrainer", "export_sr_bundle", "psnr_per_image", "read_sr_first_stage", "train_sr"]
