"""Measure lesion resizing on every available real lesion: the table of ``docs/synthesis.md``.

    python -m brainldm.synth.lesion_table [--diameters 3 5 10 20] [--shared DIR] [--labels FILE ...]

For each lesion shape (the whole tumour and each connected lesion of every label map, see
:func:`brainldm.synth.lesions.load_lesion_library`) and each target diameter it prints, as a
Markdown table, the achieved in-plane diameter and voxel count of :func:`resize_lesion`, and for
comparison the same of a single nearest-neighbour step with factor ``target / diameter`` (the
thesis's "one-step downsampling", Fig. 4.8 top row; no cropping).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from brainldm.data.lesion_geometry import inplane_diameter_mm
from brainldm.synth.lesions import (
    STANDARD_DIAMETERS_MM,
    load_lesion_library,
    resize_lesion,
    scale_nearest,
    shared_lesion_files,
)


def lesion_table(paths: list[Path], diameters: tuple[float, ...] = STANDARD_DIAMETERS_MM) -> tuple[list[str], dict]:
    """Markdown lines of the table and a summary (shapes, resizes, exact, within one voxel, seconds)."""
    shapes = load_lesion_library(paths)
    head = "| lesion | voxels | diameter (mm) | " + " | ".join(f"{d:g} mm: achieved / voxels (one step)" for d in diameters)
    lines = [head + " |", "|---|---:|---:|" + "---|" * len(diameters)]
    exact = within = 0
    start = time.perf_counter()
    for shape in shapes:
        cells = []
        for target in diameters:
            r = resize_lesion(shape.labels, target, shape.spacing)
            one = scale_nearest(shape.labels, target / shape.diameter_mm)
            exact += abs(r.diameter_mm - target) < 1e-6
            within += abs(r.diameter_mm - target) <= max(shape.spacing[:2]) and r.voxels > 0
            cells.append(f"{r.diameter_mm:g} / {r.voxels} ({inplane_diameter_mm(one > 0, shape.spacing):g} / {int((one > 0).sum())})")
        lines.append(f"| {shape.name} | {shape.voxels} | {shape.diameter_mm:g} | " + " | ".join(cells) + " |")
    seconds = time.perf_counter() - start
    summary = {"shapes": len(shapes), "resizes": len(shapes) * len(diameters), "exact": exact,
               "within_one_voxel": within, "seconds": seconds}
    return lines, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainldm.synth.lesion_table", description=__doc__.split("\n")[0])
    parser.add_argument("--diameters", type=float, nargs="+", default=list(STANDARD_DIAMETERS_MM))
    parser.add_argument("--shared", type=Path, help="shared data folder (default $BRAINLDM_SHARED_DATA or ../shared/data)")
    parser.add_argument("--labels", type=Path, nargs="*", default=[], help="further label maps to include")
    args = parser.parse_args(argv)
    paths = shared_lesion_files(args.shared) + list(args.labels)
    if not paths:
        print("no lesion masks found: give --labels or the shared data folder", file=sys.stderr)
        return 2
    lines, summary = lesion_table(paths, tuple(args.diameters))
    print("\n".join(lines))
    print(f"\n{summary['shapes']} lesion shapes from {len(paths)} files, {summary['resizes']} resizes: "
          f"{summary['exact']} exact, {summary['within_one_voxel']} within one voxel, {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
