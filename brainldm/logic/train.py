"""The BrainLDMTrain use case: start, follow, stop and resume background training, and register
the trained model in the catalogue.

Training itself runs in a detached process started by
:func:`brainldm.train.control.launch_background`; this module only turns the module's
parameters into that call and ``status.json`` into what a user interface shows (epoch, loss,
ETA). It has no Qt: the Slicer widget polls :func:`training_progress` with a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from brainldm.errors import BrainLDMError, InputDataError, SettingsError

STAGES = ("all", "autoencoder", "denoiser")


@dataclass
class TrainParameters:
    """What the BrainLDMTrain module's parameter node holds (field names = parameter names)."""

    data_folder: Path = Path()
    preset: str = "cpu-small"
    output_folder: Path = Path()  # the run folder (status.json, checkpoints, bundle/)
    stage: Literal["all", "autoencoder", "denoiser"] = "all"
    model_name: str = ""  # title in the model catalogue ("" = the bundle's model id)
    overrides: str = ""  # "key=value" settings separated by ";" or new lines (e.g. denoiser.steps=2000)
    gpus: int = 1

    def override_list(self) -> list[str]:
        items = [part.strip() for chunk in self.overrides.splitlines() for part in chunk.split(";")]
        items = [item for item in items if item]
        bad = [item for item in items if "=" not in item]
        if bad:
            raise SettingsError(f"Overrides must be key=value (e.g. denoiser.optim.lr=2e-5); got {', '.join(bad)}.")
        return items


@dataclass
class TrainingProgress:
    """A run's state as a user interface shows it."""

    state: str
    alive: bool = False
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    eta_s: float | None = None
    message: str = ""
    bundle: Path | None = None  # the exported model bundle, once training finished

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_text(self) -> str:
        return format_duration(self.eta_s)

    @property
    def text(self) -> str:
        parts = [self.state]
        if self.stage:
            parts.append(self.stage)
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        parts.append(f"epoch {self.epoch:.2f}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.alive and self.eta_s is not None:
            parts.append(f"ETA {self.eta_text}")
        if self.message:
            parts.append(self.message)
        return " | ".join(parts)


def format_duration(seconds: float | None) -> str:
    """``"1 h 05 min"``, ``"4 min 10 s"``, ``"12 s"``, or ``"-"`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def available_presets() -> list[str]:
    """Names of the training presets shipped with the core, sorted.

    Reads the YAML files of ``brainldm/presets`` (what ``brainldm.train.config.list_presets``
    lists) without importing the training code, so a user interface can list them before
    PyTorch is installed.
    """
    folder = Path(__file__).resolve().parents[1] / "presets"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _bundle_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "bundle"


def check_training_inputs(params: TrainParameters, resume: bool = False) -> None:
    """Clear errors for an unusable data folder, output folder, preset or stage."""
    from brainldm.data.io import scan_subjects

    if params.stage not in STAGES:
        raise SettingsError(f"Training stage must be one of {', '.join(STAGES)}, got {params.stage!r}.")
    if str(params.output_folder) in ("", "."):
        raise SettingsError("Choose an output folder for the training run.")
    if int(params.gpus) < 1:
        raise SettingsError(f"gpus must be at least 1, got {params.gpus}.")
    if resume:
        if not (Path(params.output_folder) / "status.json").exists():
            raise BrainLDMError(f"Nothing to resume in {params.output_folder}: it holds no training run.")
        return
    folder = Path(params.data_folder).expanduser()
    if str(params.data_folder) in ("", ".") or not folder.is_dir():
        raise InputDataError(f"Training data folder {params.data_folder} does not exist; choose a folder of "
                             "BraTS-named subjects (<id>-t1n.nii.gz ... or <id>_t1.nii.gz ...).")
    scan = scan_subjects(folder)
    if not scan.subjects:
        reasons = "; ".join(str(s) for s in scan.skipped[:3])
        raise InputDataError(f"No complete subject found in {folder}" + (f" ({reasons})" if reasons else "") + ".")
    presets = available_presets()
    preset = str(params.preset)
    if presets and preset not in presets and not Path(preset).expanduser().is_file():
        raise SettingsError(f"Unknown preset {preset!r}; choose one of {', '.join(presets)} or a YAML file.")


def start_training(params: TrainParameters, resume: bool = False, python: str | None = None,
                   env: dict[str, str] | None = None):
    """Launch training in the background (returns :class:`brainldm.train.control.BackgroundRun` at once)."""
    from brainldm.train.control import launch_background

    check_training_inputs(params, resume=resume)
    data = Path(params.data_folder).expanduser() if str(params.data_folder) not in ("", ".") else None
    return launch_background(
        stage=params.stage, data_dir=data, run_dir=Path(params.output_folder).expanduser(),
        config=params.preset or None, overrides=params.override_list(), resume=resume, gpus=int(params.gpus),
        env=env, python=python,
    )


def resume_training(params: TrainParameters, python: str | None = None, env: dict[str, str] | None = None):
    """Continue a stopped or failed run from its last checkpoint."""
    return start_training(params, resume=True, python=python, env=env)


def _main_loss(losses: dict) -> float | None:
    if not losses:
        return None
    for key in ("loss", "total", "train_loss", "denoiser", "autoencoder"):
        if key in losses and isinstance(losses[key], (int, float)):
            return float(losses[key])
    numbers = [float(v) for v in losses.values() if isinstance(v, (int, float))]
    return numbers[0] if numbers else None


def training_progress(run_dir: str | Path) -> TrainingProgress:
    """Epoch, loss, ETA and state of a run folder (from ``status.json`` and the process table)."""
    from brainldm.train.control import runs_status

    status = runs_status(run_dir)
    bundle = _bundle_dir(Path(run_dir))
    return TrainingProgress(
        state=status.state, alive=bool(status.alive), stage=status.stage, step=int(status.step),
        total_steps=int(status.total_steps), epoch=float(status.epoch), loss=_main_loss(status.losses),
        losses=dict(status.losses), eta_s=status.eta_seconds, message=status.message,
        bundle=bundle if (bundle / "bundle.json").is_file() else None,
    )


def stop_training(run_dir: str | Path, wait: float = 0.0) -> TrainingProgress:
    """Ask the run to stop (it checkpoints first); with ``wait`` seconds, wait for it to end."""
    from brainldm.train.control import stop_run

    stop_run(run_dir, wait=wait)
    return training_progress(run_dir)


def register_trained_model(run_dir: str | Path, title: str | None = None, copy: bool = True):
    """Add the run's exported bundle (``<run>/bundle``) to the model catalogue; returns the entry."""
    from brainldm.logic.catalogue import register_model

    bundle = _bundle_dir(Path(run_dir).expanduser())
    if not (bundle / "bundle.json").is_file():
        raise BrainLDMError(f"The run {run_dir} has no exported model yet ({bundle} is missing): wait until training "
                            "has finished (stage 'all' exports the bundle at the end).")
    return register_model(bundle, title=title or None, copy=copy)
