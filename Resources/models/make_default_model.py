#!/usr/bin/env python
"""Make the shipped default model from scratch, measure it, and write its model card.

Everything comes from this repository (no downloads): generated phantom subjects for training
(seed 0), for validation (seed 555) and for the held-out test (seed 777),
``brainldm train all --config default``, ``brainldm grid-search`` of the detection settings on
the validation phantoms (the best go into ``bundle.json``), then ``brainldm evaluate`` on the held-out phantoms and on the real subjects of ``../shared/data``
when present, and ``brainldm demo``. The measured numbers go into ``MODEL_CARD.md``; with
``--install`` the bundle is copied to ``Resources/models/<model id>/`` and marked as the default.

    python Resources/models/make_default_model.py --work default-model-work --install

Every step is skipped when its output already exists, so a killed run continues where it
stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_PHANTOMS = dict(n=40, seed=0, diameters=(5, 10, 15, 20, 30, 40), healthy_fraction=0.2)
TEST_PHANTOMS = dict(n=12, seed=777, diameters=(10, 20), healthy_fraction=0.0)
VALIDATION_PHANTOMS = dict(n=4, seed=555, diameters=(10, 20), healthy_fraction=0.0)  # choose C, never tested on
GRID = dict(encoder="edict", steps="50", guidance="3,5,10,15", mix="0.97", noise_level=0,  # options change it
            thresholds="", smoothing=0.0)


def run(command: list[str]) -> None:
    if command[0] == "brainldm":  # this interpreter's package, also where the script is not installed
        command = [sys.executable, "-m", "brainldm", *command[1:]]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def make_phantoms(folder: Path, spec: dict, workers: int = 1) -> None:
    from brainldm.data.phantom import make_phantom_dataset

    manifest = folder / "phantoms.json"
    if manifest.is_file() and len(json.loads(manifest.read_text())["subjects"]) == spec["n"]:
        print(f"phantoms already in {folder}", flush=True)
        return
    make_phantom_dataset(folder, **spec, workers=workers)


def train(work: Path, config: str, data: Path, overrides: list[str], stage: str = "all", run_name: str = "run") -> Path:
    """``brainldm train STAGE`` into ``work/run_name`` (resumed when it was started; skipped when its
    bundle exists); the exported bundle folder."""
    run_dir = work / run_name
    bundle = run_dir / "bundle"
    if (bundle / "bundle.json").is_file():
        print(f"trained bundle already in {bundle}", flush=True)
        return bundle
    command = ["brainldm", "train", stage, "--data", str(data), "--out", str(run_dir)]
    command += ["--resume"] if (run_dir / "config.yaml").is_file() else ["--config", config]
    for override in overrides:
        command += ["--set", override]
    run(command)
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"training ended without a bundle in {bundle}; see {run_dir / 'train.log'}")
    return bundle


def finetune(work: Path, preset: str, data: Path, start: Path) -> Path:
    """Fine-tune the denoiser of the ``start`` bundle with ``preset`` (its first stage kept);
    export the result to ``<work>/finetune/bundle``."""
    run_dir = work / "finetune"
    bundle = run_dir / "bundle"
    if (bundle / "bundle.json").is_file():
        print(f"fine-tuned bundle already in {bundle}", flush=True)
        return bundle
    command = ["brainldm", "train", "denoiser", "--data", str(data), "--out", str(run_dir),
               "--init", str(start), "--autoencoder", str(start)]
    command += ["--resume"] if (run_dir / "config.yaml").is_file() else ["--config", preset]
    run(command)
    start_id = json.loads((start / "bundle.json").read_text())["model_id"]
    run(["brainldm", "export", str(run_dir), "--out", str(bundle), "--model-id", f"{start_id}-finetuned"])
    return bundle


def choose_settings(bundle: Path, data: Path, out: Path) -> dict:
    """Grid-search the detection settings on validation phantoms; store the best in bundle.json."""
    from brainldm.detect.settings import DetectionSettings

    if not (out / "grid.json").is_file():
        command = ["brainldm", "grid-search", "--data", str(data), "--split", "all", "--model", str(bundle),
                   "--encoder", GRID["encoder"], "--steps", GRID["steps"], "--guidance", GRID["guidance"], "--out", str(out)]
        command += ["--noise-level", str(GRID["noise_level"]), "--smoothing", str(GRID["smoothing"])]
        command += ["--thresholds", GRID["thresholds"]] if GRID["thresholds"] else []
        run(command + (["--mix", GRID["mix"]] if GRID["encoder"] == "edict" else []))
    grid = json.loads((out / "grid.json").read_text())
    best = grid["best"]
    manifest = json.loads((bundle / "bundle.json").read_text())
    # what the search held fixed (noise level, smoothing, brain mask, ...), then the best of what it varied
    fixed = {k: v for k, v in grid["settings"].items() if k in DetectionSettings.MODEL_DEFAULTS}
    manifest["inference"] = {**fixed, **best["settings"]}
    best = {**best, "settings": manifest["inference"]}
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))
    print(f"recommended detection settings (validation Dice {best['dice']['mean']:.3f}): {best['settings']}", flush=True)
    return best


def evaluate(bundle: Path, data: Path, out: Path) -> dict:
    if not (out / "results.json").is_file():
        run(["brainldm", "evaluate", "--data", str(data), "--model", str(bundle), "--out", str(out)])
    return json.loads((out / "results.json").read_text())


def demo(bundle: Path, out: Path) -> dict:
    if not (out / "report.json").is_file():
        run(["brainldm", "demo", "--model", str(bundle), "--out", str(out)])
    return json.loads((out / "report.json").read_text())


def install(bundle_dir: Path, model_id: str, what: str, finish=None) -> Path:
    """Copy a measured bundle to ``Resources/models/<model_id>/`` (never over an existing one);
    ``finish(target)`` then edits and checks the copy."""
    target = REPO / "Resources" / "models" / model_id
    if target.exists():
        raise SystemExit(f"{target} already exists; remove it first to install again")
    shutil.copytree(bundle_dir, target)
    if finish is not None:
        finish(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
    print(f"installed as {what}: {target} ({size:.1f} MB)", flush=True)
    return target


def training_time_line(training: dict, machine: str) -> str:
    """'- Training time: ...' for the card: each stage's minutes and machine (a fine-tuned denoiser
    names the run it started from)."""
    ae, dn = training.get("autoencoder", {}), training.get("denoiser", {})
    here = training.get("machine", machine)
    minutes = lambda record: float(record.get("seconds", 0)) / 60  # noqa: E731
    line = f"- Training time: first stage {minutes(ae):.1f} min on {ae.get('machine', here)}; denoiser "
    init = dn.get("init") or {}
    if init.get("denoiser"):
        first = init["denoiser"]
        line += (f"{minutes(first):.1f} min on {init.get('machine', '?')} ({first.get('step')} steps, windows "
                 f"{first.get('patch_size')}, batch {first.get('batch_size')}), then fine-tuned for "
                 f"{minutes(dn):.1f} min on {here} ({dn.get('step')} steps, windows {dn.get('config', {}).get('patch_size')}, "
                 f"batch {dn.get('config', {}).get('batch_size')})")
    else:
        line += f"{minutes(dn):.1f} min on {here} ({dn.get('step')} steps)"
    return line + f"; training phantoms: {TRAIN_PHANTOMS}.\n\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("default-model-work"), help="working folder")
    parser.add_argument("--config", default="default", help="training preset or YAML file")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with brats_like/ real subjects (optional)")
    parser.add_argument("--install", action="store_true",
                        help="copy the bundle to Resources/models/<model id>/ as the default model")
    parser.add_argument("--encoder", choices=["edict", "ddim"], default=GRID["encoder"],
                        help="inversion searched by the grid (default %(default)s)")
    parser.add_argument("--steps", default=GRID["steps"], help="N values of the grid (default %(default)s)")
    parser.add_argument("--guidance", default=GRID["guidance"], help="C values of the grid (default %(default)s)")
    parser.add_argument("--noise-level", type=int, default=GRID["noise_level"], metavar="L",
                        help="timestep the inversion reaches in the grid (default %(default)s = all 1000)")
    parser.add_argument("--thresholds", default=GRID["thresholds"], metavar="V1,V2,...",
                        help="fixed anomaly-map thresholds the grid also scores beside Otsu's (default none)")
    parser.add_argument("--smoothing", type=float, default=GRID["smoothing"], metavar="SIGMA",
                        help="Gaussian sigma (voxels) of the anomaly map before thresholding (default %(default)s)")
    parser.add_argument("--finetune", metavar="PRESET",
                        help="after training (or with the bundle a GPU run left in WORK/run/bundle), fine-tune "
                             "its denoiser with this preset on this machine, e.g. default-2d-finetune")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting (passed to brainldm train), e.g. device=cpu")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes generating phantoms (default %(default)s)")
    parser.add_argument("--train-count", type=int, default=TRAIN_PHANTOMS["n"], metavar="N",
                        help="training phantoms to generate (seed %d; default %%(default)s)" % TRAIN_PHANTOMS["seed"])
    parser.add_argument("--stop-after", choices=["train", "card"], default="card",
                        help="'train': stop once the bundle is trained (e.g. on a rented GPU); run again "
                             "without it to measure and write the card (finished steps are skipped)")
    args = parser.parse_args(argv)
    TRAIN_PHANTOMS["n"] = args.train_count
    GRID.update(encoder=args.encoder, steps=args.steps, guidance=args.guidance, noise_level=args.noise_level,
                thresholds=args.thresholds, smoothing=args.smoothing)

    from brainldm.evaluate.model_card import machine_description, measured_section
    from brainldm.nets.bundle import ModelBundle

    work = args.work.resolve()
    start = time.time()
    make_phantoms(work / "data" / "train", TRAIN_PHANTOMS, args.workers)
    bundle_dir = train(work, args.config, work / "data" / "train", args.set)
    if args.stop_after == "train":
        print(f"trained bundle in {bundle_dir} ({(time.time() - start) / 60:.1f} min); stopping as asked", flush=True)
        return 0
    first_bundle = bundle_dir
    if args.finetune:
        bundle_dir = finetune(work, args.finetune, work / "data" / "train", first_bundle)
    make_phantoms(work / "data" / "validation", VALIDATION_PHANTOMS, args.workers)
    make_phantoms(work / "data" / "test", TEST_PHANTOMS, args.workers)
    best = choose_settings(bundle_dir, work / "data" / "validation", work / "grid")
    phantoms = evaluate(bundle_dir, work / "data" / "test", work / "eval-phantoms")
    real_dir = args.shared_data / "brats_like"
    real = evaluate(bundle_dir, real_dir, work / "eval-real") if real_dir.is_dir() else None
    demo_report = demo(bundle_dir, work / "demo")

    bundle_json = json.loads((bundle_dir / "bundle.json").read_text())
    training = bundle_json.get("training", {})
    machine = machine_description()
    # the exported card's own part (a second run of this script replaces what the first added)
    card = (bundle_dir / "MODEL_CARD.md").read_text().split("## Limitations")[0].split("\n- Training time:")[0]
    card = card.rstrip("\n") + "\n\n"
    card += training_time_line(training, machine)
    given = [("WORK" if arg == str(args.work) else arg) for arg in (argv if argv is not None else sys.argv[1:])]
    card += f"- Made by: `python Resources/models/make_default_model.py {' '.join(given)}`.\n\n"
    card += (f"- Detection settings (bundle.json \"inference\"): {best['settings']}, chosen by "
             f"`brainldm grid-search` with {GRID['encoder'].upper()} over N = {GRID['steps']}, C = {GRID['guidance']}"
             + (f", omega = {GRID['mix']}" if GRID["encoder"] == "edict" else "")
             + (f", inversion to timestep L = {GRID['noise_level']}" if GRID["noise_level"] else "")
             + (f", anomaly map smoothed with sigma {GRID['smoothing']:g} voxels" if GRID["smoothing"] else "")
             + (f", Otsu's threshold and fixed thresholds {GRID['thresholds']}" if GRID["thresholds"] else "") + " on "
             f"{VALIDATION_PHANTOMS['n']} validation phantoms (seed {VALIDATION_PHANTOMS['seed']}).\n\n")
    card += measured_section(phantoms, real, demo_report, machine)
    card += """
## Limitations
- A demonstration model: trained for minutes to a few hours (above), on generated
  phantom subjects only (synthetic anatomy, tissue contrasts and tumours). It shows the method
  working end to end on a laptop; it is not a clinical model and its numbers on real MRI are
  those above.
- For real use, train on real multi-sequence MRI (e.g. BraTS 2023) with a GPU:
  `brainldm train all --config thesis-3d --data BraTS --out runs/brats --gpus N` (README,
  "Train a model"), then `brainldm evaluate` on held-out subjects.
- The anomaly map marks anything that differs from the learned healthy appearance, not only
  tumour. Inputs must be skull-stripped and co-registered like BraTS.
- Research use only. Not a medical device; not for diagnosis or treatment decisions.
"""
    (bundle_dir / "MODEL_CARD.md").write_text(card)
    print(f"model card written: {bundle_dir / 'MODEL_CARD.md'} ({(time.time() - start) / 60:.1f} min)", flush=True)

    if args.install:
        def mark_default(target: Path) -> None:
            data = json.loads((target / "bundle.json").read_text())
            data["default"] = True
            (target / "bundle.json").write_text(json.dumps(data, indent=2))
            ModelBundle.load(target)  # checks the files against bundle.json

        install(bundle_dir, bundle_json["model_id"], "the default model", mark_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
