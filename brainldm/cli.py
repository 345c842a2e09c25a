"""The ``brainldm`` command line.

Each subcommand is a thin wrapper: it parses options into the settings dataclasses of
the core and calls one function of ``brainldm.logic`` / ``brainldm.detect`` /
``brainldm.train`` / ``brainldm.evaluate``. Heavy imports (torch, nibabel) happen inside
the command functions so ``brainldm --help`` stays instant.

User errors (:class:`brainldm.errors.BrainLDMError`) are printed as one clear message and
exit with status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from brainldm import __version__
from brainldm.errors import BrainLDMError

log = logging.getLogger("brainldm")


# --------------------------------------------------------------------------- helpers


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_subject_inputs(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input (a subject folder or four files)")
    group.add_argument("--subject", type=Path, help="folder holding one subject in BraTS 2023 or 2021 naming")
    for seq, title in (("t1n", "T1"), ("t1c", "T1 contrast-enhanced"), ("t2w", "T2"), ("t2f", "T2-FLAIR")):
        group.add_argument(f"--{seq}", type=Path, help=f"{title} NIfTI file")
    group.add_argument("--reference", type=Path, help="reference tumour segmentation (labels > 0 = tumour) for Dice")


def _add_detection_options(parser: argparse.ArgumentParser) -> None:
    from brainldm.detect.settings import DetectionSettings

    d = DetectionSettings()
    group = parser.add_argument_group("detection")
    group.add_argument("--model", type=Path, help="model bundle folder (default: the shipped default model)")
    # Left unset, these come from the model's recommended settings (bundle.json "inference"),
    # then the thesis defaults of DetectionSettings.
    group.add_argument("--encoder", choices=["edict", "ddim"], default=None,
                       help=f"inversion (default: the model's, else {d.encoder})")
    group.add_argument("--steps", type=int, default=None, help=f"N, diffusion steps (default: the model's, else {d.steps})")
    group.add_argument("--noise-level", type=int, default=None, metavar="L",
                       help="timestep the inversion reaches, 1-1000 (default: the model's, else all 1000); "
                            "e.g. 400-600 as in the 2D DDIM literature")
    group.add_argument("--guidance", type=_positive_float, default=None,
                       help=f"C, classifier-free guidance (default: the model's, else {d.guidance:g})")
    group.add_argument("--mix", type=float, default=None,
                       help=f"EDICT mixing weight omega (default: the model's, else {d.mix})")
    group.add_argument("--threshold", choices=["otsu", "graddiff", "fixed"], default=None,
                       help=f"(default: the model's, else {d.threshold}); fixed: --threshold-value")
    group.add_argument("--threshold-value", type=_positive_float, default=None, metavar="V",
                       help="anomaly-map value for --threshold fixed (default: the model's)")
    group.add_argument("--smoothing", type=float, default=None, metavar="SIGMA",
                       help="Gaussian sigma in voxels applied to the anomaly map before thresholding "
                            "(default: the model's, else 0 = none)")
    group.add_argument("--overlap", type=float, choices=[0.0, 0.25, 0.5], default=d.overlap)
    group.add_argument("--mode", choices=["auto", "whole", "windows", "slices"], default=d.mode)
    group.add_argument(
        "--mask-brain", action=argparse.BooleanOptionalAction, default=d.mask_brain,
        help="restrict the anomaly map to the brain mask (default on)",
    )
    group.add_argument("--seed", type=int, default=d.seed)
    group.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")


def _detection_settings(args: argparse.Namespace, bundle=None):
    """Detection settings: what the user gave, else the model's recommendation, else the defaults."""
    from brainldm.detect.settings import DetectionSettings

    return DetectionSettings.for_model(
        getattr(bundle, "inference", None),
        encoder=args.encoder, steps=args.steps, guidance=args.guidance, mix=args.mix,
        noise_level=args.noise_level, threshold=args.threshold, overlap=args.overlap, mode=args.mode,
        threshold_value=args.threshold_value, smoothing=args.smoothing, mask_brain=args.mask_brain,
        seed=args.seed, device=args.device,
    )


# --------------------------------------------------------------------------- commands


def cmd_phantom(args: argparse.Namespace) -> int:
    from brainldm.logic.phantoms import PhantomRequest, make_phantoms

    request = PhantomRequest(
        out_dir=args.out, seed=args.seed, count=args.count, lesion_diameter_mm=args.lesion_diameter,
        n_tumours=args.tumours, healthy=args.healthy, png=args.png, anatomy=args.anatomy, overwrite=args.overwrite,
    )
    for folder in make_phantoms(request):
        print(folder)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from brainldm.logic.demo import DemoRequest, run_demo

    run_demo(DemoRequest(out_dir=args.out, seed=args.seed, lesion_diameter_mm=args.lesion_diameter,
                         baseline_only=args.baseline, model=args.model, steps=args.steps))
    return 0


def _add_upscale_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("resolution-aware detection (thesis 4.4)")
    g.add_argument("--upscale", choices=["none", "interpolate", "sr"], default="none",
                   help="detect on the scan upscaled in-plane by bicubic interpolation or the SR model, then map "
                        "every output back to the input grid (default %(default)s)")
    g.add_argument("--upscale-factor", type=int, default=2, help="in-plane factor (default %(default)s)")
    g.add_argument("--sr-model", type=Path, help="super-resolution model folder (brainldm train sr) for --upscale sr")
    g.add_argument("--sr-steps", type=int, help="DDIM steps of the SR model (default: the SR model's)")


def _upscale_settings(args: argparse.Namespace):
    from brainldm.sr.upscale import UpscaleSettings
    from brainldm.errors import SettingsError

    if args.upscale == "sr" and args.sr_model is None:
        raise SettingsError("--upscale sr needs --sr-model FOLDER (train one with `brainldm train sr`)")
    return UpscaleSettings(method=args.upscale, factor=args.upscale_factor, sr_steps=args.sr_steps)


def cmd_segment(args: argparse.Namespace) -> int:
    from brainldm.logic.detection import SubjectInputs, run_segmentation
    from brainldm.logic.progress import progress_bar

    files = {seq: getattr(args, seq) for seq in ("t1n", "t1c", "t2w", "t2f") if getattr(args, seq) is not None}
    inputs = SubjectInputs(subject_dir=args.subject, files=files, reference=args.reference)
    _detection_settings(args)  # reject bad values before loading anything
    upscale = _upscale_settings(args)
    bar, update = progress_bar()
    try:
        report = run_segmentation(inputs, args.out, lambda bundle: _detection_settings(args, bundle), model=args.model,
                                  overwrite=args.overwrite, progress=update, upscale=upscale, sr_model=args.sr_model)
    finally:
        bar.close()
    line = f"{report['subject']}: {report['segmented_voxels']} voxels segmented in {report['total_seconds']:.1f} s"
    if report["metrics"]:
        line += f"; Dice {report['metrics']['dice']:.3f}, specificity {report['metrics']['specificity']:.4f}"
    print(line)
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print(f"outputs in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from brainldm.evaluate.evaluation import EvaluationRequest, evaluate
    from brainldm.logic.detection import load_model

    bundle = None if args.baselines_only else load_model(args.model, device=args.device)
    settings = _detection_settings(args, bundle)
    ablation = load_model(args.ablation_model, device=settings.device) if args.ablation_model else None
    upscale = _upscale_settings(args)
    sr_bundle = None
    if upscale.method == "sr":
        from brainldm.sr.bundle import SRBundle

        sr_bundle = SRBundle.load(args.sr_model)
    request = EvaluationRequest(data_dir=args.data, out_dir=args.out, split=args.split, settings=settings,
                                limit=args.limit, upscale=upscale, slab=args.slab)
    results = evaluate(request, bundle, ablation, sr_bundle=sr_bundle)
    print(f"{'method':<18} {'Dice (95% CI)':<24} specificity   [{len(results['subjects'])} subjects]")
    for group, by_method in results["summary"].items():
        print(f"-- {group}")
        for method, entry in by_method.items():
            d, s = entry.get("dice"), entry.get("specificity")
            if d and s:
                print(f"{method:<18} {d['mean']:.3f} ({d['ci95'][0]:.3f}-{d['ci95'][1]:.3f})      {s['mean']:.4f}")
    print(f"results in {args.out} (results.json, results.csv, results.png)")
    return 0


def _threshold_text(best: dict) -> str:
    return f"fixed {best['threshold_value']:g}" if best.get("threshold") == "fixed" else str(best.get("threshold"))


def cmd_grid_search(args: argparse.Namespace) -> int:
    from brainldm.detect.settings import DetectionSettings
    from brainldm.evaluate.grid_search import (
        GridSearchRequest,
        check_request,
        grid_search,
        parse_values,
    )
    from brainldm.logic.detection import load_model

    base = DetectionSettings(encoder=args.encoder, threshold=args.threshold, overlap=args.overlap, mode=args.mode,
                             mask_brain=args.mask_brain, seed=args.seed, device=args.device,
                             noise_level=args.noise_level, smoothing=args.smoothing)
    mix = args.mix if args.mix is not None else ("0.93,0.97" if args.encoder == "edict" else str(base.mix))
    request = GridSearchRequest(
        data_dir=args.data, out_dir=args.out, split=args.split, settings=base, limit=args.limit,
        steps=parse_values(args.steps, "--steps", int), guidance=parse_values(args.guidance, "--guidance"),
        mix=parse_values(mix, "--mix"), overwrite=args.overwrite,
        thresholds=parse_values(args.thresholds, "--thresholds") if args.thresholds else ())
    check_request(request)  # grid, --out and subjects before loading any model
    bundles = [load_model(model, device=args.device) for model in (args.model or [None])]
    results = grid_search(request, bundles)
    runs = sum(len(c["subjects"]) for c in results["combinations"])
    print(f"{len(results['combinations'])} combinations x {len(results['subjects'])} subjects: {runs} of "
          f"{len(results['combinations']) * len(results['subjects'])} runs in {results['elapsed_seconds']:.0f} s")
    for label, best in results["best_per_model"].items():
        d = best["dice"]
        print(f"best for {label} ({best['position_embedding']}): N={best['steps']} C={best['guidance']:g} "
              f"omega={best['mix']:g} threshold={_threshold_text(best)}  Dice {d['mean']:.3f} "
              f"({d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}), "
              f"n={best['n_subjects']}")
    best = results["best"]
    if best:
        print(f"best overall: {best['model']} N={best['steps']} C={best['guidance']:g} omega={best['mix']:g} "
              f"threshold={_threshold_text(best)} "
              f"(Dice {best['dice']['mean']:.3f})")
    print(f"results in {args.out} (grid.json, grid.csv, grid.png)")
    if results["interrupted"]:
        print("brainldm grid-search: interrupted; the finished combinations are kept", file=sys.stderr)
        return 130
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import json

    from brainldm.evaluate.benchmark import run_benchmark
    from brainldm.logic.detection import SubjectInputs, load_model

    settings = _detection_settings(args)
    if args.subject or args.t1n:
        files = {s: getattr(args, s) for s in ("t1n", "t1c", "t2w", "t2f") if getattr(args, s) is not None}
        subject = SubjectInputs(subject_dir=args.subject, files=files, reference=args.reference).load()
    else:
        from brainldm.data.phantom import PhantomSpec, make_phantom

        print(f"no input given: benchmarking on phantom seed {args.seed_phantom} (240x240x155, 20 mm tumour)")
        subject = make_phantom(PhantomSpec(seed=args.seed_phantom, subject_id=f"Bench-{args.seed_phantom}"))
    if args.untrained_preset:
        from brainldm.evaluate.benchmark import untrained_bundle

        bundle = untrained_bundle(args.untrained_preset)
        print(f"timing the architecture of preset {args.untrained_preset!r} with random weights "
              "(speed only: its segmentation is meaningless)")
    else:
        bundle = load_model(args.model, device=settings.device)
    results = run_benchmark(subject, bundle, settings)
    fast, ref = results["fast"], results["reference"]
    print(f"subject {results['subject']} {results['shape']}, {settings.encoder.upper()} N={settings.steps} "
          f"C={settings.guidance:g}, {results['machine']['threads']} threads, torch {results['machine']['torch']}")
    print(f"fast path  ({fast['model']}): {fast['seconds']:8.1f} s   peak memory {fast['peak_memory_mb']:.0f} MB"
          f"   stages {fast['timings_s']}")
    print(f"reference  (thesis configuration, extrapolated from {ref['brain_windows']} windows): "
          f"{ref['seconds']:8.1f} s")
    print(f"speed-up: {results['speedup']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"written {args.json}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from brainldm.train import control

    if args.background:
        run = control.launch_background(
            args.stage, args.data, args.out, config=args.config, overrides=args.set, resume=args.resume,
            init=args.init, autoencoder=args.autoencoder, gpus=args.gpus,
        )
        print(f"training started in the background (pid {run.pid}); log: {Path(args.out) / 'train.log'}")
        print(f"follow it with: brainldm runs status {args.out}    stop it with: brainldm runs stop {args.out}")
        return 0
    from brainldm.train.runner import main as runner_main

    argv = ["--stage", args.stage, "--run", str(args.out)]
    if args.data:
        argv += ["--data", str(args.data)]
    if args.config:
        argv += ["--config", str(args.config)]
    for item in args.set:
        argv += ["--set", item]
    if args.resume:
        argv.append("--resume")
    if args.init:
        argv += ["--init", str(args.init)]
    if args.autoencoder:
        argv += ["--autoencoder", str(args.autoencoder)]
    return runner_main(argv)


def cmd_runs(args: argparse.Namespace) -> int:
    from brainldm.train import control

    if args.action == "plot":
        import json

        from brainldm.train.curves import plot_curves, read_metrics, summarise_curves

        out = args.out or Path(args.run) / "curves.png"
        if out.exists() and not args.overwrite:
            raise BrainLDMError(f"{out} exists; pass --overwrite to replace it or choose --out")
        plot_curves(args.run, out)
        print(json.dumps(summarise_curves(read_metrics(args.run)), indent=2))
        print(f"curves: {out}")
        return 0
    if args.action == "stop":
        status = control.stop_run(args.run, wait=args.wait)
        print(f"{args.run}: {status.state} at step {status.step} ({status.message})")
        return 0
    status = control.runs_status(args.run)
    eta = f", ETA {status.eta_seconds / 60:.1f} min" if status.eta_seconds else ""
    losses = ", ".join(f"{k} {v:.4g}" for k, v in (status.losses or {}).items())
    print(f"{args.run}: {status.state} - {status.stage} step {status.step}/{status.total_steps} "
          f"(epoch {status.epoch:.1f}){eta}")
    if losses:
        print(f"  losses: {losses}")
    if status.message:
        print(f"  {status.message}")
    for skipped in status.skipped_subjects or []:
        print(f"  skipped subject: {skipped}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from brainldm.train.export import export_bundle

    path = export_bundle(args.runs, args.out, model_id=args.model_id, overwrite=args.overwrite)
    print(f"model bundle written to {path}")
    return 0


def cmd_reconstruction(args: argparse.Namespace) -> int:
    import json

    from tqdm.auto import tqdm

    from brainldm.data.io import find_subjects, load_subject
    from brainldm.evaluate.reconstruction import reconstruction_report
    from brainldm.logic.detection import load_model

    bundle = load_model(args.model)
    subjects = find_subjects(args.data)
    if not subjects:
        raise BrainLDMError(f"no complete subject in {args.data}")
    reports = [reconstruction_report(load_subject(files), bundle)
               for files in tqdm(subjects[: args.limit or None], desc="reconstruct", unit="subject")]
    print(f"{'subject':<28} {'sequence':<6} {'L1 mean':>8} {'L1 p95':>8} {'L1 p99':>8} {'L1 max':>8}")
    for report in reports:
        for seq, errors in report["errors"].items():
            l1 = errors["l1"]
            print(f"{report['subject']:<28} {seq:<6} {l1['mean']:8.4f} {l1['p95']:8.4f} {l1['p99']:8.4f} {l1['max']:8.4f}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
        print(f"written {args.json}")
    return 0


def cmd_lesion_resize(args: argparse.Namespace) -> int:
    from brainldm.synth.lesions import resize_lesion_file

    r = resize_lesion_file(args.mask, args.diameter, args.out, overwrite=args.overwrite, largest_only=args.largest)
    print(f"{r.source}: in-plane diameter {r.original_diameter_mm:g} -> {r.diameter_mm:g} mm "
          f"(target {r.target_mm:g}), {r.original_voxels} -> {r.voxels} voxels, centre {r.centre}, "
          f"{len(r.steps)} steps{', cropped' if r.cropped else ''}")
    print(f"written {r.out}")
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    from brainldm.sr.degrade_files import DegradeRequest, degrade_files

    request = DegradeRequest(source=args.input, out_dir=args.out, pipeline=args.pipeline, seed=args.seed,
                             scale=args.scale, volume=args.volume, png=args.png, overwrite=args.overwrite)
    for path in degrade_files(request):
        print(path)
    return 0


def _sr_settings(args: argparse.Namespace):
    """SR inference settings: what the user gave, else the model's recommendation (bundle.json)."""
    from brainldm.sr.bundle import SRBundle
    from brainldm.sr.config import SRInferenceSettings

    description = SRBundle.read_description(args.model)
    known = {k: v for k, v in (description.get("inference") or {}).items() if k in SRInferenceSettings.__dataclass_fields__}
    return SRInferenceSettings.from_dict(known).with_changes(
        steps=args.steps, strength=args.strength, overlap=args.overlap, patch_size=args.patch_size, seed=args.seed,
        device=args.device, batch_size=args.batch_size, output=args.output)


def _add_sr_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("super-resolution (default: the model's recommended settings)")
    group.add_argument("--model", type=Path, required=True, help="SR bundle (brainldm train sr ... -> RUN/bundle)")
    group.add_argument("--steps", type=int, help="N, DDIM steps per patch (the length of the DDIM subsequence)")
    group.add_argument("--strength", type=float,
                       help="start of sampling: 1 = pure noise, < 1 = the noised bicubic image (SDEdit)")
    group.add_argument("--overlap", type=float, help="patch overlap fraction, 0 <= overlap < 1 (e.g. 0.25)")
    group.add_argument("--patch-size", type=int, help="patch side in upsampled pixels (default: the training patch)")
    group.add_argument("--batch-size", type=int, help="patches per denoiser pass")
    group.add_argument("--output", choices=["decoded", "residual"],
                       help="decoded = D(z_sr); residual = bicubic + D(z_sr) - D(E(bicubic))")
    group.add_argument("--seed", type=int, help="seed of the start noise")
    group.add_argument("--device", help="torch device (cpu, cuda)")


def cmd_sr(args: argparse.Namespace) -> int:
    from brainldm.logic.progress import progress_bar
    from brainldm.sr.infer import SRRequest, super_resolve_files

    slices = None
    if args.slices:
        try:
            first, last = (int(v) for v in args.slices.split(":"))
        except ValueError:
            raise BrainLDMError(f"--slices must be FIRST:LAST (axial slice indices), got {args.slices!r}.") from None
        slices = (first, last)
    request = SRRequest(source=args.input, model=args.model, out=args.out, settings=_sr_settings(args),
                        overwrite=args.overwrite, slices=slices)
    bar, update = progress_bar()
    try:
        record = super_resolve_files(request, progress=lambda done, total: update("super-resolution", done / max(total, 1)))
    finally:
        bar.close()
    print(f"{record['subject']}: {record['input_shape']} -> {record['output_shape']} in {record['seconds']:.1f} s")
    for path in record["outputs"].values():
        print(path)
    return 0


def cmd_sr_check(args: argparse.Namespace) -> int:
    from brainldm.sr.check import SRCheckRequest, sr_check

    request = SRCheckRequest(data_dir=args.data, model=args.model, out_dir=args.out,
                             pipelines=tuple(p.strip() for p in args.pipelines.split(",") if p.strip()),
                             slices=args.slices, limit=args.limit, seed=args.check_seed, settings=_sr_settings(args),
                             timing=not args.no_timing, overwrite=args.overwrite)
    result = sr_check(request, progress=print)
    print(f"{'pipeline':<8} {'method':<8} {'PSNR dB':>14} {'SSIM':>14} {'PSNR brain':>11}   "
          f"[{len(result['subjects'])} subjects, {result['slices_per_subject']} slices each]")
    for pipeline, summary in result["summary"].items():
        for method in ("nearest", "bicubic", "sr"):
            m = summary[method]
            print(f"{pipeline:<8} {method:<8} {m['psnr']['mean']:>7.2f} ± {m['psnr']['std']:<4.2f} "
                  f"{m['ssim']['mean']:>7.4f} ± {m['ssim']['std']:<6.4f} {m['psnr_brain']['mean']:>9.2f}")
        print(f"{pipeline:<8} SR beats bicubic on {100 * summary['sr_beats_bicubic']['psnr']:.0f} % of slices (PSNR), "
              f"{100 * summary['sr_beats_bicubic']['ssim']:.0f} % (SSIM)")
    timing = result.get("timing_one_slice")
    if timing:
        print(f"time per {timing['input_shape'][1]}x{timing['input_shape'][2]} {timing['input_shape'][0]}-sequence "
              f"slice: {timing['seconds']:.1f} s ({timing['torch_threads']} torch thread(s))")
    print(f"outputs in {args.out}")
    return 0


def cmd_studio(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("trame_slicer") is None:
        raise BrainLDMError("BrainLDM Studio needs trame-slicer: pip install 'brainldm[studio]'")
    from brainldm.studio.app import serve

    serve(port=args.port, host=args.host, model=str(args.model) if args.model else None,
          open_browser=args.open_browser, synth_model=str(args.synth_model) if args.synth_model else None)
    return 0


def _synth_settings(args: argparse.Namespace, bundle=None):
    """Synthesis settings from the options; steps and guidance not given come from the model's
    recommendation (``bundle.json`` "inference"), else the defaults."""
    from brainldm.synth.generate import SynthSettings

    return SynthSettings.from_inference(getattr(bundle, "inference", None), steps=args.steps, guidance=args.guidance,
                                        mask_guidance=args.mask_guidance, mode=args.mode, margin_mm=args.margin,
                                        seed=args.seed, device=args.device)


def _synthesis_model(args: argparse.Namespace):
    from brainldm.logic.catalogue import resolve_synthesis_model
    from brainldm.synth.subjects import load_synthesis_model

    return load_synthesis_model(resolve_synthesis_model(args.model), device=args.device)


def cmd_synth(args: argparse.Namespace) -> int:
    from brainldm.logic.progress import progress_bar
    from brainldm.synth.subjects import SynthRequest, parse_centre, run_synth

    request = SynthRequest(reference=args.reference, out_dir=args.out, lesion_mask=args.lesion_mask,
                           diameter_mm=args.diameter, centre=parse_centre(args.center),
                           lesion_sources=list(args.lesion_source), subject_id=args.id,
                           settings=_synth_settings(args), overwrite=args.overwrite).validate()
    bundle = _synthesis_model(args)
    request = replace(request, settings=_synth_settings(args, bundle))
    bar, update = progress_bar()
    try:
        report = run_synth(request, bundle, progress=update)
    finally:
        bar.close()
    lesion = report["lesion"]
    print(f"{report['subject']}: lesion of {lesion['diameter_mm']:g} mm in-plane ({lesion['voxels']} voxels, "
          f"{len(lesion['axial_slices']['indices'])} slices) synthesised into {report['reference']} with "
          f"{report['model']['model_id']} in {report['seconds']:.1f} s")
    print(f"outputs in {args.out}")
    return 0


def cmd_synth_dataset(args: argparse.Namespace) -> int:
    from brainldm.logic.progress import progress_bar
    from brainldm.synth.subjects import SynthDatasetRequest, synth_dataset

    try:
        diameters = tuple(float(d) for d in str(args.diameters).split(",") if d.strip())
    except ValueError as error:
        raise BrainLDMError(f"--diameters must be numbers separated by commas, got {args.diameters!r}") from error
    request = SynthDatasetRequest(references=args.references, out_dir=args.out, count=args.count, slices=args.slices,
                                  diameters=diameters, lesion_sources=list(args.lesion_source),
                                  settings=_synth_settings(args), seed=args.seed, overwrite=args.overwrite).validate()
    bundle = _synthesis_model(args)
    request = replace(request, settings=_synth_settings(args, bundle))
    bar, update = progress_bar()
    try:
        manifest = synth_dataset(request, bundle, progress=update)
    finally:
        bar.close()
    ok = [s for s in manifest["samples"] if s.get("status") == "ok"]
    print(f"{len(ok)} of {len(manifest['samples'])} synthetic subjects written to {args.out} "
          f"(synth_dataset.json, synth_dataset.csv)")
    for sample in manifest["samples"]:
        if sample.get("status") != "ok":
            print(f"failed: {sample['subject']}: {sample.get('reason')}")
    return 0


def cmd_synth_check(args: argparse.Namespace) -> int:
    from brainldm.evaluate.synthesis_check import (
        SynthCheckRequest,
        check_request,
        run_synth_check,
    )
    from brainldm.logic.detection import load_model
    from brainldm.logic.progress import progress_bar

    request = SynthCheckRequest(references=args.references, out_dir=args.out, diameter_mm=args.diameter,
                                limit=args.limit, seed=args.seed, settings=_synth_settings(args),
                                lesion_sources=list(args.lesion_source), overwrite=args.overwrite)
    check_request(request)  # references and --out before loading any model
    bundle = _synthesis_model(args)
    request = replace(request, settings=_synth_settings(args, bundle))
    detector = load_model(args.detector_model, device=args.device) if args.detector_model else None
    bar, update = progress_bar()
    try:
        results = run_synth_check(request, bundle, detector, progress=update)
    finally:
        bar.close()
    summary = results["summary"]
    print(f"{summary['n']} cases ({summary['failed']} failed), {args.diameter:g} mm lesions:")
    for method, entry in summary["found"].items():
        if entry["n"]:
            print(f"  found ({method}): {entry['count']}/{entry['n']} = {entry['rate']:.0%} "
                  f"(95% CI {entry['ci95'][0]:.0%}-{entry['ci95'][1]:.0%})")
    for method, entry in summary["adds_none"].items():
        if entry["n"]:
            print(f"  healthy-masked adds none ({method}): {entry['count']}/{entry['n']}")
    accepted = summary["acceptance"]
    if accepted["found_rate"] is not None:
        print(f"acceptance: found in {accepted['found_rate']:.0%}, adds none in {accepted['adds_none_rate']:.0%} of "
              f"the cases (both must be >= {accepted['target_found_rate']:.0%}): "
              f"{'met' if accepted['met'] else 'not met'}")
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"results in {args.out} (check.json, check.csv, check.png)")
    return 0


def _add_synth_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthesis")
    group.add_argument("--model", type=Path, help="lesion synthesis bundle (brainldm train synthesis ... -> RUN/bundle)")
    group.add_argument("--lesion-source", type=Path, action="append", default=[], metavar="PATH",
                       help="label maps, or folders of subjects, whose real lesion shapes are resized (repeatable; "
                            "default: ../shared/data lesion masks when present, else a ball)")
    group.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's, else 50)")
    group.add_argument("--guidance", type=_positive_float, default=None,
                       help="classifier-free guidance toward 'diseased' in lesion slices (default: the model's, else 0)")
    group.add_argument("--mask-guidance", type=_positive_float, default=None,
                       help="guidance M toward the painted lesion, away from the same brain without it: a stronger "
                            "lesion contrast (default: the model's, else 0)")
    group.add_argument("--mode", choices=["inpaint", "full"], default="inpaint",
                       help="inpaint: generate only around the lesion, keep the rest of the slice (default); "
                            "full: generate whole slices from the masks (thesis)")
    group.add_argument("--margin", type=_positive_float, default=8.0,
                       help="inpaint: mm around the lesion that are synthesised (default %(default)s)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--overwrite", action="store_true", help="replace existing outputs")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainldm",
        description="Weakly supervised brain tumour detection with latent diffusion (BrainLDM).",
    )
    parser.add_argument("--version", action="version", version=f"brainldm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("phantom", help="generate realistic brain phantoms with exact tumour labels")
    p.add_argument("--out", type=Path, required=True, help="output folder (BraTS 2023 layout)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=1, help="number of subjects (seeds seed, seed+1, ...)")
    p.add_argument("--lesion-diameter", type=float, default=20.0,
                   help="in-plane tumour diameter in mm (5-50; default %(default)s)")
    p.add_argument("--tumours", type=int, default=1, help="number of tumours per subject")
    p.add_argument("--healthy", action="store_true", help="make healthy subjects (no tumour)")
    p.add_argument("--anatomy", choices=["mni152", "sri24"], default="mni152",
                   help="anatomy source: nilearn's MNI152 (always available) or ../shared SRI24 tissues")
    p.add_argument("--png", action="store_true", help="also write an overview picture per subject")
    p.add_argument("--overwrite", action="store_true", help="replace existing subject folders")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("demo", help="the main job: a phantom with a tumour, detected end to end on the CPU")
    p.add_argument("--out", type=Path, default=Path("brainldm-demo"), help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=20261125, help="phantom seed (never used in training)")
    p.add_argument("--lesion-diameter", type=float, default=20.0)
    p.add_argument("--model", type=Path, help="model bundle (default: the shipped default model)")
    p.add_argument("--steps", type=int, default=None, help="override N")
    p.add_argument("--baseline", action="store_true", help="run only the FLAIR intensity baseline")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="detect anomalies in one subject: counterfactuals, maps, segmentation")
    _add_subject_inputs(p)
    _add_detection_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    _add_upscale_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="Dice/specificity on a folder of subjects, with baselines")
    p.add_argument("--data", type=Path, required=True, help="folder of subjects with reference segmentations")
    p.add_argument("--out", type=Path, required=True, help="output folder for results.json/.csv/.png")
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    p.add_argument("--ablation-model", type=Path, help="second model to compare (e.g. uniform-sampler ablation)")
    p.add_argument("--limit", type=int, help="evaluate at most this many subjects")
    p.add_argument("--baselines-only", action="store_true", help="only the FLAIR baselines (no model needed)")
    p.add_argument("--slab", type=int, help="score only this many axial slices around each subject's largest lesion "
                                            "(affordable slice-wise super-resolution on a CPU)")
    _add_detection_options(p)
    _add_upscale_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("grid-search", help="mean Dice over a grid of N, C and omega per model (thesis Fig. 3.6)")
    p.add_argument("--data", type=Path, required=True, help="folder of subjects with reference segmentations")
    p.add_argument("--out", type=Path, required=True, help="output folder for grid.json/.csv/.png")
    p.add_argument("--model", type=Path, action="append",
                   help="model bundle folder or catalogue id; repeat to compare models (e.g. position embeddings)")
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="val")
    p.add_argument("--steps", default="25,50", help="N values, comma-separated (default %(default)s)")
    p.add_argument("--guidance", default="0,3,5,10", help="C values, comma-separated (default %(default)s)")
    p.add_argument("--mix", default=None, help="omega values, comma-separated (default 0.93,0.97; EDICT only)")
    p.add_argument("--noise-level", type=int, default=0, metavar="L",
                   help="timestep the inversion reaches for every combination (default 0 = all 1000)")
    p.add_argument("--encoder", choices=["edict", "ddim"], default="edict")
    p.add_argument("--threshold", choices=["otsu", "graddiff"], default="otsu")
    p.add_argument("--thresholds", default=None, metavar="V1,V2,...",
                   help="also score fixed anomaly-map thresholds (the same counterfactuals, thresholded "
                        "again), e.g. 0.02,0.03,0.04: the best can become the model's operating point")
    p.add_argument("--smoothing", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian sigma (voxels) of the anomaly map before thresholding (default 0)")
    p.add_argument("--overlap", type=float, choices=[0.0, 0.25, 0.5], default=0.25)
    p.add_argument("--mode", choices=["auto", "whole", "windows", "slices"], default="auto")
    p.add_argument("--mask-brain", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--limit", type=int, help="at most this many subjects (the thesis used 5)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier grid-search results in --out")
    p.set_defaults(func=cmd_grid_search)

    p = sub.add_parser("benchmark", help="time the fast path against the thesis's reference configuration")
    _add_subject_inputs(p)
    _add_detection_options(p)
    p.add_argument("--seed-phantom", type=int, default=20261125, help="phantom used when no input is given")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.add_argument("--untrained-preset", metavar="PRESET",
                   help="time a training preset's architecture with random weights instead of a trained model")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("train", help="train the first stage, the latent denoiser, or both")
    p.add_argument("stage", choices=["autoencoder", "denoiser", "all", "synthesis", "sr"],
                   help="synthesis: the lesion synthesis models (mask autoencoder + conditioned denoiser) and a "
                        "synthesis bundle in RUN/bundle (presets synth-2d, thesis-synth-2d, tiny-synth); "
                        "sr: the super-resolution model and an SR bundle in RUN/bundle (presets cpu-sr, thesis-sr, "
                        "tiny-sr)")
    p.add_argument("--config", default=None,
                   help="preset (cpu-small, default, thesis-3d, thesis-2d; synthesis: synth-2d, thesis-synth-2d, "
                        "thesis-synth-2d-g3wide, tiny-synth) or a YAML file; without it a new run uses the 'default' "
                        "preset and --resume uses the run's own config.yaml")
    p.add_argument("--data", type=Path, help="folder of training subjects (BraTS naming)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics.jsonl, status.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--resume", action="store_true", help="continue a stopped or killed run at the same step")
    p.add_argument("--init", type=Path, help="fine-tune from this model bundle / run / checkpoint")
    p.add_argument("--autoencoder", type=Path, help="denoiser and synthesis stages: the trained first stage "
                                                      "(run or bundle)")
    p.add_argument("--background", action="store_true", help="detach: keep training after the terminal closes")
    p.add_argument("--gpus", type=int, default=1, help="GPUs on this machine (DDP via torchrun when > 1)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="status of a training run, stop it (a checkpoint is saved first), "
                                    "or plot its training curves")
    p.add_argument("action", choices=["status", "stop", "plot"])
    p.add_argument("run", type=Path)
    p.add_argument("--wait", type=float, default=60.0, help="stop: seconds to wait for the checkpoint")
    p.add_argument("--out", type=Path, help="plot: PNG file (default RUN/curves.png)")
    p.add_argument("--overwrite", action="store_true", help="plot: replace an existing PNG")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("export", help="make a model bundle from finished training runs")
    p.add_argument("runs", type=Path, nargs="+", help="denoiser run (and its autoencoder run, if separate)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-id")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("reconstruction", help="first-stage reconstruction errors per sequence (thesis Tables A.1/A.2)")
    p.add_argument("--data", type=Path, required=True, help="folder of subjects")
    p.add_argument("--model", type=Path, help="model bundle (default: the shipped default model)")
    p.add_argument("--limit", type=int, help="at most this many subjects")
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(func=cmd_reconstruction)

    p = sub.add_parser("studio", help="BrainLDM Studio: detect, synthesise and train in the web browser")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default %(default)s; 0 = any free port)")
    p.add_argument("--host", default="localhost",
                   help="interface to listen on (default %(default)s; 0.0.0.0 to serve other machines)")
    p.add_argument("--model", type=Path, help="model bundle to preselect (default: the catalogue's default model)")
    p.add_argument("--synth-model", type=Path, metavar="SYNTH_BUNDLE",
                   help="lesion synthesis bundle of the Synthesize panel, checked at start (default: the shipped "
                        "synthesis model, if any)")
    p.add_argument("--open-browser", action="store_true", help="open the page in this machine's web browser")
    p.set_defaults(func=cmd_studio)

    p = sub.add_parser("lesion-resize", help="resize a lesion mask to an exact in-plane diameter (thesis 4.3.5)")
    p.add_argument("mask", type=Path, help="NIfTI lesion mask or label map (labels > 0 = lesion)")
    p.add_argument("--diameter", type=float, required=True, help="target in-plane diameter in mm")
    p.add_argument("--out", type=Path, required=True, help="output NIfTI file (same grid as MASK)")
    p.add_argument("--largest", action="store_true", help="keep only the largest connected lesion")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_lesion_resize)

    p = sub.add_parser("synth", help="synthesise a tumour of a painted shape or an exact diameter into a subject "
                                     "(thesis 4.3)")
    p.add_argument("--reference", type=Path, required=True, help="subject folder to synthesise into (BraTS naming)")
    lesion = p.add_mutually_exclusive_group(required=True)
    lesion.add_argument("--lesion-mask", type=Path, help="NIfTI lesion mask on the reference's grid (> 0 = lesion)")
    lesion.add_argument("--diameter", type=float, help="in-plane lesion diameter in mm (a real lesion shape resized)")
    p.add_argument("--center", help="--diameter: lesion centre as voxel indices X,Y,Z of the reference files "
                                    "(default: random, inside the brain)")
    p.add_argument("--out", type=Path, required=True, help="output subject folder (4 sequences + -seg, synth.json)")
    p.add_argument("--id", help="subject id of the output files (default <reference id>-synth)")
    _add_synth_options(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("synth-dataset", help="synthetic small-lesion dataset: N subjects x K lesions x diameters "
                                             "with exact masks (thesis 4.3.5)")
    p.add_argument("--references", type=Path, required=True, help="folder of reference subjects")
    p.add_argument("--count", type=int, default=10, help="N: reference subjects to use (default %(default)s)")
    p.add_argument("--slices", type=int, default=5,
                   help="K: lesions per subject and diameter, each in its own sample (default %(default)s)")
    p.add_argument("--diameters", default="5,10,20", help="in-plane diameters in mm (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one subject folder per sample)")
    _add_synth_options(p)
    p.set_defaults(func=cmd_synth_dataset)

    p = sub.add_parser("synth-check", help="issue 6 acceptance: synthesised lesions found inside their painted masks, "
                                           "healthy-masked syntheses adding none, generative metrics")
    p.add_argument("--references", type=Path, required=True, help="folder of held-out reference subjects")
    p.add_argument("--diameter", type=float, default=20.0, help="painted lesion diameter in mm (default %(default)s)")
    p.add_argument("--detector-model", type=Path,
                   help="detection model bundle: also run the diffusion detector (default: FLAIR baseline only)")
    p.add_argument("--limit", type=int, help="check at most this many references")
    p.add_argument("--out", type=Path, required=True, help="output folder (check.json/.csv/.png, synthetic subjects)")
    _add_synth_options(p)
    p.set_defaults(func=cmd_synth_check)

    p = sub.add_parser("degrade", help="simulate low-resolution MRI (thesis Algorithms 1-2) for super-resolution data")
    p.add_argument("input", type=Path, metavar="IN", help="a NIfTI file or a folder of subjects (BraTS naming)")
    p.add_argument("--pipeline", choices=["mri", "esrgan"], default="mri",
                   help="mri: Algorithm 2 (default); esrgan: Algorithm 1; parameters of Table B.5")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--scale", type=float, default=2.0, help="downscale factor of the written grid (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (subjects of a folder: seed, seed+1, ...)")
    p.add_argument("--volume", action="store_true", help="degrade along all three axes (default: axial slices in-plane)")
    p.add_argument("--png", action="store_true", help="also write a picture of every step on one axial slice")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("sr", help="2x super-resolution of a subject (or one of its sequence files) with an SR model "
                                  "(thesis 4.4)")
    p.add_argument("input", type=Path, metavar="IN",
                   help="a subject folder (BraTS naming) or one sequence file of a complete subject")
    p.add_argument("--out", type=Path, required=True, help="output folder (subject) or .nii.gz file (one file)")
    p.add_argument("--slices", metavar="FIRST:LAST", help="super-resolve only these axial slices (others bicubic)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_sr_options(p)
    p.set_defaults(func=cmd_sr)

    p = sub.add_parser("sr-check", help="issue 7 acceptance: PSNR/SSIM of SR vs bicubic vs nearest on held-out "
                                        "degraded slices (both pipelines), picture, time per slice")
    p.add_argument("--data", type=Path, required=True, help="folder of held-out subjects (e.g. phantoms --seed 777)")
    p.add_argument("--out", type=Path, required=True, help="output folder (sr_check.json/.csv/.png)")
    p.add_argument("--pipelines", default="mri,esrgan", help="degradation pipelines (default %(default)s)")
    p.add_argument("--slices", type=int, default=4, help="axial slices per subject (default %(default)s)")
    p.add_argument("--limit", type=int, help="at most this many subjects")
    p.add_argument("--check-seed", type=int, default=0, help="seed of the degradations (default %(default)s)")
    p.add_argument("--no-timing", action="store_true", help="skip timing one full-grid slice")
    p.add_argument("--overwrite", action="store_true", help="replace an existing check")
    _add_sr_options(p)
    p.set_defaults(func=cmd_sr_check)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except BrainLDMError as error:
        print(f"brainldm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brainldm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
