"""The in-memory subject: four co-registered sequences in one canonical grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainldm.data.sequences import SEQUENCES


@dataclass
class SourceGeometry:
    """How a subject's arrays map back to the files they came from.

    ``to_canonical`` is the nibabel orientation transform that was applied on load;
    writing back applies its inverse so outputs land in the input's own grid and
    orientation, with the original header's geometry.
    """

    affine: np.ndarray  # 4x4 affine of the source files
    shape: tuple[int, int, int]  # spatial shape of the source files
    to_canonical: np.ndarray  # nibabel ornt transform source -> canonical (RAS)
    header: Any = None  # nibabel header of the reference file (for qform/sform codes)


@dataclass
class Subject:
    """Four MRI sequences of one brain in the canonical RAS+ voxel orientation.

    Attributes
    ----------
    subject_id:
        Name used for output files and reports.
    images:
        ``(4, X, Y, Z)`` float32, channels in :data:`SEQUENCES` order, raw intensities.
    affine:
        4x4 voxel-to-world affine of ``images`` (canonical orientation).
    seg:
        Optional ``(X, Y, Z)`` integer label map (0 = background, > 0 = tumour).
    source:
        Geometry of the files the subject was read from (``None`` for generated data).
    paths:
        The files read, per sequence name (and ``"seg"``).
    """

    subject_id: str
    images: np.ndarray
    affine: np.ndarray
    seg: np.ndarray | None = None
    source: SourceGeometry | None = None
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def sequence(self, name: str) -> np.ndarray:
        return self.images[SEQUENCES.index(name)]
