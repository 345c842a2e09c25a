"""The overview picture of a detection: inputs, counterfactuals, maps and segmentation.

Rows: the four input sequences; their healthy counterfactuals; then the anomaly map, the
GradDiff map (when computed), the segmentation (red) against the reference (green
outline) and the FLAIR baseline. Shown at the axial slice with the most reference
tumour (or the most segmented voxels when there is no reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainldm.data.sequences import FLAIR_INDEX, SEQUENCE_TITLES, SEQUENCES


def _pick_slice(reference: np.ndarray | None, segmentation: np.ndarray, brain: np.ndarray) -> int:
    for mask in (reference, segmentation):
        if mask is not None and np.any(mask):
            return int(np.argmax((np.asarray(mask) > 0).sum(axis=(0, 1))))
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    return int(zs[len(zs) // 2]) if zs.size else brain.shape[2] // 2


def detection_overview_png(
    path: str | Path,
    images: np.ndarray,
    counterfactual: np.ndarray | None,
    anomaly_map: np.ndarray | None,
    segmentation: np.ndarray,
    brain_mask: np.ndarray,
    reference: np.ndarray | None = None,
    graddiff_map: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
    title: str = "",
    metrics_text: str = "",
) -> Path:
    """Write the overview PNG (see the module docstring) and return its path.

    Without a ``counterfactual`` (the FLAIR baseline alone) the counterfactual row is left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    z = _pick_slice(reference, segmentation, brain_mask)
    xs = np.flatnonzero(brain_mask.any(axis=(1, 2)))
    ys = np.flatnonzero(brain_mask.any(axis=(0, 2)))
    if xs.size and ys.size:
        x0, x1 = max(xs[0] - 4, 0), xs[-1] + 5
        y0, y1 = max(ys[0] - 4, 0), ys[-1] + 5
    else:
        x0, x1, y0, y1 = 0, brain_mask.shape[0], 0, brain_mask.shape[1]

    def view(a: np.ndarray) -> np.ndarray:
        # RAS array (x, y) -> radiological display: anterior up, patient's right on the left
        return np.asarray(a)[x0:x1, y0:y1].T[::-1, ::-1]

    n_cols = len(SEQUENCES)
    rows = [(images, "input")] + ([(counterfactual, "healthy counterfactual")] if counterfactual is not None else [])
    fig = Figure(figsize=(3.2 * n_cols, 3.4 * (len(rows) + 1)), facecolor="black")
    axes = fig.subplots(len(rows) + 1, n_cols)
    last = len(rows)
    for i, seq in enumerate(SEQUENCES):
        inside = images[i][brain_mask]
        vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
        for row, (volume, label) in enumerate(rows):
            ax = axes[row, i]
            ax.imshow(view(volume[i][:, :, z]), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{SEQUENCE_TITLES[seq]} {label}", color="white", fontsize=9)
            ax.set_axis_off()

    flair = images[FLAIR_INDEX][:, :, z]
    flair_max = float(np.percentile(images[FLAIR_INDEX][brain_mask], 99.5)) if brain_mask.any() else 1.0
    panels = [("anomaly map", anomaly_map, "inferno")] if anomaly_map is not None else []
    if graddiff_map is not None:
        panels.append(("GradDiff map", graddiff_map, "viridis"))
    panels.append(("segmentation (red) vs reference (green)", None, None))
    if baseline is not None:
        panels.append(("FLAIR baseline (orange) vs reference", "baseline", None))
    for col in range(n_cols):
        axes[last, col].set_axis_off()
    for col, (label, data, cmap) in enumerate(panels[:n_cols]):
        ax = axes[last, col]
        if isinstance(data, np.ndarray):
            slice_ = data[:, :, z]
            vmax = float(np.percentile(data[brain_mask], 99.9)) if brain_mask.any() else 1.0
            ax.imshow(view(slice_), cmap=cmap, vmin=0, vmax=max(vmax, 1e-6), interpolation="nearest")
        else:
            ax.imshow(view(flair), cmap="gray", vmin=0, vmax=flair_max, interpolation="nearest")
            mask = baseline if data == "baseline" else segmentation
            colour = "#ff9000" if data == "baseline" else "#ff2020"
            m = view(mask[:, :, z] > 0)
            if m.any():
                overlay = np.zeros((*m.shape, 4), dtype=np.float32)
                overlay[m] = matplotlib.colors.to_rgba(colour, 0.55)
                ax.imshow(overlay, interpolation="nearest")
            if reference is not None:
                r = view(reference[:, :, z] > 0).astype(np.float32)
                if r.any():
                    ax.contour(r, [0.5], colors=["#30ff60"], linewidths=1.0)
        ax.set_title(label, color="white", fontsize=9)
    fig.suptitle(f"{title}   axial slice {z}\n{metrics_text}".strip(), color="white", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86 if metrics_text else 0.91, bottom=0.01, wspace=0.03, hspace=0.14)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=80, facecolor="black")
    return path
