"""Background training: launch, status, graceful stop, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import time

import pytest

from brainldm.errors import BrainLDMError
from brainldm.train.autoencoder import train_autoencoder
from brainldm.train.control import (
    launch_background,
    list_runs,
    runner_command,
    runs_status,
    stop_run,
)
from brainldm.train.rundir import RunDir, RunStatus
from brainldm.train.state import load_checkpoint
from brainldm.train.toy import tiny_overrides, write_toy_dataset


def wait_for(condition, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_tail(run) -> str:
    path = RunDir(run).log_file
    return path.read_text()[-3000:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "data"
    write_toy_dataset(folder, count=4, shape=(40, 40, 40), seed=2)
    return folder


def test_runner_command_shapes(tmp_path):
    single = runner_command("autoencoder", tmp_path, tmp_path / "d", "cpu-small", ["a=1"], resume=True)
    assert single[1:3] == ["-m", "brainldm.train.runner"] and "--resume" in single and "a=1" in single
    multi = runner_command("denoiser", tmp_path, tmp_path / "d", "cpu-small", ["denoiser.lr=1e-4"], resume=True,
                           init=tmp_path / "b", gpus=4, autoencoder=tmp_path / "ae")
    assert "torch.distributed.run" in multi and "--nproc_per_node=4" in multi and "--autoencoder" in multi
    # torchrun's own parser must hand every runner option through untouched (no prefix clashes).
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(multi[3:])
    assert parsed.module and parsed.training_script == "brainldm.train.runner"
    assert parsed.training_script_args == multi[multi.index("brainldm.train.runner") + 1:]
    from brainldm.train.runner import build_parser

    runner = build_parser().parse_args(parsed.training_script_args)
    assert runner.stage == "denoiser" and runner.run == tmp_path and runner.resume and runner.overrides == ["denoiser.lr=1e-4"]


def test_status_of_missing_and_dead_runs(tmp_path):
    with pytest.raises(BrainLDMError):
        runs_status(tmp_path / "nothing")
    run = RunDir(tmp_path / "dead").create()
    run.write_status(RunStatus(state="running", stage="autoencoder", pid=2**22 + 12345))
    status = runs_status(run.path)
    assert status.state == "failed" and not status.alive and "start it again" in status.message
    assert [s.run_dir for s in list_runs(tmp_path)] == [str(run.path)]
    assert stop_run(run.path).state == "failed"  # nothing to stop


def test_background_launch_status_stop_kill_and_resume(data_dir, tmp_path):
    run = tmp_path / "bg"
    overrides = [*tiny_overrides(max_steps=100000, every=3), "autoencoder.val_every=1000"]
    handle = launch_background("autoencoder", data_dir, run, config="cpu-small", overrides=overrides)
    try:
        assert handle.pid > 0 and runs_status(run).alive
        with pytest.raises(BrainLDMError, match="already active"):
            launch_background("autoencoder", data_dir, run, config="cpu-small", overrides=overrides)
        status = wait_for(lambda: (s := runs_status(run)).state == "running" and s.step >= 4 and s,
                          120, "the background run to train a few steps\n" + log_tail(run))
        assert status.pid == handle.pid and status.total_steps == 100000 and status.eta_seconds is not None

        # Graceful stop: checkpoint at the current step, state "stopped", process gone.
        stopped = stop_run(run, wait=60)
        assert stopped.state == "stopped", log_tail(run)
        assert handle.wait(timeout=30) == 0
        checkpoint = load_checkpoint(RunDir(run).last_checkpoint)
        assert checkpoint["step"] == runs_status(run).step >= 4
        assert not RunDir(run).stop_file.exists()

        # Resume in the background, then kill it hard (SIGKILL: no chance to save anything).
        handle = launch_background("autoencoder", data_dir, run, config="cpu-small", overrides=overrides,
                                   resume=True)
        resumed_from = checkpoint["step"]
        wait_for(lambda: load_checkpoint(RunDir(run).last_checkpoint)["step"] > resumed_from
                 and runs_status(run).step > resumed_from + 1,
                 120, "a checkpoint after resuming\n" + log_tail(run))
        os.killpg(handle.pid, signal.SIGKILL)
        handle.wait(timeout=30)
    finally:
        if handle.process.poll() is None:
            os.killpg(handle.pid, signal.SIGKILL)
            handle.wait(timeout=30)
    dead = runs_status(run)
    assert dead.state == "failed" and not dead.alive and "--resume" in dead.message
    saved_step = load_checkpoint(RunDir(run).last_checkpoint)["step"]
    assert saved_step > resumed_from and saved_step % 3 == 0

    # A killed run resumes from its last checkpoint and continues at the next step.
    result = train_autoencoder("cpu-small", data_dir, run, resume=True,
                               overrides=[*overrides, f"autoencoder.max_steps={saved_step + 2}"], show_progress=False)
    assert result.state == "finished" and result.step == saved_step + 2
    steps = [r["step"] for r in RunDir(run).read_metrics() if r["split"] == "train"]
    assert steps == list(range(1, saved_step + 3))  # no gap, no step counted twice
