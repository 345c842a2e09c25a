"""``brainldm synth-check`` (issue 6 acceptance): painted lesions synthesised into held-out references,
found inside their masks, healthy-masked syntheses adding none, generative metrics.

Two small phantoms (the package's phantoms halved to 2 mm voxels: one with a tumour, one healthy), a
tiny untrained synthesis bundle and a tiny untrained 2D detection bundle: what is tested is the
wiring - the numbers in check.json are recomputed here from the files the check wrote, the
healthy-masked synthesis really conditions on an empty lesion channel - not synthesis quality.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from brainldm.cli import main
from brainldm.data.io import find_subjects, load_subject
from brainldm.errors import SettingsError
from brainldm.evaluate.synthesis_check import adds_numbers, dilate, found_numbers

STEPS = "2"


def _halve(subject):
    """A phantom at 2 mm: 2x2x2 block means of the images, every other voxel of the labels."""
    from brainldm.data.subject import Subject

    x, y, z = (s // 2 * 2 for s in subject.shape)
    images = subject.images[:, :x, :y, :z].reshape(4, x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(2, 4, 6))
    seg = subject.seg[:x:2, :y:2, :z:2] if subject.seg is not None else None
    affine = subject.affine.copy()
    affine[:3, :3] *= 2.0
    return Subject(subject.subject_id, np.rint(images).astype(np.float32), affine, seg=seg)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    from brainldm.data.phantom import (
        PhantomSpec,
        generate_phantom,
        write_phantom_subject,
    )

    folder = tmp_path_factory.mktemp("check") / "references"
    for spec in (PhantomSpec(seed=40, subject_id="Ph-0", lesion_diameter_mm=24.0),
                 PhantomSpec(seed=41, subject_id="Ph-1", tumours=[])):
        write_phantom_subject(_halve(generate_phantom(spec).subject), folder, png=False)
    return folder


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from brainldm.data.preprocess import PreprocessConfig
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
    from brainldm.nets.denoiser import build_denoiser
    from brainldm.train.toy import untrained_synthesis_bundle

    folder = tmp_path_factory.mktemp("bundles")
    synthesis = untrained_synthesis_bundle(folder / "synthesis", seed=3)
    torch.manual_seed(0)
    ae = AutoencoderConfig(kind="kl", spatial_dims=2, latent_channels=4, channels=(8, 16), num_res_blocks=1,
                           attention=False, norm_num_groups=8, full_resolution_level=False)
    dn = DenoiserConfig(spatial_dims=2, latent_channels=4, channels=(8, 16), attention_levels=(False, False),
                        num_res_blocks=1, norm_num_groups=8, num_head_channels=8, position_embedding="none")
    denoiser = build_denoiser(dn)
    with torch.no_grad():
        for p in denoiser.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.05)
    detector = ModelBundle(
        autoencoder=build_autoencoder(ae).eval(), denoiser=denoiser.eval(), autoencoder_config=ae,
        denoiser_config=dn, preprocess_config=PreprocessConfig(), latent_scale=1.0,
        schedule_config={"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        model_id="untrained-detector-2d", patch_size=(64, 64),
        inference={"steps": 2, "guidance": 0.0, "encoder": "ddim"},
    ).save(folder / "detector")
    return synthesis, detector


@pytest.fixture(scope="module")
def check(references, bundles, tmp_path_factory):
    synthesis, detector = bundles
    out = tmp_path_factory.mktemp("check") / "out"
    rc = main(["synth-check", "--references", str(references), "--model", str(synthesis), "--detector-model",
               str(detector), "--diameter", "20", "--steps", STEPS, "--seed", "5", "--lesion-source", str(references),
               "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "check.json").read_text())


def test_check_writes_its_files_and_a_row_per_reference(check):
    out, results = check
    assert (out / "check.png").stat().st_size > 10_000
    rows = list(csv.DictReader((out / "check.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["reference"] for r in rows] == ["Ph-0", "Ph-1"] == [c["reference"] for c in results["cases"]]
    assert results["methods"] == ["flair-percentile", "detector"] and results["finished"]
    assert results["detector"]["model_id"] == "untrained-detector-2d"
    summary = results["summary"]
    assert summary["n"] == 2 and summary["failed"] == 0
    for key in ("flair-percentile", "detector", "either"):
        entry = summary["found"][key]
        assert entry["n"] == 2 and 0 <= entry["ci95"][0] <= entry["rate"] <= entry["ci95"][1] <= 1
    assert summary["found"]["either"]["count"] == sum(c["found"] for c in results["cases"])
    assert summary["adds_none"]["all"]["count"] == sum(c["adds_none"] for c in results["cases"])
    for case in results["cases"]:
        assert case["found"] == (case["flair-percentile_found"] or case["detector_found"])
        assert case["adds_none"] == (case["flair-percentile_adds_none"] and case["detector_adds_none"])
        for name in ("lesion_outside_psnr", "lesion_outside_ssim", "healthy_inside_ms_ssim"):
            assert np.isfinite(case[name])
        assert float(rows[results["cases"].index(case)]["painted_voxels"]) == case["painted_voxels"]
    fad = summary["fad"]
    assert fad["lesion"]["real"] > 2 and fad["lesion"]["synthetic"] == sum(c["slices"] for c in results["cases"])
    assert fad["lesion"]["value"] >= 0 and fad["healthy"]["value"] >= 0


def test_painted_lesion_is_exact_inside_the_brain_and_away_from_the_tumour(check, references):
    from brainldm.data.lesion_geometry import inplane_diameter_mm
    from brainldm.data.preprocess import brain_mask

    out, results = check
    for case in results["cases"]:
        ref = load_subject(find_subjects(references / case["reference"])[0])
        painted = np.asarray(nib.load(out / case["painted_mask"]).dataobj) > 0
        assert inplane_diameter_mm(painted, ref.spacing) == 20.0 == case["diameter_mm"]
        assert brain_mask(ref.images)[painted].all()
        lesion = load_subject(find_subjects(out / case["lesion_subject"])[0])
        healthy = load_subject(find_subjects(out / case["healthy_subject"])[0])
        assert np.array_equal(lesion.seg > 0, (ref.seg > 0) | painted)  # the lesion's labels are added ...
        assert np.array_equal(healthy.seg, ref.seg)  # ... the healthy-masked synthesis adds none
        assert not np.array_equal(healthy.images, ref.images)  # but its region was synthesised
        if ref.seg.any():  # Ph-0 holds a tumour: the painted lesion keeps the clearance from it
            from scipy import ndimage as ndi

            distance = ndi.distance_transform_edt(ref.seg == 0, sampling=ref.spacing)
            assert distance[painted].min() > results["rules"]["clearance_mm"]


def test_numbers_equal_those_computed_from_the_written_subjects(check, references, bundles):
    from brainldm.data.preprocess import brain_mask, preprocess_subject
    from brainldm.detect.pipeline import detect
    from brainldm.detect.settings import DetectionSettings
    from brainldm.evaluate.baselines import flair_percentile
    from brainldm.evaluate.generative import psnr
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    out, results = check
    case = results["cases"][0]
    ref = load_subject(find_subjects(references / case["reference"])[0])
    lesion = load_subject(find_subjects(out / case["lesion_subject"])[0])
    healthy = load_subject(find_subjects(out / case["healthy_subject"])[0])
    painted = np.asarray(nib.load(out / case["painted_mask"]).dataobj) > 0
    assert case["painted_voxels"] == int(painted.sum())

    detector = ModelBundle.load(bundles[1])
    settings = DetectionSettings.for_model(detector.inference)
    region = dilate(painted, 3)
    assert case["region_voxels"] == int(region.sum())
    for method, detect_fn in {
        "flair-percentile": lambda s: flair_percentile(s.images, brain_mask(s.images), 98.0).mask,
        "detector": lambda s: detect(s, detector, settings).segmentation > 0,
    }.items():
        on_lesion, on_healthy, on_reference = detect_fn(lesion), detect_fn(healthy), detect_fn(ref)
        expected = {"mask_fraction": (on_lesion & painted).sum() / painted.sum(),
                    "detected_voxels": int(on_lesion.sum()),
                    "reference_mask_fraction": (on_reference & painted).sum() / painted.sum(),
                    "healthy_region_voxels": int((on_healthy & region).sum()),
                    "reference_region_voxels": int((on_reference & region).sum())}
        assert {k: case[f"{method}_{k}"] for k in expected} == pytest.approx(expected), method
        if method == "detector":  # its detections differ between the subjects: the numbers say which was measured
            assert on_lesion.sum() != on_healthy.sum() != on_reference.sum()
    # PSNR outside the lesion on its slices, both normalised like the reference
    prepared = preprocess_subject(ref, SynthesisBundle.load(bundles[0]).preprocess_config)
    synthetic = prepared.normaliser.normalise(prepared.crop.apply(lesion.images), prepared.mask)
    mask = prepared.crop.apply(painted, fill=False)
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    real = np.moveaxis(prepared.images[..., zs], -1, 0)
    fake = np.where(np.moveaxis(mask[..., zs], -1, 0)[:, None], real, np.moveaxis(synthetic[..., zs], -1, 0))
    assert case["lesion_outside_psnr"] == pytest.approx(psnr(real, fake), rel=1e-6)


def test_healthy_masked_synthesis_conditions_on_an_empty_lesion_channel(check, references, bundles):
    from dataclasses import replace

    from brainldm.data.preprocess import preprocess_subject
    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.synth.generate import SynthSettings
    from brainldm.synth.subjects import synthesise_subject

    out, results = check
    case = results["cases"][1]
    bundle = SynthesisBundle.load(bundles[0])
    seen: list[torch.Tensor] = []
    encode = bundle.mask_autoencoder.encode
    bundle.mask_autoencoder.encode = lambda masks: (seen.append(masks.clone()), encode(masks))[1]
    ref = load_subject(find_subjects(references / case["reference"])[0])
    painted = (np.asarray(nib.load(out / case["painted_mask"]).dataobj) > 0).astype(np.uint8)
    prepared = preprocess_subject(ref, bundle.preprocess_config)
    settings = SynthSettings(steps=int(STEPS), seed=case["synthesis_seed"])
    healthy = synthesise_subject(ref, painted, bundle, replace(settings, healthy=True), prepared=prepared)
    healthy_masks = torch.cat(seen)
    seen.clear()
    lesion = synthesise_subject(ref, painted, bundle, settings, prepared=prepared)
    lesion_masks = torch.cat(seen)
    assert float(healthy_masks[:, 1].abs().sum()) == 0.0 and float(healthy_masks[:, 0].sum()) > 0
    assert float(lesion_masks[:, 1].sum()) == painted.sum()  # the lesion channel holds the painted lesion
    changed = healthy.subject.images != ref.images
    assert np.array_equal(changed.any(axis=0), (lesion.subject.images != ref.images).any(axis=0))  # one region
    assert not np.allclose(healthy.subject.images[:, painted > 0], lesion.subject.images[:, painted > 0])
    # the check wrote exactly this healthy-masked synthesis (same seed, int16 files as the reference)
    written = load_subject(find_subjects(out / case["healthy_subject"])[0])
    assert np.array_equal(written.images, np.rint(healthy.subject.images))


def test_found_and_adds_rules():
    painted = np.zeros((20, 20, 5), bool)
    painted[5:15, 5:15, 2] = True  # 100 voxels
    detection = np.zeros_like(painted)
    detection[5:15, 5:7, 2] = True  # 20 % of the mask, one component
    detection[0, 0, 0] = True  # a far speck does not count
    f = found_numbers(detection, painted, 0.2)
    assert f == {"mask_fraction": 0.2, "components": 1, "component_voxels": 20, "detected_voxels": 21, "found": True}
    detection[5:15, 6, 2] = False
    assert not found_numbers(detection, painted, 0.2)["found"]  # 10 %
    assert found_numbers(np.zeros_like(painted), painted)["components"] == 0
    region = dilate(painted, 3)
    assert region[2:18, 8, 2].all() and not region[1, 8, 2] and region[8, 8, [0, 4]].all()
    reference = np.zeros_like(painted)
    reference[4, 4:8, 2] = True
    healthy = reference.copy()
    healthy[6:8, 6:11, 2] = True  # 10 voxels added = 10 % of the mask: tolerated
    assert adds_numbers(healthy, reference, painted, region, 0.1) == {
        "healthy_region_voxels": 14, "reference_region_voxels": 4, "added_voxels": 10, "adds_none": True}
    healthy[9, 9, 2] = True
    assert not adds_numbers(healthy, reference, painted, region, 0.1)["adds_none"]
    with pytest.raises(SettingsError, match="empty"):
        found_numbers(detection, np.zeros_like(painted))


def test_synth_check_errors_are_clear(references, bundles, tmp_path, capsys):
    synthesis, detector = bundles
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["synth-check", "--model", str(synthesis), "--steps", "1"]
    assert main([*base, "--references", str(empty), "--out", str(tmp_path / "o1")]) == 2
    assert "No complete reference subject" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    assert main([*base, "--references", str(references), "--out", str(busy)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth-check", "--references", str(references), "--model", str(detector), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "is a detection model bundle, not a synthesis model" in capsys.readouterr().err
    assert main([*base, "--references", str(references), "--detector-model", str(synthesis), "--out",
                 str(tmp_path / "o3")]) == 2
    assert "lesion synthesis model bundle, not a detection model" in capsys.readouterr().err
    assert main([*base, "--references", str(references), "--diameter", "0", "--out", str(tmp_path / "o4")]) == 2
    assert "diameter" in capsys.readouterr().err
    assert main([*base, "--references", str(references), "--limit", "0", "--out", str(tmp_path / "o5")]) == 2
    assert "--limit" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
