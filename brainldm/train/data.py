"""Training data: subjects from a folder, preprocessed once, split, and cut into random patches.

* :func:`prepare_training_data` finds the subjects in a data folder
  (:func:`brainldm.data.io.find_subjects`), lists incomplete or unreadable ones (never drops
  them silently), splits the rest into train / val / test (:mod:`brainldm.data.split`; test
  subjects are never touched), preprocesses each once (:func:`preprocess_subject`: brain
  mask, crop to the brain box, [-1, 1] normalisation) and keeps them in ``<run>/cache`` as
  ``.npy`` files read back memory-mapped. With several ranks each rank prepares its share.
* :class:`ImagePatchSampler` draws first-stage training patches: random boxes inside the
  cropped brain box (3D) or random axial slices holding brain (2D), with horizontal flips.
* :func:`encode_latents` runs the frozen first stage once over every subject and keeps the
  latent volumes (plus latent-grid brain and tumour masks); :class:`LatentPatchSampler`
  draws latent patches with HEALTHY / DISEASED labels and their position in the latent
  volume, using the healthy-patch distance sampler of :mod:`brainldm.data.sampling`
  (§3.3.2) in 3D and a slice-level healthy/diseased draw in 2D.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from brainldm.data.io import find_subjects, load_subject
from brainldm.data.preprocess import PreprocessConfig, preprocess_subject
from brainldm.data.split import DataSplit, SplitConfig, split_subjects
from brainldm.errors import BrainLDMError, SettingsError
from brainldm.train.distributed import DistributedContext
from brainldm.train.rundir import StopRequested, atomic_write_text

log = logging.getLogger("brainldm.train")

CACHE_VERSION = 1


# --------------------------------------------------------------------------- records


@dataclass
class VolumeRecord:
    """One preprocessed subject on its cropped grid (arrays may be memory-mapped)."""

    subject_id: str
    images: np.ndarray  # (4, x, y, z) float32 in [-1, 1], background -1
    mask: np.ndarray  # (x, y, z) bool brain
    tumour: np.ndarray | None  # (x, y, z) bool (seg > 0), None without a segmentation

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[1:])


@dataclass
class TrainingData:
    """Usable subjects split into train and val, plus the ones that were skipped and why."""

    data_dir: Path
    train: list[VolumeRecord]
    val: list[VolumeRecord]
    split: DataSplit
    skipped: list[str] = field(default_factory=list)
    validating_on_train: bool = False

    def summary(self) -> dict:
        return {
            "data_dir": str(self.data_dir),
            "train": [r.subject_id for r in self.train],
            "val": [r.subject_id for r in self.val],
            "test": list(self.split.test),
            "skipped": list(self.skipped),
            "validating_on_train": self.validating_on_train,
        }


def _safe_name(subject_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", subject_id) or "subject"


def _source_signature(files) -> dict:
    paths = [files.paths[k] for k in sorted(files.paths)] + ([files.seg] if files.seg else [])
    signature = {}
    for p in paths:
        stat = Path(p).stat()
        signature[str(p)] = [stat.st_size, int(stat.st_mtime)]
    return signature


def _cache_folder(cache_dir: Path, subject_id: str) -> Path:
    return cache_dir / "subjects" / _safe_name(subject_id)


def _prepare_one(files, preprocess: PreprocessConfig, cache_dir: Path | None) -> VolumeRecord | str:
    """Preprocess one subject (or read it from the cache). Returns a record or a skip reason."""
    meta = {"version": CACHE_VERSION, "preprocess": preprocess.to_dict(), "sources": _source_signature(files)}
    folder = _cache_folder(cache_dir, files.subject_id) if cache_dir is not None else None
    if folder is not None and (folder / "meta.json").is_file():
        try:
            stored = json.loads((folder / "meta.json").read_text())
        except ValueError:
            stored = None
        if stored is not None and {k: stored.get(k) for k in meta} == meta:
            if "skip" in stored:
                return str(stored["skip"])
            return _read_cached(folder, files.subject_id)
    try:
        prepared = preprocess_subject(load_subject(files), preprocess)
    except BrainLDMError as error:
        reason = f"Subject {files.subject_id} skipped: {error}"
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "meta.json", json.dumps({**meta, "skip": reason}))
        return reason
    tumour = None if prepared.seg is None else np.asarray(prepared.seg) > 0
    record = VolumeRecord(files.subject_id, prepared.images.astype(np.float32), prepared.mask.astype(bool), tumour)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", record.images)
        np.save(folder / "mask.npy", record.mask)
        if tumour is not None:
            np.save(folder / "tumour.npy", tumour)
        else:
            (folder / "tumour.npy").unlink(missing_ok=True)
        atomic_write_text(folder / "meta.json", json.dumps(meta))  # written last: marks the entry complete
        return _read_cached(folder, files.subject_id)
    return record


def _read_cached(folder: Path, subject_id: str) -> VolumeRecord:
    tumour_path = folder / "tumour.npy"
    return VolumeRecord(
        subject_id,
        np.load(folder / "images.npy", mmap_mode="r"),
        np.load(folder / "mask.npy", mmap_mode="r"),
        np.load(tumour_path, mmap_mode="r") if tumour_path.exists() else None,
    )


def preparation_workers(n_subjects: int) -> int:
    """Threads for preprocessing: the CPUs this process may use, at most 8 and ``n_subjects``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8, n_subjects))


def prepare_training_data(
    data_dir: str | Path,
    preprocess: PreprocessConfig,
    split: SplitConfig,
    cache_dir: Path | None = None,
    context: DistributedContext | None = None,
    max_subjects: int = 0,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    workers: int | None = None,
) -> TrainingData:
    """Find, split and preprocess the subjects of ``data_dir`` (see the module docstring).

    ``workers``: threads preprocessing subjects at once (None = :func:`preparation_workers`);
    the result does not depend on it.

    Raises :class:`BrainLDMError` when no subject can be used for training (the message
    lists what was skipped and why).
    """
    context = context or DistributedContext()
    data_dir = Path(data_dir).expanduser()
    subjects, skipped_found = find_subjects(data_dir, return_skipped=True)
    skipped = [s.reason for s in skipped_found]
    if max_subjects and max_subjects > 0:
        subjects = subjects[:max_subjects]
    data_split = split_subjects([s.subject_id for s in subjects], split)
    used = [s for s in subjects if s.subject_id not in set(data_split.test)]
    for line in skipped:
        log.warning("%s", line)
    # Each rank prepares its share into the cache; then everyone reads everything.
    records: dict[str, VolumeRecord | str] = {}
    share = used if (cache_dir is None or not context.enabled) else used[context.rank :: context.world_size]
    workers = preparation_workers(len(share)) if workers is None else max(1, min(int(workers), len(share)))
    # NIfTI decompression and the numpy work release the GIL: several threads give a 2-4x speed-up
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brainldm-prepare") as pool:
        futures = {pool.submit(_prepare_one, files, preprocess, cache_dir): files for files in share}
        try:
            for index, future in enumerate(as_completed(futures)):
                if should_stop is not None and should_stop():
                    raise StopRequested("stop requested while preparing data")
                files = futures[future]
                if progress is not None:
                    progress(index, len(share), files.subject_id)
                records[files.subject_id] = future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    records = {files.subject_id: records[files.subject_id] for files in share}  # the folder's order
    context.barrier()
    if cache_dir is not None and context.enabled:
        for files in used:
            if files.subject_id not in records:
                records[files.subject_id] = _prepare_one(files, preprocess, cache_dir)
    failed = [r for r in records.values() if isinstance(r, str)]
    for line in failed:
        log.warning("%s", line)
    skipped += failed
    ok = {k: v for k, v in records.items() if isinstance(v, VolumeRecord)}
    train = [ok[i] for i in data_split.train if i in ok]
    val = [ok[i] for i in data_split.val if i in ok]
    if not train:
        if not subjects and not skipped:
            raise BrainLDMError(
                f"No subjects found in {data_dir}. Expected one folder per subject (or flat files) named in the "
                "BraTS 2023 (<id>-t1n.nii.gz, -t1c, -t2w, -t2f) or BraTS 2021 (<id>_t1, _t1ce, _t2, _flair) style."
            )
        details = "".join(f"\n  - {line}" for line in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        raise BrainLDMError(
            f"No usable training subjects in {data_dir}: {len(subjects)} complete subject(s) found, "
            f"{len(ok)} usable, {len(train)} in the training split, {len(skipped)} skipped.{details}{more}\n"
            "Add complete subjects (all four sequences) or change the split fractions (split.train)."
        )
    validating_on_train = False
    if not val:
        log.warning("No validation subjects (the split gave none); validating on the training subjects.")
        val = list(train)
        validating_on_train = True
    return TrainingData(data_dir, train, val, data_split, skipped, validating_on_train)


# --------------------------------------------------------------------------- patches


def extract_box(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float | bool) -> np.ndarray:
    """The box ``start : start + size`` of the last ``len(size)`` axes; outside the array = ``fill``."""
    n = len(size)
    spatial = array.shape[-n:]
    out = np.full(array.shape[:-n] + tuple(int(s) for s in size), fill, dtype=array.dtype)
    src, dst = [], []
    for a, s, full in zip(start, size, spatial):
        lo, hi = max(int(a), 0), min(int(a) + int(s), int(full))
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(a), hi - int(a)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def random_start(rng: np.random.Generator, full: int, size: int) -> int:
    """Uniform start of a window of ``size`` in an axis of length ``full`` (centred-ish padding if too small)."""
    if full >= size:
        return int(rng.integers(0, full - size + 1))
    return int(rng.integers(full - size, 1))


@dataclass
class ImagePatch:
    """Where one first-stage training patch comes from."""

    subject: int
    start: tuple[int, ...]
    flip: bool
    slice_index: int = -1  # 2D: axial slice


class ImagePatchSampler:
    """Random first-stage patches: 3D boxes inside the brain box, or 2D axial slices with brain."""

    def __init__(self, records: list[VolumeRecord], patch_size: Sequence[int], flip_prob: float,
                 rng: np.random.Generator):
        if not records:
            raise BrainLDMError("No subjects to draw training patches from.")
        self.records = records
        self.patch_size = tuple(int(s) for s in patch_size)
        self.spatial_dims = len(self.patch_size)
        self.flip_prob = flip_prob
        self.rng = rng
        self._brain_slices: list[np.ndarray] = []
        if self.spatial_dims == 2:
            for record in records:
                slices = np.flatnonzero(np.asarray(record.mask).any(axis=(0, 1)))
                self._brain_slices.append(slices if slices.size else np.arange(record.shape[2]))

    def draw(self) -> ImagePatch:
        index = int(self.rng.integers(len(self.records)))
        record = self.records[index]
        shape = record.shape
        start = tuple(random_start(self.rng, shape[a], self.patch_size[a]) for a in range(self.spatial_dims))
        flip = bool(self.rng.random() < self.flip_prob)
        slice_index = -1
        if self.spatial_dims == 2:
            slices = self._brain_slices[index]
            slice_index = int(slices[self.rng.integers(len(slices))])
        return ImagePatch(index, start, flip, slice_index)

    def extract(self, patch: ImagePatch) -> tuple[np.ndarray, np.ndarray]:
        """``(image (4, *P) float32, brain mask (*P) bool)`` of one patch."""
        record = self.records[patch.subject]
        images, mask = record.images, record.mask
        if self.spatial_dims == 2:
            images = images[..., patch.slice_index]
            mask = mask[..., patch.slice_index]
        image = extract_box(np.asarray(images), patch.start, self.patch_size, -1.0)
        brain = extract_box(np.asarray(mask), patch.start, self.patch_size, False)
        if patch.flip:  # left-right (axis 0 of the canonical RAS grid)
            image = image[:, ::-1].copy()
            brain = brain[::-1].copy()
        return image.astype(np.float32, copy=False), brain

    def batch(self, patches: Sequence[ImagePatch]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.extract(p) for p in patches]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        masks = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return images, masks

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch([self.draw() for _ in range(batch_size)])


# --------------------------------------------------------------------------- latents


@dataclass
class LatentRecord:
    """A subject's latent volume (scaled later by ``latent_scale``) with latent-grid masks.

    3D: ``latent`` is ``(C, x/c, y/c, z/c)``. 2D: ``(C, x/c, y/c, z)`` - every axial slice
    encoded on its own, the slice axis kept at full resolution. ``brain``/``tumour`` mark
    latent voxels whose image block holds any brain / tumour voxel.
    """

    subject_id: str
    latent: np.ndarray
    brain: np.ndarray
    tumour: np.ndarray | None
    flipped: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.latent.shape[1:])


def _pad_to(array: np.ndarray, minimum: Sequence[int], fill) -> np.ndarray:
    """Pad the last len(minimum) axes (centred) up to at least ``minimum``."""
    n = len(minimum)
    spatial = array.shape[-n:]
    if all(s >= m for s, m in zip(spatial, minimum)):
        return array
    size = [max(s, m) for s, m in zip(spatial, minimum)]
    start = [-((t - s) // 2) for s, t in zip(spatial, size)]
    return extract_box(np.asarray(array), start, size, fill)


def _block_any(mask: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """True where any voxel of each ``factors`` block is True (shape divided by factors)."""
    mask = np.asarray(mask, dtype=bool)
    shape = []
    for s, f in zip(mask.shape, factors):
        shape += [s // f, f]
    trimmed = mask[tuple(slice(0, (s // f) * f) for s, f in zip(mask.shape, factors))]
    return trimmed.reshape(shape).any(axis=tuple(range(1, 2 * mask.ndim, 2)))


@torch.no_grad()
def encode_record(autoencoder, record: VolumeRecord, patch_size: Sequence[int], device: torch.device,
                  flip: bool = False, slice_batch: int = 16, fill: float = -1.0) -> LatentRecord:
    """Encode one subject with the frozen first stage (deterministic: posterior mean / quantised).

    ``record.images`` may be any channels the first stage takes (e.g. the two-channel lesion
    conditioning mask); padding uses ``fill`` (-1 = image background, 0 for masks)."""
    c = int(autoencoder.compression)
    spatial_dims = len(patch_size)
    images = np.array(record.images, dtype=np.float32)  # a writable copy (records may be memory-mapped)
    mask = np.asarray(record.mask, dtype=bool)
    tumour = None if record.tumour is None else np.asarray(record.tumour, dtype=bool)
    if flip:
        images, mask = images[:, ::-1], mask[::-1]
        tumour = None if tumour is None else tumour[::-1]
    # Pad so the volume is at least one patch and a multiple of the compression.
    minimum = [max(int(p), -(-s // c) * c) for p, s in zip(patch_size, images.shape[1:1 + spatial_dims])]
    images = _pad_to(images, minimum, fill) if spatial_dims == 3 else _pad_to_2d(images, minimum, fill)
    mask = _pad_to(mask, minimum, False) if spatial_dims == 3 else _pad_to_2d(mask, minimum, False)
    if tumour is not None:
        tumour = _pad_to(tumour, minimum, False) if spatial_dims == 3 else _pad_to_2d(tumour, minimum, False)
    if spatial_dims == 3:
        x = torch.from_numpy(np.ascontiguousarray(images))[None].to(device)
        latent = autoencoder.encode(x)[0].float().cpu().numpy()
        factors = (c, c, c)
    else:
        slices = []
        volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 0)))  # (Z, 4, x, y)
        for begin in range(0, volume.shape[0], slice_batch):
            slices.append(autoencoder.encode(volume[begin:begin + slice_batch].to(device)).float().cpu())
        latent = np.moveaxis(torch.cat(slices).numpy(), 0, -1)  # (C, x/c, y/c, Z)
        factors = (c, c, 1)
    return LatentRecord(
        record.subject_id,
        np.ascontiguousarray(latent, dtype=np.float32),
        _block_any(mask, factors),
        None if tumour is None else _block_any(tumour, factors),
        flip,
    )


def _pad_to_2d(array: np.ndarray, minimum: Sequence[int], fill) -> np.ndarray:
    """Pad the two in-plane axes (the last-but-one and the one before it) of (..., x, y, z)."""
    moved = np.moveaxis(np.asarray(array), -1, 0)  # (z, ..., x, y)
    padded = _pad_to(moved, minimum, fill)
    return np.moveaxis(padded, 0, -1)


def latent_scale_of(records: Sequence[LatentRecord]) -> float:
    """``1 / std`` of all latent values of the (training) records (Rombach et al. 2022 scaling)."""
    total, total_sq, count = 0.0, 0.0, 0
    for record in records:
        values = np.asarray(record.latent, dtype=np.float64)
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.size
    if count == 0:
        raise BrainLDMError("No latents to measure the latent scale from.")
    mean = total / count
    std = max((total_sq / count - mean * mean), 0.0) ** 0.5
    if not std > 1e-8:
        raise BrainLDMError("The first stage's latents are constant (std 0): the autoencoder is not trained.")
    return 1.0 / std


@dataclass
class LatentPatch:
    """Where one denoiser training patch comes from, and its label."""

    record: int
    start: tuple[int, ...]  # latent voxels (3D) or in-plane latent voxels (2D)
    label: int
    slice_index: int = -1


class LatentPatchSampler:
    """Latent training patches with HEALTHY / DISEASED labels and their window position.

    3D: subjects are drawn uniformly and patches by the subject's
    :class:`brainldm.data.sampling.PatchSampler` on the latent grid (healthy centres far
    from the tumour, diseased ones touching it, ``diseased_fraction`` diseased; the
    ``uniform`` kind is the ablation). Subjects without a segmentation give healthy
    patches anywhere in the brain. 2D: a healthy slice (brain, no tumour) or a diseased one
    (with tumour), then a random in-plane window.
    """

    def __init__(self, records: list[LatentRecord], latent_patch: Sequence[int], diseased_fraction: float,
                 method: str, rng: np.random.Generator, flip_prob: float = 0.0):
        if not records:
            raise BrainLDMError("No latent volumes to draw denoiser patches from.")
        self.records = records
        self.latent_patch = tuple(int(s) for s in latent_patch)
        self.spatial_dims = len(self.latent_patch)
        self.diseased_fraction = float(diseased_fraction)
        self.method = method
        self.rng = rng
        self.flip_prob = flip_prob
        self._plain = [i for i, r in enumerate(records) if not r.flipped]
        self._flipped = {r.subject_id: i for i, r in enumerate(records) if r.flipped}
        self._samplers: dict[int, object] = {}
        self._slices: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._has_tumour = [r.tumour is not None and bool(np.asarray(r.tumour).any()) for r in records]
        if self.spatial_dims == 3:  # build every subject's sampler now; drop subjects with no usable patch
            usable = []
            for index in self._plain:
                try:
                    sampler = self._centre_sampler(index)
                except BrainLDMError as error:
                    log.warning("Subject %s gives no denoiser patches (%s); it is not used.",
                                records[index].subject_id, error)
                    continue
                if sampler.num_healthy_centres + sampler.num_diseased_centres > 0:
                    usable.append(index)
                else:
                    log.warning("Subject %s gives no denoiser patches; it is not used.", records[index].subject_id)
            if not usable:
                raise BrainLDMError("No subject gives denoiser training patches (brains smaller than a patch?). "
                                    "Use a smaller denoiser.patch_size.")
            self._plain = usable

    # -- per-record helpers (built lazily)
    def _slice_sets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._slices:
            record = self.records[index]
            brain = np.asarray(record.brain).any(axis=(0, 1))
            if record.tumour is not None:
                tumour = np.asarray(record.tumour).any(axis=(0, 1))
            else:
                tumour = np.zeros_like(brain)
            self._slices[index] = (np.flatnonzero(brain & ~tumour), np.flatnonzero(tumour))
        return self._slices[index]

    def _centre_sampler(self, index: int):
        if index not in self._samplers:
            from brainldm.data.sampling import PatchSampler, PatchSamplerConfig

            record = self.records[index]
            config = PatchSamplerConfig(patch_size=self.latent_patch, kind=self.method,
                                        healthy_fraction=1.0 - self.diseased_fraction)
            self._samplers[index] = PatchSampler(
                None if record.tumour is None else np.asarray(record.tumour), np.asarray(record.brain), config)
        return self._samplers[index]

    def _with_flip(self, index: int) -> int:
        if self.flip_prob > 0 and self.rng.random() < self.flip_prob:
            return self._flipped.get(self.records[index].subject_id, index)
        return index

    def draw(self) -> LatentPatch:
        from brainldm.data.sampling import DISEASED, HEALTHY

        if self.spatial_dims == 3:
            # Subjects uniformly; the class mix and the centres come from the subject's sampler (§3.3.2).
            index = self._with_flip(self._plain[int(self.rng.integers(len(self._plain)))])
            draws = self._centre_sampler(index).sample(1, self.rng)
            return LatentPatch(index, tuple(int(s) for s in draws.starts[0]), int(draws.labels[0]))
        want_diseased = bool(self.rng.random() < self.diseased_fraction)
        candidates = [i for i in self._plain if self._has_tumour[i]] if want_diseased else self._plain
        candidates = candidates or self._plain
        index = self._with_flip(candidates[int(self.rng.integers(len(candidates)))])
        record = self.records[index]
        healthy_slices, tumour_slices = self._slice_sets(index)
        pool = tumour_slices if (want_diseased and tumour_slices.size) else healthy_slices
        if pool.size == 0:
            pool = tumour_slices if tumour_slices.size else np.arange(record.grid[-1])
        slice_index = int(pool[self.rng.integers(len(pool))])
        start = tuple(random_start(self.rng, record.grid[a], self.latent_patch[a]) for a in range(2))
        tumour_box = None if record.tumour is None else extract_box(
            np.asarray(record.tumour)[..., slice_index], start, self.latent_patch, False)
        label = DISEASED if tumour_box is not None and tumour_box.any() else HEALTHY
        return LatentPatch(index, start, label, slice_index)

    def extract(self, patch: LatentPatch) -> np.ndarray:
        record = self.records[patch.record]
        latent = np.asarray(record.latent)
        if self.spatial_dims == 2:
            latent = latent[..., patch.slice_index]
        # Windows never leave the latent volume (it was padded to at least one patch).
        return extract_box(latent, patch.start, self.latent_patch, 0.0)

    def batch(self, patches: Sequence[LatentPatch]) -> dict[str, torch.Tensor]:
        z = torch.from_numpy(np.stack([self.extract(p) for p in patches]))
        labels = torch.tensor([p.label for p in patches], dtype=torch.long)
        start = torch.tensor([p.start for p in patches], dtype=torch.float32)
        extent = torch.tensor([self.records[p.record].grid[: self.spatial_dims] for p in patches],
                              dtype=torch.float32)
        return {"z": z, "labels": labels, "start": start, "extent": extent}

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.batch([self.draw() for _ in range(batch_size)])


def check_compression(preprocess: PreprocessConfig, compression: int) -> None:
    if preprocess.multiple % compression:
        raise SettingsError(f"preprocess.multiple ({preprocess.multiple}) must be a multiple of the autoencoder's "
                            f"compression ({compression}).")
