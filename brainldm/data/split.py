"""Deterministic train / validation / test split of subject ids (80/10/10 by default, thesis §3.4.1).

Each id is hashed (SHA-256 of ``salt`` and the id) to a number ``u`` in [0, 1):

* ``method="hash"`` (default): ``u < train`` -> train, ``u < train + val`` -> val, else test.
  An id's subset depends on nothing but the id and the salt, so adding subjects never moves
  existing ones (no leakage between runs on a growing data set). Subset sizes are only
  approximately 80/10/10, and a tiny data set may get an empty val or test subset.
* ``method="rank"``: ids sorted by ``u`` and cut at the exact fractions (val and test get at
  least one subject each when there are 3 or more). Adding subjects may move a few ids near the cuts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from brainldm.errors import SettingsError

SUBSETS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the three subsets, the salt that seeds the hash, and the method (see module doc)."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "brainldm-split-v1"
    method: Literal["hash", "rank"] = "hash"

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise SettingsError(f"split fractions must be >= 0 and sum to 1, got train/val/test = {fractions}.")
        if self.method not in ("hash", "rank"):
            raise SettingsError(f"split method must be 'hash' or 'rank', got {self.method!r}.")


@dataclass(frozen=True)
class DataSplit:
    """Subject ids per subset, each sorted; every id is in exactly one subset."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def subset_of(self, subject_id: str) -> str:
        """``"train"``, ``"val"`` or ``"test"``; ``KeyError`` for an unknown id."""
        for name in SUBSETS:
            if subject_id in getattr(self, name):
                return name
        raise KeyError(subject_id)

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in SUBSETS}

    @classmethod
    def from_dict(cls, values: dict[str, Iterable[str]]) -> DataSplit:
        return cls(*(tuple(sorted(values.get(name, ()))) for name in SUBSETS))


def hash_fraction(subject_id: str, salt: str = SplitConfig.salt) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``subject_id`` (same on every machine and run)."""
    digest = hashlib.sha256(f"{salt}\x00{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_subjects(subject_ids: Iterable[str], config: SplitConfig = SplitConfig()) -> DataSplit:
    """Split ``subject_ids`` into train/val/test deterministically (order of the input does not matter)."""
    ids = [str(s) for s in subject_ids]
    duplicates = sorted(s for s, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise SettingsError(f"subject ids must be unique; repeated: {', '.join(duplicates[:10])}.")
    fraction = {s: hash_fraction(s, config.salt) for s in ids}
    subsets: dict[str, list[str]] = {name: [] for name in SUBSETS}
    if config.method == "hash":
        for s in ids:
            u = fraction[s]
            name = "train" if u < config.train else "val" if u < config.train + config.val else "test"
            subsets[name].append(s)
    else:
        ranked = sorted(ids, key=lambda s: (fraction[s], s))
        n = len(ranked)
        n_val = round(config.val * n)
        n_test = round(config.test * n)
        if n >= 3:
            n_val = max(n_val, 1 if config.val > 0 else 0)
            n_test = max(n_test, 1 if config.test > 0 else 0)
        n_train = max(n - n_val - n_test, 0)
        subsets["train"] = ranked[:n_train]
        subsets["val"] = ranked[n_train : n_train + n_val]
        subsets["test"] = ranked[n_train + n_val :]
    return DataSplit(*(tuple(sorted(subsets[name])) for name in SUBSETS))
