"""Use case: write phantom subjects to disk (``brainldm phantom``, the Synth module's sample data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from brainldm.errors import BrainLDMError, SettingsError

log = logging.getLogger(__name__)


@dataclass
class PhantomRequest:
    out_dir: Path
    seed: int = 1
    count: int = 1
    lesion_diameter_mm: float = 20.0
    n_tumours: int = 1
    healthy: bool = False
    png: bool = False
    anatomy: str = "mni152"
    overwrite: bool = False


def make_phantoms(request: PhantomRequest) -> list[Path]:
    """Generate ``count`` subjects with seeds ``seed, seed + 1, ...``; return their folders.

    Existing subject folders are never replaced unless ``overwrite`` is set.
    """
    from tqdm.auto import tqdm

    from brainldm.data.phantom import PhantomSpec, generate_phantom, lesion_diameters_mm, write_phantom_subject

    if request.count < 1:
        raise SettingsError(f"--count must be at least 1, got {request.count}")
    folders = []
    seeds = range(request.seed, request.seed + request.count)
    for seed in tqdm(seeds, desc="phantoms", unit="subject", disable=request.count == 1):
        spec = PhantomSpec(
            seed=seed,
            n_tumours=0 if request.healthy else request.n_tumours,
            lesion_diameter_mm=request.lesion_diameter_mm,
            anatomy=request.anatomy,
        )
        target = Path(request.out_dir) / spec.resolved_id
        if target.exists() and any(target.iterdir()) and not request.overwrite:
            raise BrainLDMError(f"{target} already exists; choose another --out or pass --overwrite to replace it")
        result = generate_phantom(spec)
        folder = write_phantom_subject(result.subject, request.out_dir, png=request.png)
        sizes = ", ".join(f"{d:.0f} mm" for d in lesion_diameters_mm(result.subject.seg)) or "healthy"
        log.info("%s: %s", spec.resolved_id, sizes)
        folders.append(folder)
    return folders
