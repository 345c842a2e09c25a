"""Training of BrainLDM models: presets, loops, run control, model bundles.

Public entry points (imported lazily, so ``import brainldm.train`` stays cheap)::

    load_config(source=None, overrides=())           -> TrainingConfig   (presets: list_presets())
    train_autoencoder(config, data_dir, run_dir, resume=False, init=None, overrides=())
    train_denoiser(config, data_dir, run_dir, autoencoder=None, resume=False, init=None, overrides=())
    train_all(config, data_dir, run_dir, resume=False, init=None, overrides=())   # both + bundle
    launch_background(stage, data_dir, run_dir, config=None, overrides=(), resume=False, init=None,
                      autoencoder=None, gpus=1)       -> BackgroundRun
    runs_status(run_dir) -> RunStatus;  list_runs(folder);  stop_run(run_dir, wait=0)
    export_bundle(runs, out, model_id=None, ...)     -> Path of the bundle folder
    train_synthesis(config, data_dir, run_dir, resume=False, init=None, autoencoder=None, overrides=())
    export_synthesis_bundle(run, out)                 -> Path of the synthesis bundle folder

Run folders are described in :mod:`brainldm.train.rundir`; multi-GPU / multi-node use
(torchrun, SLURM) in :mod:`brainldm.train.distributed`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainingConfig": "brainldm.train.config",
    "load_config": "brainldm.train.config",
    "list_presets": "brainldm.train.config",
    "train_autoencoder": "brainldm.train.autoencoder",
    "train_denoiser": "brainldm.train.denoiser",
    "train_all": "brainldm.train.runner",
    "TrainingResult": "brainldm.train.loop",
    "launch_background": "brainldm.train.control",
    "runs_status": "brainldm.train.control",
    "list_runs": "brainldm.train.control",
    "stop_run": "brainldm.train.control",
    "BackgroundRun": "brainldm.train.control",
    "RunDir": "brainldm.train.rundir",
    "RunStatus": "brainldm.train.rundir",
    "export_bundle": "brainldm.train.export",
    "train_synthesis": "brainldm.train.synthesis",
    "export_synthesis_bundle": "brainldm.train.synthesis",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'brainldm.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
