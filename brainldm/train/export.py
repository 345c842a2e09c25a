"""Model bundles from finished training runs, and weights from runs / checkpoints / bundles.

:func:`export_bundle` turns a denoiser run (which keeps a copy of its frozen first stage,
``<run>/autoencoder.pt``) - or an ``all`` run folder holding ``autoencoder/`` and
``denoiser/`` - into a :class:`~brainldm.nets.bundle.ModelBundle` folder with both
networks' weights (the EMA weights where the run kept an EMA, from ``best.pt`` by default),
their configs, the preprocessing config, ``latent_scale``, the noise schedule, the training
patch size, a training summary and a model card.

:func:`read_stage_weights` and :func:`read_first_stage` read weights for ``--init`` and
``--autoencoder`` from any of: a model bundle folder, a run folder, or a checkpoint file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from brainldm.data.preprocess import PreprocessConfig
from brainldm.errors import BrainLDMError, ModelBundleError
from brainldm.machine import machine_description
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.bundle import (
    AUTOENCODER_FILE,
    BUNDLE_FILE,
    DENOISER_FILE,
    ModelBundle,
)
from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser
from brainldm.train.rundir import RunDir
from brainldm.train.state import load_checkpoint

log = logging.getLogger("brainldm.train")


def is_bundle(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / BUNDLE_FILE).is_file()


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a checkpoint path or a run folder (``best.pt``, else ``last.pt``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    run = RunDir(path)
    order = [run.best_checkpoint, run.last_checkpoint] if which == "best" else [run.last_checkpoint,
                                                                                run.best_checkpoint]
    for candidate in order:
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise BrainLDMError(f"{path} does not exist: give a training run folder, a checkpoint file or a model bundle.")
    raise BrainLDMError(f"{path} holds no checkpoint (checkpoints/best.pt or last.pt) and is not a model bundle.")


def _stage_weights(state: dict[str, Any], network: str) -> dict[str, torch.Tensor]:
    from brainldm.train.autoencoder import stage_weights_from_checkpoint

    return stage_weights_from_checkpoint(state, network)


def read_stage_weights(path: str | Path, network: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights of ``network`` ("autoencoder" or "denoiser") for ``--init``, plus information
    (``latent_scale``, ``first_stage_fingerprint``) from a bundle, run folder or checkpoint."""
    path = Path(path).expanduser()
    if is_bundle(path):
        ModelBundle.verify(path)
        description = ModelBundle.read_description(path)
        file = path / (AUTOENCODER_FILE if network == "autoencoder" else DENOISER_FILE)
        try:
            weights = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ModelBundleError(f"{file} cannot be read ({type(error).__name__}).") from error
        info: dict[str, Any] = {"latent_scale": description.get("latent_scale")}
        if network == "denoiser":
            info["first_stage_fingerprint"] = read_first_stage(path).fingerprint()
        return weights, info
    state = load_checkpoint(resolve_checkpoint(path))
    if state.get("stage") != network:
        raise BrainLDMError(f"{path} is a {state.get('stage')} run/checkpoint; --init for the {network} needs a "
                            f"{network} run, checkpoint or a model bundle.")
    return _stage_weights(state, network), dict(state.get("extra", {}))


def init_record(path: str | Path) -> dict[str, Any]:
    """What ``--init`` weights were, for the model card of the run they start: the bundle's id,
    machine and denoiser training (steps, seconds, windows, batch), or the run's step and time."""
    path = Path(path).expanduser()
    record: dict[str, Any] = {"from": str(path)}
    if is_bundle(path):
        description = ModelBundle.read_description(path)
        training = description.get("training", {})
        denoiser = training.get("denoiser", {})
        config = denoiser.get("config", {})
        record.update(model_id=description.get("model_id"), machine=training.get("machine"),
                      config_name=training.get("config_name"),
                      denoiser={k: denoiser.get(k) for k in ("step", "seconds", "best_val_loss", "best_step")
                                if k in denoiser})
        record["denoiser"].update({k: config[k] for k in ("patch_size", "batch_size", "lr") if k in config})
        if denoiser.get("init"):  # that bundle's denoiser was itself fine-tuned: keep the whole chain
            record["init"] = denoiser["init"]
        return record
    try:
        state = load_checkpoint(resolve_checkpoint(path))
    except BrainLDMError:
        return record
    record.update(step=int(state.get("step", 0)), seconds=float(state.get("seconds", 0.0)))
    return record


def read_first_stage(path: str | Path):
    """The first stage (config, weights, preprocessing) from a bundle, an autoencoder run or
    checkpoint, or a denoiser run (its stored copy)."""
    from brainldm.train.denoiser import FIRST_STAGE_FILE, FirstStageSource

    path = Path(path).expanduser()
    if is_bundle(path):
        ModelBundle.verify(path)
        description = ModelBundle.read_description(path)
        try:
            weights = torch.load(path / AUTOENCODER_FILE, map_location="cpu", weights_only=True)
            config = AutoencoderConfig.from_dict(description["autoencoder"]["config"])
            preprocess = PreprocessConfig.from_dict(description["preprocess"])
        except Exception as error:
            raise ModelBundleError(f"The first stage of the bundle {path} cannot be read: {error}") from error
        return FirstStageSource(config, weights, preprocess, f"bundle {path.resolve()}")
    if path.is_dir() and (path / FIRST_STAGE_FILE).is_file() and not (path / "checkpoints" / "best.pt").exists() \
            and not (path / "checkpoints" / "last.pt").exists():
        return FirstStageSource.read(path / FIRST_STAGE_FILE)
    if path.is_dir() and (path / "autoencoder").is_dir() and not (path / "checkpoints").is_dir():
        path = path / "autoencoder"  # an "all" run folder
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    if state.get("stage") == "denoiser":
        run = checkpoint.parent.parent
        if (run / FIRST_STAGE_FILE).is_file():
            return FirstStageSource.read(run / FIRST_STAGE_FILE)
    if state.get("stage") != "autoencoder":
        raise BrainLDMError(f"{path} is not an autoencoder run or checkpoint (stage {state.get('stage')!r}).")
    config = state["config"]
    return FirstStageSource(
        AutoencoderConfig.from_dict(config["autoencoder"]["model"]),
        _stage_weights(state, "autoencoder"),
        PreprocessConfig.from_dict(config["preprocess"]),
        f"run {checkpoint.parent.parent.resolve()}",
    )


def _find_denoiser_run(runs: Sequence[Path]) -> Path:
    candidates = []
    for run in runs:
        if (run / "denoiser").is_dir():
            candidates.append(run / "denoiser")
        elif (run / "checkpoints").is_dir():
            try:
                state = load_checkpoint(resolve_checkpoint(run))
            except BrainLDMError:
                continue
            if state.get("stage") == "denoiser":
                candidates.append(run)
    if not candidates:
        raise BrainLDMError("No denoiser run among " + ", ".join(str(r) for r in runs)
                            + ": export a bundle from a denoiser run (or a run folder trained with stage 'all').")
    if len(candidates) > 1:
        raise BrainLDMError("Several denoiser runs given: " + ", ".join(str(c) for c in candidates))
    return candidates[0]


def _check_finished(run: Path, allow_unfinished: bool) -> dict[str, Any]:
    from brainldm.train.control import runs_status

    status = runs_status(run)
    if status.state in ("starting", "running"):
        raise BrainLDMError(f"The run {run} is still training; stop it (or wait until it finishes) before exporting.")
    if status.state not in ("finished", "stopped") and not allow_unfinished:
        raise BrainLDMError(f"The run {run} is in state {status.state!r} ({status.message}); export needs a finished "
                            "or stopped run (or allow_unfinished=True).")
    return status.to_dict()


def default_model_id(autoencoder: AutoencoderConfig, denoiser: DenoiserConfig, fingerprint: str) -> str:
    return (f"brainldm-{autoencoder.spatial_dims}d-{autoencoder.kind}{autoencoder.compression}-"
            f"{denoiser.position_embedding}-{time.strftime('%Y%m%d')}-{fingerprint[:8]}")


def model_card_text(model_id: str, autoencoder: AutoencoderConfig, denoiser: DenoiserConfig,
                    training: dict[str, Any], latent_scale: float, patch_size: Sequence[int]) -> str:
    ae, dn = training.get("autoencoder", {}), training.get("denoiser", {})
    data = dn.get("data", {})

    def fmt(value: Any) -> str:
        return f"{value:.5g}" if isinstance(value, float) else str(value)

    def minutes(seconds: Any) -> str:
        return f" in {float(seconds) / 60:.1f} min" if isinstance(seconds, (int, float)) else ""

    ae_line = (f"{ae.get('step', '?')} steps{minutes(ae.get('seconds'))}"
               + (f" on {ae['machine']}" if ae.get("machine") else "")
               + f"; best validation mean absolute error inside the brain "
               f"(normalised [-1, 1] units) {fmt(ae.get('best_val_loss'))} at step {ae.get('best_step')}"
               + (f" (from {ae['origin']})" if str(ae.get("origin", "")).startswith("bundle ") else ""))
    dn_line = (f"{dn.get('step', '?')} steps{minutes(dn.get('seconds'))}; best validation noise-prediction MSE "
               f"{fmt(dn.get('best_val_loss'))} at step {dn.get('best_step')}")
    init = dn.get("init") or {}
    if init:
        before = init.get("denoiser", {})
        dn_line += (f"; fine-tuned from {init.get('model_id') or init.get('from')}"
                    + (f" ({before.get('step')} steps{minutes(before.get('seconds'))}"
                       + (f" on {init['machine']}" if init.get("machine") else "")
                       + (f", windows {before['patch_size']}, batch {before.get('batch_size')}" if before.get("patch_size") else "")
                       + ")" if before else ""))
    data_line = (f"{data.get('n_train', '?')} training and {data.get('n_val', '?')} validation subjects from "
                 f"`{Path(str(data.get('data_dir', '?'))).name}`; {len(data.get('test') or [])} held-out test "
                 f"subjects (listed in bundle.json); {len(data.get('skipped') or [])} skipped")
    return f"""# {model_id}

BrainLDM latent diffusion model for weakly supervised brain tumour detection in 4-sequence
MRI (t1n, t1c, t2w, t2f). The denoiser learned healthy and diseased brain tissue from
patch-level labels only; detection generates a healthy counterfactual and takes the
difference (thesis §3.4.3).

**Research use only. Not a medical device; not for diagnosis or treatment decisions.**

## Networks
- First stage: {autoencoder.kind.upper()} autoencoder, {autoencoder.spatial_dims}D, channels {list(autoencoder.channels)}, \
{autoencoder.num_res_blocks} residual block(s), {autoencoder.latent_channels} latent channels, compression {autoencoder.compression}.
- Denoiser: {denoiser.spatial_dims}D U-Net, channels {list(denoiser.channels)}, attention {list(denoiser.attention_levels)}, \
{denoiser.num_res_blocks} residual block(s), position embedding "{denoiser.position_embedding}", classes healthy / diseased \
+ null (classifier-free guidance).
- Training patch {list(patch_size)} image voxels; latent_scale {latent_scale:.6g}.

## Training
- Configuration: {training.get('config_name', '?')}
- First stage: {ae_line}.
- Denoiser: {dn_line}.
- Data: {data_line}.

## Limitations
- Trained on the data above only: other scanners, protocols, ages or pathologies may give
  false detections. Inputs must be skull-stripped and co-registered like the training data.
- The anomaly map marks anything that differs from the learned healthy appearance, not only
  tumour.
"""


def export_bundle(
    runs: str | Path | Sequence[str | Path],
    out: str | Path,
    model_id: str | None = None,
    model_card: str | None = None,
    checkpoint: str = "best",
    inference: dict[str, Any] | None = None,
    overwrite: bool = False,
    allow_unfinished: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Create a model bundle folder ``out`` from finished training run(s); returns its path.

    ``runs``: a denoiser run folder, an ``all`` run folder, or a list holding the denoiser
    run (and optionally its autoencoder run, which must match the denoiser's first stage).
    ``checkpoint``: ``best`` (lowest validation loss, default) or ``last``. ``extra``: further
    top-level bundle.json entries (e.g. ``{"default": True}`` for the model catalogue).
    """
    from brainldm.train.denoiser import FIRST_STAGE_FILE, INIT_FILE, FirstStageSource

    paths = [Path(runs).expanduser()] if isinstance(runs, (str, Path)) else [Path(r).expanduser() for r in runs]
    denoiser_run = _find_denoiser_run(paths)
    denoiser_status = _check_finished(denoiser_run, allow_unfinished)
    state = load_checkpoint(resolve_checkpoint(denoiser_run, checkpoint))
    first_stage_file = denoiser_run / FIRST_STAGE_FILE
    if not first_stage_file.is_file():
        raise BrainLDMError(f"{denoiser_run} lacks {FIRST_STAGE_FILE} (its first stage); it cannot be exported.")
    first_stage = FirstStageSource.read(first_stage_file)
    for path in paths:
        ae_run = path / "autoencoder" if (path / "autoencoder").is_dir() else path
        if ae_run == denoiser_run or not (ae_run / "checkpoints").is_dir():
            continue
        other = read_first_stage(ae_run)
        if other.fingerprint() != first_stage.fingerprint():
            log.warning("The autoencoder run %s differs from the first stage the denoiser was trained on; the "
                        "denoiser's own copy is exported.", ae_run)
    config = state["config"]
    denoiser_config = DenoiserConfig.from_dict(config["denoiser"]["model"])
    latent_scale = state.get("extra", {}).get("latent_scale")
    if latent_scale is None:
        raise BrainLDMError(f"The denoiser checkpoint of {denoiser_run} has no latent_scale; it cannot be exported.")
    autoencoder = build_autoencoder(first_stage.config)
    autoencoder.load_state_dict(first_stage.weights)
    denoiser = build_denoiser(denoiser_config)
    denoiser.load_state_dict(_stage_weights(state, "denoiser"))
    fingerprint = first_stage.fingerprint()
    data = dict(state.get("data", {}))
    training: dict[str, Any] = {
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_description(),
        "config_name": config.get("name"),
        "checkpoint": checkpoint,
        "first_stage_fingerprint": fingerprint,
        "denoiser": {
            "run": str(denoiser_run),
            "step": int(state["step"]),
            "seconds": float(state.get("seconds", 0.0)),
            "state": denoiser_status.get("state"),
            "best_val_loss": state["early_stopping"]["best"] if state["early_stopping"]["best_step"] >= 0 else None,
            "best_step": state["early_stopping"]["best_step"],
            "ema_decay": config["denoiser"].get("ema_decay"),
            "data": {k: data.get(k) for k in ("data_dir", "n_train", "n_val", "test", "skipped")},
            "config": config["denoiser"],
        },
        "autoencoder": {"origin": first_stage.origin},
    }
    if (denoiser_run / INIT_FILE).is_file():  # started from other weights (--init)
        training["denoiser"]["init"] = json.loads((denoiser_run / INIT_FILE).read_text(encoding="utf-8"))
    ae_run = _first_stage_run(first_stage.origin)
    ae_bundle = _first_stage_bundle(first_stage.origin)
    if ae_bundle is not None:  # the first stage came from a bundle: keep what it says about its training
        source = ModelBundle.read_description(ae_bundle).get("training", {})
        training["autoencoder"].update({k: v for k, v in source.get("autoencoder", {}).items() if k != "origin"})
        if source.get("machine"):  # where that bundle was exported, unless it says where its first stage was trained
            training["autoencoder"].setdefault("machine", source["machine"])
    if ae_run is not None:
        try:
            ae_state = load_checkpoint(resolve_checkpoint(ae_run, checkpoint))
            training["autoencoder"].update({
                "step": int(ae_state["step"]),
                "seconds": float(ae_state.get("seconds", 0.0)),
                "best_val_loss": ae_state["early_stopping"]["best"]
                if ae_state["early_stopping"]["best_step"] >= 0 else None,
                "best_step": ae_state["early_stopping"]["best_step"],
                "config": ae_state["config"]["autoencoder"],
            })
        except BrainLDMError:
            pass
    patch_size = tuple(int(s) for s in config["denoiser"]["patch_size"])
    model_id = model_id or default_model_id(first_stage.config, denoiser_config, fingerprint)
    card = model_card or model_card_text(model_id, first_stage.config, denoiser_config, training, float(latent_scale),
                                         patch_size)
    bundle = ModelBundle(
        autoencoder=autoencoder,
        denoiser=denoiser,
        autoencoder_config=first_stage.config,
        denoiser_config=denoiser_config,
        preprocess_config=first_stage.preprocess,
        latent_scale=float(latent_scale),
        schedule_config=dict(config["denoiser"]["schedule"]),
        model_id=model_id,
        patch_size=patch_size,
        inference=dict(inference or {}),
        training=training,
        model_card=card,
        extra=dict(extra or {}),
    )
    return bundle.save(out, overwrite=overwrite)


def _first_stage_bundle(origin: str) -> Path | None:
    if origin.startswith("bundle "):
        path = Path(origin[len("bundle "):])
        if is_bundle(path):
            return path
    return None


def _first_stage_run(origin: str) -> Path | None:
    if origin.startswith("run "):
        path = Path(origin[4:])
        if path.is_dir():
            return path
    return None
