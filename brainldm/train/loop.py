"""The training loop shared by both stages: steps, logging, validation, checkpoints, stopping.

:class:`StageTrainer` owns everything that is the same for the first stage and the
denoiser: device and mixed precision, (distributed) seeding, the AdamW step with warm-up,
gradient clipping and AMP scaling, the EMA of the weights, validation with early stopping,
atomic checkpoints every ``checkpoint_every`` steps and at the end, ``--resume`` from the
last checkpoint at the same step with the same random streams, the JSONL metrics log, the
``status.json`` file, a tqdm progress bar, and graceful stopping (SIGTERM, Ctrl-C or the
``STOP`` file: finish the step, checkpoint, state ``stopped``). Subclasses
(:mod:`brainldm.train.autoencoder`, :mod:`brainldm.train.denoiser`) supply the networks,
the data, one training step and the validation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainldm.errors import BrainLDMError, SettingsError
from brainldm.train.config import StageSettings, TrainingConfig
from brainldm.train.distributed import DistributedContext, setup_distributed, unwrap
from brainldm.train.rundir import EARLY_STOP_SIGNAL, RunDir, RunStatus, StopRequested
from brainldm.train.state import (
    EarlyStopping,
    ExponentialMovingAverage,
    capture_global_rng,
    load_checkpoint,
    restore_global_rng,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger("brainldm.train")


@dataclass
class TrainingResult:
    """How a training stage ended."""

    run_dir: Path
    stage: str
    state: str  # finished | stopped
    step: int
    reason: str
    best_val_loss: float | None
    best_step: int | None
    checkpoint: Path
    bundle: Path | None = None  # set by the "all" stage when it exported a model bundle


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", context.local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(f"device {name!r} was requested but no CUDA GPU is available; use device: cpu.")
        if name == "cuda":
            return torch.device("cuda", context.local_rank % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise SettingsError(f"Unknown device {name!r} (use auto, cpu, cuda or cuda:N).") from error


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None`` = full fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise SettingsError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU.")
        return torch.float16
    raise SettingsError(f"Unknown precision {precision!r}.")


def apply_freeze(module: torch.nn.Module, patterns: Iterable[str], what: str) -> list[str]:
    """Freeze parameters named by ``patterns``: a dotted prefix (``net.encoder``) or one
    name component (``encoder``). Returns the frozen parameter names."""
    patterns = [p.strip() for p in patterns if p and p.strip()]
    frozen = []
    for pattern in patterns:
        hits = []
        for name, parameter in module.named_parameters():
            parts = name.split(".")
            prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            if pattern in prefixes or pattern in parts:
                parameter.requires_grad_(False)
                hits.append(name)
        if not hits:
            top = sorted({n.split(".")[0] for n, _ in module.named_parameters()})
            second = sorted({".".join(n.split(".")[:2]) for n, _ in module.named_parameters()})
            raise SettingsError(f"freeze: {pattern!r} matches no parameter of the {what}. Use a module name such as "
                                f"{', '.join(second[:12])} (top level: {', '.join(top)}).")
        frozen += hits
    return frozen


def _logits(output: Any) -> torch.Tensor:
    """Discriminator logits (MONAI's PatchDiscriminator returns every layer's output)."""
    if isinstance(output, (list, tuple)):
        return output[-1]
    return output


class StageTrainer:
    """Base class of the two training stages (see the module docstring)."""

    stage = "stage"

    def __init__(
        self,
        config: TrainingConfig,
        data_dir: str | Path | None,
        run_dir: str | Path,
        resume: bool = False,
        init: str | Path | None = None,
        context: DistributedContext | None = None,
        status_mirrors: Iterable[str | Path] = (),
        show_progress: bool = True,
    ):
        self.config = config
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.run_dir = RunDir(run_dir)
        self.resume = resume
        self.init = Path(init).expanduser() if init is not None else None
        self.context = context or setup_distributed(config.device)
        self.mirrors = [RunDir(p) for p in status_mirrors]
        self.show_progress = show_progress
        self.device = resolve_device(config.device, self.context)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.seconds = 0.0  # training time across resumes
        self.early = EarlyStopping(patience=self.settings.patience, min_delta=self.settings.min_delta)
        self.ema: ExponentialMovingAverage | None = None
        self.rng = np.random.default_rng([config.seed, self.context.rank])
        self.skipped: list[str] = []
        self.data_summary: dict[str, Any] = {}
        self._stop_flag = False
        self._status = RunStatus(stage=self.stage)
        self._recent: dict[str, list[float]] = {}
        self._last_val: dict[str, float] = {}
        self._last_val_step = -1
        self._step_times: list[float] = []
        #: How states are shown in the status mirrors (an "all" run is not finished after stage 1).
        self.mirror_state_map: dict[str, str] = {}

    # ------------------------------------------------------------------ to implement
    @property
    def settings(self) -> StageSettings:
        raise NotImplementedError

    def build(self) -> None:
        """Build networks and optimisers (``self.optimizers``: name -> optimiser)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation metrics; must hold ``val_loss`` (the early-stopping criterion)."""
        raise NotImplementedError

    def network_states(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_network_states(self, states: dict[str, Any]) -> None:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def model_settings(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The network settings of this stage in a configuration dict (a resumed run must not change them)."""
        section = config.get(self.stage)
        return section.get("model") if isinstance(section, dict) else None

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.context.is_main

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def learning_rate(self, step: int) -> float:
        warmup = self.settings.warmup_steps
        if warmup > 0 and step < warmup:
            return self.settings.lr * (step + 1) / warmup
        return self.settings.lr

    def make_optimizer(self, parameters: Iterable[torch.nn.Parameter], lr: float | None = None) -> torch.optim.AdamW:
        params = [p for p in parameters if p.requires_grad]
        if not params:
            raise SettingsError(f"Nothing to train in the {self.stage}: every parameter is frozen.")
        s = self.settings
        return torch.optim.AdamW(params, lr=lr or s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)

    def optimizer_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                       parameters: list[torch.nn.Parameter]) -> float:
        """Backward, unscale, clip, step (AMP-aware). Returns the gradient norm before clipping."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        clip = self.settings.grad_clip
        grads = [p for p in parameters if p.grad is not None]
        if clip > 0 and grads:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, clip))
        elif grads:
            norm = float(torch.norm(torch.stack([g.grad.detach().norm() for g in grads])))
        else:
            norm = 0.0
        self.scaler.step(optimizer)
        return norm

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def check_stop(self) -> None:
        """For long preparation loops: raise StopRequested if a stop was requested."""
        if self.stop_requested():
            raise StopRequested()

    def stop_requested(self) -> bool:
        """A stop was asked for: signal, or a STOP file in the run folder (or a mirrored parent run)."""
        return self._stop_flag or any(run.stop_requested() for run in (self.run_dir, *self.mirrors))

    def record(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._recent.setdefault(key, []).append(float(value))

    def cache_folder(self) -> Path | None:
        """Where preprocessed subjects and latents are kept (None = in memory only)."""
        if not self.config.cache:
            return None
        if self.config.cache_dir:
            return Path(self.config.cache_dir).expanduser()
        return self.run_dir.cache_dir

    def epoch(self) -> float:
        n = max(int(self.data_summary.get("n_train", 1)), 1)
        return self.step * self.settings.batch_size * self.context.world_size / n

    # ------------------------------------------------------------------ status and metrics
    def write_status(self, state: str, message: str = "", **extra: Any) -> None:
        if not self.is_main:
            return
        s = self._status
        s.state = state
        s.stage = self.stage
        s.step = self.step
        s.total_steps = self.settings.max_steps
        s.epoch = round(self.epoch(), 4)
        s.losses = {**{k: round(float(np.mean(v)), 6) for k, v in self._recent.items()}, **self._last_val}
        s.best_val_loss = None if math.isinf(self.early.best) else self.early.best
        s.seconds = round(self.seconds, 1)
        s.pid = os.getpid()
        s.host = socket.gethostname()
        s.world_size = self.context.world_size
        s.skipped_subjects = list(self.skipped)
        if message:
            s.message = message
        s.eta_seconds = self._eta()
        for key, value in extra.items():
            setattr(s, key, value)
        self.run_dir.write_status(s)
        if self.mirrors:
            mirrored = RunStatus.from_dict(s.to_dict())
            mirrored.state = self.mirror_state_map.get(state, state)
            for run in self.mirrors:
                run.write_status(mirrored)

    def _eta(self) -> float | None:
        if not self._step_times:
            return None
        per_step = float(np.median(self._step_times[-50:]))
        remaining = max(self.settings.max_steps - self.step, 0) * per_step
        if self.settings.max_minutes > 0:
            remaining = min(remaining, max(self.settings.max_minutes * 60 - self.seconds, 0.0))
        return round(remaining, 1)

    def log_metrics(self, record: dict[str, Any]) -> None:
        if self.is_main:
            line = {"stage": self.stage, "step": self.step, "epoch": round(self.epoch(), 4),
                    "seconds": round(self.seconds, 2), **record}
            for run in (self.run_dir, *self.mirrors):
                run.append_metrics(line)

    # ------------------------------------------------------------------ checkpoints
    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = {"global": capture_global_rng(), "patches": self.rng.bit_generator.state}
        if not self.context.enabled:
            return [mine]
        gathered: list[Any] = [None] * self.context.world_size
        torch.distributed.all_gather_object(gathered, mine)
        return gathered

    def save(self, path: Path, rng: list[dict[str, Any]] | None = None) -> None:
        rng = rng if rng is not None else self._gather_rng()
        if not self.is_main:
            return
        state = {
            "stage": self.stage,
            "step": self.step,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
            "networks": self.network_states(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "early_stopping": self.early.state_dict(),
            "rng": rng,
            "world_size": self.context.world_size,
            "data": self.data_summary,
            "extra": self.extra_state(),
        }
        save_checkpoint(path, state)

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("stage") != self.stage:
            raise BrainLDMError(f"{path} is a {state.get('stage')} checkpoint, not a {self.stage} one; "
                                "use a run folder of this stage.")
        saved_model = self.model_settings(state.get("config") or {})
        current_model = self.model_settings(self.config.to_dict())
        if saved_model is not None and current_model is not None and saved_model != current_model:
            changed = sorted(k for k in set(saved_model) | set(current_model)
                             if saved_model.get(k) != current_model.get(k))
            raise SettingsError(
                f"Cannot resume {self.run_dir.path}: it was trained with other {self.stage}.model settings "
                f"({', '.join(changed)}). Resume with the run's own configuration (no --config, or --config "
                f"{self.run_dir.config_file}), or start a new run (use --init to start from its weights).")
        try:
            self.load_network_states(state["networks"])
        except (RuntimeError, KeyError) as error:
            raise BrainLDMError(f"The checkpoint {path} does not fit this {self.stage} ({error}).") from error
        for name, optimizer in self.optimizers.items():
            if name in state["optimizers"]:
                optimizer.load_state_dict(state["optimizers"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.early.load_state_dict(state["early_stopping"])
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.load_extra_state(state.get("extra", {}))
        rng_states = state.get("rng") or []
        if len(rng_states) == self.context.world_size:
            mine = rng_states[self.context.rank]
            restore_global_rng(mine["global"])
            self.rng.bit_generator.state = mine["patches"]
        else:  # different number of ranks: new, but still reproducible, streams
            log.warning("Resuming with %d process(es) instead of %d: random streams are re-seeded.",
                        self.context.world_size, len(rng_states))
            seed_everything(self.config.seed * 1000 + self.step + self.context.rank)
            fresh = np.random.default_rng([self.config.seed, self.context.rank, self.step])
            self.rng.bit_generator.state = fresh.bit_generator.state  # samplers keep this generator object

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        previous = []

        def handler(signum, frame):
            self._stop_flag = True
            log.warning("Signal %d received: stopping after this step (checkpoint first).", signum)

        if EARLY_STOP_SIGNAL["received"]:
            self._stop_flag = True
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is None:
                continue
            try:
                previous.append((sig, signal.signal(sig, handler)))
            except (ValueError, OSError):
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: list[tuple[int, Any]]) -> None:
        for sig, old in previous:
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):
                pass

    # ------------------------------------------------------------------ main
    def run(self) -> TrainingResult:
        previous = self._install_signal_handlers()
        try:
            return self._run()
        except StopRequested:
            # Stopped before the first step (during data preparation): nothing new to save.
            reason = "stopped before training started"
            self.write_status("stopped", reason)
            for run in (self.run_dir, *self.mirrors):
                run.clear_stop()
            return TrainingResult(run_dir=self.run_dir.path, stage=self.stage, state="stopped", step=self.step,
                                  reason=reason, best_val_loss=None, best_step=None,
                                  checkpoint=self.run_dir.last_checkpoint)
        except BaseException as error:
            if isinstance(error, BrainLDMError):
                message = str(error)
            elif isinstance(error, KeyboardInterrupt):
                message = "interrupted"
            else:
                message = f"{type(error).__name__}: {error}"
                log.error("Training failed:\n%s", traceback.format_exc())
            try:
                self.write_status("failed", message)
            except OSError as status_error:  # pragma: no cover - never hide the original error
                log.warning("could not write status.json: %s", status_error)
            raise
        finally:
            self._restore_signal_handlers(previous)

    def _start(self) -> None:
        """Run folder, seeds, data, networks, and the resume/init state."""
        if self.is_main:
            self.run_dir.create()
            if self.run_dir.last_checkpoint.exists() and not self.resume:
                raise BrainLDMError(
                    f"{self.run_dir.path} already holds a training run (checkpoints/last.pt). Continue it with --resume, "
                    "or choose a new run folder.")
            self.run_dir.clear_stale_stop()
        self.context.barrier()
        if self.config.num_threads > 0:
            torch.set_num_threads(self.config.num_threads)
        seed_everything(self.config.seed * 1000 + self.context.rank)
        self.write_status("starting", "preparing data")
        self.prepare_data()
        self.build()
        checkpoint = self.run_dir.last_checkpoint
        if self.resume and checkpoint.exists():
            self.load(checkpoint)
            if self.is_main:
                self.run_dir.truncate_metrics(self.step)
                for run in self.mirrors:
                    run.truncate_metrics(self.step, stage=self.stage)
            log.info("Resumed %s at step %d from %s", self.stage, self.step, checkpoint)
        elif self.is_main:  # a fresh start: forget metrics of an earlier attempt that saved no checkpoint
            self.run_dir.truncate_metrics(0, stage=self.stage)
            for run in self.mirrors:
                run.truncate_metrics(0, stage=self.stage)
        if self.is_main:
            self.config.save(self.run_dir.config_file)  # the effective configuration (also after a resume)
        self.context.barrier()

    def _run(self) -> TrainingResult:
        self._start()
        s = self.settings
        main = self.is_main
        self.write_status("running", "training")
        progress = None
        if main and self.show_progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            progress = tqdm(total=s.max_steps, initial=self.step, desc=self.stage, file=sys.stderr,
                            dynamic_ncols=True)
        reason = "finished"
        started = time.monotonic()
        seconds_at_start = self.seconds
        try:
            while self.step < s.max_steps:
                over_budget = s.max_minutes > 0 and self.seconds >= s.max_minutes * 60
                local_stop = self.stop_requested()
                flags = self.context.all_reduce_sum(torch.tensor([float(local_stop), float(over_budget)]))
                if flags[0] > 0:
                    reason = "stopped"
                    break
                if flags[1] > 0:
                    reason = f"time budget of {s.max_minutes:g} min reached"
                    break
                tick = time.monotonic()
                losses = self.train_step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.ema_module())
                self._step_times.append(time.monotonic() - tick)
                self.seconds = seconds_at_start + (time.monotonic() - started)
                self.record(losses)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k in ("loss", "l1", "mse")},
                                         refresh=False)
                if self.step % s.log_every == 0 or self.step == s.max_steps:
                    means = {k: float(np.mean(v)) for k, v in self._recent.items()}
                    self.log_metrics({"split": "train", **means, "lr": self.learning_rate(self.step - 1),
                                      "step_seconds": float(np.mean(self._step_times[-s.log_every:]))})
                    self.write_status("running", "training")
                    if progress is None and main:  # a log file, not a terminal: one line per log step
                        eta = self._status.eta_seconds
                        log.info("%s step %d/%d %s%s", self.stage, self.step, s.max_steps,
                                 " ".join(f"{k}={v:.4g}" for k, v in means.items() if k in ("loss", "l1", "mse")),
                                 f" eta {eta / 60:.1f} min" if eta is not None else "")
                    self._recent = {}
                if self.step % s.val_every == 0 or self.step == s.max_steps:
                    self._validate_and_track()
                if self.step % s.checkpoint_every == 0 and self.step < s.max_steps:
                    self.save(self.run_dir.last_checkpoint)
                if self.early.should_stop:
                    reason = (f"early stopping: no validation improvement for {self.early.patience} checks "
                              f"(best {self.early.best:.5g} at step {self.early.best_step})")
                    break
        except KeyboardInterrupt:
            reason = "stopped"
        finally:
            if progress is not None:
                progress.close()
        if reason != "stopped" and self.step > 0 and self._last_val_step != self.step:
            self._validate_and_track()  # the end state is always validated (best.pt is then up to date)
        rng = self._gather_rng()  # collective: every rank, once
        self.save(self.run_dir.last_checkpoint, rng)
        if main and not self.run_dir.best_checkpoint.exists():
            self.save(self.run_dir.best_checkpoint, rng)
        state = "stopped" if reason == "stopped" else "finished"
        if main:
            for run in (self.run_dir, *self.mirrors):
                run.clear_stop()
        self.write_status(state, reason)
        log.info("%s %s at step %d (%s)", self.stage, state, self.step, reason)
        self.context.barrier()
        return TrainingResult(
            run_dir=self.run_dir.path, stage=self.stage, state=state, step=self.step, reason=reason,
            best_val_loss=None if math.isinf(self.early.best) else self.early.best,
            best_step=self.early.best_step if self.early.best_step >= 0 else None,
            checkpoint=self.run_dir.best_checkpoint if self.run_dir.best_checkpoint.exists() else self.run_dir.last_checkpoint,
        )

    def ema_module(self) -> torch.nn.Module:
        raise NotImplementedError

    def _validate_and_track(self) -> None:
        metrics = self.validate()
        value = float(metrics["val_loss"])
        if not math.isfinite(value):
            raise BrainLDMError(f"The {self.stage} validation loss is {value} at step {self.step}: training diverged. "
                                "Lower the learning rate (lr) or resume from an earlier checkpoint.")
        improved = self.early.update(value, self.step)
        self._last_val = {k: float(v) for k, v in metrics.items()}
        self._last_val_step = self.step
        self.log_metrics({"split": "val", **metrics, "best_val_loss": self.early.best})
        if improved:
            self.save(self.run_dir.best_checkpoint)
        self.write_status("running", "training")

    # ------------------------------------------------------------------ utilities for subclasses
    def load_init_weights(self, module: torch.nn.Module, states: dict[str, torch.Tensor], what: str) -> None:
        try:
            module.load_state_dict(states, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise SettingsError(f"The --init weights do not fit the {what} of this configuration ({first}). Use the "
                                "same model settings as the run or bundle you start from.") from error

    def sync_non_trainable(self, module: torch.nn.Module) -> None:
        """Broadcast parameters without gradients and buffers from rank 0 (e.g. a VQ codebook
        that follows its own EMA), so every rank keeps identical weights."""
        if not self.context.enabled:
            return
        for tensor in [p for p in module.parameters() if not p.requires_grad] + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src=0)


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    return unwrap(module)
