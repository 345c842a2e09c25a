"""Command-line entry of one training process: ``python -m brainldm.train.runner``.

This is what :func:`brainldm.train.control.launch_background` starts (detached), what
``torchrun`` starts once per GPU (see :mod:`brainldm.train.distributed` for torchrun and
SLURM examples), and what can be run by hand::

    python -m brainldm.train.runner --stage all --config cpu-small --data phantoms/ --run-dir runs/small
    python -m brainldm.train.runner --stage autoencoder --config thesis-3d --data BraTS2023/ --run-dir runs/ae \\
        --set autoencoder.batch_size=4 --resume
    python -m brainldm.train.runner --stage denoiser --data BraTS2023/ --run-dir runs/ldm --autoencoder runs/ae

Stages: ``autoencoder``, ``denoiser`` (needs ``--autoencoder`` or ``--init BUNDLE``),
``all`` (first stage in ``<run>/autoencoder``, denoiser in ``<run>/denoiser``, then a model
bundle in ``<run>/bundle``) and ``synthesis`` (the lesion synthesis models of
:mod:`brainldm.train.synthesis`, then a synthesis bundle in ``<run>/bundle``) and ``sr`` (the super-resolution
model of :mod:`brainldm.train.sr`, then an SR bundle in ``<run>/bundle``). Exit status: 0 finished or stopped, 2 user error (message in
the log), 1 unexpected error (traceback in the log).
"""

from __future__ import annotations

import signal

from brainldm.train.rundir import EARLY_STOP_SIGNAL


def _early_stop_handler(signum, frame):
    EARLY_STOP_SIGNAL["received"] = True


if __name__ == "__main__":  # before the heavy imports: a SIGTERM during start-up still stops cleanly
    signal.signal(signal.SIGTERM, _early_stop_handler)

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from brainldm.errors import BrainLDMError
from brainldm.train.config import TrainingConfig, load_config
from brainldm.train.rundir import RunDir

log = logging.getLogger("brainldm.train")

#: Set in the environment of background runs (their stdout/stderr already go to train.log).
BACKGROUND_ENV = "BRAINLDM_TRAIN_BACKGROUND"


def resolve_run_config(config, run_dir, resume: bool, overrides=()) -> TrainingConfig:
    """The configuration of a run: the given one, or on resume the run's own ``config.yaml``."""
    run = RunDir(run_dir)
    if config is None and resume and run.config_file.is_file():
        return load_config(run.config_file, overrides)
    return load_config(config, overrides)


@contextlib.contextmanager
def log_to_run(run_dir: str | Path) -> Iterator[None]:
    """Also write the ``brainldm`` log to ``<run>/train.log`` (foreground runs)."""
    if os.environ.get(BACKGROUND_ENV) or int(os.environ.get("RANK", "0")) != 0:
        yield  # background: stdout/stderr already go to train.log; other ranks: rank 0 writes the log
        return
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("brainldm")
    handler = logging.FileHandler(run.log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)


def train_all(
    config,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    init: str | Path | None = None,
    overrides=(),
    show_progress: bool = True,
    export: bool = True,
):
    """Train the first stage, then the denoiser on it, then export a bundle to ``<run>/bundle``.

    ``<run>/status.json`` follows whichever stage runs. On ``resume`` a finished first
    stage is not trained again. ``init`` (a model bundle) fine-tunes both stages from it.
    Returns the denoiser's TrainingResult (``.bundle`` set when exported).
    """
    from brainldm.train.denoiser import DenoiserTrainer
    from brainldm.train.export import export_bundle
    from brainldm.train.stages import StagedRun

    with StagedRun(config, run_dir, resume, overrides, show_progress, export) as staged:
        first_stage = staged.first_stage(data_dir, init=init)
        if not isinstance(first_stage, Path):
            return first_stage
        folder = staged.folder("denoiser")
        result = staged.train(DenoiserTrainer(staged.config, data_dir, folder, autoencoder=first_stage, init=init,
                                              **staged.trainer_options(folder)), last=True)
        return staged.export(result, folder, lambda run, out: export_bundle(run, out, overwrite=True), "model bundle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m brainldm.train.runner",
                                     description="Run one BrainLDM training stage (foreground).")
    parser.add_argument("--stage", choices=["autoencoder", "denoiser", "all", "synthesis", "sr"], required=True)
    parser.add_argument("--run-dir", "--run", dest="run", type=Path, required=True,
                        help="run folder (created if needed); spell it --run-dir under torchrun")
    parser.add_argument("--data", type=Path, help="folder with the training subjects")
    parser.add_argument("--config", help="preset name (cpu-small, thesis-3d, thesis-2d, default) or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set autoencoder.max_steps=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/checkpoints/last.pt if present")
    parser.add_argument("--init", type=Path, help="start from these weights (model bundle, run or checkpoint)")
    parser.add_argument("--autoencoder", type=Path, help="denoiser stage: the frozen first stage "
                        "(autoencoder run, checkpoint or model bundle)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    show_progress = not args.no_progress
    try:
        with log_to_run(args.run):
            if args.stage == "autoencoder":
                from brainldm.train.autoencoder import train_autoencoder

                result = train_autoencoder(args.config, args.data, args.run, resume=args.resume, init=args.init,
                                           overrides=args.overrides, show_progress=show_progress)
            elif args.stage == "denoiser":
                from brainldm.train.denoiser import train_denoiser

                result = train_denoiser(args.config, args.data, args.run, autoencoder=args.autoencoder,
                                        resume=args.resume, init=args.init, overrides=args.overrides,
                                        show_progress=show_progress)
            elif args.stage == "synthesis":
                from brainldm.train.synthesis import train_synthesis

                result = train_synthesis(args.config, args.data, args.run, resume=args.resume, init=args.init,
                                         autoencoder=args.autoencoder, overrides=args.overrides,
                                         show_progress=show_progress)
            elif args.stage == "sr":
                from brainldm.train.sr import train_sr

                result = train_sr(args.config, args.data, args.run, resume=args.resume, init=args.init,
                                  autoencoder=args.autoencoder, overrides=args.overrides, show_progress=show_progress)
            else:
                result = train_all(args.config, args.data, args.run, resume=args.resume, init=args.init,
                                   overrides=args.overrides, show_progress=show_progress)
    except BrainLDMError as error:
        log.error("%s", error)
        print(f"brainldm training: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    log.info("%s: %s at step %d (%s)", args.stage, result.state, result.step, result.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
