"""brainldm.logic.mrml on Slicer's real MRML core: volumes, subjects, overlays, segmentations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.data.io import load_subject_from_paths, save_like  # noqa: E402
from brainldm.data.sequences import SEQUENCES  # noqa: E402
from brainldm.data.subject import Subject  # noqa: E402
from brainldm.errors import InputDataError  # noqa: E402
from brainldm.logic import mrml  # noqa: E402


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _ras_of_voxel(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine in canonical RAS+ order: equal for two grids holding the same world image."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), affine))
    return np.asarray(image.dataobj), image.affine


# ------------------------------------------------------------------------------ volumes


def test_volume_loaded_through_storage_node_keeps_geometry(headless, tmp_path, oblique_affine, rng):
    affine = oblique_affine()
    data = rng.normal(size=(11, 13, 7)).astype(np.float32)
    path = _write_nifti(tmp_path / "oblique.nii.gz", data, affine)
    node = mrml.load_volume(path)

    assert node.GetStorageNode() is not None and node.GetStorageNode().GetFileName() == str(path)
    assert mrml.volume_shape(node) == (11, 13, 7)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), affine, atol=1e-5)  # header stores float32
    np.testing.assert_array_equal(mrml.volume_array(node), data)
    # A voxel is where nibabel says it is in world space.
    np.testing.assert_allclose(_ras_of_voxel(mrml.ijk_to_ras(node), (3, 4, 5)), _ras_of_voxel(affine, (3, 4, 5)),
                               atol=1e-4)


def test_left_handed_file_keeps_world_geometry(headless, tmp_path, oblique_affine, rng):
    """A left-handed (LAS-like) grid: Slicer reverses k, but every voxel stays at the same world position."""
    affine = oblique_affine(flips=(-1.0, 1.0, 1.0))
    data = rng.normal(size=(9, 8, 7)).astype(np.float32)
    node = mrml.load_volume(_write_nifti(tmp_path / "las.nii.gz", data, affine))
    node_affine = mrml.ijk_to_ras(node)
    assert np.linalg.det(node_affine[:3, :3]) > 0  # ITK's right-handed version of the grid
    node_canonical, node_canonical_affine = _canonical(mrml.volume_array(node), node_affine)
    file_canonical, file_canonical_affine = _canonical(data, affine)
    np.testing.assert_array_equal(node_canonical, file_canonical)
    np.testing.assert_allclose(node_canonical_affine, file_canonical_affine, atol=1e-4)


def test_real_files_with_different_orientations_load_like_nibabel(headless, shared_data):
    """BraTS-MET (RAS) and BraTS-GLI (LPS) files: Slicer and nibabel agree on every voxel's position."""
    folder = shared_data / "brats_like"
    paths = sorted(folder.glob("BraTS-*/*-t2f.nii.gz"))
    if len(paths) < 2:
        pytest.skip(f"BraTS-like subjects not found in {folder}")
    for path in paths[:2]:
        node = mrml.load_volume(path)
        image = nib.load(str(path))
        np.testing.assert_allclose(mrml.ijk_to_ras(node), image.affine, atol=1e-4)
        np.testing.assert_array_equal(mrml.volume_array(node), np.asarray(image.dataobj).squeeze())


def test_missing_file_is_a_clear_error(headless, tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        mrml.load_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputDataError, match="could not be read"):
        mrml.load_volume(bad)


def test_add_volume_round_trip_and_kji_order(headless, oblique_affine):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    node = mrml.add_volume(array, oblique_affine(), "ramp")
    # Slicer's own array is [k, j, i]
    import slicer

    assert slicer.util.arrayFromVolume(node).shape == (6, 5, 4)
    assert slicer.util.arrayFromVolume(node)[2, 3, 1] == array[1, 3, 2]
    np.testing.assert_array_equal(mrml.volume_array(node), array)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), oblique_affine(), atol=1e-12)


def test_new_nodes_never_take_an_existing_name(headless):
    first = mrml.add_volume(np.zeros((2, 2, 2), np.float32), np.eye(4), "result")
    second = mrml.add_volume(np.ones((2, 2, 2), np.float32), np.eye(4), "result")
    assert first.GetName() == "result" and second.GetName() != "result"
    assert mrml.volume_array(first).max() == 0  # untouched


def test_saved_volume_reads_back_identically(headless, tmp_path, oblique_affine, rng):
    data = rng.integers(0, 500, size=(6, 7, 8)).astype(np.int16)
    node = mrml.add_volume(data, oblique_affine(), "to-save")
    path = mrml.save_volume(node, tmp_path / "saved.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-5)


# ------------------------------------------------------------------------------ subjects


def _subject_files(tmp_path: Path, affine: np.ndarray, rng, shape=(12, 10, 8)) -> dict[str, Path]:
    paths = {}
    for index, seq in enumerate(SEQUENCES):
        paths[seq] = _write_nifti(tmp_path / f"S-{seq}.nii.gz",
                                  (rng.random(shape) * 100 + index).astype(np.float32), affine)
    seg = np.zeros(shape, np.int16)
    seg[3:6, 2:5, 1:4] = 2
    seg[4, 3, 2] = 1
    paths["seg"] = _write_nifti(tmp_path / "S-seg.nii.gz", seg, affine)
    return paths


@pytest.mark.parametrize("flips", [(-1.0, -1.0, 1.0), (-1.0, 1.0, 1.0)], ids=["LPS-like", "left-handed"])
def test_subject_from_nodes_matches_nibabel_loading(headless, tmp_path, oblique_affine, rng, flips):
    """Nodes loaded by Slicer -> Subject equals the same files loaded by brainldm.data.io."""
    paths = _subject_files(tmp_path, oblique_affine(flips=flips), rng)
    nodes = {seq: mrml.load_volume(paths[seq]) for seq in SEQUENCES}
    seg_node = mrml.load_volume(paths["seg"], label=True)
    from_nodes = mrml.subject_from_volume_nodes(nodes, subject_id="S", seg=seg_node)
    from_files = load_subject_from_paths(*(paths[s] for s in SEQUENCES), seg=paths["seg"])

    np.testing.assert_allclose(from_nodes.images, from_files.images)
    np.testing.assert_array_equal(from_nodes.seg, from_files.seg)
    np.testing.assert_allclose(from_nodes.affine, from_files.affine, atol=1e-5)


def test_subject_to_nodes_to_subject_round_trip(headless, tmp_path, oblique_affine, rng):
    paths = _subject_files(tmp_path, oblique_affine(), rng)
    subject = load_subject_from_paths(*(paths[s] for s in SEQUENCES), seg=paths["seg"])
    shown = mrml.add_subject(subject)

    # Nodes are in the grid of the files: identical to loading the files in Slicer.
    loaded = mrml.load_volume(paths["t2w"])
    np.testing.assert_allclose(mrml.ijk_to_ras(shown.volumes["t2w"]), mrml.ijk_to_ras(loaded), atol=1e-5)
    np.testing.assert_allclose(mrml.volume_array(shown.volumes["t2w"]), mrml.volume_array(loaded))

    back = mrml.subject_from_volume_nodes(shown.volumes, seg=shown.segmentation)
    np.testing.assert_allclose(back.images, subject.images)
    np.testing.assert_allclose(back.affine, subject.affine, atol=1e-5)
    # Segments "label 1", "label 2" come back as values 1..n in segment order.
    assert set(np.unique(back.seg)) == {0, 1, 2}
    np.testing.assert_array_equal(back.seg > 0, subject.seg > 0)
    np.testing.assert_array_equal(back.seg == 1, subject.seg == 1)


def test_phantom_like_subject_without_source(headless, rng):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10, -20, -5)
    subject = Subject("P", rng.random((4, 9, 8, 7)).astype(np.float32) + 1, affine)
    shown = mrml.add_subject(subject, prefix="Phantom")
    assert shown.segmentation is None
    assert shown.volumes["t1n"].GetName() == "Phantom-t1n"
    np.testing.assert_allclose(mrml.ijk_to_ras(shown.reference), affine)
    back = mrml.subject_from_volume_nodes(shown.volumes)
    np.testing.assert_allclose(back.images, subject.images)


def test_results_go_back_into_the_input_grid(headless, tmp_path, oblique_affine, rng):
    """A canonical-grid map pasted back with to_source_grid lands on the same world positions."""
    paths = _subject_files(tmp_path, oblique_affine(), rng)
    nodes = {seq: mrml.load_volume(paths[seq]) for seq in SEQUENCES}
    subject = mrml.subject_from_volume_nodes(nodes)
    canonical_map = np.zeros(subject.shape, np.float32)
    canonical_map[2, 7, 5] = 1.0
    data, affine = mrml.to_source_grid(canonical_map, subject)
    map_node = mrml.add_volume(data, affine, "map")
    # world position of the hot voxel: canonical affine vs node geometry
    hot_ijk = np.argwhere(mrml.volume_array(map_node) == 1.0)[0]
    np.testing.assert_allclose(_ras_of_voxel(mrml.ijk_to_ras(map_node), hot_ijk),
                               _ras_of_voxel(subject.affine, (2, 7, 5)), atol=1e-4)
    np.testing.assert_array_equal(mrml.from_source_grid(data, subject), canonical_map)
    # and the file written by save_like for the file-loaded subject has the same voxel
    file_subject = load_subject_from_paths(*(paths[s] for s in SEQUENCES))
    written = nib.load(str(save_like(canonical_map, file_subject, tmp_path / "map.nii.gz")))
    np.testing.assert_array_equal(np.asarray(written.dataobj), data)


def test_mismatched_grids_and_missing_sequences_are_clear_errors(headless, rng):
    volumes = {seq: mrml.add_volume(rng.random((5, 5, 5)).astype(np.float32), np.eye(4), seq) for seq in SEQUENCES}
    with pytest.raises(InputDataError, match="missing: t2f"):
        mrml.subject_from_volume_nodes({**volumes, "t2f": None})
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    volumes["t1c"] = mrml.add_volume(rng.random((5, 5, 5)).astype(np.float32), shifted, "t1c-shifted")
    with pytest.raises(InputDataError, match="origin"):
        mrml.subject_from_volume_nodes(volumes)
    volumes["t1c"] = mrml.add_volume(np.zeros((5, 5, 5), np.float32), np.eye(4), "empty")
    with pytest.raises(InputDataError, match="constant"):
        mrml.subject_from_volume_nodes(volumes)


# ------------------------------------------------------------------------------ overlays


def test_overlay_zero_is_transparent_and_opacity_applies(headless, oblique_affine):
    values = np.zeros((10, 10, 10), np.float32)
    values[3:6, 3:6, 3:6] = np.linspace(0.1, 2.0, 27).reshape(3, 3, 3)
    node = mrml.add_volume(values, oblique_affine(), "anomaly")
    display = mrml.style_overlay(node, mrml.OverlayStyle(opacity=0.4))

    assert display.GetApplyThreshold() == 1
    assert 0.0 < display.GetLowerThreshold() < 0.1  # zero below the threshold: transparent; 0.1 shown
    assert display.GetUpperThreshold() >= 2.0
    assert display.GetAutoWindowLevel() == 0
    assert display.GetWindowLevelMin() == pytest.approx(0.0)
    assert display.GetColorNode() is not None and display.GetColorNode().GetName() in mrml.ANOMALY_COLOURS
    assert display.GetOpacity() == pytest.approx(0.4)


def test_overlay_in_slice_views_and_opacity_change(headless):
    composites = headless.add_slice_views()
    background = mrml.add_volume(np.ones((4, 4, 4), np.float32), np.eye(4), "anatomy")
    overlay = mrml.add_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), "map")
    mrml.style_overlay(overlay)  # all-zero map must not break the window
    assert mrml.show_in_slice_views(background=background, foreground=overlay, opacity=0.3) == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == background.GetID()
        assert composite.GetForegroundVolumeID() == overlay.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    mrml.set_overlay_opacity(0.8, [overlay])
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in composites)
    assert overlay.GetDisplayNode().GetOpacity() == pytest.approx(0.8)


# ------------------------------------------------------------------------------ segmentations


def test_segmentation_from_labels_and_back(headless, oblique_affine):
    reference = mrml.add_volume(np.ones((12, 11, 10), np.float32), oblique_affine(), "ref")
    labels = np.zeros((12, 11, 10), np.uint8)
    labels[2:5, 3:7, 4:6] = 1
    labels[8:10, 1:3, 1:9] = 3
    node = mrml.segmentation_from_labels(labels, reference, "seg", segment_names={1: "core", 3: "oedema"})
    assert node.IsA("vtkMRMLSegmentationNode")
    assert [node.GetSegmentation().GetSegment(s).GetName() for s in mrml.segment_ids(node)] == ["core", "oedema"]
    np.testing.assert_array_equal(mrml.segment_array(node, "core", reference), labels == 1)
    np.testing.assert_array_equal(mrml.segment_array(node, "oedema", reference), labels == 3)
    back = mrml.labels_from_segmentation(node, reference)
    np.testing.assert_array_equal(back, np.where(labels == 3, 2, labels))
    with pytest.raises(InputDataError, match="no segment 'necrosis'"):
        mrml.segment_array(node, "necrosis", reference)


def test_painted_segment_reads_back(headless, oblique_affine):
    """A segment edited through its internal labelmap (what Segment Editor paint does) reads back."""
    import slicer

    reference = mrml.add_volume(np.ones((16, 16, 16), np.float32), oblique_affine(spacing=(1.0, 1.0, 1.0)), "ref")
    node = mrml.segmentation_from_labels(np.zeros((16, 16, 16), np.uint8), reference, "painted",
                                         segment_names={1: "lesion"})
    segment_id = mrml.find_segment_id(node, "lesion")
    # Paint a sphere of radius 3 around voxel (8, 8, 8), written in [k, j, i] like Slicer's brush result.
    i, j, k = np.mgrid[:16, :16, :16]
    sphere = ((i - 8) ** 2 + (j - 8) ** 2 + (k - 5) ** 2 <= 9).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.transpose(sphere, (2, 1, 0)), node, segment_id, reference)
    painted = mrml.segment_array(node, "lesion", reference)
    np.testing.assert_array_equal(painted, sphere)
    assert painted.sum() == sphere.sum() > 100


def test_segmentation_shape_mismatch(headless):
    reference = mrml.add_volume(np.ones((4, 4, 4), np.float32), np.eye(4), "ref")
    with pytest.raises(ValueError, match="does not match"):
        mrml.segmentation_from_labels(np.zeros((4, 4, 5), np.uint8), reference, "bad")


# ------------------------------------------------------------------------------ parameter nodes


@dataclasses.dataclass
class _Params:
    volume: "vtkMRMLScalarVolumeNode | None" = None  # noqa: F821 - resolved against slicer's classes
    steps: int = 50
    guidance: float = 5.0
    encoder: str = "edict"
    mask_brain: bool = True
    folder: Path = Path()


def test_parameters_round_trip_in_parameter_node_wrapper_format(headless, tmp_path):
    volume = mrml.add_volume(np.ones((3, 3, 3), np.float32), np.eye(4), "vol")
    node = mrml.get_parameter_node("BrainLDMTest")
    assert node.GetID() == mrml.get_parameter_node("BrainLDMTest").GetID()  # a singleton
    assert node.GetAttribute("ModuleName") == "BrainLDMTest"
    mrml.write_parameters(node, _Params(volume=volume, steps=120, guidance=7.5, encoder="ddim", mask_brain=False,
                                        folder=tmp_path))
    # the exact text slicer.parameterNodeWrapper's serializers write
    assert node.GetParameter("steps") == "120"
    assert node.GetParameter("guidance") == "7.5"
    assert node.GetParameter("mask_brain") == "False"
    assert node.GetParameter("encoder") == "ddim"
    assert node.GetParameter("volume") == "" and node.GetNodeReferenceID("volume") == volume.GetID()
    back = mrml.read_parameters(node, _Params)
    assert back == _Params(volume=volume, steps=120, guidance=7.5, encoder="ddim", mask_brain=False, folder=tmp_path)
    assert mrml.read_parameters(mrml.get_parameter_node("Other"), _Params) == _Params()


def test_parameters_persist_when_the_scene_is_saved_and_reloaded(headless, tmp_path):
    import slicer

    volume = mrml.add_volume(np.ones((3, 3, 3), np.float32), np.eye(4), "vol")
    mrml.write_parameters(mrml.get_parameter_node("BrainLDMTest"), _Params(volume=volume, steps=77, guidance=2.5))
    scene_file = tmp_path / "scene.mrml"
    headless.scene.SetURL(str(scene_file))
    assert headless.scene.Commit()

    other = slicer.vtkMRMLScene()
    other.SetURL(str(scene_file))
    assert other.Connect()
    restored = mrml.read_parameters(mrml.get_parameter_node("BrainLDMTest", scene=other), _Params)
    assert restored.steps == 77 and restored.guidance == 2.5 and restored.encoder == "edict"
    assert restored.volume is not None and restored.volume.GetName() == "vol"
    other.Clear(True)
