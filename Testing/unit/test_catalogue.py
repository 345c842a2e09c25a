"""The model catalogue: shipped bundles, user bundles in a versioned catalogue.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from brainldm.errors import BrainLDMError, ModelBundleError
from brainldm.logic import catalogue


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("BRAINLDM_HOME", str(folder))
    return folder


def make_bundle(folder: Path, model_id: str, default: bool = False, weights: bool = True) -> Path:
    """A bundle folder as brainldm.nets.bundle writes it (weights are placeholder bytes with checksums)."""
    folder.mkdir(parents=True)
    files = {}
    if weights:
        for name in ("autoencoder.pt", "denoiser.pt"):
            data = f"{model_id}-{name}".encode() * 10
            (folder / name).write_bytes(data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    description = {"format": "brainldm-model-bundle", "format_version": 1, "model_id": model_id,
                   "autoencoder": {}, "denoiser": {}, "preprocess": {}, "latent_scale": 1.0, "schedule": {},
                   "files": files, "description": f"test model {model_id}"}
    if default:
        description["default"] = True
    (folder / "bundle.json").write_text(json.dumps(description))
    return folder


def test_shipped_models_and_default(tmp_path):
    shipped = tmp_path / "shipped"
    make_bundle(shipped / "a", "model-a")
    make_bundle(shipped / "b", "model-b", default=True)
    (shipped / "not-a-bundle").mkdir()
    entries = [e for e in catalogue.model_catalogue([shipped]) if shipped in e.path.parents]
    assert [e.model_id for e in entries] == ["model-a", "model-b"]
    assert all(e.source == "shipped" and e.available for e in entries)
    assert [e.default for e in entries] == [False, True]
    assert entries[1].description == "test model model-b"
    assert catalogue.resolve_model("model-a", extra_dirs=[shipped]) == (shipped / "a").resolve()
    assert catalogue.resolve_model(str(shipped / "b")) == (shipped / "b").resolve()
    with pytest.raises(ModelBundleError, match="Unknown model 'nope'"):
        catalogue.resolve_model("nope", extra_dirs=[shipped])


def test_first_shipped_model_is_default_when_none_says_so(tmp_path):
    shipped = tmp_path / "shipped"
    make_bundle(shipped / "only", "only-model")
    everything = catalogue.model_catalogue([shipped])
    defaults = [e for e in everything if e.default]
    assert len(defaults) == 1  # exactly one default, even though no bundle.json asks for it
    if all(shipped in e.path.parents for e in everything if e.source == "shipped"):  # no repository models
        assert defaults[0].model_id == "only-model"
        assert catalogue.resolve_model(None, extra_dirs=[shipped]) == (shipped / "only").resolve()


def test_register_copy_list_replace_unregister(tmp_path, home):
    run_bundle = make_bundle(tmp_path / "run" / "bundle", "my-model")
    entry = catalogue.register_model(run_bundle, title="Hospital FLAIR", copy=True)
    assert entry.path == (home / "models" / "my-model").resolve()
    assert (entry.path / "denoiser.pt").is_file()
    data = json.loads((home / "models" / "catalogue.json").read_text())
    assert data["format"] == catalogue.CATALOGUE_FORMAT and data["version"] == catalogue.CATALOGUE_VERSION
    assert [m["model_id"] for m in data["models"]] == ["my-model"]

    users = [e for e in catalogue.model_catalogue() if e.source == "user"]
    assert [(e.model_id, e.title, e.available) for e in users] == [("my-model", "Hospital FLAIR", True)]
    assert catalogue.resolve_model("my-model") == entry.path
    assert catalogue.model_choices()[0][0] == ""
    assert (str(entry.path), users[0].label) in catalogue.model_choices()

    catalogue.register_model(run_bundle, title="again", copy=False)  # same id: replaces the entry
    users = [e for e in catalogue.model_catalogue() if e.source == "user"]
    assert [(e.title, e.path) for e in users] == [("again", run_bundle.resolve())]
    assert catalogue.unregister_model("my-model") is True
    assert [e for e in catalogue.model_catalogue() if e.source == "user"] == []
    assert catalogue.unregister_model("my-model") is False


def test_register_verifies_checksums(tmp_path):
    bundle = make_bundle(tmp_path / "bundle", "broken")
    (bundle / "denoiser.pt").write_bytes(b"truncated")
    with pytest.raises(ModelBundleError, match="truncated or corrupt|checksum"):
        catalogue.register_model(bundle)
    with pytest.raises(ModelBundleError, match="bundle.json is missing"):
        catalogue.register_model(tmp_path)


def test_vanished_user_model_is_listed_as_unavailable(tmp_path):
    bundle = make_bundle(tmp_path / "gone", "gone-model")
    catalogue.register_model(bundle, verify=False)
    for path in bundle.iterdir():
        path.unlink()
    bundle.rmdir()
    entry = next(e for e in catalogue.model_catalogue() if e.model_id == "gone-model")
    assert not entry.available and "does not exist" in entry.problem and "unavailable" in entry.label
    with pytest.raises(ModelBundleError, match="unusable"):
        catalogue.resolve_model("gone-model")


def test_bad_catalogue_files_are_clear_errors(home):
    path = home / "models" / "catalogue.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(BrainLDMError, match="unreadable"):
        catalogue.model_catalogue()
    path.write_text(json.dumps({"format": catalogue.CATALOGUE_FORMAT, "version": 99, "models": []}))
    with pytest.raises(BrainLDMError, match="Update BrainLDM"):
        catalogue.model_catalogue()
