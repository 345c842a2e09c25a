"""Runs made of sub-stages: ``train all``, ``train synthesis`` and ``train sr``.

Each sub-stage trains in its own run folder below the run (atomic checkpoints, JSONL metrics,
status), mirrored into the run's own ``status.json`` and ``metrics.jsonl`` so that one run shows
one progress; a sub-stage that finished before is not trained again on ``--resume``; the last
sub-stage's model bundle is written to ``<run>/bundle`` and the run's status says where::

    with StagedRun(config, run_dir, resume, overrides) as staged:
        first_stage = staged.first_stage(data_dir)            # <run>/autoencoder
        if not isinstance(first_stage, Path):
            return first_stage                                # stopped there
        folder = staged.folder("denoiser")
        result = staged.train(DenoiserTrainer(staged.config, data_dir, folder, autoencoder=first_stage,
                                              **staged.trainer_options(folder)), last=True)
        return staged.export(result, folder, write_bundle, "model bundle")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainldm.train.rundir import RunDir

if TYPE_CHECKING:
    from brainldm.train.config import TrainingConfig
    from brainldm.train.denoiser import FirstStageSource
    from brainldm.train.loop import StageTrainer, TrainingResult

#: The sub-folder holding a first stage given by ``--init`` (an SR or synthesis bundle's).
GIVEN_FIRST_STAGE = "first_stage"
#: The sub-folder of a first stage the run trains itself.
TRAINED_FIRST_STAGE = "autoencoder"
#: The sub-folder of the exported model bundle.
BUNDLE = "bundle"


class StagedRun:
    """One run of several sub-stages; a context manager (its distributed context ends on leaving).

    ``require(config)`` may reject a configuration without the section the run needs (raising a
    :class:`~brainldm.errors.SettingsError`). One cache folder serves every sub-stage.
    """

    def __init__(self, config, run_dir: str | Path, resume: bool = False, overrides=(), show_progress: bool = True,
                 export: bool = True, require: Callable[[TrainingConfig], None] | None = None):
        from brainldm.train.runner import resolve_run_config

        self.run = RunDir(run_dir)
        self.config = resolve_run_config(config, self.run.path, resume, overrides)
        if require is not None:
            require(self.config)
        if self.config.cache and not self.config.cache_dir:
            self.config.cache_dir = str(self.run.cache_dir)
        self.resume = resume
        self.show_progress = show_progress
        self.exports = export
        self.context = None

    def __enter__(self) -> StagedRun:
        from brainldm.train.distributed import setup_distributed

        self.context = setup_distributed(self.config.device)
        try:
            if self.context.is_main:
                self.run.create()
                self.config.save(self.run.config_file)
        except BaseException:
            self.context.shutdown()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.context.shutdown()

    # ------------------------------------------------------------------ sub-stages
    def folder(self, name: str) -> Path:
        return self.run.path / name

    def finished_before(self, folder: Path) -> bool:
        """On resume: the sub-stage in ``folder`` has finished (it is not trained again)."""
        from brainldm.train.control import runs_status

        return self.resume and (folder / "status.json").exists() and runs_status(folder).state == "finished"

    def trainer_options(self, folder: Path) -> dict[str, Any]:
        """The keyword arguments every sub-stage trainer in ``folder`` gets: the distributed context,
        the run's status mirrored, progress, and resume when the sub-stage has a checkpoint."""
        return {"context": self.context, "status_mirrors": [self.run.path], "show_progress": self.show_progress,
                "resume": self.resume and RunDir(folder).last_checkpoint.exists()}

    def train(self, trainer: StageTrainer, last: bool = False) -> TrainingResult:
        """Run one sub-stage. The run's mirrored status says "running" when a sub-stage finishes,
        unless it is the ``last`` one and nothing is exported after it."""
        trainer.mirror_state_map = {} if (last and not self.exports) else {"finished": "running"}
        return trainer.run()

    def train_unless_finished(self, make_trainer: Callable[[dict[str, Any]], StageTrainer],
                              folder: Path) -> TrainingResult | None:
        """Train a sub-stage that is not the last (``make_trainer(trainer_options)``) unless it
        finished before. None when it is finished; its result when it stopped (the run stops too)."""
        if self.finished_before(folder):
            return None
        result = self.train(make_trainer(self.trainer_options(folder)))
        return None if result.state == "finished" else result

    def first_stage(self, data_dir, given: Path | None = None, source: FirstStageSource | None = None,
                    init: Path | None = None) -> Path | TrainingResult:
        """Where the image first stage of the later sub-stages is: ``given`` (``--autoencoder``, or
        a bundle that holds one), else ``source`` (a first stage read from an ``--init`` bundle)
        written to ``<run>/first_stage``, else one trained in ``<run>/autoencoder`` (from ``init``
        weights when given). The TrainingResult instead when that training stopped."""
        from brainldm.train.autoencoder import AutoencoderTrainer
        from brainldm.train.denoiser import FIRST_STAGE_FILE

        if given is not None:
            return given
        if source is not None:
            folder = self.folder(GIVEN_FIRST_STAGE)
            if self.context.is_main:
                source.save(folder / FIRST_STAGE_FILE)
            self.context.barrier()
            return folder
        folder = self.folder(TRAINED_FIRST_STAGE)
        stopped = self.train_unless_finished(
            lambda options: AutoencoderTrainer(self.config, data_dir, folder, init=init, **options), folder)
        return stopped if stopped is not None else folder

    def export(self, result: TrainingResult, folder: Path, write_bundle: Callable[[Path, Path], Path],
               what: str) -> TrainingResult:
        """After the last sub-stage (in ``folder``) finished: ``write_bundle(folder, <run>/bundle)``
        (rank 0), the run's status "finished; <what> in <bundle>", ``result.bundle`` set."""
        if result.state != "finished" or not self.exports:
            return result
        bundle = None
        if self.context.is_main:
            bundle = write_bundle(folder, self.folder(BUNDLE))
            status = self.run.read_status()
            if status is not None:
                status.state = "finished"
                status.message = f"finished; {what} in {bundle}"
                self.run.write_status(status)
        result.bundle = bundle
        return result


__all__ = ["BUNDLE", "GIVEN_FIRST_STAGE", "TRAINED_FIRST_STAGE", "StagedRun"]
