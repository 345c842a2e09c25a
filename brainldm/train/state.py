"""Training state that must survive a restart: EMA weights, early stopping, RNG, checkpoints.

A checkpoint is one ``torch.save`` dictionary written atomically (temporary file +
:func:`os.replace`), so a run killed at any moment leaves either the previous or the new
checkpoint, never a torn one. It holds everything ``--resume`` needs to continue at the same
step with the same random stream: network and optimiser states, EMA weights, the AMP
gradient scaler, the early-stopping record, the step/epoch counters and the states of every
random generator in play (Python, NumPy, torch CPU/CUDA and the run's own patch and noise
generators).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainldm.errors import BrainLDMError
from brainldm.train.rundir import atomic_write_bytes

CHECKPOINT_FORMAT = "brainldm-training-checkpoint"
CHECKPOINT_VERSION = 1


class ExponentialMovingAverage:
    """Exponential moving average of a module's floating-point parameters and buffers.

    ``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step (Table 3.2:
    decay 0.9999 for the 3D denoiser). With ``warmup`` the decay used at update ``n`` is
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the random
    initialisation (a common, harmless refinement; set ``warmup=False`` for the plain rule).
    """

    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().clone() for name, value in module.state_dict().items()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for name, value in module.state_dict().items():
            shadow = self.shadow[name]
            if value.dtype.is_floating_point:
                shadow.mul_(decay).add_(value.detach().to(shadow.dtype), alpha=1.0 - decay)
            else:
                shadow.copy_(value)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)

    def averaged_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of ``module`` carrying the EMA weights (the module itself is untouched)."""
        clone = copy.deepcopy(module)
        self.copy_to(clone)
        return clone

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "warmup": self.warmup,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.warmup = bool(state.get("warmup", True))
        for name, value in state["shadow"].items():
            if name in self.shadow:
                self.shadow[name].copy_(value)


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience`` checks.

    ``patience = 0`` disables stopping (the best state is still tracked).
    """

    patience: int = 0
    min_delta: float = 0.0
    best: float = float("inf")
    best_step: int = -1
    bad_checks: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation loss; returns True when it is a new best."""
        if value < self.best - self.min_delta:
            self.best = float(value)
            self.best_step = int(step)
            self.bad_checks = 0
            return True
        self.bad_checks += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_checks >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.bad_checks = int(state["bad_checks"])


# --------------------------------------------------------------------------- RNG


def capture_global_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_python_random_state(state["python"]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _as_python_random_state(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_write_bytes(Path(path), lambda stream: torch.save(payload, stream))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint; unreadable or foreign files raise a clear :class:`BrainLDMError`."""
    path = Path(path)
    if not path.is_file():
        raise BrainLDMError(f"No checkpoint at {path}. Start the run without --resume, or point to a run folder "
                            "that has checkpoints/last.pt.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # corrupt / truncated file
        raise BrainLDMError(f"The checkpoint {path} cannot be read ({type(error).__name__}: {error}). It may be "
                            "truncated; use checkpoints/best.pt or restart the run without --resume.") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise BrainLDMError(f"{path} is not a BrainLDM training checkpoint.")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise BrainLDMError(f"{path} was written by a newer BrainLDM (checkpoint version {state.get('version')}); "
                            "update BrainLDM to resume it.")
    return state
