"""Tests of brainldm.data.split: deterministic, disjoint, stable train/val/test split."""

from __future__ import annotations

import random

import pytest

from brainldm.data.split import DataSplit, SplitConfig, hash_fraction, split_subjects
from brainldm.errors import SettingsError

IDS = [f"BraTS-GLI-{i:05d}-000" for i in range(1000)]


def test_split_is_a_partition_with_about_80_10_10():
    split = split_subjects(IDS)
    everything = split.train + split.val + split.test
    assert sorted(everything) == sorted(IDS) and len(set(everything)) == len(IDS)
    assert 0.77 < len(split.train) / len(IDS) < 0.83
    assert 0.07 < len(split.val) / len(IDS) < 0.13
    assert 0.07 < len(split.test) / len(IDS) < 0.13
    assert list(split.train) == sorted(split.train)
    assert split.subset_of(split.val[0]) == "val"
    with pytest.raises(KeyError):
        split.subset_of("unknown")


def test_split_is_deterministic_and_order_independent():
    shuffled = IDS[:]
    random.Random(3).shuffle(shuffled)
    assert split_subjects(shuffled) == split_subjects(IDS)
    assert hash_fraction("abc") == hash_fraction("abc") != hash_fraction("abd")
    other_salt = split_subjects(IDS, SplitConfig(salt="another"))
    assert other_salt != split_subjects(IDS)


def test_adding_subjects_never_moves_existing_ones():
    before = split_subjects(IDS[:600])
    after = split_subjects(IDS)
    for subject_id in IDS[:600]:
        assert before.subset_of(subject_id) == after.subset_of(subject_id)


def test_rank_method_gives_exact_counts():
    split = split_subjects(IDS[:50], SplitConfig(method="rank"))
    assert (len(split.train), len(split.val), len(split.test)) == (40, 5, 5)
    tiny = split_subjects(["a", "b", "c"], SplitConfig(method="rank"))
    assert (len(tiny.train), len(tiny.val), len(tiny.test)) == (1, 1, 1)
    assert split_subjects(IDS[:50], SplitConfig(method="rank")) == split


def test_other_fractions_and_serialisation():
    split = split_subjects(IDS, SplitConfig(train=0.5, val=0.0, test=0.5))
    assert split.val == () and 400 < len(split.test) < 600
    assert DataSplit.from_dict(split.to_dict()) == split


def test_bad_input():
    with pytest.raises(SettingsError, match="sum to 1"):
        SplitConfig(train=0.8, val=0.1, test=0.2)
    with pytest.raises(SettingsError, match="method"):
        SplitConfig(method="random")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="repeated: a"):
        split_subjects(["a", "b", "a"])
