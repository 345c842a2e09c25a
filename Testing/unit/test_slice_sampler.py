"""The vectorised 2D samplers (brainldm.train.slice_sampler) draw exactly the windows that the
per-patch samplers of brainldm.train.data would cut for the same indices, with the same class mix."""

import numpy as np
import pytest
import torch

from brainldm.data.phantom import make_phantom_dataset
from brainldm.train.data import (
    ImagePatch,
    ImagePatchSampler,
    LatentPatch,
    LatentPatchSampler,
    LatentRecord,
    VolumeRecord,
)
from brainldm.train.slice_sampler import (
    DeviceImageSliceSampler,
    DeviceSliceSampler,
    stacked_bytes,
    stacked_image_bytes,
)


def latent_records(seed: int = 0) -> list[LatentRecord]:
    """Subjects of different grids, one without tumour, each with a flipped copy."""
    rng = np.random.default_rng(seed)
    records = []
    for i, (x, y, z) in enumerate([(22, 26, 30), (24, 22, 25), (20, 20, 18)]):
        latent = rng.normal(size=(8, x, y, z)).astype(np.float32)
        brain = np.zeros((x, y, z), bool)
        brain[2:-2, 2:-2, 3:-3] = True
        tumour = None
        if i < 2:
            tumour = np.zeros((x, y, z), bool)
            tumour[5 + i:9 + i, 6:10, 10:14] = True
        records.append(LatentRecord(f"S{i}", latent, brain, tumour))
        records.append(LatentRecord(f"S{i}", latent[:, ::-1].copy(), brain[::-1].copy(),
                                    None if tumour is None else tumour[::-1].copy(), flipped=True))
    return records


def test_device_slice_sampler_windows_and_labels_are_exact():
    records = latent_records()
    sampler = DeviceSliceSampler(records, (16, 16), 0.5, np.random.default_rng(1), flip_prob=0.5)
    reference = LatentPatchSampler(records, (16, 16), 0.5, "distance", np.random.default_rng(0), 0.5)
    sampler.rng = np.random.default_rng(7)
    batch = sampler.sample(64)
    sampler.rng = np.random.default_rng(7)
    record, slices, starts = sampler.draw_indices(64)
    assert batch["z"].shape == (64, 8, 16, 16) and batch["labels"].dtype == torch.long
    for k in range(64):
        patch = LatentPatch(int(record[k]), (int(starts[k, 0]), int(starts[k, 1])), -1, int(slices[k]))
        assert np.array_equal(reference.extract(patch), batch["z"][k].numpy())
        tumour = records[record[k]].tumour
        window = (tumour is not None
                  and tumour[starts[k, 0]:starts[k, 0] + 16, starts[k, 1]:starts[k, 1] + 16, slices[k]].any())
        assert int(batch["labels"][k]) == int(window)
        assert np.array_equal(batch["extent"][k].numpy(), records[record[k]].grid[:2])
        assert records[record[k]].brain[..., slices[k]].any()


def test_device_slice_sampler_class_mix_matches_the_per_patch_sampler():
    records = latent_records()
    fast = DeviceSliceSampler(records, (16, 16), 0.5, np.random.default_rng(2), flip_prob=0.5)
    slow = LatentPatchSampler(records, (16, 16), 0.5, "distance", np.random.default_rng(3), 0.5)
    n = 4000
    fast_batch, slow_batch = fast.sample(n), slow.sample(n)
    assert abs(float(fast_batch["labels"].float().mean()) - float(slow_batch["labels"].float().mean())) < 0.04
    # flipped copies are used about half the time
    record, _, _ = fast.draw_indices(n)
    flipped = np.array([records[i].flipped for i in record])
    assert 0.45 < flipped.mean() < 0.55


def test_device_slice_sampler_with_no_tumour_anywhere_gives_healthy_windows():
    records = [r for r in latent_records() if r.tumour is None]
    batch = DeviceSliceSampler(records, (16, 16), 0.5, np.random.default_rng(0)).sample(32)
    assert int(batch["labels"].sum()) == 0


def test_stack_size_of_the_padded_latents():
    records = latent_records()
    assert stacked_bytes(records) == 6 * 8 * 24 * 26 * 30 * 4  # padded to the largest grid
    assert stacked_bytes([]) == 0


@pytest.mark.parametrize("shape", [(4, 40, 52, 12), (4, 20, 30, 6)])
def test_device_image_sampler_matches_the_per_patch_sampler(shape):
    rng = np.random.default_rng(5)
    records = []
    for i in range(3):
        images = rng.uniform(-1, 1, size=(shape[0], shape[1] + i, shape[2] - i, shape[3])).astype(np.float32)
        mask = np.zeros(images.shape[1:], bool)
        mask[3:-3, 3:-3, 2:-2] = True
        records.append(VolumeRecord(f"S{i}", images, mask, None))
    sampler = DeviceImageSliceSampler(records, (32, 32), 0.5, np.random.default_rng(0))
    reference = ImagePatchSampler(records, (32, 32), 0.5, np.random.default_rng(0))
    sampler.rng = np.random.default_rng(11)
    images, masks = sampler.sample(40)
    sampler.rng = np.random.default_rng(11)
    subject, slices, starts, flips = sampler.draw_indices(40)
    assert images.shape == (40, 4, 32, 32) and masks.shape == (40, 32, 32)
    assert flips.any() and not flips.all()
    for k in range(40):
        image, mask = reference.extract(ImagePatch(int(subject[k]), (int(starts[k, 0]), int(starts[k, 1])),
                                                   bool(flips[k]), int(slices[k])))
        assert np.array_equal(image, images[k].numpy()) and np.array_equal(mask, masks[k].numpy())
        assert records[subject[k]].mask[..., slices[k]].any()
    c, x, y, z = shape
    assert stacked_image_bytes(records) == 3 * z * (x + 2) * y * (c * 4 + 1)


def test_phantom_dataset_is_the_same_with_several_workers(tmp_path):
    one = make_phantom_dataset(tmp_path / "one", n=2, seed=9, diameters=(20,), healthy_fraction=0.5,
                               progress=False)
    two = make_phantom_dataset(tmp_path / "two", n=2, seed=9, diameters=(20,), healthy_fraction=0.5,
                               progress=False, workers=2)
    assert [p.name for p in one] == [p.name for p in two]
    assert (tmp_path / "one" / "phantoms.json").read_text() == (tmp_path / "two" / "phantoms.json").read_text()
    for a, b in zip(one, two):
        for file in sorted(a.iterdir()):
            assert file.read_bytes() == (b / file.name).read_bytes(), file.name
