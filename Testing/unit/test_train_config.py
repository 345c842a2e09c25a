"""Training configuration: presets, strict keys, overrides, validation."""

from __future__ import annotations

import math
import re
import pytest
import yaml

from brainldm.errors import SettingsError
from brainldm.train.config import TrainingConfig, list_presets, load_config
from brainldm.train.settings import apply_overrides, parse_override


def test_all_presets_load_and_validate():
    names = list_presets()
    assert {"thesis-3d", "thesis-2d", "cpu-small", "default"} <= set(names)
    for name in names:
        config = load_config(name)
        assert isinstance(config, TrainingConfig)
        assert config.name == name


def test_thesis_3d_matches_table_3_2():
    c = load_config("thesis-3d")
    ae, dn = c.autoencoder, c.denoiser
    assert ae.model.kind == "vq" and ae.model.latent_channels == 8 and ae.model.num_embeddings == 16384
    assert ae.model.compression == 2 and ae.model.num_res_blocks == 1 and ae.lr == pytest.approx(3e-5)
    assert ae.adversarial.discriminator.channels == 64 and ae.adversarial.discriminator.num_layers == 3
    assert dn.model.channels == (128, 128, 256, 512) and dn.model.num_res_blocks == 4
    assert dn.ema_decay == 0.9999 and dn.lr == pytest.approx(2e-5) and dn.batch_size == 6
    assert dn.label_dropout == 0.2 and dn.schedule.num_train_timesteps == 1000 and dn.schedule.kind == "linear"
    assert dn.model.position_embedding == "sin" and tuple(dn.patch_size) == (64, 64, 64)


def test_thesis_2d_matches_tables_b3_b7():
    c = load_config("thesis-2d")
    assert c.autoencoder.model.kind == "kl" and c.autoencoder.model.channels == (128, 256, 512)
    assert c.autoencoder.batch_size == 12 and c.autoencoder.model.num_res_blocks == 2
    assert c.denoiser.model.channels == (256, 512, 768, 1024) and c.denoiser.batch_size == 24
    assert c.denoiser.ema_decay == 0.9 and tuple(c.denoiser.patch_size) == (256, 256)


def test_cpu_small_is_kl_compression_4_with_coords():
    c = load_config("cpu-small")
    assert c.autoencoder.model.kind == "kl" and c.autoencoder.model.compression == 4
    assert tuple(c.autoencoder.patch_size) == (64, 64, 64)
    assert c.denoiser.model.position_embedding == "coords"
    assert c.denoiser.latent_patch_size(4) == (16, 16, 16)
    assert 0 < c.denoiser.ema_decay < 0.9999


def test_default_2d_c4_gpu_halves_compression_at_the_same_latent_pixels_per_batch():
    c4, c8 = load_config("default-2d-c4-gpu"), load_config("default-2d-gpu")
    assert c4.autoencoder.model.compression == 4 and c8.autoencoder.model.compression == 8
    assert c4.denoiser.model.channels == (8, 16, 32) and c4.device == "auto"
    pixels = lambda c, k: c.denoiser.batch_size * math.prod(c.denoiser.latent_patch_size(k))  # noqa: E731
    assert pixels(c4, 4) == pixels(c8, 8)


def test_default_extends_cpu_small():
    default, small = load_config("default"), load_config("cpu-small")
    assert default.name == "default"
    # Keys default.yaml does not list come from cpu-small.
    assert default.split == small.split and default.device == small.device
    assert default.denoiser.schedule == small.denoiser.schedule


@pytest.mark.parametrize(
    "override, key",
    [
        ("autoencoder.lrr=1", "autoencoder.lrr"),
        ("denoiser.model.chanels=[1]", "denoiser.model.chanels"),
        ("nonsense=3", "nonsense"),
        ("autoencoder.adversarial.wieght=1", "autoencoder.adversarial.wieght"),
    ],
)
def test_unknown_keys_are_named(override, key):
    with pytest.raises(SettingsError) as info:
        load_config("cpu-small", [override])
    assert f"'{key}'" in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"extends": "cpu-small", "denoiser": {"batchsize": 3}}))
    with pytest.raises(SettingsError, match="denoiser.batchsize"):
        load_config(path)


def test_yaml_file_extends_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: thesis-3d\nname: mine\nautoencoder:\n  batch_size: 4\n  lr: 1e-4\n")
    config = load_config(path, ["denoiser.max_steps=7", "seed=3"])
    assert config.name == "mine" and config.seed == 3
    assert config.autoencoder.batch_size == 4 and config.autoencoder.lr == pytest.approx(1e-4)  # "1e-4" string
    assert config.autoencoder.model.kind == "vq"  # inherited
    assert config.denoiser.max_steps == 7


def test_wrong_types_and_values_are_settings_errors():
    with pytest.raises(SettingsError, match="autoencoder.batch_size"):
        load_config("cpu-small", ["autoencoder.batch_size=many"])
    with pytest.raises(SettingsError, match="precision"):
        load_config("cpu-small", ["precision=fp8"])
    with pytest.raises(SettingsError, match="multiple of the compression"):
        load_config("cpu-small", ["autoencoder.patch_size=[62,64,64]"])
    with pytest.raises(SettingsError, match="latent_channels"):
        load_config("cpu-small", ["denoiser.model.latent_channels=8"])
    with pytest.raises(SettingsError, match="norm_num_groups"):
        load_config("cpu-small", ["denoiser.model.channels=[32,60,64]"])
    with pytest.raises(SettingsError, match="Unknown training preset"):
        load_config("no-such-preset")


@pytest.mark.parametrize(("preset", "override", "message"), [
    ("cpu-small", "denoiser.lr=0", "denoiser.lr must be positive"),
    ("cpu-small", "autoencoder.ema_decay=1", "autoencoder.ema_decay must be in"),
    ("cpu-small", "denoiser.stacked_sampler_mb=-1", "denoiser.stacked_sampler_mb must be >= 0"),
    ("cpu-small", "denoiser.val_patches=-1", "denoiser.val_patches must be at least 0"),
    ("tiny-sr", "sr.denoiser.lr=0", "sr.denoiser.lr must be positive"),
    ("tiny-sr", "sr.denoiser.log_every=0", "sr.denoiser.log_every must be at least 1"),
    ("tiny-sr", "sr.denoiser.val_patches=0", "sr.denoiser.val_patches must be at least 1"),
    ("tiny-sr", "sr.denoiser.pool_size=0", "sr.denoiser.pool_size must be at least 1"),
    ("tiny-sr", "sr.denoiser.patch_size=[64]", "two positive sizes"),
    ("tiny-sr", "sr.denoiser.stacked_sampler_mb=5", "Unknown setting 'sr.denoiser.stacked_sampler_mb'"),
])
def test_every_stage_checks_the_shared_loop_settings_under_its_own_name(preset, override, message):
    """The loop settings (LoopSettings) are checked the same way in the detection stages and the SR
    stage, each error naming the section; the stacked sampler is the detection stages' own."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_config(preset, [override]).validate()


def test_config_round_trips_through_yaml(tmp_path):
    config = load_config("thesis-3d", ["autoencoder.freeze=[encoder]"])
    path = tmp_path / "config.yaml"
    config.save(path)
    again = load_config(path)
    assert again == config
    assert again.autoencoder.freeze == ["encoder"]


def test_override_parsing():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=true") == (["x"], True)
    assert apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=5"]) == {"a": {"b": 5, "c": 2}}
    with pytest.raises(SettingsError):
        parse_override("no-equals-sign")
