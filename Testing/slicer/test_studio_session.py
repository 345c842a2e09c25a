"""brainldm.studio without a browser: the session's calls into brainldm.logic on Slicer's real MRML
scene (phantoms, uploads, detection parameters and a real detection, the painted lesion and
synthesis, training inputs), the view layout and the command line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.data.sequences import SEQUENCES  # noqa: E402
from brainldm.errors import BrainLDMError, InputDataError, SettingsError  # noqa: E402
from brainldm.logic import mrml  # noqa: E402
from brainldm.studio.session import (  # noqa: E402
    LESION_SEGMENT,
    DetectControls,
    StudioSession,
    TrainControls,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLDM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def session(headless, tmp_path, home):
    studio = StudioSession(headless.scene, work_dir=tmp_path / "work")
    yield studio
    studio.close()


def _volume_count(scene) -> int:
    return scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()


def _subject_files(folder: Path, shape=(24, 28, 20)) -> dict[str, bytes]:
    from brainldm.train.toy import write_toy_dataset

    subject = write_toy_dataset(folder, count=1, shape=shape)[0]
    return {p.name: p.read_bytes() for p in subject.glob("*.nii.gz")}


def test_a_new_subject_replaces_the_previous_one(session, headless):
    first = session.make_phantom(diameter_mm=15, seed=2)
    assert session.subject_name == "Phantom-00002"
    assert mrml.volume_shape(first.reference) == (240, 240, 155)
    assert _volume_count(headless.scene) == 4 and first.segmentation is not None
    focus = session.focus_ras()
    lesion = mrml.labels_from_segmentation(first.segmentation, first.reference) > 0
    centre = (mrml.ijk_to_ras(first.reference) @ np.array([*np.argwhere(lesion).mean(axis=0), 1.0]))[:3]
    np.testing.assert_allclose(focus, centre, atol=1e-6)

    second = session.make_phantom(diameter_mm=20, seed=3)
    assert all(node.GetScene() is None for node in first.volumes.values())
    assert first.segmentation.GetScene() is None
    assert _volume_count(headless.scene) == 4 and session.subject is second


def test_uploaded_files_load_like_a_subject_folder(session, headless, tmp_path):
    files = _subject_files(tmp_path / "toy")
    nodes = session.load_files(files)
    assert set(nodes.volumes) == set(SEQUENCES) and nodes.segmentation is not None
    assert session.subject_name == "Toy-000-000"
    assert all(node.GetStorageNode() is not None for node in nodes.volumes.values())

    before = mrml.SceneSnapshot.take()
    with pytest.raises(InputDataError, match="No complete subject"):
        session.load_files({name: data for name, data in files.items() if "-t2w" not in name})
    with pytest.raises(InputDataError, match="Choose the subject's files"):
        session.load_files({})
    assert before.added_since() == set() and session.subject is nodes


def test_detection_parameters_are_the_segment_modules(session):
    with pytest.raises(InputDataError, match="Load a subject first"):
        session.detection_parameters(DetectControls())
    session.make_phantom(seed=4)
    params = session.detection_parameters(DetectControls(model="some-id", guidance=7.5, steps=120.0, mix=0.93,
                                                         encoder="ddim", threshold="graddiff", overlay_opacity=0.3))
    assert (params.model, params.guidance, params.steps, params.mix, params.encoder, params.threshold,
            params.overlay_opacity) == ("some-id", 7.5, 120, 0.93, "ddim", "graddiff", 0.3)
    assert params.volumes() == session.subject.volumes
    assert params.reference_segmentation is session.subject.segmentation
    from brainldm.logic.segment import SegmentParameters

    stored = mrml.read_parameters(mrml.get_parameter_node("BrainLDMSegment"), SegmentParameters)
    assert stored == params  # the scene keeps them, as in the Slicer module
    with pytest.raises(SettingsError, match="omega"):
        session.detection_parameters(DetectControls(mix=0.3))


def test_a_models_hidden_settings_reach_detection(session, tmp_path):
    """Settings without a control (noise level, fixed threshold, smoothing) come from the chosen
    model's recommendation; the visible ones are the panel's."""
    import json

    from brainldm.evaluate.benchmark import untrained_bundle

    folder = untrained_bundle("tiny").save(tmp_path / "tuned")
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["inference"] = {"encoder": "ddim", "noise_level": 300, "guidance": 2.0, "threshold": "fixed",
                             "threshold_value": 0.03, "smoothing": 2.0}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    assert session.recommended(str(folder))["threshold"] == "fixed"
    session.make_phantom(seed=4)
    params = session.detection_parameters(DetectControls(model=str(folder), guidance=3.0, encoder="ddim",
                                                         threshold="fixed"))
    settings = params.detection_settings()
    assert (settings.guidance, settings.noise_level, settings.threshold, settings.threshold_value,
            settings.smoothing) == (3.0, 300, "fixed", 0.03, 2.0)
    # a model without them: the thesis's defaults, and "fixed" without a value is a clear error
    plain = untrained_bundle("tiny").save(tmp_path / "plain")
    assert session.detection_parameters(DetectControls(model=str(plain))).detection_settings().noise_level == 0
    with pytest.raises(SettingsError, match="positive threshold value"):
        session.detection_parameters(DetectControls(model=str(plain), threshold="fixed"))


def test_model_choices_and_the_missing_model_message(headless, tmp_path, home):
    from brainldm.logic.catalogue import default_model

    bundle = tmp_path / "my-bundle"
    bundle.mkdir()
    studio = StudioSession(headless.scene, work_dir=tmp_path / "w", default_model=str(bundle))
    assert studio.model_choices()[0] == (str(bundle), "my-bundle (--model)")
    assert studio.initial_model() == str(bundle)
    assert studio.model_problem(str(bundle)) == ""  # a folder: the worker checks its contents
    if default_model() is None:
        assert "No default model is installed" in studio.model_problem("")
    assert "Unknown model" in studio.model_problem("no-such-model")


def test_painted_lesion_and_synthesis_status(session):
    with pytest.raises(InputDataError, match="Load a subject first"):
        session.lesion_segmentation()
    nodes = session.make_phantom(seed=6)
    lesion = session.lesion_segmentation()
    assert session.lesion_segmentation() is lesion  # one node, reused
    assert mrml.segment_ids(lesion) == [mrml.find_segment_id(lesion, LESION_SEGMENT)]
    assert session.lesion_voxels() == 0
    # what a paint stroke leaves: voxels of the segment on the FLAIR grid
    painted = np.zeros(mrml.volume_shape(nodes.volumes["t2f"]), np.uint8)
    painted[100:110, 120:126, 70:73] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.ascontiguousarray(painted.transpose(2, 1, 0)), lesion,
                                                     mrml.find_segment_id(lesion, LESION_SEGMENT), nodes.volumes["t2f"])
    assert session.lesion_voxels() == painted.sum()
    from brainldm.logic.synth import synthesis_status

    if not synthesis_status().available:
        assert session.synthesis_model() is None
        assert session.synthesis_problem() == "synthesis model not yet available"
        with pytest.raises(BrainLDMError, match="synthesis model not yet available"):
            session.synthesize(diameter_mm=20)
    session.clear_lesion()
    assert lesion.GetScene() is None and session.lesion_voxels() == 0


def _paint(lesion, reference, box) -> np.ndarray:
    """What a paint stroke leaves: the voxels of ``box`` in the lesion segment, on the FLAIR grid."""
    painted = np.zeros(mrml.volume_shape(reference), np.uint8)
    painted[box] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.ascontiguousarray(painted.transpose(2, 1, 0)), lesion,
                                                     mrml.find_segment_id(lesion, LESION_SEGMENT), reference)
    return painted


def test_the_synth_model_option_is_checked(tmp_path):
    """``--synth-model``: a missing folder, a detection bundle, a corrupt bundle.json and a damaged
    weight file are refused with what is wrong; a good bundle gives its id and recommended steps."""
    from brainldm.logic.synth import check_synthesis_model
    from brainldm.train.toy import untrained_synthesis_bundle

    with pytest.raises(BrainLDMError, match="does not exist: give the folder of a lesion synthesis bundle"):
        check_synthesis_model(tmp_path / "missing")
    bundle = untrained_synthesis_bundle(tmp_path / "bundle", seed=1)
    model = check_synthesis_model(bundle)
    assert (model.path, model.model_id, model.steps, model.shipped) == (bundle.resolve(),
                                                                        "untrained-synthesis-concat", 5, False)
    assert model.settings(seed=4).steps == 5 and model.settings(seed=4).seed == 4
    assert str(bundle) in model.label
    weights = bundle / "denoiser.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(BrainLDMError, match="denoiser.pt"):
        check_synthesis_model(bundle)
    (bundle / "bundle.json").write_text("{ not json")
    with pytest.raises(BrainLDMError, match="corrupt"):
        check_synthesis_model(bundle)
    from brainldm.evaluate.benchmark import untrained_bundle

    detection = untrained_bundle("tiny").save(tmp_path / "detection")
    with pytest.raises(BrainLDMError, match="is a detection model bundle, not a synthesis model"):
        check_synthesis_model(detection)


def test_synthesis_with_a_synthesis_bundle(headless, tmp_path, home):
    """The Synthesize button's path: the painted lesion through brainldm.logic.synth with the given
    bundle; the synthetic subject in the scene and its files on the reference grid."""
    import nibabel as nib

    from brainldm.logic.synth import check_synthesis_model
    from brainldm.train.toy import untrained_synthesis_bundle

    model = check_synthesis_model(untrained_synthesis_bundle(tmp_path / "bundle", seed=1))
    studio = StudioSession(headless.scene, work_dir=tmp_path / "work", synth_model=model)
    try:
        assert studio.synthesis_model() is model and studio.synthesis_problem() == ""
        nodes = studio.make_phantom(seed=6, healthy=True)
        with pytest.raises(InputDataError, match="Paint the lesion first"):
            studio.synthesize()
        painted = _paint(studio.lesion_segmentation(), nodes.volumes["t2f"], np.s_[110:118, 125:131, 70:72])
        assert studio.right_column("synthetic") == {}

        out = studio.synthesize(seed=2)
        assert studio.synthetic is out and out.lesion_voxels == painted.sum()
        assert studio.right_column("synthetic") == out.nodes.volumes
        assert out.folder.parent == tmp_path / "work" / "synthesis"
        assert "untrained-synthesis-concat" in out.summary and f"({painted.sum()} voxels)" in out.summary
        reference = nodes.volumes["t2f"]
        names = sorted(p.name for p in out.files)
        assert names == sorted(f"Phantom-00006-synth-{s}.nii.gz" for s in (*SEQUENCES, "seg"))
        for path in out.files:
            image = nib.load(str(path))
            assert image.shape == mrml.volume_shape(reference)
            np.testing.assert_allclose(image.affine, mrml.ijk_to_ras(reference), atol=1e-4)
        seg = np.asarray(nib.load(str(out.folder / "Phantom-00006-synth-seg.nii.gz")).dataobj)
        assert np.array_equal(seg > 0, painted > 0), "the synthetic subject's lesion is the painted one"
        flair = np.asarray(nib.load(str(out.folder / "Phantom-00006-synth-t2f.nii.gz")).dataobj)
        changed = np.abs(flair - mrml.volume_array(reference)) > 1e-3
        assert changed[painted > 0].mean() > 0.5
        assert not changed[:, :, :68].any() and not changed[:, :, 73:].any(), "only the painted slices change"
        np.testing.assert_allclose(mrml.volume_array(out.nodes.volumes["t2f"]), flair, atol=1e-4)
        assert (out.folder / "synth.json").is_file()

        import json

        assert json.loads((out.folder / "synth.json").read_text())["settings"]["mask_guidance"] == model.mask_guidance
        again = studio.synthesize(seed=3, mask_guidance=2.5)  # replaces the synthetic subject in the scene, new folder
        assert json.loads((again.folder / "synth.json").read_text())["settings"]["mask_guidance"] == 2.5
        assert again.summary.endswith("lesion strength 2.5.")
        stored = mrml.get_parameter_node("BrainLDMSynth", headless.scene)
        assert float(stored.GetParameter("mask_guidance")) == 2.5  # what the Synth module would show
        assert all(node.GetScene() is None for node in out.nodes.volumes.values())
        assert again.folder != out.folder and out.files
        studio.make_phantom(seed=7)
        assert studio.synthetic is None and all(n.GetScene() is None for n in again.nodes.volumes.values())
    finally:
        studio.close()


def test_training_inputs_and_stop_without_a_run(session, tmp_path):
    with pytest.raises(SettingsError, match="output folder"):
        session.start_training(TrainControls(data_folder=str(tmp_path)))
    with pytest.raises(InputDataError, match="does not exist"):
        session.start_training(TrainControls(data_folder=str(tmp_path / "nope"), output_folder=str(tmp_path / "r")))
    with pytest.raises(BrainLDMError, match="No training run to stop"):
        session.stop_training()
    assert session.training_progress() is None
    session.follow_run(str(tmp_path / "r"))
    assert session.training_progress() is None  # no status.json yet
    controls = TrainControls(data_folder=f" {tmp_path} ", output_folder="", preset="tiny", overrides="a=1")
    params = session.training_parameters(controls)
    assert params.data_folder == tmp_path and params.preset == "tiny" and params.override_list() == ["a=1"]


def test_real_detection_through_the_session(session, tmp_path):
    """The Detect button's path: worker process, polling, result nodes, overlay choice and opacity."""
    from brainldm.evaluate.benchmark import untrained_bundle

    model = untrained_bundle("tiny").save(tmp_path / "tiny")
    session.load_files(_subject_files(tmp_path / "toy", shape=(32, 32, 32)))
    before = mrml.SceneSnapshot.take()
    session.start_detection(DetectControls(model=str(model), steps=2, encoder="ddim", threshold="graddiff",
                                           device="cpu"))
    with pytest.raises(BrainLDMError, match="already running"):
        session.start_detection(DetectControls(model=str(model)))
    deadline = time.monotonic() + 300
    status = session.poll_detection()
    while not status.done:
        assert time.monotonic() < deadline, "detection took too long"
        time.sleep(0.2)
        status = session.poll_detection()
    assert status.state == "finished", status.message
    assert session.job is None and session.poll_detection() is None
    outputs = session.outputs
    assert set(outputs.counterfactuals) == set(SEQUENCES)
    assert session.overlay_node("anomaly") is outputs.anomaly_map
    assert session.overlay_node("graddiff") is outputs.graddiff_map is not None
    assert session.overlay_node("none") is None
    session.set_overlay_opacity(0.8)
    assert outputs.anomaly_map.GetDisplayNode().GetOpacity() == pytest.approx(0.8)
    assert outputs.anomaly_map.GetDisplayNode().GetApplyThreshold() == 1  # zero is transparent
    added = before.added_since()
    assert outputs.segmentation.GetID() in added
    session.clear_results()
    assert outputs.anomaly_map.GetScene() is None and session.outputs is None


def test_cancel_leaves_the_scene_unchanged(session, tmp_path):
    from brainldm.evaluate.benchmark import untrained_bundle

    model = untrained_bundle("tiny").save(tmp_path / "tiny")
    session.load_files(_subject_files(tmp_path / "toy"))
    before = mrml.SceneSnapshot.take()
    job = session.start_detection(DetectControls(model=str(model), steps=200, device="cpu"))
    session.cancel_detection()
    assert session.job is None and job.process.poll() is not None
    assert session.poll_detection() is None
    assert not job.work_dir.exists()
    assert before.added_since() <= {mrml.get_parameter_node("BrainLDMSegment").GetID()}


def test_view_layout():
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install 'brainldm[studio]')")
    from brainldm.studio import views

    layout = views.studio_layout()
    tags = [view.singleton_tag for view in layout.get_views(is_recursive=True)]
    assert len(tags) == len(set(tags)) == 2 + 2 * len(SEQUENCES)
    assert "main" not in tags  # a view's tag is also a trame template name; "main" is the page itself
    assert set(tags) == set(views.VIEW_TITLES)


def test_command_line_options():
    from brainldm.cli import build_parser

    args = build_parser().parse_args(["studio", "--port", "0", "--host", "0.0.0.0", "--model", "m"])
    assert (args.port, args.host, str(args.model), args.open_browser) == (0, "0.0.0.0", "m", False)
    assert args.synth_model is None
    assert args.func.__name__ == "cmd_studio"
    args = build_parser().parse_args(["studio", "--synth-model", "runs/synth/bundle"])
    assert str(args.synth_model) == "runs/synth/bundle"


def test_a_bad_synth_model_stops_the_studio_before_it_serves(tmp_path, capsys):
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install 'brainldm[studio]')")
    from brainldm.cli import main

    (tmp_path / "broken").mkdir()
    assert main(["studio", "--port", "0", "--synth-model", str(tmp_path / "broken")]) == 2
    error = capsys.readouterr().err
    assert f"--synth-model {tmp_path / 'broken'}: " in error and "bundle.json is missing" in error
    assert main(["studio", "--port", "0", "--synth-model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
