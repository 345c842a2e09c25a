"""Tests of brainldm.data.io: finding subjects, loading (orientation, grid checks, bad files), save_like."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from brainldm.data.io import (
    GridTolerance,
    IncompleteSubjectWarning,
    OutputExistsError,
    SubjectFiles,
    find_subjects,
    load_subject,
    load_subject_from_paths,
    parse_brats_name,
    save_like,
    scan_subjects,
)
from brainldm.data.preprocess import brain_mask
from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import Subject
from brainldm.errors import BrainLDMError, InputDataError, SettingsError

SHAPE = (20, 24, 16)  # canonical (RAS) shape of the synthetic subjects
SPACING = (1.0, 1.2, 1.5)
ORIGIN = (-10.0, -14.0, 5.0)
GEOMETRY_FIELDS = (
    "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units", "dim",
)  # fmt: skip


# ------------------------------------------------------------------------------------------
# synthetic data helpers
# ------------------------------------------------------------------------------------------


def canonical_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def synthetic_volumes(shape=SHAPE, seed=0) -> dict[str, np.ndarray]:
    """Four int16 'sequences' and a seg on the canonical grid: an off-centre ellipsoid brain with texture."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [0.45 * n for n in shape]
    radius = [0.35 * n for n in shape]
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0
    volumes = {}
    for k, seq in enumerate(SEQUENCES):
        values = rng.integers(50, 1000 * (k + 1), size=shape)
        volumes[seq] = np.where(brain, values, 0).astype(np.int16)
    seg = np.zeros(shape, dtype=np.int16)
    seg[5:8, 6:10, 4:6] = 1
    seg[8:9, 6:8, 4:5] = 2
    volumes["seg"] = seg
    return volumes


def stored_as(data: np.ndarray, affine: np.ndarray, codes: str) -> nib.Nifti1Image:
    """The same physical image, stored with axis codes ``codes`` (e.g. "LPS"), via nibabel itself."""
    image = nib.Nifti1Image(data, affine)
    target = ornt_transform(axcodes2ornt(tuple("RAS")), axcodes2ornt(tuple(codes)))
    image = image.as_reoriented(target)
    assert "".join(nib.aff2axcodes(image.affine)) == codes
    return image


def write(path: Path, image: nib.Nifti1Image, four_d: bool = False, qform_code: int = 1, sform_code: int = 1) -> Path:
    data = np.asanyarray(image.dataobj)
    if four_d:
        data = data[..., None]
    out = nib.Nifti1Image(data, image.affine)
    out.header.set_qform(image.affine, code=qform_code)
    out.header.set_sform(image.affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(path))
    return path


def write_subject(
    folder: Path,
    subject_id: str = "sub-001",
    codes: str | dict[str, str] = "RAS",
    naming: str = "2023",
    four_d: bool = False,
    with_seg: bool = True,
    volumes: dict[str, np.ndarray] | None = None,
    affine: np.ndarray | None = None,
) -> SubjectFiles:
    """Write a synthetic subject's files; ``codes`` may differ per sequence (a dict)."""
    volumes = volumes or synthetic_volumes()
    affine = canonical_affine() if affine is None else affine
    suffix = (
        {s: f"-{s}" for s in (*SEQUENCES, "seg")}
        if naming == "2023"
        else {"t1n": "_t1", "t1c": "_t1ce", "t2w": "_t2", "t2f": "_flair", "seg": "_seg"}
    )
    paths = {}
    for name in (*SEQUENCES, "seg") if with_seg else SEQUENCES:
        code = codes[name] if isinstance(codes, dict) else codes
        paths[name] = write(
            folder / f"{subject_id}{suffix[name]}.nii.gz", stored_as(volumes[name], affine, code), four_d=four_d
        )
    seg = paths.pop("seg", None)
    return SubjectFiles(subject_id=subject_id, paths=paths, seg=seg)


def touch_subject(folder: Path, subject_id: str, names: tuple[str, ...], ext: str = ".nii.gz") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{subject_id}{name}{ext}").write_bytes(b"")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ------------------------------------------------------------------------------------------
# finding subjects
# ------------------------------------------------------------------------------------------

BRATS2023 = ("-t1n", "-t1c", "-t2w", "-t2f")
BRATS2021 = ("_t1", "_t1ce", "_t2", "_flair")


def test_parse_brats_names():
    assert parse_brats_name("BraTS-GLI-00001-000-t1n.nii.gz") == ("BraTS-GLI-00001-000", "t1n", False)
    assert parse_brats_name("BraTS2021_00000_t1ce.nii.gz") == ("BraTS2021_00000", "t1c", False)
    assert parse_brats_name("BraTS2021_00000_flair.nii") == ("BraTS2021_00000", "t2f", False)
    assert parse_brats_name("BraTS2021_00000_t1.nii.gz") == ("BraTS2021_00000", "t1n", False)
    assert parse_brats_name("x-seg-pseudo.nii.gz") == ("x", "seg", True)
    assert parse_brats_name("x_seg.nii.gz") == ("x", "seg", False)
    assert parse_brats_name("x-t1n.mgz") is None
    assert parse_brats_name("T1.nii.gz") is None


def test_find_subjects_in_subfolders_brats2023(tmp_path):
    touch_subject(tmp_path / "A", "A", (*BRATS2023, "-seg"))
    touch_subject(tmp_path / "B", "B", BRATS2023)
    subjects = find_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["A", "B"]
    assert subjects[0].paths == {s: tmp_path / "A" / f"A-{s}.nii.gz" for s in SEQUENCES}
    assert subjects[0].seg == tmp_path / "A" / "A-seg.nii.gz"
    assert subjects[1].seg is None


def test_find_subjects_flat_brats2021_and_uncompressed(tmp_path):
    touch_subject(tmp_path, "BraTS2021_00002", (*BRATS2021, "_seg"))
    touch_subject(tmp_path, "BraTS2021_00001", BRATS2021, ext=".nii")
    subjects, skipped = find_subjects(tmp_path, return_skipped=True)
    assert skipped == []
    assert [s.subject_id for s in subjects] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert subjects[0].paths["t1c"] == tmp_path / "BraTS2021_00001_t1ce.nii"
    assert subjects[0].paths["t2f"] == tmp_path / "BraTS2021_00001_flair.nii"
    assert subjects[1].paths["t1n"] == tmp_path / "BraTS2021_00002_t1.nii.gz"
    assert subjects[1].seg == tmp_path / "BraTS2021_00002_seg.nii.gz"


def test_incomplete_subject_is_reported_not_dropped(tmp_path):
    touch_subject(tmp_path / "good", "good", BRATS2023)
    touch_subject(tmp_path / "bad", "bad", ("-t1n", "-t1c", "-t2w", "-seg"))
    subjects, skipped = find_subjects(tmp_path, return_skipped=True)
    assert [s.subject_id for s in subjects] == ["good"]
    assert len(skipped) == 1
    assert skipped[0].subject_id == "bad"
    assert skipped[0].missing == ("t2f",)
    assert "missing t2f" in skipped[0].reason and "bad" in skipped[0].reason
    assert set(skipped[0].found) == {"t1n", "t1c", "t2w", "seg"}
    with pytest.warns(IncompleteSubjectWarning, match="bad.*missing t2f"):
        assert [s.subject_id for s in find_subjects(tmp_path)] == ["good"]


def test_no_warning_when_everything_is_complete(tmp_path):
    touch_subject(tmp_path, "A", BRATS2023)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(find_subjects(tmp_path)) == 1


def test_ambiguous_and_unrecognised_files_are_reported(tmp_path):
    touch_subject(tmp_path / "dup", "dup", BRATS2023)
    (tmp_path / "dup" / "dup-t1n.nii").write_bytes(b"")  # second t1n
    touch_subject(tmp_path / "odd", "", ("T1", "FLAIR"))  # names in no BraTS convention
    touch_subject(tmp_path / "ok", "ok", BRATS2023)
    (tmp_path / "ok" / "._ok-t1n.nii.gz").write_bytes(b"")  # hidden (macOS) file: ignored
    scan = scan_subjects(tmp_path)
    assert [s.subject_id for s in scan.subjects] == ["ok"]
    reasons = {s.subject_id: s.reason for s in scan.skipped}
    assert set(reasons) == {"dup", "odd"}
    assert "several files for t1n" in reasons["dup"]
    assert "unrecognised names" in reasons["odd"] and "T1.nii.gz" in reasons["odd"]


def test_plain_seg_preferred_over_tagged_seg(tmp_path):
    touch_subject(tmp_path, "A", (*BRATS2023, "-seg-pseudo"))
    assert find_subjects(tmp_path)[0].seg == tmp_path / "A-seg-pseudo.nii.gz"
    touch_subject(tmp_path, "A", ("-seg",))
    assert find_subjects(tmp_path)[0].seg == tmp_path / "A-seg.nii.gz"


def test_find_subjects_bad_folder(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        find_subjects(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputDataError, match="not a folder"):
        find_subjects(tmp_path / "file.txt")


# ------------------------------------------------------------------------------------------
# loading: orientation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "PSR", "ILA"])
def test_load_reorients_to_canonical_ras(tmp_path, codes):
    volumes = synthetic_volumes()
    subject = load_subject(write_subject(tmp_path, codes=codes, volumes=volumes))
    assert subject.images.shape == (4, *SHAPE) and subject.images.dtype == np.float32
    for k, seq in enumerate(SEQUENCES):
        np.testing.assert_array_equal(subject.images[k], volumes[seq])
    np.testing.assert_array_equal(subject.seg, volumes["seg"])
    assert subject.seg.dtype == np.int16
    np.testing.assert_allclose(subject.affine, canonical_affine(), atol=1e-5)
    assert subject.spacing == pytest.approx(SPACING, abs=1e-5)
    raw = nib.load(subject.paths["t1n"])
    assert subject.source.shape == raw.shape
    np.testing.assert_array_equal(subject.source.affine, raw.affine)


def test_sequences_stored_in_different_orientations_are_aligned(tmp_path):
    volumes = synthetic_volumes()
    codes = {"t1n": "LPS", "t1c": "RAS", "t2w": "PSR", "t2f": "LAS", "seg": "RAI"}
    subject = load_subject(write_subject(tmp_path, codes=codes, volumes=volumes))
    for k, seq in enumerate(SEQUENCES):
        np.testing.assert_array_equal(subject.images[k], volumes[seq])
    np.testing.assert_array_equal(subject.seg, volumes["seg"])


def test_trailing_singleton_axis_is_accepted(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, codes="LAS", volumes=volumes, four_d=True)
    assert nib.load(files.paths["t2w"]).shape == (*SHAPE, 1)
    subject = load_subject(files)
    np.testing.assert_array_equal(subject.images[2], volumes["t2w"])


def test_subject_id_from_file_names(tmp_path):
    files = write_subject(tmp_path, subject_id="BraTS2021_00042", naming="2021")
    paths = [files.paths[s] for s in SEQUENCES]
    assert load_subject_from_paths(*paths).subject_id == "BraTS2021_00042"
    assert load_subject_from_paths(*paths, subject_id="patient").subject_id == "patient"
    subject = load_subject_from_paths(*paths, seg=files.seg)
    assert subject.seg is not None and set(subject.paths) == {*SEQUENCES, "seg"}


# ------------------------------------------------------------------------------------------
# loading: grid checks and bad files
# ------------------------------------------------------------------------------------------


def replace_file(files: SubjectFiles, name: str, data: np.ndarray, affine: np.ndarray, four_d=False) -> None:
    path = files.seg if name == "seg" else files.paths[name]
    write(path, nib.Nifti1Image(data, affine), four_d=four_d)


def test_mismatched_spacing_names_file_and_values(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "t2f", volumes["t2f"], canonical_affine(spacing=(1.0, 1.2, 3.0)))
    with pytest.raises(InputDataError) as info:
        load_subject(files)
    message = str(info.value)
    assert message.startswith("t2f: spacing (1, 1.2, 3) mm differs from t1n (1, 1.2, 1.5) mm")
    assert "sub-001-t2f.nii.gz" in message


def test_mismatched_shape_origin_direction(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "t1c", volumes["t1c"][:, :, :-1], canonical_affine())
    with pytest.raises(InputDataError, match=r"^t1c: shape \(20, 24, 15\) differs from t1n \(20, 24, 16\)"):
        load_subject(files)

    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "t2w", volumes["t2w"], canonical_affine(origin=(-10.0, -14.0, 7.0)))
    with pytest.raises(InputDataError, match=r"^t2w: origin \(-10, -14, 7\) mm differs from t1n \(-10, -14, 5\) mm"):
        load_subject(files)

    files = write_subject(tmp_path, volumes=volumes)
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotated = canonical_affine()
    rotated[:3, :3] = rotation @ rotated[:3, :3]
    replace_file(files, "t2f", volumes["t2f"], rotated)
    with pytest.raises(InputDataError, match=r"^t2f: direction"):
        load_subject(files)

    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "seg", volumes["seg"], canonical_affine(spacing=(2.0, 1.2, 1.5)))
    with pytest.raises(InputDataError, match=r"^seg: spacing"):
        load_subject(files)


def test_tiny_geometry_differences_are_tolerated(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "t2f", volumes["t2f"], canonical_affine(spacing=(1.0, 1.2, 1.50001), origin=(-10.0, -14.0, 5.001)))
    load_subject(files)
    with pytest.raises(InputDataError, match="origin"):
        load_subject(files, tolerance=GridTolerance(origin_atol_voxels=1e-4))


def test_nan_and_inf_are_counted(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, volumes=volumes)
    bad = volumes["t1c"].astype(np.float32)
    bad[1, 1, 1:4] = np.nan
    bad[2, 2, 2:4] = np.inf
    replace_file(files, "t1c", bad, canonical_affine())
    with pytest.raises(InputDataError, match=r"^t1c \(.*sub-001-t1c.nii.gz\): 5 voxel\(s\) are not finite \(3 NaN, 2 infinite\)"):
        load_subject(files)


@pytest.mark.parametrize(("value", "word"), [(0, "empty"), (7, "constant")])
def test_empty_or_constant_image(tmp_path, value, word):
    files = write_subject(tmp_path)
    replace_file(files, "t2w", np.full(SHAPE, value, dtype=np.int16), canonical_affine())
    with pytest.raises(InputDataError, match=rf"^t2w .*image is {word}"):
        load_subject(files)


def test_empty_seg_is_fine(tmp_path):
    files = write_subject(tmp_path)
    replace_file(files, "seg", np.zeros(SHAPE, dtype=np.uint8), canonical_affine())
    assert not load_subject(files).seg.any()


def test_garbage_truncated_and_missing_files(tmp_path):
    files = write_subject(tmp_path)
    good = files.paths["t1c"].read_bytes()

    files.paths["t1c"].write_bytes(np.random.default_rng(1).bytes(4000))  # not gzip at all
    with pytest.raises(InputDataError, match=r"^t1c \(.*sub-001-t1c.nii.gz\): cannot be read as a NIfTI image"):
        load_subject(files)

    files.paths["t1c"].write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(InputDataError, match="cannot be read as a NIfTI image"):
        load_subject(files)

    text = tmp_path / "notes-t2w.nii"
    text.write_text("this is not an image\n" * 50)
    files.paths["t1c"].write_bytes(good)
    files.paths["t2w"] = text
    with pytest.raises(InputDataError, match=r"^t2w \(.*notes-t2w.nii\): cannot be read"):
        load_subject(files)

    files.paths["t2w"] = tmp_path / "gone-t2w.nii.gz"
    with pytest.raises(InputDataError, match=r"^t2w \(.*gone-t2w.nii.gz\): file not found"):
        load_subject(files)

    files.paths["t2w"] = tmp_path
    with pytest.raises(InputDataError, match="is not a file"):
        load_subject(files)


def test_several_volumes_are_rejected(tmp_path):
    volumes = synthetic_volumes()
    files = write_subject(tmp_path, volumes=volumes)
    replace_file(files, "t2f", np.stack([volumes["t2f"]] * 2, axis=-1), canonical_affine())
    with pytest.raises(InputDataError, match=r"^t2f .*several volumes"):
        load_subject(files)


def test_gzip_of_nonsense_is_rejected(tmp_path):
    files = write_subject(tmp_path)
    files.paths["t2f"].write_bytes(gzip.compress(b"\x00" * 1000))
    with pytest.raises(InputDataError, match="t2f"):
        load_subject(files)


# ------------------------------------------------------------------------------------------
# save_like
# ------------------------------------------------------------------------------------------


def assert_same_geometry(written: Path, reference: Path) -> None:
    a, b = nib.load(written), nib.load(reference)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.affine, b.affine)
    for key in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(a.header[key], b.header[key], err_msg=key)


@pytest.mark.parametrize(("codes", "four_d"), [("RAS", False), ("LPS", False), ("PSR", False), ("LAS", True)])
def test_save_like_round_trip(tmp_path, codes, four_d):
    files = write_subject(tmp_path / "in", codes=codes, four_d=four_d)
    # t1n is the geometry reference; its unusual qform/sform codes must survive too
    image = nib.load(files.paths["t1n"])
    data = np.asanyarray(image.dataobj)
    write(files.paths["t1n"], nib.Nifti1Image(data[..., 0] if four_d else data, image.affine),
          four_d=four_d, qform_code=2, sform_code=4)  # fmt: skip
    subject = load_subject(files)

    out = save_like(subject.sequence("t2w"), subject, tmp_path / "out" / "t2w.nii.gz", dtype=np.int16)
    assert_same_geometry(out, files.paths["t1n"])
    assert int(nib.load(out).header["sform_code"]) == 4
    raw_in = np.asanyarray(nib.load(files.paths["t2w"]).dataobj)
    raw_out = np.asanyarray(nib.load(out).dataobj)
    assert raw_out.dtype == np.int16
    np.testing.assert_array_equal(raw_out, raw_in)

    # default dtype: float32, same values
    out = save_like(subject.sequence("t2w"), subject, tmp_path / "out" / "t2w_float.nii")
    assert nib.load(out).get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), raw_in)

    # the seg, written like t2w, lands where nibabel puts it in canonical space
    out = save_like(subject.seg > 0, subject, tmp_path / "out" / "mask.nii.gz")
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    canonical = np.asanyarray(nib.as_closest_canonical(written).dataobj)
    np.testing.assert_array_equal(canonical.reshape(SHAPE), subject.seg > 0)


def test_save_like_oblique_affine(tmp_path):
    angle = np.deg2rad(20)
    affine = canonical_affine()
    affine[:3, :3] = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]) @ affine[:3, :3]
    files = write_subject(tmp_path, affine=affine, codes="LPS")
    subject = load_subject(files)
    out = save_like(subject.sequence("t1n"), subject, tmp_path / "t1n_back.nii.gz", dtype=np.int16)
    assert_same_geometry(out, files.paths["t1n"])
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), np.asanyarray(nib.load(files.paths["t1n"]).dataobj))


def test_save_like_never_overwrites_silently(tmp_path):
    subject = load_subject(write_subject(tmp_path / "in", codes="LPS"))
    target = tmp_path / "out.nii.gz"
    save_like(subject.sequence("t1n"), subject, target)
    with pytest.raises(OutputExistsError, match="already exists") as info:
        save_like(subject.sequence("t1c"), subject, target)
    assert isinstance(info.value, BrainLDMError) and isinstance(info.value, FileExistsError)
    np.testing.assert_array_equal(nib.as_closest_canonical(nib.load(target)).get_fdata(), subject.sequence("t1n"))
    save_like(subject.sequence("t1c"), subject, target, overwrite=True)
    np.testing.assert_array_equal(nib.as_closest_canonical(nib.load(target)).get_fdata(), subject.sequence("t1c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.nii.gz"]  # no temporary files left


def test_save_like_phantom_and_bad_arguments(tmp_path):
    volumes = synthetic_volumes()
    images = np.stack([volumes[s] for s in SEQUENCES]).astype(np.float32)
    phantom = Subject(subject_id="phantom", images=images, affine=canonical_affine())
    out = save_like(images[0], phantom, tmp_path / "phantom.nii.gz")
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, canonical_affine())
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
    np.testing.assert_array_equal(written.get_fdata(), images[0])

    with pytest.raises(ValueError, match="does not match"):
        save_like(images[0, :-1], phantom, tmp_path / "wrong.nii.gz")
    with pytest.raises(SettingsError, match=r"\.nii"):
        save_like(images[0], phantom, tmp_path / "wrong.png")
    with pytest.raises(ValueError, match="do not fit"):
        save_like(images[0] * 1000, phantom, tmp_path / "overflow.nii.gz", dtype=np.int16)


# ------------------------------------------------------------------------------------------
# real subjects (../shared/data)
# ------------------------------------------------------------------------------------------

GLI = "BraTS-GLI-00001-000"
MET = "BraTS-MET-00110-000"


@pytest.fixture(scope="module")
def real_subjects(request) -> dict[str, Subject]:
    root = request.getfixturevalue("shared_data") / "brats_like"
    found = {s.subject_id: s for s in find_subjects(root)}
    return {sid: load_subject(found[sid]) for sid in (GLI, MET)}


@pytest.mark.shared_data
def test_real_folder_is_found_with_pseudo_labels(shared_data):
    subjects, skipped = find_subjects(shared_data / "brats_like", return_skipped=True)
    assert skipped == []
    assert [s.subject_id for s in subjects] == [GLI, MET, "TCGA-DU-7294"]
    assert all(s.seg is not None and s.seg.name.endswith("-seg-pseudo.nii.gz") for s in subjects)


@pytest.mark.shared_data
def test_real_subjects_align_only_after_reorientation(real_subjects):
    gli, met = real_subjects[GLI], real_subjects[MET]
    raw = {sid: np.asanyarray(nib.load(s.paths["t1n"]).dataobj) != 0 for sid, s in real_subjects.items()}
    assert nib.aff2axcodes(nib.load(gli.paths["t1n"]).affine) != nib.aff2axcodes(nib.load(met.paths["t1n"]).affine)
    assert dice(raw[GLI], raw[MET]) < 0.85  # stored arrays are flipped relative to each other
    assert dice(brain_mask(gli.images), brain_mask(met.images)) > 0.85
    for subject in (gli, met):
        assert nib.aff2axcodes(subject.affine) == ("R", "A", "S")
        assert subject.shape == (240, 240, 155)
        assert subject.seg is not None and subject.seg.any()
        # the tumour lies inside the brain
        assert np.count_nonzero((subject.seg > 0) & ~brain_mask(subject.images)) == 0


@pytest.mark.shared_data
@pytest.mark.parametrize("subject_id", [GLI, MET])
def test_real_subject_written_back_is_identical(real_subjects, subject_id, tmp_path):
    subject = real_subjects[subject_id]
    for name, array in (("t2f", subject.sequence("t2f")), ("seg", subject.seg)):
        reference = Path(subject.paths[name])
        dtype = nib.load(reference).get_data_dtype()
        out = save_like(array, subject, tmp_path / f"{name}.nii.gz", dtype=dtype)
        assert_same_geometry(out, reference)
        np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), np.asanyarray(nib.load(reference).dataobj))
