"""Model bundles: save/load round trip and clear errors for corrupt or incompatible bundles."""

from __future__ import annotations

import json

import pytest
import torch

from brainldm.data.preprocess import PreprocessConfig
from brainldm.errors import ModelBundleError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.bundle import BUNDLE_FORMAT_VERSION, ModelBundle
from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser

AE = AutoencoderConfig(kind="kl", channels=(8, 8), norm_num_groups=8, latent_channels=4)
DN = DenoiserConfig(channels=(16, 16), attention_levels=(False, False), norm_num_groups=8, latent_channels=4)


def make_bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        autoencoder=build_autoencoder(AE),
        denoiser=build_denoiser(DN),
        autoencoder_config=AE,
        denoiser_config=DN,
        preprocess_config=PreprocessConfig(margin=2),
        latent_scale=1.7,
        schedule_config={"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        model_id="test-model",
        patch_size=(16, 16, 16),
        inference={"steps": 50},
        model_card="# test-model\n",
        extra={"default": True, "model_id": "cannot-replace"},
    )


@pytest.fixture()
def saved(tmp_path):
    return make_bundle().save(tmp_path / "bundle")


def test_round_trip(saved):
    original = make_bundle()
    loaded = ModelBundle.load(saved, device="cpu")
    assert loaded.model_id == "test-model"
    assert loaded.latent_scale == pytest.approx(1.7)
    assert loaded.preprocess_config == PreprocessConfig(margin=2)
    assert loaded.autoencoder_config == AE and loaded.denoiser_config == DN
    assert loaded.patch_size == (16, 16, 16) and loaded.latent_patch_size == (8, 8, 8)
    assert loaded.compression == 2 and loaded.inference == {"steps": 50}
    assert loaded.schedule.num_train_timesteps == 1000
    assert loaded.model_card.startswith("# test-model")
    assert loaded.extra == {"default": True}
    for a, b in ((original.autoencoder, loaded.autoencoder), (original.denoiser, loaded.denoiser)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    assert not loaded.denoiser.training and not any(p.requires_grad for p in loaded.denoiser.parameters())
    z = loaded.autoencoder.encode(torch.zeros(1, 4, 16, 16, 16))
    assert z.shape == (1, 4, 8, 8, 8)


def test_truncated_weights(saved):
    path = saved / "denoiser.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelBundleError, match="truncated"):
        ModelBundle.load(saved)
    # Even without the checksum check, torch.load's failure becomes a clear error.
    with pytest.raises(ModelBundleError, match="denoiser"):
        ModelBundle.load(saved, verify=False)


def test_corrupt_weights_same_size(saved):
    path = saved / "autoencoder.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="checksum"):
        ModelBundle.load(saved)


@pytest.mark.parametrize("version", [BUNDLE_FORMAT_VERSION + 1, 0, "one"])
def test_wrong_format_version(saved, version):
    path = saved / "bundle.json"
    description = json.loads(path.read_text())
    description["format_version"] = version
    path.write_text(json.dumps(description))
    with pytest.raises(ModelBundleError, match="format version"):
        ModelBundle.load(saved)


@pytest.mark.parametrize("name", ["bundle.json", "autoencoder.pt", "denoiser.pt"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(ModelBundleError, match="missing"):
        ModelBundle.load(saved)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelBundleError, match="does not exist"):
        ModelBundle.load(tmp_path / "nothing")


def test_invalid_json(saved):
    (saved / "bundle.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match="JSON"):
        ModelBundle.load(saved)


def test_weights_not_matching_config(saved):
    path = saved / "bundle.json"
    description = json.loads(path.read_text())
    description["denoiser"]["config"]["channels"] = [32, 32]
    path.write_text(json.dumps(description))
    with pytest.raises(ModelBundleError, match="do not fit"):
        ModelBundle.load(saved)


def test_unknown_config_key_from_newer_version(saved):
    path = saved / "bundle.json"
    description = json.loads(path.read_text())
    description["autoencoder"]["config"]["hyper_mode"] = True
    path.write_text(json.dumps(description))
    with pytest.raises(ModelBundleError, match="hyper_mode"):
        ModelBundle.load(saved)


def test_save_refuses_to_overwrite(saved):
    with pytest.raises(ModelBundleError, match="already exists"):
        make_bundle().save(saved)
    make_bundle().save(saved, overwrite=True)
    assert ModelBundle.load(saved).model_id == "test-model"


def test_every_bundle_kind_shares_the_common_entries_and_is_told_apart(tmp_path):
    """Detection, synthesis and SR bundles write the same shared bundle.json entries (BundleCommon),
    their own entries besides, read back to the same description, and ``bundle_format`` names each."""
    from brainldm.nets.bundle import BUNDLE_FORMAT, bundle_format
    from brainldm.nets.synthesis_bundle import SYNTHESIS_BUNDLE_FORMAT, SynthesisBundle, is_synthesis_bundle
    from brainldm.sr.bundle import SR_BUNDLE_FORMAT, SRBundle, is_sr_bundle
    from brainldm.train.toy import untrained_synthesis_bundle
    from test_sr import tiny_sr_bundle

    folders = {
        BUNDLE_FORMAT: (ModelBundle, make_bundle().save(tmp_path / "detect"), ()),
        SYNTHESIS_BUNDLE_FORMAT: (SynthesisBundle, untrained_synthesis_bundle(tmp_path / "synth"),
                                  ("kind", "mask_autoencoder", "conditioning", "mask_latent_scale")),
        SR_BUNDLE_FORMAT: (SRBundle, tiny_sr_bundle().save(tmp_path / "sr"), ("kind", "conditioning", "scale", "pipelines")),
    }
    common = {"format", "format_version", "model_id", "created", "autoencoder", "denoiser", "preprocess",
              "latent_scale", "schedule", "patch_size", "inference", "training"}
    for fmt, (cls, folder, own) in folders.items():
        stored = json.loads((folder / "bundle.json").read_text())
        assert stored["format"] == fmt and bundle_format(folder) == fmt
        assert common | set(own) <= set(stored), fmt
        loaded = cls.load(folder)
        described = json.loads(json.dumps(loaded.describe()))
        for entry in ("files", "created"):  # checksums are added on saving; "created" is the time of describing
            stored.pop(entry, None)
            described.pop(entry, None)
        assert described == stored, fmt
        assert loaded.schedule.num_train_timesteps == stored["schedule"]["num_train_timesteps"]
        assert not any(p.requires_grad for p in loaded.autoencoder.parameters())
        assert is_synthesis_bundle(folder) == (fmt == SYNTHESIS_BUNDLE_FORMAT)
        assert is_sr_bundle(folder) == (fmt == SR_BUNDLE_FORMAT)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": 3}'])
def test_bundle_format_of_unreadable_or_odd_json_is_none(tmp_path, text):
    from brainldm.nets.bundle import bundle_format

    (tmp_path / "bundle.json").write_text(text)
    assert bundle_format(tmp_path) is None
    assert bundle_format(tmp_path / "missing") is None
