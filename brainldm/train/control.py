"""Run control: start training in the background, ask how it goes, stop it gracefully.

:func:`launch_background` starts ``python -m brainldm.train.runner`` as a detached process
(its own session, so closing the terminal or Slicer does not kill it; stdout and stderr go to
``<run>/train.log``). With ``gpus > 1`` it starts ``torch.distributed.run`` (torchrun) with one
process per GPU instead. :func:`runs_status` reads ``<run>/status.json`` and checks whether
the recorded process is still alive: a run whose file says "running" but whose process is
gone (killed, machine rebooted) is reported as ``failed`` with a hint to ``--resume``.
:func:`stop_run` writes ``<run>/STOP`` and sends SIGTERM; the runner then finishes the
current step, writes a checkpoint and ends in state ``stopped``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from brainldm.errors import BrainLDMError, SettingsError
from brainldm.train.rundir import RunDir, RunStatus

STAGES = ("autoencoder", "denoiser", "all", "synthesis", "sr")


@dataclass
class BackgroundRun:
    """A training process started by :func:`launch_background`."""

    run_dir: Path
    pid: int
    command: list[str]
    process: subprocess.Popen | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process (only possible from the launching process)."""
        if self.process is None:
            return None
        return self.process.wait(timeout)

    def status(self) -> RunStatus:
        return runs_status(self.run_dir)


def runner_command(
    stage: str,
    run_dir: Path,
    data_dir: Path | None,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    init: str | Path | None = None,
    autoencoder: str | Path | None = None,
    gpus: int = 1,
    python: str | None = None,
) -> list[str]:
    """The command line that runs one training stage (what :func:`launch_background` starts)."""
    if stage not in STAGES:
        raise SettingsError(f"Training stage must be one of {STAGES}, got {stage!r}.")
    python = python or sys.executable
    if gpus > 1:
        command = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(gpus)}",
                   "-m", "brainldm.train.runner"]
    else:
        command = [python, "-m", "brainldm.train.runner"]
    # "--run-dir", not "--run": torchrun's parser would take "--run" for its own "--run-path".
    command += ["--stage", stage, "--run-dir", str(run_dir)]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    if config is not None:
        command += ["--config", str(config)]
    for item in overrides or ():
        command += ["--set", item]
    if resume:
        command.append("--resume")
    if init is not None:
        command += ["--init", str(init)]
    if autoencoder is not None:
        command += ["--autoencoder", str(autoencoder)]
    return command


def launch_background(
    stage: str,
    data_dir: str | Path | None,
    run_dir: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    init: str | Path | None = None,
    autoencoder: str | Path | None = None,
    gpus: int = 1,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> BackgroundRun:
    """Start a training stage as a detached background process and return at once.

    ``stage`` is ``autoencoder``, ``denoiser`` or ``all`` (both, then a model bundle in
    ``<run>/bundle``). ``config`` is a preset name (``cpu-small``, ``thesis-3d``...) or a YAML
    file; ``overrides`` are ``key=value`` strings. Follow the run with :func:`runs_status`,
    stop it with :func:`stop_run`. Raises :class:`BrainLDMError` if a run is already alive in
    ``run_dir``.
    """
    run = RunDir(run_dir)
    current = runs_status(run.path) if run.exists() else None
    if current is not None and current.alive:
        raise BrainLDMError(f"A training run is already active in {run.path} (pid {current.pid}). "
                            "Stop it first (stop_run / brainldm train stop) or choose another run folder.")
    run.path.mkdir(parents=True, exist_ok=True)
    run.clear_stop()
    command = runner_command(stage, run.path, Path(data_dir) if data_dir is not None else None, config,
                             overrides, resume, init, autoencoder, gpus, python)
    process_env = dict(os.environ)
    process_env.update(env or {})
    process_env.setdefault("PYTHONUNBUFFERED", "1")
    process_env["BRAINLDM_TRAIN_BACKGROUND"] = "1"  # the log already goes to train.log
    # The package must be importable from the child even when run from a source checkout.
    package_root = str(Path(__file__).resolve().parents[2])
    process_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, process_env.get("PYTHONPATH", "")) if p
    )
    with open(run.log_file, "ab") as log:
        log.write(f"\n==== {time.ctime()} launching: {' '.join(command)}\n".encode())
        log.flush()
        detach: dict = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS}
            if os.name == "nt" else {"start_new_session": True}
        )
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=process_env, cwd=str(run.path), **detach,
        )
    # Record the pid at once so status/stop work before the runner has written anything.
    status = run.read_status() if resume else None
    status = status or RunStatus(stage=stage)
    status.state = "starting"
    status.pid = process.pid
    status.message = "process started"
    run.write_status(status)
    return BackgroundRun(run.path, process.pid, command, process)


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return False
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return _windows_process_alive(int(pid))
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    # A finished child that nobody has reaped yet is a zombie: not alive.
    stat = Path(f"/proc/{int(pid)}/stat")
    if stat.exists():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields and fields[0] in ("Z", "X"):
                return False
        except (OSError, IndexError):
            pass
    return True


def runs_status(run_dir: str | Path) -> RunStatus:
    """The current :class:`RunStatus` of a run folder (``alive`` tells whether its process runs).

    A run recorded as ``starting``/``running`` whose process no longer exists is reported
    as ``failed`` with a message saying it can be resumed.
    """
    run = RunDir(run_dir)
    status = run.read_status()
    if status is None:
        if not run.path.exists():
            raise BrainLDMError(f"No training run at {run.path}.")
        status = RunStatus(state="unknown", message="no status.json yet")
        status.run_dir = str(run.path)
        status.alive = False
        return status
    status.alive = _process_alive(status.pid)
    if status.state in ("starting", "running") and not status.alive:
        status.state = "failed"
        has_checkpoint = run.last_checkpoint.exists()
        status.message = ("the training process ended unexpectedly (killed?)"
                          + ("; resume it with --resume" if has_checkpoint else "; no checkpoint yet, start it again"))
    return status


def list_runs(folder: str | Path) -> list[RunStatus]:
    """Status of every run folder (one holding ``status.json``) directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [runs_status(p) for p in sorted(folder.iterdir()) if (p / "status.json").exists()]


def stop_run(run_dir: str | Path, wait: float = 0.0, poll: float = 0.2) -> RunStatus:
    """Ask a run to stop gracefully (checkpoint, then state ``stopped``).

    Writes the ``STOP`` request file (seen by every rank, also on other nodes sharing the
    folder) and sends SIGTERM to the recorded process. With ``wait > 0`` waits up to that
    many seconds for the run to leave the running state. Returns the latest status.
    """
    run = RunDir(run_dir)
    status = runs_status(run.path)
    if not status.alive:
        return status
    run.request_stop()
    if os.name != "nt":  # on Windows the STOP file alone (a signal would kill the process outright)
        try:
            os.kill(int(status.pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError, TypeError):
            pass
    deadline = time.monotonic() + wait
    while wait > 0 and time.monotonic() < deadline:
        status = runs_status(run.path)
        if not status.alive:
            break
        time.sleep(poll)
    return runs_status(run.path)
