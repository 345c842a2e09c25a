"""Overlapping square patches of a 2D image and their weighted blending (thesis §4.4.1).

The SR model is trained on patches of upsampled slices and must be run on patches of the same
size: a model trained on whole images makes a brain-like artefact in every patch (Fig. B.7), and
patches bound memory and the cost of attention. An upsampled slice is cut into overlapping
patches (:func:`tile_starts`), each patch is super-resolved independently, and the results are
blended with per-pixel weights (:func:`blend_weights`, :func:`blend_patches`)::

    out(x) = sum_p w(x - start_p) * patch_p(x - start_p) / sum_p w(x - start_p)

so that seams vanish. Pure numpy functions; the blending is exact: patches cut from one image
blend back to that image (to rounding), whatever the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brainldm.errors import SettingsError

#: Floor of the Gaussian weights, relative to the centre (keeps patch borders at image edges defined).
GAUSSIAN_FLOOR = 1e-3


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start positions of patches of ``patch`` pixels covering an axis of ``size`` pixels.

    Neighbouring patches share ``overlap * patch`` pixels (stride ``max(1, round(patch * (1 -
    overlap)))``); the last patch ends exactly at the border. ``size <= patch`` gives ``[0]``
    (the image is padded to the patch size by the caller).
    """
    size, patch = int(size), int(patch)
    if patch < 1 or size < 1:
        raise SettingsError(f"patch and image sizes must be positive, got patch {patch}, size {size}.")
    if not 0.0 <= float(overlap) < 1.0:
        raise SettingsError(f"overlap must lie in [0, 1), got {overlap}.")
    if size <= patch:
        return [0]
    stride = max(1, round(patch * (1.0 - float(overlap))))
    starts = list(range(0, size - patch, stride))
    starts.append(size - patch)
    return starts


def blend_weights(patch: int | Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """Per-pixel weights ``(P, P)`` (float64) of one patch.

    ``"constant"``: all ones (plain average of overlapping patches). ``"gaussian"``: the separable
    Gaussian ``exp(-d^2 / (2 (P/8)^2))`` of the distance ``d`` to the patch centre (as MONAI's
    sliding-window inference), floored at :data:`GAUSSIAN_FLOOR` so that every pixel keeps a
    positive weight.
    """
    sizes = (int(patch), int(patch)) if np.isscalar(patch) else tuple(int(p) for p in patch)
    if any(p < 1 for p in sizes):
        raise SettingsError(f"patch sizes must be positive, got {sizes}.")
    if mode == "constant":
        return np.ones(sizes, dtype=np.float64)
    if mode != "gaussian":
        raise SettingsError(f"blend mode must be 'gaussian' or 'constant', got {mode!r}.")
    axes = []
    for p in sizes:
        d = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        axes.append(np.exp(-(d ** 2) / (2.0 * (p / 8.0) ** 2)))
    weights = np.outer(axes[0], axes[1])
    return np.maximum(weights / weights.max(), GAUSSIAN_FLOOR)


def patch_grid(shape: Sequence[int], patch: int, overlap: float) -> list[tuple[int, int]]:
    """All patch starts ``(x0, y0)`` for an image of spatial ``shape`` (row-major order)."""
    xs = tile_starts(shape[0], patch, overlap)
    ys = tile_starts(shape[1], patch, overlap)
    return [(x, y) for x in xs for y in ys]


def pad_to_patch(image: np.ndarray, patch: int, fill: float) -> np.ndarray:
    """Pad the last two axes at their end to at least ``patch`` pixels with ``fill``."""
    pad = [(0, 0)] * (image.ndim - 2) + [(0, max(0, int(patch) - int(s))) for s in image.shape[-2:]]
    if all(p == (0, 0) for p in pad):
        return image
    return np.pad(image, pad, mode="constant", constant_values=fill)


def extract_patches(image: np.ndarray, starts: Sequence[tuple[int, int]], patch: int) -> np.ndarray:
    """``(N, C, P, P)`` patches of a ``(C, X, Y)`` image (which must hold every patch)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, X, Y) image, got shape {image.shape}")
    p = int(patch)
    for x, y in starts:
        if x < 0 or y < 0 or x + p > image.shape[1] or y + p > image.shape[2]:
            raise ValueError(f"patch at ({x}, {y}) of size {p} leaves the image {image.shape[1:]}")
    return np.stack([image[:, x:x + p, y:y + p] for x, y in starts])


def blend_patches(patches: np.ndarray, starts: Sequence[tuple[int, int]], shape: Sequence[int],
                  weights: np.ndarray) -> np.ndarray:
    """Weighted average ``(C, X, Y)`` (float32) of ``(N, C, P, P)`` patches placed at ``starts``.

    Every pixel of ``shape`` must be covered by at least one patch.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or len(patches) != len(starts):
        raise ValueError(f"expected (N, C, P, P) patches for {len(starts)} starts, got {patches.shape}")
    p = patches.shape[-1]
    if patches.shape[-2] != p or weights.shape != (p, p):
        raise ValueError(f"patches {patches.shape[-2:]} and weights {weights.shape} must be square and equal")
    total = np.zeros((patches.shape[1], int(shape[0]), int(shape[1])), dtype=np.float64)
    norm = np.zeros((int(shape[0]), int(shape[1])), dtype=np.float64)
    for (x, y), values in zip(starts, patches):
        total[:, x:x + p, y:y + p] += weights * values
        norm[x:x + p, y:y + p] += weights
    if not (norm > 0).all():
        raise ValueError("the patches do not cover the whole image")
    return (total / norm).astype(np.float32)


__all__ = ["blend_patches", "blend_weights", "extract_patches", "pad_to_patch", "patch_grid", "tile_starts"]
