"""Lesion-mask conditioned synthesis (issue 6, thesis §4.3): conditioning modules (G3/G3wide, G4),
the mask autoencoder, ``brainldm train synthesis`` on phantoms, synthesis bundles, ``brainldm synth``
and ``synth-dataset`` in the reference's grid with exact lesion diameters, and the error without a model.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from brainldm.cli import main
from brainldm.data.lesion_geometry import inplane_diameter_mm
from brainldm.errors import ModelBundleError, SettingsError
from brainldm.nets.conditioning import (
    ConditionedDenoiser,
    build_conditioned_denoiser,
    freeze,
)
from brainldm.nets.config import (
    ConditioningConfig,
    DenoiserConfig,
    thesis_mask_kl_2d,
    thesis_synthesis_2d,
)

TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 8, "num_head_channels": 8}


def tiny_model(mechanism: str, spatial_dims: int = 2, position: str = "none") -> ConditionedDenoiser:
    config = DenoiserConfig(spatial_dims=spatial_dims, position_embedding=position,
                            condition_channels=4 if mechanism == "concat" else 0, **TINY)
    return build_conditioned_denoiser(config, ConditioningConfig(mechanism=mechanism, embedding_channels=8),
                                      channels_last=False)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


# ----------------------------------------------------------------------------------------- configs


def test_thesis_configurations_match_table_b1_and_b4():
    assert thesis_synthesis_2d("G3").channels == (320, 640, 960, 1280)
    assert thesis_synthesis_2d("G3wide").channels == (256, 512, 1024, 2048)  # wider, same depth
    g4 = thesis_synthesis_2d("G4")
    assert g4.channels == (256, 512, 768, 1024) and g4.condition_channels == 0
    assert thesis_synthesis_2d("G3").condition_channels == 4 == thesis_synthesis_2d("G3wide").condition_channels
    for variant in ("G3", "G3wide", "G4"):
        c = thesis_synthesis_2d(variant)
        assert c.attention_levels == (False, True, True, True) and c.num_res_blocks == 2 and c.num_head_channels == 64
    mask = thesis_mask_kl_2d()
    assert mask.in_channels == 2 and mask.channels == (64, 128, 256) and mask.num_res_blocks == 1
    assert mask.latent_channels == 4 and mask.compression == 4
    with pytest.raises(SettingsError, match="G3, G3wide or G4"):
        thesis_synthesis_2d("G2")
    from brainldm.train.config import load_config

    g4_preset = load_config("thesis-synth-2d").synthesis
    assert g4_preset.conditioning.mechanism == "structural" and g4_preset.denoiser.batch_size == 50
    assert g4_preset.mask_autoencoder.batch_size == 40 and g4_preset.mask_autoencoder.lr == pytest.approx(1e-4)
    wide = load_config("thesis-synth-2d-g3wide").synthesis
    assert wide.conditioning.label == "G3wide" and wide.denoiser.model.channels == (256, 512, 1024, 2048)
    with pytest.raises(SettingsError, match="condition_channels must be 4"):
        load_config("synth-2d", ["synthesis.denoiser.model.condition_channels=0"])


# ----------------------------------------------------------------------------------------- G3 / G4


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_concat_g3_takes_the_mask_latent_as_extra_channels(spatial_dims):
    model = tiny_model("concat", spatial_dims, position="coords")
    randomise(model)
    assert model.denoiser.conv_in.conv.in_channels == 4 + 4 + spatial_dims  # latent + mask latent + coordinates
    z = torch.randn(2, 4, *([8] * spatial_dims))
    c1, c2 = torch.randn_like(z), torch.randn_like(z)
    t, labels = torch.tensor([10, 700]), torch.tensor([0, 1])
    with torch.no_grad():
        a, b = model(z, t, labels, condition=c1), model(z, t, labels, condition=c2)
    assert a.shape == z.shape
    assert (a - b).abs().max() > 1e-4  # the prediction follows the condition
    with pytest.raises(ValueError, match="condition of shape"):
        model(z, t, labels, condition=c1[:, :2])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_structural_g4_starts_as_the_frozen_denoiser_and_trains_only_its_encoder(spatial_dims):
    model = tiny_model("structural", spatial_dims)
    randomise(model.denoiser)  # a "pretrained" denoiser (MONAI zero-initialises its output layer)
    model.encoder.copy_denoiser(model.denoiser)
    freeze(model.denoiser)
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    z = torch.randn(2, 4, *([8] * spatial_dims))
    condition = torch.randn_like(z)
    t, labels = torch.tensor([5, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        down, mid = model.encoder(z, t, labels, condition)
    assert len(down) == 1 + 1 + 1 + 1 and all(float(r.abs().max()) == 0.0 for r in down) and float(mid.abs().max()) == 0
    out = model(z, t, labels, condition=condition)
    assert torch.equal(out, model.denoiser(z, t, labels))  # zero-initialised injections: unchanged at init
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    target = torch.randn_like(out)
    for step in range(2):  # ControlNet: step 1 opens the zero convolutions, step 2 the mask embedding
        optimiser.zero_grad()
        (model(z, t, labels, condition=condition) - target).pow(2).mean().backward()
        assert all(p.grad is None for p in model.denoiser.parameters())
        zero_convs = [p.grad for p in model.encoder.controlnet_down_blocks.parameters()]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in zero_convs)
        optimiser.step()
    with torch.no_grad():
        after = model(z, t, labels, condition=condition)
        other = model(z, t, labels, condition=torch.randn_like(z))
    assert not torch.equal(after, out) and not torch.equal(after, other)  # now the mask steers the frozen denoiser
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())


# ----------------------------------------------------------------------------------------- mask autoencoder


def test_mask_autoencoder_keeps_a_5mm_lesion_only_with_lesion_weighting():
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.config import AutoencoderConfig
    from brainldm.synth.lesions import conditioning_mask
    from brainldm.train.synthesis import lesion_weighted_l1

    yy, xx = np.mgrid[:48, :48]
    brain = (yy - 24) ** 2 / 20**2 + (xx - 24) ** 2 / 17**2 < 1

    def masks(rng, n, diameter=None):
        out = []
        for _ in range(n):
            d = diameter or rng.integers(3, 9)
            cy, cx = rng.integers(14, 34, 2)
            out.append(conditioning_mask(brain, (((yy - cy) ** 2 + (xx - cx) ** 2) <= (d / 2) ** 2) & brain))
        return torch.from_numpy(np.stack(out))

    kept, dice = {}, {}
    for weight in (10.0, 1.0):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        ae = build_autoencoder(AutoencoderConfig(kind="kl", spatial_dims=2, in_channels=2, channels=(16, 32),
                                                 full_resolution_level=False), channels_last=False)
        optimiser = torch.optim.AdamW(ae.parameters(), lr=3e-3)
        losses = []
        for _ in range(80):
            x = masks(rng, 8)
            out = ae(x)
            loss = lesion_weighted_l1(out.reconstruction, x, weight) + 1e-6 * out.regularisation_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
        ae.eval()
        with torch.no_grad():
            test = masks(np.random.default_rng(99), 16, diameter=5)
            lesion = ae.reconstruct(test)[:, 1] > 0.5
        truth = test[:, 1] > 0.5
        kept[weight] = int(sum(bool((lesion[i] & truth[i]).any()) for i in range(16)))
        dice[weight] = float(2 * (lesion & truth).sum() / (lesion.sum() + truth.sum()))
    assert kept[10.0] >= 14 and dice[10.0] > 0.4, (kept, dice)  # 5 mm lesions survive the weighted latent ...
    assert kept[1.0] < kept[10.0], kept  # ... and are mostly lost with the plain L1 of the thesis


# ----------------------------------------------------------------------------------------- training


LPS = np.array([[0, -1], [1, -1], [2, 1]])  # a nibabel orientation transform RAS -> LPS voxel order


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Two phantoms with tumours; Ph-1's files are in LPS voxel order (their axes differ from the RAS arrays)."""
    from brainldm.data.phantom import (
        PhantomSpec,
        generate_phantom,
        write_phantom_subject,
    )
    from brainldm.data.sequences import SEQUENCES

    folder = tmp_path_factory.mktemp("synth") / "data"
    for index, diameter in enumerate((20.0, 14.0)):
        subject = generate_phantom(PhantomSpec(seed=40 + index, subject_id=f"Ph-{index}",
                                               lesion_diameter_mm=diameter)).subject
        if index == 0:
            write_phantom_subject(subject, folder, png=False)
            continue
        (folder / "Ph-1").mkdir(parents=True)
        for name, volume in [*zip(SEQUENCES, subject.images), ("seg", subject.seg)]:
            image = nib.Nifti1Image(np.rint(volume).astype(np.int16), subject.affine).as_reoriented(LPS)
            nib.save(image, folder / "Ph-1" / f"Ph-1-{name}.nii.gz")
    return folder


STEPS = ["--set", "autoencoder.max_steps=2", "--set", "synthesis.mask_autoencoder.max_steps=2"]


@pytest.fixture(scope="module")
def synth_run(phantoms, tmp_path_factory):
    run = tmp_path_factory.mktemp("synth") / "run"
    rc = main(["train", "synthesis", "--config", "tiny-synth", "--data", str(phantoms), "--out", str(run), *STEPS,
               "--set", "synthesis.denoiser.max_steps=2"])
    assert rc == 0
    first = [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())]
    # --resume continues the stopped-short synthesis stage at its step; finished stages are not trained again
    rc = main(["train", "synthesis", "--data", str(phantoms), "--out", str(run), "--resume",
               "--set", "synthesis.denoiser.max_steps=4"])
    assert rc == 0
    return run, first


def test_train_synthesis_runs_every_stage_and_exports_a_bundle(synth_run):
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.train.control import runs_status

    run, first = synth_run
    for sub in ("autoencoder", "mask_autoencoder", "synthesis"):
        assert runs_status(run / sub).state == "finished", sub
    assert not (run / "denoiser").exists()  # G3 needs no frozen denoiser
    assert {r["stage"] for r in first} == {"autoencoder", "mask_autoencoder", "synthesis"}
    mask_val = [r for r in first if r["stage"] == "mask_autoencoder" and r["split"] == "val"][-1]
    assert {"val_lesion_dice", "val_lesions_kept", "val_weighted_l1"} <= set(mask_val)
    synthesis = [r for r in first if r["stage"] == "synthesis" and r["split"] == "train"]
    assert [r["step"] for r in synthesis] == [1, 2] and all(np.isfinite(r["mse"]) for r in synthesis)
    status = runs_status(run)
    assert status.state == "finished" and status.step == 4 and "bundle" in status.message  # resumed 2 -> 4
    description = SynthesisBundle.verify(run / "bundle")
    assert description["conditioning"]["mechanism"] == "concat" and description["training"]["synthesis"]["step"] == 4
    bundle = SynthesisBundle.load(run / "bundle")
    assert bundle.compression == 4 and bundle.mask_latent_scale > 0 and bundle.latent_scale > 0
    assert bundle.model.encoder is None and bundle.denoiser_config.condition_channels == 4
    with pytest.raises(ModelBundleError, match="synthesis model bundle, not a detection model"):
        ModelBundle.load(run / "bundle")
    weights = run / "bundle" / "denoiser.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelBundleError, match="truncated or corrupt"):
        SynthesisBundle.load(run / "bundle")
    bundle.save(run / "bundle", overwrite=True)  # repaired for the tests below


def test_train_synthesis_g4_trains_the_structural_encoder_beside_a_frozen_denoiser(synth_run, phantoms, tmp_path):
    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.train.synthesis import train_synthesis

    run, _ = synth_run
    result = train_synthesis(
        "tiny-synth", phantoms, tmp_path / "g4", autoencoder=run / "autoencoder", show_progress=False,
        overrides=["synthesis.conditioning.mechanism=structural", "synthesis.denoiser.model.condition_channels=0",
                   f"cache_dir={run / 'cache'}", "denoiser.max_steps=2", "synthesis.mask_autoencoder.max_steps=1",
                   "synthesis.denoiser.max_steps=2"])
    assert result.state == "finished" and result.bundle is not None
    assert not (tmp_path / "g4" / "autoencoder").exists()  # the given first stage was used
    bundle = SynthesisBundle.load(result.bundle)
    assert bundle.mechanism == "structural" and bundle.conditioning_config.label == "G4"
    frozen = torch.load(tmp_path / "g4" / "synthesis" / "backbone.pt", weights_only=True)["weights"]
    assert all(torch.equal(frozen[k], v) for k, v in bundle.model.denoiser.state_dict().items())


def test_train_synthesis_fine_tunes_a_synthesis_bundle(synth_run, phantoms, tmp_path):
    """--init with a synthesis bundle: its image first stage is used as it is (<run>/first_stage, no
    autoencoder trained), its mask autoencoder and denoiser are the start; an --init of another
    conditioning mechanism than the configuration's stops before the run folder is made."""
    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.train.synthesis import train_synthesis

    run, _ = synth_run
    tuned = train_synthesis("tiny-synth", phantoms, tmp_path / "tuned", init=run / "bundle", show_progress=False,
                            overrides=[f"cache_dir={run / 'cache'}", "synthesis.mask_autoencoder.max_steps=1",
                                       "synthesis.mask_autoencoder.lr=1e-12", "synthesis.denoiser.max_steps=1",
                                       "synthesis.denoiser.lr=1e-12"])
    assert tuned.state == "finished" and tuned.bundle is not None
    assert (tmp_path / "tuned" / "first_stage" / "autoencoder.pt").is_file()
    assert not (tmp_path / "tuned" / "autoencoder").exists()
    before, after = SynthesisBundle.load(run / "bundle"), SynthesisBundle.load(tuned.bundle)
    for network in ("autoencoder", "mask_autoencoder", "model"):
        started = getattr(after, network).state_dict()
        for name, weights in getattr(before, network).state_dict().items():
            assert torch.allclose(weights, started[name], atol=1e-8), f"{network}.{name}"

    with pytest.raises(SettingsError, match="is a concat model"):
        train_synthesis("tiny-synth", phantoms, tmp_path / "wrong", init=run / "bundle", show_progress=False,
                        overrides=["synthesis.conditioning.mechanism=structural",
                                   "synthesis.denoiser.model.condition_channels=0"])
    assert not (tmp_path / "wrong").exists()


# ----------------------------------------------------------------------------------------- synth


def test_synth_writes_the_lesion_in_the_reference_grid_with_the_exact_diameter(synth_run, phantoms, tmp_path):
    run, _ = synth_run
    reference = phantoms / "Ph-1"
    assert nib.aff2axcodes(nib.load(reference / "Ph-1-t1n.nii.gz").affine) == ("L", "P", "S")
    centre = (150, 110, 80)  # voxel indices of the LPS files
    out = tmp_path / "out"
    rc = main(["synth", "--reference", str(reference), "--diameter", "5", "--center", ",".join(map(str, centre)),
               "--model", str(run / "bundle"), "--out", str(out), "--steps", "3", "--lesion-source", str(phantoms)])
    assert rc == 0
    report = json.loads((out / "synth.json").read_text())
    ref = nib.load(reference / "Ph-1-t2f.nii.gz")
    for seq in ("t1n", "t1c", "t2w", "t2f", "seg"):
        image = nib.load(out / f"Ph-1-synth-{seq}.nii.gz")
        assert image.shape == ref.shape and np.array_equal(image.affine, ref.affine), seq
    seg = np.asarray(nib.load(out / "Ph-1-synth-seg.nii.gz").dataobj)
    reference_seg = np.asarray(nib.load(reference / "Ph-1-seg.nii.gz").dataobj)
    lesion = (seg > 0) & (reference_seg == 0)
    assert inplane_diameter_mm(lesion, (1.0, 1.0, 1.0)) == 5.0 and report["lesion"]["diameter_mm"] == 5.0
    box_centre = [(np.flatnonzero(lesion.any(axis=tuple(a for a in range(3) if a != axis))).mean()) for axis in range(3)]
    assert np.all(np.abs(np.array(box_centre) - centre) <= 1.0), box_centre
    flair = np.asarray(nib.load(out / "Ph-1-synth-t2f.nii.gz").dataobj)
    original = np.asarray(ref.dataobj)
    changed = flair != original
    assert changed[lesion].mean() > 0.5  # the lesion region was synthesised ...
    slices = report["lesion"]["axial_slices"]["indices"]
    assert slices == sorted(set(np.flatnonzero(lesion.any(axis=(0, 1))).tolist()))
    others = np.setdiff1d(np.arange(flair.shape[2]), slices)
    assert not changed[:, :, others].any()  # ... the other slices are the reference's, bit for bit
    assert flair.dtype == original.dtype


def test_synth_dataset_writes_exact_diameters_and_a_manifest(synth_run, phantoms, tmp_path):
    run, _ = synth_run
    out = tmp_path / "dataset"
    rc = main(["synth-dataset", "--references", str(phantoms), "--count", "1", "--slices", "1", "--diameters", "10",
               "--model", str(run / "bundle"), "--out", str(out), "--steps", "2", "--lesion-source", str(phantoms)])
    assert rc == 0
    manifest = json.loads((out / "synth_dataset.json").read_text())
    assert [s["subject"] for s in manifest["samples"]] == ["Ph-0-d10mm-0"]
    assert manifest["count"] == 1 and manifest["diameters_mm"] == [10.0] and manifest["slices"] == 1
    for sample in manifest["samples"]:
        assert sample["status"] == "ok" and sample["diameter_mm"] == sample["target_diameter_mm"]
        seg = np.asarray(nib.load(out / sample["subject"] / f"{sample['subject']}-seg.nii.gz").dataobj)
        original = np.asarray(nib.load(phantoms / "Ph-0" / "Ph-0-seg.nii.gz").dataobj)
        assert inplane_diameter_mm((seg > 0) & (original == 0)) == sample["target_diameter_mm"]
    assert (out / "synth_dataset.csv").read_text().count("\n") == 2


def test_mask_guidance_is_one_batched_call_away_from_the_healthy_mask(synth_run):
    """Mask guidance M: eps(lesion mask, diseased) + M (eps(lesion mask, diseased) - eps(empty lesion
    channel, healthy)), computed in one network call; M = 0 is plain conditional sampling."""
    from brainldm.data.sampling import DISEASED, HEALTHY
    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.synth.generate import SynthSettings, conditioned_noise, synthesise

    run, _ = synth_run
    bundle = SynthesisBundle.load(run / "bundle")
    model = bundle.model
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    g = torch.Generator().manual_seed(4)
    z = torch.randn((2, 4, 8, 8), generator=g)
    lesion_c, healthy_c = torch.randn((2, 4, 8, 8), generator=g), torch.randn((2, 4, 8, 8), generator=g)
    labels = torch.tensor([DISEASED, DISEASED])
    model.forward = counting
    try:
        guided = conditioned_noise(model, lesion_c, labels, 0.0, healthy_c, 3.0)(z, 500)
    finally:
        model.forward = original
    assert calls == [4]
    t = torch.full((2,), 500)
    with torch.no_grad():
        eps_lesion = model(z, t, labels, condition=lesion_c)
        eps_healthy = model(z, t, torch.full_like(labels, HEALTHY), condition=healthy_c)
    assert torch.allclose(guided, eps_lesion + 3.0 * (eps_lesion - eps_healthy), atol=1e-5)
    assert not torch.allclose(guided, eps_lesion, atol=1e-4)
    assert torch.allclose(conditioned_noise(model, lesion_c, labels)(z, 500), eps_lesion, atol=1e-6)
    with pytest.raises(ValueError, match="healthy condition"):
        conditioned_noise(model, lesion_c, labels, mask_guidance=1.0)

    # through synthesise: the synthesis changes with M, a healthy-masked synthesis ignores M
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (1, 4, 32, 32)).astype(np.float32)
    brain = np.zeros((1, 32, 32), bool)
    brain[:, 4:28, 4:28] = True
    lesion = np.zeros_like(brain)
    lesion[:, 12:18, 12:18] = True
    out = {m: synthesise(bundle, images, brain, lesion, SynthSettings(steps=3, mask_guidance=m)).images
           for m in (0.0, 4.0)}
    assert not np.allclose(out[0.0], out[4.0])
    healthy = {m: synthesise(bundle, images, brain, lesion, SynthSettings(steps=3, mask_guidance=m, healthy=True)).images
               for m in (0.0, 4.0)}
    assert np.array_equal(healthy[0.0], healthy[4.0])
    with pytest.raises(SettingsError, match="mask guidance"):
        SynthSettings(mask_guidance=-1.0).validate()


@pytest.fixture()
def no_shipped_synthesis_model(monkeypatch, tmp_path):
    """A BrainLDM whose model folders hold no synthesis model (an empty folder is searched)."""
    from brainldm.logic import catalogue

    empty = tmp_path / "no-models"
    empty.mkdir()
    monkeypatch.setattr(catalogue, "shipped_model_dirs", lambda extra_dirs=(): [empty])


def test_synth_without_a_model_uses_the_shipped_one_with_its_recommended_settings(phantoms, tmp_path):
    from brainldm.logic.catalogue import find_synthesis_model
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    shipped = find_synthesis_model()
    if shipped is None:
        pytest.skip("no synthesis model is shipped in Resources/models")
    inference = SynthesisBundle.read_description(shipped)["inference"]
    out = tmp_path / "o"
    assert main(["synth", "--reference", str(phantoms / "Ph-0"), "--diameter", "5", "--steps", "2", "--out",
                 str(out)]) == 0
    report = json.loads((out / "synth.json").read_text())
    assert report["model"]["model_id"] == SynthesisBundle.read_description(shipped)["model_id"]
    # steps given on the command line win; guidance and mask guidance are the model's
    assert report["settings"]["steps"] == 2
    assert report["settings"]["mask_guidance"] == float(inference.get("mask_guidance", 0.0))
    assert report["settings"]["guidance"] == float(inference.get("guidance", 0.0))
    assert main(["synth", "--reference", str(phantoms / "Ph-0"), "--diameter", "5", "--steps", "2",
                 "--mask-guidance", "0", "--out", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "synth.json").read_text())["settings"]["mask_guidance"] == 0.0


def test_synth_without_a_model_says_how_to_train_one(phantoms, tmp_path, capsys, no_shipped_synthesis_model):
    rc = main(["synth", "--reference", str(phantoms / "Ph-0"), "--diameter", "5", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "No lesion synthesis model is available" in err and "brainldm train synthesis" in err
    assert not (tmp_path / "o").exists()
    rc = main(["synth", "--reference", str(phantoms / "Ph-0"), "--diameter", "5", "--out", str(tmp_path / "o"),
               "--model", str(tmp_path / "missing")])
    assert rc == 2 and "brainldm train synthesis" in capsys.readouterr().err


def test_file_voxels_map_to_the_canonical_grid_like_nibabel(tmp_path):
    from nibabel.orientations import apply_orientation

    from brainldm.data.io import load_label_volume
    from brainldm.data.subject import Subject
    from brainldm.synth.subjects import canonical_to_file_voxel, file_voxel_to_canonical

    data = np.zeros((7, 9, 5), np.uint8)
    data[1, 7, 3] = 1
    affine = np.array([[0, 0, -1.0, 10], [-1.0, 0, 0, 5], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # permuted and flipped axes
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "m.nii.gz")
    volume = load_label_volume(tmp_path / "m.nii.gz")
    subject = Subject("s", np.zeros((4, *volume.data.shape), np.float32), volume.affine, source=volume.source)
    expected = tuple(int(v) for v in np.argwhere(apply_orientation(data, volume.source.to_canonical))[0])
    assert file_voxel_to_canonical((1, 7, 3), subject) == expected
    assert canonical_to_file_voxel(expected, subject) == (1, 7, 3)
