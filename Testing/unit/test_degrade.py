"""MRI degradation pipelines (thesis Algorithms 1-2, Table B.5) and ``brainldm degrade``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from brainldm.cli import main
from brainldm.errors import InputDataError, SettingsError
from brainldm.sr import degrade as D

REPO = Path(__file__).resolve().parents[2]


def _slice(n: int = 64, channels: int = 4, seed: int = 0) -> np.ndarray:
    """A brain-like test slice in [-1, 1]: textured ellipse on a -1 background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    inside = ((xx - n / 2) / (0.4 * n)) ** 2 + ((yy - n / 2) / (0.33 * n)) ** 2 < 1
    texture = 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.1 * np.sin(xx / 2.0) + 0.03 * rng.standard_normal((n, n))
    brain = np.clip(0.3 + texture, -0.9, 1.0)
    return np.stack([np.where(inside, brain * (0.9 + 0.05 * c), -1.0) for c in range(channels)]).astype(np.float32)


def _high_frequency_energy(image: np.ndarray) -> float:
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image))) ** 2
    n = image.shape[0]
    f = np.fft.fftshift(np.fft.fftfreq(n))
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    return float(spectrum[radius > 0.25].sum())


def _relative_roughness(field: np.ndarray) -> tuple[float, float]:
    """Largest first and second differences between neighbouring pixels, relative to the field."""
    f = field.astype(np.float64)
    first = max(np.abs(np.diff(f, 1, axis=a) / np.delete(f, -1, axis=a)).max() for a in (0, 1))
    second = max(np.abs(np.diff(f, 2, axis=a) / np.delete(np.delete(f, -1, axis=a), 0, axis=a)).max() for a in (0, 1))
    return first, second


# ------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("pipeline", ["mri", "esrgan"])
def test_same_seed_same_output_and_record(pipeline):
    image = _slice()
    a = D.degrade(image, pipeline, 7, scale=2, target_shape="input")
    b = D.degrade(image, pipeline, 7, scale=2, target_shape="input")
    c = D.degrade(image, pipeline, 8, scale=2, target_shape="input")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lr, b.lr)
    assert a.record == b.record
    json.dumps(a.record)  # the record is plain JSON
    assert not np.array_equal(a.image, c.image)


def test_parameters_drawn_depend_on_the_seed_not_on_the_image_size():
    small = D.degrade(_slice(32, channels=1), "mri", 12, scale=2).record["levels"]
    volume = np.repeat(_slice(80)[..., None], 3, axis=-1)
    large = D.degrade(volume, "mri", 12, scale=2).record["levels"]
    strip = [[{k: v for k, v in op.items() if k != "shape"} for op in level["ops"]] for level in small]
    assert strip == [[{k: v for k, v in op.items() if k != "shape"} for op in level["ops"]] for level in large]


def test_output_shape_equals_the_target():
    image = _slice(60)
    assert D.degrade(image, "mri", 0, scale=2).image.shape == (4, 30, 30)  # default: low-resolution grid
    assert D.degrade(image, "mri", 0, scale=4).lr.shape == (4, 15, 15)  # Table B.5 factor 4
    assert D.degrade(image, "mri", 0, scale=2, target_shape="input").image.shape == (4, 60, 60)
    assert D.degrade(image[0], "esrgan", 0, scale=2, target_shape=(45, 50)).image.shape == (45, 50)
    volume = np.repeat(_slice(32, channels=1)[..., None], 6, axis=-1)
    inplane = D.degrade(volume, "mri", 0, scale=2)
    assert inplane.image.shape == (1, 16, 16, 6)  # axial slices degraded in-plane, Z kept
    assert D.degrade(volume, "mri", 0, scale=2, axes="all").image.shape == (1, 16, 16, 3)
    with pytest.raises(SettingsError, match="not degraded"):
        D.degrade(volume, "mri", 0, scale=2, target_shape=(32, 32, 12))


def test_resize_factors_stay_in_the_table_b5_ranges():
    cfg = D.mri_config()
    rng = np.random.default_rng(0)
    for level, (low, high), probs in zip(cfg.levels, [(0.3, 1.5), (0.6, 1.2)], [(0.2, 0.7, 0.1), (0.3, 0.4, 0.3)]):
        assert level.resize_range == (low, high) and level.resize_probs == probs
        draws = [D.sample_resize(level, cfg.resize_modes, (100, 100), rng) for _ in range(3000)]
        factors = np.array([d["factor"] for d in draws])
        assert low <= factors.min() and factors.max() <= high
        assert factors.min() < low + 0.05 and factors.max() > high - 0.05  # the whole range is used
        for d in draws:
            assert {"up": d["factor"] >= 1, "down": d["factor"] <= 1, "keep": d["factor"] == 1}[d["direction"]]
            assert d["shape"] == [round(100 * d["factor"])] * 2
        share = {k: np.mean([d["direction"] == k for d in draws]) for k in ("up", "down", "keep")}
        assert all(abs(share[k] - p) < 0.04 for k, p in zip(("up", "down", "keep"), probs))
    # the pipeline really resamples to the recorded sizes (level 2 relative to the low-resolution grid)
    for seed in range(20):
        sizes: list[tuple[str, tuple[int, ...]]] = []

        def keep(label: str, u: np.ndarray, sizes=sizes) -> None:
            sizes.append((label, u.shape[1:]))

        record = D.degrade(_slice(48, channels=1), "mri", seed, scale=2, on_step=keep).record
        for level in record["levels"]:
            resize = next(op for op in level["ops"] if op["op"] == "resize")
            base = 48 if level["level"] == 1 else 24
            assert resize["shape"][0] == max(1, round(base * resize["factor"]))
            if resize["applied"]:
                assert any(shape == tuple(resize["shape"]) for label, shape in sizes if "resize" in label)


def test_resize_follows_the_pixel_centre_convention():
    x = np.random.default_rng(0).random((2, 8, 6)).astype(np.float32)
    area = D.resize(x, (4, 3), (1, 2), "area")
    assert np.allclose(area, x.reshape(2, 4, 2, 3, 2).mean(axis=(2, 4)), atol=1e-6)  # 2x2 block means
    ramp = np.arange(10, dtype=np.float32)[None, :, None] * np.ones((1, 1, 3), np.float32)
    up = D.resize(ramp, (20, 3), (1, 2), "linear")[0, :, 0]
    assert np.allclose(up[1:-1], (np.arange(1, 19) + 0.5) / 2 - 0.5, atol=1e-5)  # centres at (j + 0.5) / 2 - 0.5
    for mode in ("area", "linear", "cubic", "nearest"):  # every mode keeps a constant image constant
        for n_out in (3, 7, 25):
            assert np.allclose(D.interpolation_matrix(10, n_out, mode).sum(axis=1), 1.0)
    labels = np.random.default_rng(1).integers(0, 4, (1, 9, 9)).astype(np.float32)
    assert set(np.unique(D.resize(labels, (4, 5), (1, 2), "nearest"))) <= set(np.unique(labels))


def test_nan_input_is_a_clear_error():
    image = _slice()
    image[0, 10, 10] = np.nan
    with pytest.raises(InputDataError, match=r"1 value\(s\) that are not finite \(1 NaN"):
        D.degrade(image, "mri", 0)
    image[0, 10, 10] = np.inf
    with pytest.raises(InputDataError, match="infinite"):
        D.degrade(image, "mri", 0)


def test_raw_intensities_need_value_range_raw_and_keep_their_scale():
    raw = (_slice() + 1.0) * 800.0  # scanner-like magnitudes, background 0
    with pytest.raises(SettingsError, match="value_range='raw'"):
        D.degrade(raw, "mri", 0)
    with pytest.raises(InputDataError, match="without a channel axis"):
        D.degrade(np.zeros((30, 30, 30)), "mri", 0)
    result = D.degrade(raw, "mri", 3, scale=2, value_range="raw", target_shape="input")
    brain = raw[0] > 0
    assert 0.7 < np.median(result.image[0][brain]) / np.median(raw[0][brain]) < 1.4
    assert np.all(result.image[:, ~brain] == 0)  # skull-stripped background stays 0
    assert result.record["intensity_reference"][0] > 0


def test_background_stays_at_the_background_value_in_symmetric_range():
    image = _slice(64)
    for seed in range(5):
        result = D.degrade(image, "mri", seed, scale=2, target_shape="input")
        assert result.image.min() >= -1.0 and result.image.max() <= 1.0
        outside = (image == -1.0).all(axis=0)
        outside_far = outside & np.roll(outside, 3, 0) & np.roll(outside, -3, 0) & np.roll(outside, 3, 1) & np.roll(outside, -3, 1)
        assert np.all(result.image[:, outside_far] == -1.0)
    unmasked = D.degrade(image, D.mri_config().with_changes(mask_background=False), 0, scale=2)
    assert (unmasked.lr > -1.0).mean() > 0.9  # without the mask, magnitude noise fills the background


def test_no_degradation_draw_only_resamples():
    cfg = D.esrgan_config().with_changes(no_degradation_p=1.0)
    result = D.degrade(_slice(), cfg, 0, scale=2)
    assert result.record["no_degradation"] and result.record["levels"] == []
    plain = D.resize((_slice() + 1) / 2, (32, 32), (1, 2), result.record["lr_mode"])
    inside = result.lr > -1
    assert np.allclose((result.lr[inside] + 1) / 2, np.clip(plain, 0, 1)[inside], atol=1e-5)


def test_both_pipelines_have_two_levels_with_the_table_b5_noise_models():
    mri, esrgan = D.mri_config(), D.esrgan_config()
    assert len(mri.levels) == len(esrgan.levels) == 2
    assert dict(mri.kernel_probs) == {"iso": 0.4, "aniso": 0.6}
    assert dict(mri.levels[0].noise_probs) == {"gaussian": 0.45, "rician": 0.45, "chi": 0.1}
    assert dict(esrgan.levels[1].noise_probs) == {"gaussian": 0.5, "poisson": 0.5}
    assert (mri.levels[0].bias_p, mri.levels[1].bias_p) == (0.2, 0.1)
    assert mri.levels[0].motion_p == mri.levels[0].ghosting_p == 0.0  # off in the thesis's final pipeline
    with pytest.raises(SettingsError, match="add up to 1"):
        mri.with_changes(kernel_probs=(("iso", 0.5), ("aniso", 0.4)))
    with pytest.raises(SettingsError, match="choose one of mri, esrgan"):
        D.pipeline_config("bsrgan")
    # the noise type drawn per level follows the table's probabilities
    rng = np.random.default_rng(1)
    kinds = [D.sample_noise(mri, mri.levels[0], rng)["type"] for _ in range(4000)]
    assert abs(kinds.count("chi") / 4000 - 0.1) < 0.02 and abs(kinds.count("rician") / 4000 - 0.45) < 0.03


# ------------------------------------------------------------------------------- noise statistics


def test_rician_noise_on_zero_signal_is_rayleigh():
    sigma = 0.03
    m = D.add_rician_noise(np.zeros((1, 1000, 1000), np.float32), sigma, np.random.default_rng(0)).ravel()
    assert m.min() >= 0
    assert abs(m.mean() - sigma * math.sqrt(math.pi / 2)) < 0.005 * sigma * math.sqrt(math.pi / 2)
    assert abs(np.mean(m.astype(np.float64) ** 2) - 2 * sigma**2) < 0.01 * 2 * sigma**2
    assert stats.kstest(m[:20000] / sigma, stats.rayleigh.cdf).pvalue > 0.01


def test_rician_noise_on_signal_has_the_rician_moments():
    a, sigma = 0.5, 0.05
    m = D.add_rician_noise(np.full((1, 500, 500), a, np.float32), sigma, np.random.default_rng(1)).ravel()
    assert abs(np.mean(m.astype(np.float64) ** 2) - (a**2 + 2 * sigma**2)) < 0.005 * a**2
    assert abs(m.mean() - stats.rice(a / sigma, scale=sigma).mean()) < 2e-4


@pytest.mark.parametrize("coils", [1, 2, 3])
def test_noncentral_chi_noise_with_coils(coils):
    sigma = 0.02
    zero = D.add_chi_noise(np.zeros((1, 600, 600), np.float32), sigma, coils, np.random.default_rng(coils)).ravel()
    expected = stats.chi(2 * coils, scale=sigma).mean()  # central chi with 2L degrees of freedom
    assert abs(D.noise_mean_on_zero_signal(sigma, coils) - expected) < 1e-12
    assert abs(zero.mean() - expected) < 0.005 * expected
    assert abs(np.mean(zero.astype(np.float64) ** 2) - 2 * coils * sigma**2) < 0.01 * 2 * coils * sigma**2
    a = 0.3
    signal = D.add_chi_noise(np.full((1, 600, 600), a, np.float32), sigma, coils, np.random.default_rng(9)).ravel()
    assert abs(np.mean(signal.astype(np.float64) ** 2) - (a**2 + 2 * coils * sigma**2)) < 0.002 * a**2


def test_gaussian_and_poisson_noise_strengths():
    x = np.full((1, 500, 500), 0.4, np.float32)
    g = D.add_gaussian_noise(x, 10 / 255, np.random.default_rng(0)) - x
    assert abs(g.mean()) < 1e-3 and abs(g.std() - 10 / 255) < 0.01 * 10 / 255
    p = D.add_poisson_noise(x, 1.5, np.random.default_rng(0)) - x
    assert abs(p.mean()) < 1e-3 and abs(p.std() - 1.5 * math.sqrt(0.4 / 255)) < 0.02 * 1.5 * math.sqrt(0.4 / 255)


# ------------------------------------------------------------------------------- blur, bias, artefacts


@pytest.mark.parametrize("kind", D.KERNELS)
def test_blur_removes_high_frequency_energy(kind):
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    kernel = D.blur_kernel(kind, (1.0, 0.6), None, 13, beta=1.5)
    assert abs(kernel.sum() - 1) < 1e-5 and kernel.min() >= 0
    blurred = D.blur(image, kernel, (1, 2))
    assert abs(blurred.mean() - image.mean()) < 0.01  # blur keeps brightness
    assert _high_frequency_energy(blurred[0]) < 0.3 * _high_frequency_energy(image[0])


def test_anisotropic_gaussian_kernel_has_the_drawn_covariance():
    theta = math.radians(30)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    kernel = D.blur_kernel("aniso", (1.4, 0.5), rotation, 21).astype(np.float64)
    grid = np.stack(np.meshgrid(np.arange(-10, 11), np.arange(-10, 11), indexing="ij"), -1)
    covariance = np.einsum("ij,ija,ijb->ab", kernel, grid, grid)
    assert np.allclose(covariance, rotation @ np.diag([1.4**2, 0.5**2]) @ rotation.T, atol=1e-3)


def test_bias_field_is_smooth_positive_and_multiplicative():
    rng = np.random.default_rng(0)
    for bound in (0.1, 1.0):
        coefficients = rng.uniform(-bound, bound, len(D._polynomial_terms(2, 3)))
        field = D.bias_field((96, 96), coefficients, 3)
        assert field.min() > 0 and abs(field.mean() - 1) < 1e-5
        # smooth: its logarithm is a cubic polynomial of the coordinates (low-degree basis,
        # Eq. 2.42), and neighbouring pixels differ little
        u = np.linspace(-1, 1, 96)
        uu, vv = np.meshgrid(u, u, indexing="ij")
        basis = np.stack([uu**i * vv**j for i in range(4) for j in range(4 - i)], -1).reshape(-1, 10)
        fit = np.linalg.lstsq(basis, np.log(field).ravel().astype(np.float64), rcond=None)
        assert np.abs(basis @ fit[0] - np.log(field).ravel()).max() < 1e-4
        assert _relative_roughness(field) < (0.2, 0.04)
    assert _relative_roughness(np.random.default_rng(0).random((96, 96)) + 0.5) > (0.2, 0.04)  # noise is not smooth
    image = np.full((2, 96, 96), 0.5, np.float32)
    applied = D.apply_bias_field(image, field, (1, 2))
    assert np.allclose(applied / image, field[None])


def test_motion_and_ghosting_artefacts():
    x = np.zeros((1, 64, 64), np.float32)
    x[0, 24:40, 20:44] = 1.0
    # no movement and no attenuation change nothing
    assert np.allclose(D.motion_artefact(x, [0.0, 0.0], [(0, 0), (0, 0)], [0.33, 0.66], (1, 2)), x, atol=1e-5)
    assert np.allclose(D.ghosting_artefact(x, 4, 1, 0.0, (1, 2)), x, atol=1e-5)
    moved = D.motion_artefact(x, [10.0, -10.0], [(2, 2), (-2, -2)], [0.33, 0.66], (1, 2))
    assert np.abs(moved - x).mean() > 0.01
    # ghosts: copies of the object shifted by N / count along the ghosting axis
    ghosted = D.ghosting_artefact(x, 4, 1, 1.0, (1, 2))
    copy = ghosted[0, 24 + 16 + 2:40 + 16 - 2, 24:40]  # the first ghost, a quarter of the field further
    assert copy.mean() > 0.05 and ghosted[0, 24:40, 24:40].mean() > 0.5
    # switched on in the configuration, they are drawn, recorded and applied
    level = D.mri_config().levels[0]
    cfg = D.mri_config().with_changes(levels=(type(level)(**{**level.__dict__, "motion_p": 1.0, "ghosting_p": 1.0}),))
    ops = [op["op"] for op in D.degrade(_slice(), cfg, 0, scale=2).record["levels"][0]["ops"] if op["applied"]]
    assert "motion" in ops and "ghosting" in ops


# ------------------------------------------------------------------------------- SR pairs


def test_sr_pair_has_the_2x_scale_and_the_hr_grid_condition():
    hr = _slice(96)
    pair = D.make_sr_pair(hr, "mri", seed=4)
    assert pair.lr.shape == (4, 48, 48) and pair.condition.shape == hr.shape
    assert np.array_equal(pair.hr, hr)
    assert pair.condition.min() >= -1 and pair.condition.max() <= 1
    inside = (hr > -1).all(axis=0)
    assert np.corrcoef(pair.condition[0][inside], hr[0][inside])[0, 1] > 0.5  # same anatomy
    again = D.make_sr_pair(hr, "mri", seed=4)
    assert np.array_equal(again.condition, pair.condition) and pair.record["scale"] == 2.0


def test_real_slice_degrades_to_a_plausible_low_resolution_image(shared_data):
    image = nib.as_closest_canonical(nib.load(shared_data / "brats_like/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz"))
    hr = np.asarray(image.dataobj, dtype=np.float32)[None, :, :, 80]
    for pipeline in ("mri", "esrgan"):
        result = D.degrade(hr, pipeline, 5, scale=2, value_range="raw")
        reference = D.resize(hr, (120, 120), (1, 2), "area")
        brain = reference[0] > 0.2 * np.percentile(hr[hr > 0], 99)
        assert result.lr.shape == (1, 120, 120)
        assert np.corrcoef(result.lr[0][brain], reference[0][brain])[0, 1] > 0.6
        assert not np.allclose(result.lr[0][brain], reference[0][brain], rtol=0.01)
        assert np.all(result.lr[0][D.resize((hr > 0).astype(np.float32), (120, 120), (1, 2), "linear")[0] < 0.5] == 0)


# ------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def phantom_slab(tmp_path_factory) -> Path:
    """A phantom subject cut to 8 axial slices through its tumour, stored LPS like BraTS GLI files."""
    from brainldm.data.phantom import PhantomSpec, generate_phantom
    from brainldm.data.sequences import SEQUENCES

    result = generate_phantom(PhantomSpec(seed=11, lesion_diameter_mm=15, vessels=False, deformation_mm=0.0))
    subject = result.subject
    z = result.tumours[0].axial_slice
    brain = (subject.images > 0).any(axis=0)
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    box = (slice(xs[0] - 2, xs[-1] + 3), slice(ys[0] - 2, ys[-1] + 3), slice(z - 4, z + 4))
    shift = np.eye(4)
    shift[:3, 3] = [box[0].start, box[1].start, box[2].start]
    affine = subject.affine @ shift
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS -> LPS voxel order
    nx, ny = box[0].stop - box[0].start, box[1].stop - box[1].start
    flip[:2, 3] = [nx - 1, ny - 1]
    lps_affine = affine @ flip
    folder = tmp_path_factory.mktemp("phantom") / "Slab-00011"
    folder.mkdir()
    for i, seq in enumerate(SEQUENCES):
        data = subject.images[i][box][::-1, ::-1]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), lps_affine), folder / f"Slab-00011-{seq}.nii.gz")
    seg = subject.seg[box][::-1, ::-1].astype(np.int16)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(seg), lps_affine), folder / "Slab-00011-seg.nii.gz")
    return folder


def test_cli_degrades_a_subject_with_correct_geometry_and_refuses_to_overwrite(phantom_slab, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["degrade", str(phantom_slab), "--pipeline", "mri", "--out", str(out), "--seed", "3", "--png"]) == 0
    folder = out / "Slab-00011"
    source = nib.as_closest_canonical(nib.load(phantom_slab / "Slab-00011-t2f.nii.gz"))
    degraded = nib.load(folder / "Slab-00011-t2f.nii.gz")
    nx, ny, nz = source.shape
    assert degraded.shape == (round(nx / 2), round(ny / 2), nz)
    assert np.allclose(degraded.header.get_zooms(), (nx / round(nx / 2), ny / round(ny / 2), 1.0), atol=1e-4)
    # each low-resolution voxel sits at the centre of the high-resolution voxels it covers
    fx, fy = nx / degraded.shape[0], ny / degraded.shape[1]
    for i, j, k in [(0, 0, 0), (10, 20, 3), (degraded.shape[0] - 1, degraded.shape[1] - 1, nz - 1)]:
        centre = source.affine @ [(i + 0.5) * fx - 0.5, (j + 0.5) * fy - 0.5, k, 1]
        assert np.allclose(degraded.affine @ [i, j, k, 1], centre, atol=1e-4)
    # ... and holds the same anatomy (orientation handled): strong correlation with the source
    hr = np.asarray(source.dataobj, dtype=np.float32)
    lr = np.asarray(degraded.dataobj)
    ref = D.resize(hr[None], degraded.shape[:2], (1, 2), "area")[0]
    brain = ref > 0.2 * ref.max()
    assert np.corrcoef(lr[brain], ref[brain])[0, 1] > 0.7
    labels = np.asarray(nib.load(folder / "Slab-00011-seg.nii.gz").dataobj)
    source_labels = np.asarray(nib.load(phantom_slab / "Slab-00011-seg.nii.gz").dataobj)
    assert labels.shape == degraded.shape and labels.any()
    assert set(np.unique(labels)) <= set(np.unique(source_labels))  # nearest neighbour: no new labels
    # the tumour stays where it was in world coordinates (orientation and affine are right)
    seg_image = nib.load(phantom_slab / "Slab-00011-seg.nii.gz")

    def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return (affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]

    before = world_centroid(source_labels > 0, seg_image.affine)
    after = world_centroid(labels > 0, nib.load(folder / "Slab-00011-seg.nii.gz").affine)
    assert np.linalg.norm(after - before) < 1.5  # mm; a flipped axis would move it by centimetres
    record = json.loads((folder / "Slab-00011-degradation.json").read_text())
    assert record["pipeline"] == "mri" and record["seed"] == 3 and len(record["levels"]) == 2
    assert (folder / "Slab-00011-degradation.png").stat().st_size > 20_000
    for seq in ("t1n", "t1c", "t2w"):
        assert (folder / f"Slab-00011-{seq}.nii.gz").exists()
    capsys.readouterr()

    # never overwrites without --overwrite; the message says what to do
    assert main(["degrade", str(phantom_slab), "--out", str(out), "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((folder / "Slab-00011-degradation.json").read_text())["seed"] == 3
    assert main(["degrade", str(phantom_slab), "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert np.array_equal(np.asarray(nib.load(folder / "Slab-00011-t2f.nii.gz").dataobj), lr)  # same seed, same output


def test_cli_degrades_a_single_file_in_3d_with_esrgan(phantom_slab, tmp_path, capsys):
    source = phantom_slab / "Slab-00011-t1c.nii.gz"
    out = tmp_path / "single"
    assert main(["degrade", str(source), "--pipeline", "esrgan", "--out", str(out), "--volume", "--scale", "2"]) == 0
    degraded = nib.load(out / source.name)
    assert degraded.shape == tuple(round(s / 2) for s in nib.load(source).shape)
    assert np.allclose(degraded.header.get_zooms(), (2.0, 2.0, 2.0), atol=0.1)
    assert json.loads((out / "Slab-00011-t1c-degradation.json").read_text())["degraded_axes"] == [0, 1, 2]
    # writing onto the input, a missing input and a non-NIfTI file are clear errors
    assert main(["degrade", str(source), "--out", str(phantom_slab)]) == 2
    assert "replace an input file" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["degrade", str(tmp_path / "notes.txt"), "--out", str(out)]) == 2
    assert "not a NIfTI file" in capsys.readouterr().err


def test_diffusion_and_detect_do_not_import_sr():
    pattern = re.compile(r"^\s*(from|import)\s+brainldm\.sr\b|^\s*from\s+brainldm\s+import\s+.*\bsr\b", re.MULTILINE)
    for package in ("diffusion", "detect"):
        for path in (REPO / "brainldm" / package).rglob("*.py"):
            assert not pattern.search(path.read_text()), f"{path} imports brainldm.sr"
