"""brainldm.logic.segment on Slicer's real MRML core: parameters, subject folders, the worker
process (progress, errors, cancellation) and the result nodes of a real detection."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.data.io import load_subject_from_paths  # noqa: E402
from brainldm.data.sequences import SEQUENCES  # noqa: E402
from brainldm.errors import InputDataError, SettingsError  # noqa: E402
from brainldm.logic import mrml, segment  # noqa: E402
from brainldm.logic import worker as worker_protocol  # noqa: E402

SHAPE = (24, 28, 20)


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def synthetic_brain(shape=SHAPE, seed=0):
    """Four sequences of an ellipsoidal 'brain' with a FLAIR-bright blob, and the blob's label map."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    centre = [s / 2 for s in shape]
    brain = sum(((g - c) / (0.42 * s)) ** 2 for g, c, s in zip((i, j, k), centre, shape)) <= 1
    tumour = (i - shape[0] * 0.6) ** 2 + (j - shape[1] * 0.45) ** 2 + (k - shape[2] * 0.5) ** 2 <= 9
    images = np.zeros((4, *shape), np.float32)
    for c in range(4):
        images[c] = brain * (100 + 25 * c + rng.normal(0, 4, shape))
    images[3][tumour] += 120
    return images, tumour.astype(np.int16)


def write_subject(folder: Path, affine: np.ndarray, subject_id="Syn-001", seed=0, with_seg=True) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images, seg = synthetic_brain(seed=seed)
    paths = {seq: _write(folder / f"{subject_id}-{seq}.nii.gz", images[c], affine) for c, seq in enumerate(SEQUENCES)}
    if with_seg:
        paths["seg"] = _write(folder / f"{subject_id}-seg.nii.gz", seg, affine)
    return paths


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLDM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ------------------------------------------------------------------------------ parameters


def test_parameters_round_trip_and_settings(headless, rng):
    volume = mrml.add_volume(rng.random((4, 4, 4)).astype(np.float32), np.eye(4), "v")
    node = mrml.get_parameter_node("BrainLDMSegment")
    params = segment.SegmentParameters(t1n=volume, t2f=volume, steps=120, guidance=7.5, encoder="ddim",
                                       threshold="graddiff", overlap=0.5, mask_brain=False, device="cpu")
    mrml.write_parameters(node, params)
    # The wrapper stores a slider's float ("120.0"): still read as int.
    node.SetParameter("steps", "120.0")
    back = mrml.read_parameters(node, segment.SegmentParameters)
    assert back == params

    settings = back.detection_settings()
    assert (settings.steps, settings.guidance, settings.encoder, settings.threshold, settings.overlap,
            settings.mask_brain, settings.device) == (120, 7.5, "ddim", "graddiff", 0.5, False, "cpu")
    assert segment.SegmentParameters().detection_settings().device == "auto"
    with pytest.raises(SettingsError, match="omega"):
        segment.SegmentParameters(mix=0.3).detection_settings()
    with pytest.raises(SettingsError, match="device"):
        segment.SegmentParameters(device="tpu").detection_settings()


# ------------------------------------------------------------------------------ inputs


def test_load_subject_folder_through_storage_nodes(headless, tmp_path, oblique_affine):
    paths = write_subject(tmp_path / "Syn-001", oblique_affine())
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    assert {s: n.GetName() for s, n in nodes.volumes.items()} == {s: f"Syn-001-{s}" for s in SEQUENCES}
    assert all(n.GetStorageNode() is not None for n in nodes.volumes.values())
    assert nodes.segmentation is not None
    from_files = load_subject_from_paths(*(paths[s] for s in SEQUENCES), seg=paths["seg"])
    from_nodes = mrml.subject_from_volume_nodes(nodes.volumes, seg=nodes.segmentation)
    np.testing.assert_allclose(from_nodes.images, from_files.images)
    np.testing.assert_array_equal(from_nodes.seg > 0, from_files.seg > 0)
    # the temporary label map is gone
    assert headless.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_subject_folder_errors_leave_the_scene_unchanged(headless, tmp_path, oblique_affine):
    with pytest.raises(InputDataError, match="does not exist"):
        segment.load_subject_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="No complete subject"):
        segment.load_subject_folder(tmp_path / "empty")
    write_subject(tmp_path / "two", oblique_affine(), "A")
    write_subject(tmp_path / "two", oblique_affine(), "B")
    with pytest.raises(InputDataError, match="holds 2 subjects"):
        segment.load_subject_folder(tmp_path / "two")
    bad = write_subject(tmp_path / "bad", oblique_affine(), with_seg=False)
    shifted = oblique_affine(origin=(0.0, 0.0, 50.0))
    _write(bad["t1n"].with_name("Syn-001-seg.nii.gz"), np.zeros(SHAPE, np.int16), shifted)
    before = mrml.SceneSnapshot.take()
    with pytest.raises(InputDataError, match="not in the grid"):
        segment.load_subject_folder(tmp_path / "bad")
    assert before.added_since() == set()


def test_inputs_are_written_in_the_node_grid(headless, tmp_path, oblique_affine, rng):
    affine = oblique_affine()
    volumes = {s: mrml.add_volume(rng.random(SHAPE).astype(np.float32) + i, affine, s)
               for i, s in enumerate(SEQUENCES)}
    files = segment.write_input_files(segment.SegmentParameters(**volumes), tmp_path / "in")
    for seq, path in files.items():
        image = nib.load(str(path))
        np.testing.assert_array_equal(np.asarray(image.dataobj), mrml.volume_array(volumes[seq]))
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    with pytest.raises(InputDataError, match="missing: t2w"):
        segment.write_input_files(segment.SegmentParameters(**{**volumes, "t2w": None}), tmp_path / "in2")


# ------------------------------------------------------------------------------ results into the scene


def _worker_outputs(out_dir: Path, input_paths: dict[str, Path]) -> np.ndarray:
    """Outputs in the worker's format, written by the worker's own writer from a known result."""
    from brainldm.detect.settings import DetectionResult, DetectionSettings
    from brainldm.logic.detection import write_detection_outputs

    subject = load_subject_from_paths(*(input_paths[s] for s in SEQUENCES))
    amap = np.zeros(subject.shape, np.float32)
    amap[5:9, 6:11, 4:8] = np.linspace(0.2, 1.0, 4 * 5 * 4).reshape(4, 5, 4)
    seg = (amap > 0.5).astype(np.uint8)
    result = DetectionResult(reconstruction=subject.images * 0.9, counterfactual=subject.images * 0.8,
                             anomaly_map=amap, segmentation=seg, brain_mask=subject.images[0] > 0, threshold=0.5,
                             graddiff_map=amap * 2, timings={"total": 1.5})
    write_detection_outputs(subject, result, out_dir, DetectionSettings(), {"model_id": "test"}, overwrite=True)
    return seg


def test_results_become_new_nodes_in_the_input_grid(headless, tmp_path, oblique_affine):
    headless.add_slice_views()
    write_subject(tmp_path / "Syn-001", oblique_affine(flips=(-1.0, 1.0, 1.0)))  # left-handed files
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    params = segment.SegmentParameters(**nodes.volumes, reference_segmentation=nodes.segmentation,
                                       overlay_opacity=0.35)
    inputs = segment.write_input_files(params, tmp_path / "job" / "inputs")
    seg_canonical_from_inputs = _worker_outputs(tmp_path / "job" / "outputs", inputs)
    user_node = mrml.add_volume(np.zeros((2, 2, 2), np.float32), np.eye(4), "Syn-001 anomaly map", unique=False)

    outputs = segment.add_detection_results(params, tmp_path / "job" / "outputs")

    reference = nodes.reference
    for node in [*outputs.counterfactuals.values(), outputs.anomaly_map, outputs.graddiff_map]:
        assert mrml.volume_shape(node) == mrml.volume_shape(reference)
        np.testing.assert_allclose(mrml.ijk_to_ras(node), mrml.ijk_to_ras(reference), atol=1e-9)
    np.testing.assert_allclose(mrml.volume_array(outputs.counterfactuals["t2f"]),
                               0.8 * mrml.volume_array(nodes.volumes["t2f"]), rtol=1e-5)
    # the user's node of the same name is untouched; ours got a new name
    assert user_node.GetName() == "Syn-001 anomaly map" and mrml.volume_shape(user_node) == (2, 2, 2)
    assert outputs.anomaly_map.GetName() != user_node.GetName()
    assert outputs.anomaly_map.GetName().startswith("Syn-001 anomaly map")
    # overlays: zero transparent, opacity, shown over FLAIR in every slice view
    display = outputs.anomaly_map.GetDisplayNode()
    assert display.GetApplyThreshold() == 1 and 0 < display.GetLowerThreshold() < 0.2
    assert display.GetOpacity() == pytest.approx(0.35)
    for composite in mrml.slice_composite_nodes():
        assert composite.GetForegroundVolumeID() == outputs.anomaly_map.GetID()
        assert composite.GetBackgroundVolumeID() == nodes.volumes["t2f"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.35)
    # segmentation: the worker's canonical mask, in the node grid, world positions preserved
    subject = mrml.subject_from_volume_nodes(nodes.volumes)
    segmentation = mrml.segment_array(outputs.segmentation, "tumour (BrainLDM)", reference)
    assert segmentation.sum() == seg_canonical_from_inputs.sum() > 0
    # The worker wrote a mask given in the canonical grid of the files it read; back in the scene it
    # lies on the same world positions (left-handed files: Slicer's node grid differs from the file's).
    file_subject = load_subject_from_paths(*(inputs[s] for s in SEQUENCES))
    np.testing.assert_allclose(file_subject.affine, subject.affine, atol=1e-4)
    np.testing.assert_array_equal(mrml.from_source_grid(segmentation, subject), seg_canonical_from_inputs)
    # metrics against the reference segmentation, computed in the same grid
    truth = mrml.labels_from_segmentation(nodes.segmentation, reference) > 0
    tp = np.logical_and(segmentation > 0, truth).sum()
    assert outputs.metrics["dice"] == pytest.approx(2 * tp / (segmentation.sum() + truth.sum()))
    assert 0.0 <= outputs.metrics["specificity"] <= 1.0
    assert "Dice" in outputs.summary
    mrml.set_overlay_opacity(0.9, outputs.overlays())
    assert display.GetOpacity() == pytest.approx(0.9)


def test_replace_previous_results_only_when_asked(headless, tmp_path, oblique_affine):
    paths = write_subject(tmp_path / "Syn-001", oblique_affine(), with_seg=False)
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    params = segment.SegmentParameters(**nodes.volumes, show_counterfactuals=False)
    _worker_outputs(tmp_path / "out", {s: paths[s] for s in SEQUENCES})
    first = segment.add_detection_results(params, tmp_path / "out")
    second = segment.add_detection_results(params, tmp_path / "out")
    assert first.anomaly_map.GetScene() is not None and second.anomaly_map.GetID() != first.anomaly_map.GetID()
    assert outputs_count(nodes.reference) == 6  # 2 runs x (anomaly, GradDiff, segmentation)
    params.replace_previous_results = True
    third = segment.add_detection_results(params, tmp_path / "out")
    assert first.anomaly_map.GetScene() is None and second.segmentation.GetScene() is None
    assert outputs_count(nodes.reference) == 3 and third.anomaly_map.GetScene() is not None
    assert all(v.GetScene() is not None for v in nodes.volumes.values())  # inputs never removed


def outputs_count(reference) -> int:
    return len(segment.previous_results(reference))


def test_bad_outputs_leave_the_scene_unchanged(headless, tmp_path, oblique_affine):
    paths = write_subject(tmp_path / "Syn-001", oblique_affine(), with_seg=False)
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    params = segment.SegmentParameters(**nodes.volumes)
    _worker_outputs(tmp_path / "out", {s: paths[s] for s in SEQUENCES})
    (tmp_path / "out" / "segmentation.nii.gz").unlink()
    before = mrml.SceneSnapshot.take()
    with pytest.raises(FileNotFoundError):
        segment.add_detection_results(params, tmp_path / "out")
    assert before.added_since() == set()


# ------------------------------------------------------------------------------ the worker process


def test_worker_reports_user_errors_as_json(headless, tmp_path, rng, home):
    volumes = {s: mrml.add_volume(rng.random(SHAPE).astype(np.float32), np.eye(4), s) for s in SEQUENCES}
    params = segment.SegmentParameters(**volumes, model=str(tmp_path / "no-such-model"))
    with pytest.raises(Exception, match="Unknown model|not.*bundle"):
        segment.start_detection(params)
    # a job whose input file vanished: the child says so in one JSON line and exits with status 2
    job_file = worker_protocol.write_job(tmp_path / "job.json", {s: tmp_path / f"{s}.nii" for s in SEQUENCES},
                                         tmp_path / "out", {"steps": 2})
    done = subprocess.run([sys.executable, "-m", "brainldm.logic.worker", str(job_file)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": segment.core_python_path()})
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == worker_protocol.EXIT_USER_ERROR, done.stderr[-2000:]
    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "InputDataError"
    assert "file not found" in events[-1]["message"]
    assert "Traceback" not in done.stderr


def test_kill_process_tree_ends_grandchildren(tmp_path):
    """The cancel path: the worker's whole process group goes, grandchildren included."""
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "grandchild did not start"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    segment.kill_process_tree(process, grace_s=2)
    assert process.poll() is not None
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"))


# ------------------------------------------------------------------------------ real detection (tiny model)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An untrained but complete model bundle (tiny networks): real loading, real diffusion."""
    pytest.importorskip("brainldm.detect.pipeline", reason="brainldm.detect.pipeline is not written yet")
    pytest.importorskip("brainldm.nets.denoiser", reason="brainldm.nets.denoiser is not written yet")
    import torch

    from brainldm.data.preprocess import PreprocessConfig
    from brainldm.diffusion.schedule import ScheduleConfig
    from brainldm.nets.autoencoder import build_autoencoder
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.config import AutoencoderConfig, DenoiserConfig
    from brainldm.nets.denoiser import build_denoiser

    torch.manual_seed(0)
    ae = AutoencoderConfig(kind="kl", channels=(8, 16), latent_channels=2, norm_num_groups=8)
    dn = DenoiserConfig(latent_channels=2, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8,
                        num_head_channels=8, position_embedding="coords")
    bundle = ModelBundle(build_autoencoder(ae), build_denoiser(dn), ae, dn, PreprocessConfig(), 1.0,
                         dataclasses.asdict(ScheduleConfig()), "tiny-test", patch_size=(32, 32, 32))
    return bundle.save(tmp_path_factory.mktemp("bundle") / "tiny-test")


def test_detection_end_to_end_creates_nodes_with_input_geometry(headless, tmp_path, oblique_affine, tiny_bundle, home):
    write_subject(tmp_path / "Syn-001", oblique_affine())
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    params = segment.SegmentParameters(**nodes.volumes, reference_segmentation=nodes.segmentation,
                                       model=str(tiny_bundle), steps=2, encoder="ddim", device="cpu")
    before = mrml.SceneSnapshot.take()
    job = segment.start_detection(params)
    seen = []
    try:
        status = job.poll()
        while not status.done:
            seen.append((status.stage, status.fraction))
            time.sleep(0.1)
            status = job.poll()
            assert status.elapsed_s < 300, "detection took too long"
        assert status.state == "finished", (status.message, job.read_log()[-3000:])
        assert any(stage in ("inversion", "generation") for stage, _ in seen) or status.fraction == 1.0
        assert before.added_since() == set()  # nothing reaches the scene before the results are applied
        outputs = segment.add_detection_results(params, job.out_dir)
    finally:
        job.cleanup()
    assert not job.work_dir.exists()
    for node in (*outputs.counterfactuals.values(), outputs.anomaly_map):
        assert mrml.volume_shape(node) == SHAPE
        np.testing.assert_allclose(mrml.ijk_to_ras(node), mrml.ijk_to_ras(nodes.reference), atol=1e-9)
    assert outputs.segmentation.IsA("vtkMRMLSegmentationNode")
    assert outputs.graddiff_map is None  # Otsu mode records no GradDiff
    assert set(outputs.metrics) >= {"dice", "specificity"}
    assert outputs.timings.get("total", 0) > 0


def test_cancel_right_after_start(headless, tmp_path, rng, home, tiny_bundle):
    volumes = {s: mrml.add_volume(rng.random(SHAPE).astype(np.float32) + 1, np.eye(4), s) for s in SEQUENCES}
    before = mrml.SceneSnapshot.take()
    job = segment.start_detection(segment.SegmentParameters(**volumes, model=str(tiny_bundle), device="cpu"))
    job.cancel()
    assert job.poll().state == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)
    job.cleanup()
    assert not job.work_dir.exists() and before.added_since() == set()


@pytest.mark.slow
def test_cancel_kills_the_worker_and_leaves_the_scene_as_it_was(headless, tmp_path, oblique_affine, tiny_bundle,
                                                                home):
    write_subject(tmp_path / "Syn-001", oblique_affine(), with_seg=False)
    nodes = segment.load_subject_folder(tmp_path / "Syn-001")
    params = segment.SegmentParameters(**nodes.volumes, model=str(tiny_bundle), steps=1000, encoder="edict",
                                       device="cpu")
    before = mrml.SceneSnapshot.take()
    job = segment.start_detection(params)
    try:
        deadline = time.monotonic() + 240
        status = job.poll()
        while status.stage not in ("inversion", "generation"):
            assert not status.done, (status.message, job.read_log()[-3000:])
            assert time.monotonic() < deadline, "the worker never reached the diffusion steps"
            time.sleep(0.1)
            status = job.poll()
        job.cancel()
        final = job.poll()
        assert final.state == "cancelled"
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)  # the whole process group is gone
    finally:
        job.cleanup()
    assert before.added_since() == set()
    assert not job.work_dir.exists()


def test_choosing_a_model_applies_its_recommended_settings(headless, tmp_path, tiny_bundle, home):
    import json
    import shutil

    folder = shutil.copytree(tiny_bundle, tmp_path / "tuned")
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["inference"] = {"encoder": "ddim", "steps": 500, "guidance": 10.0, "mix": 0.95, "window_batch": 7}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    params = segment.SegmentParameters(model=str(folder))
    applied = segment.apply_recommended_settings(params)
    # steps clipped to the slider's range; settings the sliders do not hold are left alone
    assert applied == {"encoder": "ddim", "steps": segment.STEPS_RANGE[1], "guidance": 10.0, "mix": 0.95}
    assert (params.encoder, params.steps, params.guidance, params.mix) == ("ddim", 250, 10.0, 0.95)
    # a model without a recommendation (or that cannot be read) changes nothing
    untouched = segment.SegmentParameters(model=str(tiny_bundle))
    assert segment.apply_recommended_settings(untouched) == {} and untouched.guidance == 5.0
    assert segment.recommended_settings(str(tmp_path / "missing")) == {}

    # settings without a control of their own (noise level, fixed threshold, smoothing) reach detection
    manifest["inference"] = {"encoder": "ddim", "steps": 50, "noise_level": 300, "guidance": 2.0,
                             "threshold": "fixed", "threshold_value": 0.03, "smoothing": 2.0}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    params = segment.SegmentParameters(model=str(folder))
    applied = segment.apply_recommended_settings(params)
    assert applied["threshold"] == "fixed" and applied["noise_level"] == 300
    settings = params.detection_settings()
    assert (settings.encoder, settings.noise_level, settings.guidance, settings.threshold, settings.threshold_value,
            settings.smoothing) == ("ddim", 300, 2.0, "fixed", 0.03, 2.0)
    # the parameter node keeps them (the module's scene round trip)
    node = mrml.get_parameter_node("BrainLDMSegment")
    mrml.write_parameters(node, params)
    assert mrml.read_parameters(node, segment.SegmentParameters).detection_settings() == settings
