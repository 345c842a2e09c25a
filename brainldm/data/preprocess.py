"""Prepare a loaded subject for the networks, and undo each step afterwards.

Steps (each with its inverse):

1. :func:`brain_mask` - voxels non-zero in any sequence (inputs are skull-stripped, background 0),
   enclosed holes filled, tiny disconnected speckles removed.
2. :func:`compute_crop` / :class:`BrainCrop` - the brain's bounding box plus a margin, grown to a
   multiple of a power of two (so the autoencoder's down-sampling divides it); where the box
   would leave the volume it is padded. ``BrainCrop.invert`` pastes a cropped volume back.
3. :class:`Normaliser` - per sequence, clip to the 0.5/99.5 percentiles of the intensities
   inside the brain and map linearly to [-1, 1]; background is -1. ``denormalise`` maps back
   (exact for values that were not clipped).

:func:`preprocess_subject` runs all three and returns a :class:`PreparedSubject`, whose
``to_subject_grid`` puts any map computed on the cropped grid back into the subject's canonical grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from scipy import ndimage

from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import Subject
from brainldm.errors import InputDataError, SettingsError


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of :func:`preprocess_subject` (stored in model bundles: training and use must match)."""

    margin: int = 4  # voxels added around the brain's bounding box on every side
    multiple: int = 16  # cropped sizes are multiples of this power of two
    low_percentile: float = 0.5  # intensities inside the brain below this percentile are clipped to -1
    high_percentile: float = 99.5  # ... and above this one to +1
    fill_holes: bool = True  # fill cavities enclosed by the brain mask
    min_component_voxels: int = 64  # mask components smaller than this are dropped as speckles

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise SettingsError(f"margin must be >= 0 voxels, got {self.margin}.")
        if self.multiple < 1 or self.multiple & (self.multiple - 1):
            raise SettingsError(f"multiple must be a power of two (1, 2, 4, 8, ...), got {self.multiple}.")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise SettingsError(
                "percentiles must satisfy 0 <= low < high <= 100, got "
                f"low={self.low_percentile}, high={self.high_percentile}."
            )
        if self.min_component_voxels < 0:
            raise SettingsError(f"min_component_voxels must be >= 0, got {self.min_component_voxels}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown preprocessing setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**values)


# --------------------------------------------------------------------------------------------
# 1. Brain mask
# --------------------------------------------------------------------------------------------


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """``((start, stop), ...)`` per axis of the True voxels, or ``None`` when there are none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def brain_mask(images: np.ndarray, fill_holes: bool = True, min_component_voxels: int = 64) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` brain mask of ``(C, X, Y, Z)`` skull-stripped images.

    A voxel is brain when any sequence is non-zero there. Cavities fully enclosed by the mask are
    filled and connected components (6-connectivity) smaller than ``min_component_voxels`` are
    dropped. Work is done inside the bounding box of the non-zero voxels, for speed.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (C, X, Y, Z), got shape {images.shape}")
    nonzero = np.any(images != 0, axis=0)
    mask = np.zeros(nonzero.shape, dtype=bool)
    box = _bounding_box(nonzero)
    if box is None:
        return mask
    inner = tuple(slice(a, b) for a, b in box)
    sub = nonzero[inner]
    if min_component_voxels > 1:
        labels, count = ndimage.label(sub)
        if count > 1 or (count == 1 and sub.sum() < min_component_voxels):
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_component_voxels
            keep[0] = False
            sub = keep[labels]
    if fill_holes:
        sub = ndimage.binary_fill_holes(sub)
    mask[inner] = sub
    return mask


# --------------------------------------------------------------------------------------------
# 2. Crop to the brain
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrainCrop:
    """A box in a volume of shape ``full_shape``: ``start`` (may be negative) and ``size`` per axis.

    Parts of the box outside the volume are padding: :meth:`apply` fills them with ``fill``
    and :meth:`invert` drops them. Works on arrays with any leading axes ``(..., X, Y, Z)``.
    """

    full_shape: tuple[int, int, int]
    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(a + s for a, s in zip(self.start, self.size))  # type: ignore[return-value]

    def _overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Slices of the overlap between box and volume: (in the full volume, in the cropped box)."""
        full, box = [], []
        for start, size, n in zip(self.start, self.size, self.full_shape):
            lo, hi = max(start, 0), min(start + size, n)
            full.append(slice(lo, max(hi, lo)))
            box.append(slice(lo - start, max(hi, lo) - start))
        return tuple(full), tuple(box)

    def apply(self, array: np.ndarray, fill: float | bool = 0) -> np.ndarray:
        """Crop (and pad with ``fill``) an array ``(..., *full_shape)`` to ``(..., *size)``."""
        array = np.asarray(array)
        if tuple(array.shape[-3:]) != tuple(self.full_shape):
            raise ValueError(f"array spatial shape {array.shape[-3:]} != crop's full shape {self.full_shape}")
        out = np.full(array.shape[:-3] + tuple(self.size), fill, dtype=array.dtype)
        full, box = self._overlap()
        out[(Ellipsis, *box)] = array[(Ellipsis, *full)]
        return out

    def invert(self, array: np.ndarray, fill: float | bool = 0) -> np.ndarray:
        """Paste a cropped array ``(..., *size)`` back into ``(..., *full_shape)``; elsewhere ``fill``."""
        array = np.asarray(array)
        if tuple(array.shape[-3:]) != tuple(self.size):
            raise ValueError(f"array spatial shape {array.shape[-3:]} != crop size {self.size}")
        out = np.full(array.shape[:-3] + tuple(self.full_shape), fill, dtype=array.dtype)
        full, box = self._overlap()
        out[(Ellipsis, *full)] = array[(Ellipsis, *box)]
        return out

    def cropped_affine(self, affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of the cropped grid, given the full grid's ``affine``."""
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return np.asarray(affine, dtype=np.float64) @ shift

    def to_dict(self) -> dict:
        return {"full_shape": list(self.full_shape), "start": list(self.start), "size": list(self.size)}

    @classmethod
    def from_dict(cls, values: dict) -> BrainCrop:
        return cls(*(tuple(int(v) for v in values[k]) for k in ("full_shape", "start", "size")))  # type: ignore[arg-type]


def compute_crop(mask: np.ndarray, margin: int = 4, multiple: int = 16) -> BrainCrop:
    """Bounding box of ``mask`` plus ``margin`` voxels, grown to a multiple of ``multiple`` per axis.

    The grown box is centred on the brain and shifted to stay inside the volume where it fits;
    where it is larger than the volume it is padded equally on both sides.
    """
    PreprocessConfig(margin=margin, multiple=multiple)  # validates both
    mask = np.asarray(mask, dtype=bool)
    box = _bounding_box(mask)
    if box is None:
        raise InputDataError("The brain mask is empty: no voxel is non-zero in any sequence.")
    start, size = [], []
    for (lo, hi), n in zip(box, mask.shape):
        lo, hi = lo - margin, hi + margin
        extent = -(-(hi - lo) // multiple) * multiple  # round up to the multiple
        first = lo - (extent - (hi - lo)) // 2  # centre the extra voxels
        if extent <= n:
            first = min(max(first, 0), n - extent)
        else:
            first = -((extent - n) // 2)
        start.append(int(first))
        size.append(int(extent))
    return BrainCrop(full_shape=tuple(int(n) for n in mask.shape), start=tuple(start), size=tuple(size))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# 3. Intensity normalisation
# --------------------------------------------------------------------------------------------


@dataclass
class Normaliser:
    """Per-sequence linear map of intensities to [-1, 1] with percentile clipping inside the brain.

    For channel ``c`` with brain percentiles ``lower[c]`` (``low_percentile``) and ``upper[c]``
    (``high_percentile``): ``x' = clip(2 (x - lower) / (upper - lower) - 1, -1, 1)`` inside the
    mask and ``-1`` outside. :meth:`normalise` fits ``lower``/``upper`` on first use (or call
    :meth:`fit`); :meth:`denormalise` applies the inverse map (clipped values stay clipped).
    """

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    lower: np.ndarray | None = None  # (C,) intensity mapped to -1, per channel
    upper: np.ndarray | None = None  # (C,) intensity mapped to +1, per channel
    names: tuple[str, ...] = field(default=SEQUENCES)  # channel names, for messages

    @property
    def fitted(self) -> bool:
        return self.lower is not None and self.upper is not None

    def fit(self, images: np.ndarray, mask: np.ndarray) -> Normaliser:
        """Measure the percentiles of each channel of ``(C, X, Y, Z)`` ``images`` inside ``mask``."""
        images = np.asarray(images)
        mask = np.asarray(mask, dtype=bool)
        if images.ndim != 4 or images.shape[1:] != mask.shape:
            raise ValueError(f"images {images.shape} must be (C, *mask.shape) with mask {mask.shape}")
        if not mask.any():
            raise InputDataError("The brain mask is empty: cannot measure intensities inside the brain.")
        lower, upper = [], []
        for channel, volume in enumerate(images):
            lo, hi = np.percentile(volume[mask], [self.low_percentile, self.high_percentile])
            if not hi > lo:
                name = self.names[channel] if channel < len(self.names) else f"channel {channel}"
                raise InputDataError(
                    f"{name}: intensities inside the brain are (almost) constant ({lo:g}); the image cannot be "
                    "normalised. Check that the right file was chosen."
                )
            lower.append(lo)
            upper.append(hi)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        return self

    def _bounds(self, channels: int, channel: int | None) -> tuple[np.ndarray, np.ndarray]:
        if not self.fitted:
            raise RuntimeError("Normaliser is not fitted: call fit() or normalise() first")
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        if channel is not None:
            return lower[channel : channel + 1], upper[channel : channel + 1]
        if channels != lower.size:
            raise ValueError(f"expected {lower.size} channels, got {channels}")
        return lower, upper

    def normalise(self, images: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(C, X, Y, Z)`` images -> float32 in [-1, 1], background (outside ``mask``) -1."""
        if not self.fitted:
            self.fit(images, mask)
        images = np.asarray(images)
        lower, upper = self._bounds(images.shape[0], None)
        shape = (-1, 1, 1, 1)
        scale = (2.0 / (upper - lower)).astype(np.float32).reshape(shape)
        offset = (-2.0 * lower / (upper - lower) - 1.0).astype(np.float32).reshape(shape)
        out = images.astype(np.float32) * scale + offset
        np.clip(out, -1.0, 1.0, out=out)
        out[:, ~np.asarray(mask, dtype=bool)] = -1.0
        return out

    def denormalise(self, x: np.ndarray, channel: int | None = None) -> np.ndarray:
        """Map normalised values back to intensities.

        ``x`` is ``(C, X, Y, Z)`` or batched ``(B, C, X, Y, Z)``; or pass ``channel`` for a single
        channel's ``(X, Y, Z)`` volume.
        """
        x = np.asarray(x, dtype=np.float32)
        if channel is not None:
            lower, upper = self._bounds(1, channel)
            shape: tuple[int, ...] = ()
        else:
            lower, upper = self._bounds(x.shape[1] if x.ndim == 5 else x.shape[0], None)
            shape = (-1, 1, 1, 1)
        half_range = (0.5 * (upper - lower)).astype(np.float32).reshape(shape)
        return (lower.astype(np.float32).reshape(shape) + (x + 1.0) * half_range).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "low_percentile": self.low_percentile,
            "high_percentile": self.high_percentile,
            "lower": None if self.lower is None else [float(v) for v in self.lower],
            "upper": None if self.upper is None else [float(v) for v in self.upper],
            "names": list(self.names),
        }


# --------------------------------------------------------------------------------------------
# All steps
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedSubject:
    """A subject ready for the networks: cropped to the brain and normalised.

    ``images`` ``(4, x, y, z)`` float32 in [-1, 1] (background -1), ``mask`` ``(x, y, z)`` bool and
    ``seg`` (if any) live on the cropped grid whose affine is ``affine``; ``crop`` and
    ``normaliser`` hold what is needed to go back to the subject's canonical grid and intensities.
    """

    subject_id: str
    images: np.ndarray
    mask: np.ndarray
    crop: BrainCrop
    normaliser: Normaliser
    affine: np.ndarray
    config: PreprocessConfig
    seg: np.ndarray | None = None

    def to_subject_grid(self, volume: np.ndarray, fill: float | bool = 0) -> np.ndarray:
        """Paste a volume ``(..., x, y, z)`` on the cropped grid into the subject's canonical grid."""
        return self.crop.invert(volume, fill=fill)

    def to_subject_images(self, x: np.ndarray) -> np.ndarray:
        """Normalised ``(4, x, y, z)`` images (e.g. a counterfactual) -> intensities on the subject grid.

        Outside the crop the result is 0 (the skull-stripped background).
        """
        return self.to_subject_grid(self.normaliser.denormalise(x), fill=0.0)


def preprocess_subject(subject: Subject, config: PreprocessConfig = PreprocessConfig()) -> PreparedSubject:
    """Brain mask, crop and normalise a :class:`Subject` (see the module docstring)."""
    mask = brain_mask(subject.images, fill_holes=config.fill_holes, min_component_voxels=config.min_component_voxels)
    if not mask.any():
        raise InputDataError(f"Subject {subject.subject_id}: no brain found (every sequence is zero everywhere).")
    crop = compute_crop(mask, margin=config.margin, multiple=config.multiple)
    cropped_mask = crop.apply(mask, fill=False)
    cropped_images = crop.apply(subject.images, fill=0)
    normaliser = Normaliser(low_percentile=config.low_percentile, high_percentile=config.high_percentile)
    images = normaliser.normalise(cropped_images, cropped_mask)
    return PreparedSubject(
        subject_id=subject.subject_id,
        images=images,
        mask=cropped_mask,
        crop=crop,
        normaliser=normaliser,
        affine=crop.cropped_affine(subject.affine),
        config=config,
        seg=None if subject.seg is None else crop.apply(subject.seg, fill=0),
    )
