"""brainldm.logic.synth: phantom subjects into the scene, lesion centred on a picked point."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.data.sequences import SEQUENCES  # noqa: E402
from brainldm.errors import SettingsError  # noqa: E402
from brainldm.logic import mrml, synth  # noqa: E402


def _point_list(ras):
    import vtk

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion centre")
    node.AddControlPoint(vtk.vtkVector3d(*ras))
    return node


def test_phantom_with_lesion_at_the_point(headless):
    from brainldm.data.phantom import inplane_diameter_mm

    target = (-35.0, -15.0, 25.0)  # RAS mm, left hemisphere, above the ventricles
    points = _point_list(target)
    params = synth.SynthParameters(lesion_point=points, diameter_mm=20.0, seed=5)
    mrml.write_parameters(mrml.get_parameter_node("BrainLDMSynth"), params)
    params = mrml.read_parameters(mrml.get_parameter_node("BrainLDMSynth"), synth.SynthParameters)
    assert params.lesion_point.GetID() == points.GetID()

    nodes = synth.make_phantom_in_scene(params)
    assert set(nodes.volumes) == set(SEQUENCES)
    assert mrml.volume_shape(nodes.reference) == (240, 240, 155)
    lesion = mrml.labels_from_segmentation(nodes.segmentation, nodes.reference) > 0
    assert lesion.sum() > 500
    centre_ijk = np.argwhere(lesion).mean(axis=0)
    centre_ras = (mrml.ijk_to_ras(nodes.reference) @ np.array([*centre_ijk, 1.0]))[:3]
    assert np.linalg.norm(centre_ras - np.array(target)) < 8.0, centre_ras
    assert inplane_diameter_mm(lesion) == pytest.approx(20.0, abs=2.0)
    # the FLAIR is brighter inside the lesion than in the rest of the brain
    flair = mrml.volume_array(nodes.volumes["t2f"])
    brain = flair > np.percentile(flair[flair > 0], 5)
    assert flair[lesion].mean() > flair[brain & ~lesion].mean()


def test_point_outside_the_grid_and_bad_diameter(headless):
    with pytest.raises(SettingsError, match="outside the phantom grid"):
        synth.make_phantom_in_scene(synth.SynthParameters(lesion_point=_point_list((500.0, 0.0, 0.0))))
    with pytest.raises(SettingsError, match="out of range"):
        synth.make_phantom_in_scene(synth.SynthParameters(diameter_mm=80.0))
    assert headless.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


@pytest.fixture()
def no_shipped_synthesis_model(monkeypatch, tmp_path):
    """A BrainLDM whose model folders hold no synthesis model (an empty folder is searched)."""
    from brainldm.logic import catalogue

    empty = tmp_path / "no-models"
    empty.mkdir()
    monkeypatch.setattr(catalogue, "shipped_model_dirs", lambda extra_dirs=(): [empty])


def test_synthesis_is_reported_unavailable_without_a_model(no_shipped_synthesis_model):
    status = synth.synthesis_status()
    assert status.available is False and status.reason == "synthesis model not yet available"
    assert synth.check_synthesis_model() is None


def test_the_shipped_synthesis_model_is_available_with_its_recommended_settings():
    from brainldm.logic.catalogue import find_synthesis_model
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    folder = find_synthesis_model()
    if folder is None:
        pytest.skip("no synthesis model is shipped in Resources/models")
    status = synth.synthesis_status()
    inference = SynthesisBundle.read_description(folder)["inference"]
    assert status.available is True and folder.name in status.reason
    model = synth.check_synthesis_model()
    assert model.shipped and model.path == folder
    settings = model.settings(seed=4)
    assert (settings.steps, settings.guidance, settings.mask_guidance, settings.seed) == (
        int(inference["steps"]), float(inference["guidance"]), float(inference.get("mask_guidance", 0.0)), 4)
    # the Synth module's "Lesion strength" starts at the shipped model's recommendation
    assert synth.SynthParameters().mask_guidance == model.mask_guidance


def test_synthesis_status_with_a_bundle(tmp_path):
    from brainldm.train.toy import untrained_synthesis_bundle

    status = synth.synthesis_status(tmp_path / "missing")
    assert status.available is False and "brainldm train synthesis" in status.reason
    bundle = untrained_synthesis_bundle(tmp_path / "bundle")
    status = synth.synthesis_status(bundle)
    assert status.available is True and "untrained-synthesis-concat" in status.reason


def test_synthesize_in_scene_with_a_synthesis_bundle(headless, tmp_path, no_shipped_synthesis_model):
    from brainldm.data.phantom import PhantomSpec, make_phantom
    from brainldm.train.toy import untrained_synthesis_bundle

    subject = make_phantom(PhantomSpec(seed=7, subject_id="Ref", n_tumours=0))
    nodes = mrml.add_subject(subject)
    lesion = np.zeros(subject.shape, np.uint8)
    lesion[118:123, 100:105, 70:73] = 1  # a painted 5 mm lesion inside the brain
    painted = mrml.segmentation_from_labels(lesion, nodes.reference, "lesion")
    params = synth.SynthParameters(reference_volume=nodes.volumes["t2f"], lesion_segmentation=painted, seed=3)
    with pytest.raises(Exception, match="brainldm train synthesis"):
        synth.synthesize_in_scene(params)  # no model given and none shipped
    bundle = untrained_synthesis_bundle(tmp_path / "bundle")
    from brainldm.synth.generate import SynthSettings

    out = synth.synthesize_in_scene(params, model=bundle, settings=SynthSettings(steps=2, seed=3))
    assert set(out.volumes) == set(SEQUENCES) and out.volumes["t2f"].GetName().startswith("Ref-synth")
    labels = mrml.labels_from_segmentation(out.segmentation, out.reference) > 0
    assert np.array_equal(labels, lesion > 0)
    before, after = mrml.volume_array(nodes.volumes["t2f"]), mrml.volume_array(out.volumes["t2f"])
    changed = before != after
    assert changed[lesion > 0].any() and not changed[:, :, :60].any()  # only slices with the lesion change


@pytest.mark.slow
def test_synthesize_in_scene_with_the_shipped_model_paints_a_lesion_the_flair_baseline_finds(headless, tmp_path):
    """The Synth module's path with no model chosen: the shipped synthesis model with its recommended
    steps and mask guidance; the painted 20 mm lesion comes out brighter on FLAIR, where it was painted."""
    from brainldm.data.phantom import PhantomSpec, make_phantom
    from brainldm.logic.catalogue import find_synthesis_model
    from brainldm.data.preprocess import brain_mask
    from brainldm.nets.synthesis_bundle import SynthesisBundle

    shipped = find_synthesis_model()
    if shipped is None:
        pytest.skip("no synthesis model is shipped in Resources/models")
    subject = make_phantom(PhantomSpec(seed=7, subject_id="Ref", n_tumours=0))
    nodes = mrml.add_subject(subject)
    grid = np.indices(subject.shape)
    lesion = (sum((g - c) ** 2 for g, c in zip(grid, (135, 110, 80))) <= 9.5**2).astype(np.uint8)  # 20 mm ball
    assert brain_mask(subject.images)[lesion > 0].all()
    painted = mrml.segmentation_from_labels(lesion, nodes.reference, "lesion")
    params = synth.SynthParameters(reference_volume=nodes.volumes["t2f"], lesion_segmentation=painted, seed=3)
    out = synth.synthesize_in_scene(params, out_dir=tmp_path / "out")
    report = __import__("json").loads((tmp_path / "out" / "synth.json").read_text())
    inference = SynthesisBundle.read_description(shipped)["inference"]
    assert report["model"]["path"] == str(shipped)
    assert report["settings"]["mask_guidance"] == inference["mask_guidance"] and report["settings"]["steps"] == 50
    before, after = mrml.volume_array(nodes.volumes["t2f"]), mrml.volume_array(out.volumes["t2f"])
    inside = lesion > 0
    print(f"\nFLAIR in the painted lesion: {before[inside].mean():.0f} -> {after[inside].mean():.0f}")
    assert after[inside].mean() > before[inside].mean() * 1.05


def test_the_lesion_strength_of_the_parameters_is_the_mask_guidance_used(headless, tmp_path,
                                                                         no_shipped_synthesis_model):
    """The Synth module's "Lesion strength" (SynthParameters.mask_guidance) replaces the model's
    recommended mask guidance; the model's steps and guidance stay; a different strength gives a
    different synthesis, written to synth.json."""
    import json

    from brainldm.data.phantom import PhantomSpec, make_phantom
    from brainldm.train.toy import untrained_synthesis_bundle

    bundle = untrained_synthesis_bundle(tmp_path / "bundle")
    description = json.loads((bundle / "bundle.json").read_text())
    description["inference"] = {"steps": 3, "guidance": 0.0, "mask_guidance": 0.0}
    (bundle / "bundle.json").write_text(json.dumps(description))
    subject = make_phantom(PhantomSpec(seed=7, subject_id="Ref", n_tumours=0))
    nodes = mrml.add_subject(subject)
    lesion = np.zeros(subject.shape, np.uint8)
    lesion[118:123, 100:105, 70:73] = 1
    painted = mrml.segmentation_from_labels(lesion, nodes.reference, "lesion")
    flair = {}
    for strength in (0.0, 3.0):
        params = synth.SynthParameters(reference_volume=nodes.volumes["t2f"], lesion_segmentation=painted, seed=3,
                                       mask_guidance=strength)
        out = synth.synthesize_in_scene(params, model=bundle, out_dir=tmp_path / f"m{strength:g}")
        report = json.loads((tmp_path / f"m{strength:g}" / "synth.json").read_text())
        assert report["settings"]["mask_guidance"] == strength and report["settings"]["steps"] == 3
        flair[strength] = mrml.volume_array(out.volumes["t2f"])
    assert not np.array_equal(flair[0.0], flair[3.0])
