"""Resolution-aware detection (``brainldm segment --upscale``): grids, mapping back, end to end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from test_detect_pipeline import FAST, tiny_bundle

from brainldm.data.subject import Subject
from brainldm.detect.settings import DetectionSettings
from brainldm.sr.upscale import (
    UpscaleSettings,
    block_mean,
    result_to_input_grid,
    upscale_subject,
)
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.train.toy import toy_subject_arrays


@pytest.fixture(scope="module")
def subject() -> Subject:
    images, seg = toy_subject_arrays((40, 44, 36), seed=3)
    padded = np.zeros((4, 48, 52, 44), np.float32)
    padded[:, 4:44, 4:48, 4:40] = images
    seg_full = np.zeros((48, 52, 44), np.int16)
    seg_full[4:44, 4:48, 4:40] = seg
    affine = np.array([[1.2, 0, 0, -30.0], [0, 1.1, 0, 12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    return Subject("toy", padded, affine, seg=seg_full)


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine[:3, :3] @ ijk.T).T + affine[:3, 3]


def test_block_mean_inverts_block_repetition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    up = np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)
    np.testing.assert_allclose(block_mean(up, 3), x, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        block_mean(np.zeros((5, 6, 2)), 2)


def test_interpolated_subject_keeps_field_of_view_and_background(subject):
    up, timings = upscale_subject(subject, UpscaleSettings(method="interpolate", factor=2))
    assert up.images.shape == (4, 96, 104, 44) and up.seg.shape == (96, 104, 44)
    assert "upscale" in timings
    # each input voxel centre is the centre of its 2x2 block of output voxels, in world coordinates
    for ijk in ([0, 0, 0], [10, 20, 5], [47, 51, 43]):
        i, j, k = ijk
        children = np.array([[2 * i + a, 2 * j + b, k] for a in (0, 1) for b in (0, 1)], float)
        np.testing.assert_allclose(_world(up.affine, children).mean(axis=0), _world(subject.affine, np.array([ijk], float))[0],
                                   atol=1e-9)
    # background stays exactly 0, brain intensities stay in a sane range, tumour labels repeat exactly
    outside = np.repeat(np.repeat(~(subject.images != 0).any(axis=0), 2, axis=0), 2, axis=1)
    assert not up.images[:, outside].any()
    assert np.abs(up.images).max() < 2 * np.abs(subject.images).max()
    np.testing.assert_array_equal(block_mean((up.seg > 0).astype(np.float32), 2) == 1.0, subject.seg > 0)
    # bicubic of a smooth image is close to the image on the coarse grid
    np.testing.assert_allclose(block_mean(up.images, 2)[:, 10:38, 10:42, 10:30],
                               subject.images[:, 10:38, 10:42, 10:30], atol=0.25 * np.abs(subject.images).max())


def test_none_returns_the_subject_and_bad_settings_fail(subject):
    same, timings = upscale_subject(subject, UpscaleSettings())
    assert same is subject and timings == {}
    with pytest.raises(SettingsError, match="one of"):
        UpscaleSettings(method="bicubic")
    with pytest.raises(SettingsError, match="integer >= 2"):
        UpscaleSettings(method="interpolate", factor=1)
    with pytest.raises(SettingsError, match="--sr-model"):
        upscale_subject(subject, UpscaleSettings(method="sr"))


def test_detection_on_the_upscaled_grid_comes_back_on_the_input_grid(subject):
    from brainldm.detect.pipeline import detect

    up, _ = upscale_subject(subject, UpscaleSettings(method="interpolate"))
    result = detect(up, tiny_bundle(position="none", spatial_dims=2), DetectionSettings(**FAST))
    mapped = result_to_input_grid(result, subject, 2)
    assert mapped.counterfactual.shape == subject.images.shape
    assert mapped.anomaly_map.shape == subject.shape and mapped.segmentation.shape == subject.shape
    assert mapped.segmentation.dtype == np.uint8 and set(np.unique(mapped.segmentation)) <= {0, 1}
    np.testing.assert_allclose(mapped.anomaly_map, block_mean(result.anomaly_map, 2), rtol=1e-6)
    # a voxel is segmented on the input grid exactly when most of its block is
    expected = block_mean(result.segmentation.astype(np.float32), 2) >= 0.5
    np.testing.assert_array_equal(mapped.segmentation > 0, expected)
    assert set(mapped.metrics) >= {"dice", "specificity"}


def test_segment_command_with_upscale_writes_input_grid_outputs(subject, tmp_path):
    from brainldm.data.sequences import SEQUENCES
    from brainldm.logic.detection import SubjectInputs, run_segmentation

    folder = tmp_path / "toy"
    folder.mkdir()
    for i, name in enumerate(SEQUENCES):
        nib.save(nib.Nifti1Image(subject.images[i], subject.affine), folder / f"toy-{name}.nii.gz")
    nib.save(nib.Nifti1Image(subject.seg, subject.affine), folder / "toy-seg.nii.gz")
    bundle = tiny_bundle(position="none", spatial_dims=2)
    out = tmp_path / "out"
    report = run_segmentation(SubjectInputs(subject_dir=folder), out, DetectionSettings(**FAST), model=bundle,
                              upscale=UpscaleSettings(method="interpolate"))
    seg = nib.load(out / "segmentation.nii.gz")
    reference = nib.load(next(folder.glob("*t2f.nii.gz")))
    assert seg.shape == reference.shape
    np.testing.assert_allclose(seg.affine, reference.affine, atol=1e-5)
    saved = json.loads((out / "report.json").read_text())
    assert saved["upscale"]["method"] == "interpolate" and saved["upscale"]["factor"] == 2
    assert "dice" in saved["upscale"]["metrics_on_upscaled_grid"]
    assert report["timings_s"]["upscale"] >= 0
    with pytest.raises(BrainLDMError, match="--sr-model"):
        run_segmentation(SubjectInputs(subject_dir=folder), tmp_path / "out2", DetectionSettings(**FAST), model=bundle,
                         upscale=UpscaleSettings(method="sr"))


def test_lesion_slab_is_centred_on_the_largest_lesion(subject):
    from brainldm.evaluate.evaluation import lesion_slab

    slab = lesion_slab(subject, 6)
    assert slab.images.shape == (4, 48, 52, 6) and slab.seg.shape == (48, 52, 6)
    assert (slab.seg > 0).any()
    # the slab's slices sit where they were in world coordinates
    z_start = int(round((slab.affine[2, 3] - subject.affine[2, 3]) / subject.affine[2, 2]))
    np.testing.assert_array_equal(slab.images, subject.images[..., z_start:z_start + 6])
    with pytest.raises(BrainLDMError, match="--slab"):
        lesion_slab(subject, 0)


def test_evaluate_with_upscale_scores_on_the_input_grid(subject, tmp_path):
    from brainldm.data.sequences import SEQUENCES
    from brainldm.evaluate.evaluation import EvaluationRequest, evaluate

    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    for i, name in enumerate(SEQUENCES):
        nib.save(nib.Nifti1Image(subject.images[i], subject.affine), folder / f"toy-{name}.nii.gz")
    nib.save(nib.Nifti1Image(subject.seg, subject.affine), folder / "toy-seg.nii.gz")
    bundle = tiny_bundle(position="none", spatial_dims=2)
    request = EvaluationRequest(data_dir=tmp_path / "data", out_dir=tmp_path / "eval", settings=DetectionSettings(**FAST),
                                upscale=UpscaleSettings(method="interpolate"), slab=8)
    results = evaluate(request, bundle)
    assert results["upscale"]["method"] == "interpolate" and results["slab"] == 8
    row = results["subjects"][0]
    assert 0.0 <= row["model_dice"] <= 1.0 and 0.0 <= row["flair-percentile_dice"] <= 1.0
    with pytest.raises(BrainLDMError, match="super-resolution"):
        evaluate(EvaluationRequest(data_dir=tmp_path / "data", out_dir=tmp_path / "eval2",
                                   settings=DetectionSettings(**FAST), upscale=UpscaleSettings(method="sr")), bundle)


def test_sr_upscaling_uses_the_sr_model_and_keeps_the_grid(subject, tmp_path):
    from test_sr import tiny_sr_bundle

    sr = tiny_sr_bundle(seed=1, patch=16)
    up, timings = upscale_subject(subject, UpscaleSettings(method="sr", sr_steps=1), sr_bundle=sr)
    interpolated, _ = upscale_subject(subject, UpscaleSettings(method="interpolate"))
    assert up.images.shape == interpolated.images.shape
    np.testing.assert_allclose(up.affine, interpolated.affine)
    assert np.isfinite(up.images).all() and timings["upscale"] >= 0
    assert not np.allclose(up.images, interpolated.images), "the SR model changed nothing"
    with pytest.raises(SettingsError, match="upscales"):
        upscale_subject(subject, UpscaleSettings(method="sr", factor=3), sr_bundle=sr)
