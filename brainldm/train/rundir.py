"""The folder of one training run, and the files that describe its state.

Layout of a run folder (everything a user or the Slicer module needs to follow a run)::

    <run>/
      config.yaml          the full, resolved training configuration
      status.json          state (running|finished|failed|stopped), stage, step, total steps,
                           epoch, latest losses, ETA, pid, message; rewritten atomically
      metrics.jsonl        one JSON object per logged step / validation (step, losses, lr, seconds)
      train.log            the process's log (stdout and stderr of a background run)
      checkpoints/
        last.pt            latest state (model, optimiser, EMA, RNG, step): what --resume reads
        best.pt            the state with the lowest validation loss
      STOP                 present = a stop was requested (see :func:`brainldm.train.control.stop_run`)
      cache/               preprocessed subjects (.npy, memory-mapped)

Every file that is rewritten during a run (status, checkpoints) is written to a temporary
file in the same folder and moved into place with :func:`os.replace`, so a reader or a
killed process never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: States a run can be in (``status.json``'s ``state``).
RUN_STATES = ("starting", "running", "finished", "failed", "stopped")

#: Set by the runner's early SIGTERM handler (installed before torch is imported), so a stop
#: requested while the process starts up is not lost.
EARLY_STOP_SIGNAL = {"received": False}

#: When this process started (STOP files older than this are stale leftovers).
PROCESS_STARTED = time.time()


class StopRequested(Exception):
    """Raised inside long preparation steps (data, latents) when a stop was requested."""


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file through ``write(fileobj)`` into a temporary sibling, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda stream: stream.write(text.encode("utf-8")))


@dataclass
class RunStatus:
    """What ``status.json`` holds (and what :func:`runs_status` returns)."""

    state: str = "starting"
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    best_val_loss: float | None = None
    eta_seconds: float | None = None
    seconds: float = 0.0
    pid: int | None = None
    host: str = ""
    world_size: int = 1
    message: str = ""
    skipped_subjects: list[str] = field(default_factory=list)
    updated: float = 0.0
    run_dir: str = ""
    alive: bool | None = None  # filled in by runs_status(); not trusted from the file

    @property
    def progress(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class RunDir:
    """Paths and small file helpers of one training run folder."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- paths
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def create(self) -> RunDir:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def exists(self) -> bool:
        return self.status_file.exists() or self.config_file.exists()

    # ---- status
    def read_status(self) -> RunStatus | None:
        try:
            data = json.loads(self.status_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        status = RunStatus.from_dict(data)
        status.run_dir = str(self.path)
        return status

    def write_status(self, status: RunStatus) -> None:
        status.updated = time.time()
        status.run_dir = str(self.path)
        data = status.to_dict()
        data.pop("alive", None)
        atomic_write_text(self.status_file, json.dumps(data, indent=2, default=_json_default) + "\n")

    # ---- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_json_default)
        with open(self.metrics_file, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` (a half-written last line, from a killed run, is ignored)."""
        records = []
        try:
            lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return records
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def truncate_metrics(self, after_step: int, stage: str | None = None) -> None:
        """Drop records past ``after_step`` (of ``stage`` only, when given): on resume the steps
        after the checkpoint are done again."""
        records = [r for r in self.read_metrics()
                   if int(r.get("step", 0)) <= after_step or (stage is not None and r.get("stage") != stage)]
        atomic_write_text(
            self.metrics_file, "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
        )

    # ---- stop request
    def request_stop(self) -> None:
        atomic_write_text(self.stop_file, f"stop requested at {time.ctime()}\n")

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def clear_stale_stop(self, started: float = PROCESS_STARTED) -> None:
        """Remove a STOP file written before this process started (left over from an old run)."""
        try:
            if self.stop_file.stat().st_mtime < started - 1.0:
                self.stop_file.unlink()
        except FileNotFoundError:
            pass

    def clear_stop(self) -> None:
        try:
            self.stop_file.unlink()
        except FileNotFoundError:
            pass


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
