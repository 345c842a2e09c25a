"""The degradation picture (like thesis Fig. B.5): each step of one drawn pipeline on a middle slice.

Top block: the input, the image after every operation the pipeline applied (level: operation and
its parameters), and the final low-resolution image, one row per sequence. Bottom block: each
degradation of the pipeline alone on the input slice, at the upper end of its level-1 range in
Table B.5 (Fig. B.5 b-g: Gaussian, Rician, non-central chi noise, bias field, motion, ghosting;
for the ESRGAN pipeline its kernel families and Gaussian / Poisson noise). Intermediate images
have their own grid sizes; every panel shows the same field of view. Unit magnitude domain,
one grey window per sequence (taken from the input), radiological display like
:mod:`brainldm.logic.overview`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from brainldm.sr import degrade as D


class SliceRecorder:
    """An ``on_step`` callback for :func:`brainldm.sr.degrade.degrade` that keeps one axial slice per step.

    ``z`` is the slice index in the input grid (``None`` for 2D inputs); on grids whose third
    axis was resampled the slice at the same relative position is kept.
    """

    def __init__(self, z: int | None, depth: int | None):
        self.z, self.depth = z, depth
        self.steps: list[tuple[str, np.ndarray]] = []

    def __call__(self, label: str, unit: np.ndarray) -> None:
        if unit.ndim == 3 or self.z is None:
            self.steps.append((label, np.array(unit, dtype=np.float32)))
            return
        depth = unit.shape[-1]
        z = self.z if depth == self.depth else round((self.z + 0.5) * depth / self.depth - 0.5)
        self.steps.append((label, np.array(unit[..., min(max(z, 0), depth - 1)], dtype=np.float32)))


def single_degradations(unit: np.ndarray, pipeline: str, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Each degradation of ``pipeline`` alone on a ``(C, H, W)`` unit-domain slice (Fig. B.5 b-g).

    Strengths are the upper ends of the level-1 ranges of Table B.5 (motion and ghosting, which
    the thesis switches off, use its rotation, translation, step, count and intensity ranges).
    """
    cfg = D.pipeline_config(pipeline)
    level = cfg.levels[0]
    rng = np.random.default_rng(seed)
    plane = (1, 2)
    x = np.asarray(unit, dtype=np.float32)
    out: list[tuple[str, np.ndarray]] = []

    def clip(a: np.ndarray) -> np.ndarray:
        return np.clip(a, 0.0, None)

    sigma = level.blur_sigma[1]
    if pipeline == "esrgan":
        rot45 = np.array([[math.cos(math.pi / 4), -math.sin(math.pi / 4)], [math.sin(math.pi / 4), math.cos(math.pi / 4)]])
        kernels = [
            ("iso", (sigma, sigma), None, 1.0),
            ("aniso", (sigma, 0.3), rot45, 1.0),
            ("generalised_iso", (sigma, sigma), None, cfg.generalised_beta[0]),
            ("plateau_iso", (sigma, sigma), None, cfg.plateau_beta[1]),
        ]
        for kind, sigmas, rotation, beta in kernels:
            k = D.blur_kernel(kind, sigmas, rotation, 21, beta)
            label = f"{kind.replace('_', ' ')} blur σ {sigmas[0]:.1f}" + (f" β {beta:g}" if beta != 1.0 else "")
            out.append((label, D.blur(x, k, plane)))
        g = level.gaussian_sigma_255[1]
        out.append((f"Gaussian noise σ {g:g}/255", clip(D.add_gaussian_noise(x, g / 255.0, rng))))
        out.append((f"Poisson noise ×{level.poisson_scale[1]:g}",
                    clip(D.add_poisson_noise(x, level.poisson_scale[1], rng, cfg.poisson_levels))))
        return out

    g = level.gaussian_sigma_255[1]
    out.append((f"Gaussian noise σ {g:g}/255", clip(D.add_gaussian_noise(x, g / 255.0, rng))))
    out.append((f"Rician noise σ {level.rician_sigma[1]:g}", D.add_rician_noise(x, level.rician_sigma[1], rng)))
    out.append((f"nc-χ noise σ {level.chi_sigma[1]:g} L={level.chi_coils[1]}",
                D.add_chi_noise(x, level.chi_sigma[1], level.chi_coils[1], rng)))
    bound = cfg.bias_coefficients[1]
    terms = len(D._polynomial_terms(2, cfg.bias_order))
    field = D.bias_field(x.shape[1:], rng.uniform(-bound, bound, terms), cfg.bias_order)
    out.append((f"bias field a {bound:g}", D.apply_bias_field(x, field, plane)))
    n = cfg.motion_steps
    degrees = [cfg.motion_degrees * (-1) ** k for k in range(n)]
    shifts = [(cfg.motion_translation * (-1) ** k,) * 2 for k in range(n)]
    times = [(k + 1) / (n + 1) for k in range(n)]
    out.append((f"motion ±{cfg.motion_degrees:g}° ±{cfg.motion_translation:g} vox", D.motion_artefact(x, degrees, shifts, times, plane)))
    count, intensity = level.ghost_count[0], level.ghost_intensity[1]
    out.append((f"ghosting {count} ghosts, intensity {intensity:g}",
                D.ghosting_artefact(x, count, plane[0], intensity, plane, cfg.ghost_restore)))
    return out


def _panel(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int], vmax: float) -> np.ndarray:
    """One display panel: the brain box of a ``(h, w)`` RAS slice, grey-windowed, resampled to ``size``."""
    h, w = image.shape
    x0, x1 = math.floor(box[0] * h), max(math.ceil(box[1] * h), math.floor(box[0] * h) + 1)
    y0, y1 = math.floor(box[2] * w), max(math.ceil(box[3] * w), math.floor(box[2] * w) + 1)
    # RAS array (x, y) -> radiological display: anterior up, patient's right on the left
    view = np.clip(image[x0:x1, y0:y1] / vmax, 0.0, 1.0).T[::-1, ::-1]
    return D.resize(view[None], size, (1, 2), "nearest")[0]  # nearest: resampling steps stay visible


def degradation_png(
    path: str | Path,
    steps: list[tuple[str, np.ndarray]],
    gallery: list[tuple[str, np.ndarray]] | None = None,
    channel_titles: list[str] | None = None,
    title: str = "",
) -> Path:
    """Write the degradation picture (see the module docstring) and return its path.

    ``steps`` and ``gallery`` are ``(label, (C, h, w) unit-domain slice)`` pairs; the first step is
    the input, whose brain box and grey windows are used for every panel. The panels are laid out
    on one canvas (one image, one set of labels), which keeps drawing fast.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if not steps:
        raise ValueError("no steps to draw")
    reference = steps[0][1]
    n_channels = reference.shape[0]
    titles = channel_titles or [f"channel {c}" for c in range(n_channels)]
    brain = (reference > 0).any(axis=0)
    xs, ys = np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0))
    nx, ny = brain.shape
    if xs.size and ys.size:  # brain box as fractions of the field of view, with a small margin
        box = (max(xs[0] - 4, 0) / nx, min(xs[-1] + 5, nx) / nx, max(ys[0] - 4, 0) / ny, min(ys[-1] + 5, ny) / ny)
    else:
        box = (0.0, 1.0, 0.0, 1.0)
    vmax = []
    for c in range(n_channels):
        inside = reference[c][brain]
        vmax.append(max(float(np.percentile(inside, 99.5)), 1e-6) if inside.size else 1.0)
    # display size of a panel: the brain box of the input, scaled to 190 pixels on its long side
    box_h, box_w = (box[3] - box[2]) * ny, (box[1] - box[0]) * nx  # display rows follow y, columns x
    zoom = 190.0 / max(box_h, box_w)
    size = (max(round(box_h * zoom), 8), max(round(box_w * zoom), 8))

    blocks = [(f"{title}\nthis draw, step by step" if title else "this draw, step by step", steps)]
    if gallery:
        blocks.append(("each degradation alone (Table B.5, upper end of the level-1 ranges)", [steps[0], *gallery]))
    n_cols = max(len(items) for _, items in blocks)
    gap, left, label_h, heading_h = 6, 22, 40, 34
    chars = max(int(size[1] / 5.2), 12)  # label characters per line at font size 7
    width = left + n_cols * (size[1] + gap)
    block_h = heading_h + label_h + n_channels * (size[0] + gap)
    canvas = np.zeros((block_h * len(blocks), width), dtype=np.float32)
    texts: list[tuple[float, float, str, dict]] = []
    for b, (heading, items) in enumerate(blocks):
        top = b * block_h
        texts.append((4, top + 4, heading, {"fontsize": 9, "color": "#d0d0d0", "va": "top"}))
        for col, (label, image) in enumerate(items):
            x0 = left + col * (size[1] + gap)
            texts.append((x0 + size[1] / 2, top + heading_h + label_h - 4, textwrap.fill(label, chars),
                          {"fontsize": 7, "color": "white", "ha": "center", "va": "bottom"}))
            for c in range(n_channels):
                y0 = top + heading_h + label_h + c * (size[0] + gap)
                canvas[y0:y0 + size[0], x0:x0 + size[1]] = _panel(image[c], box, size, vmax[c])
        for c in range(n_channels):
            y0 = top + heading_h + label_h + c * (size[0] + gap)
            texts.append((left - 6, y0 + size[0] / 2, titles[c],
                          {"fontsize": 8, "color": "white", "rotation": 90, "ha": "right", "va": "center"}))
    dpi = 100
    fig = Figure(figsize=(width / dpi, canvas.shape[0] / dpi), dpi=dpi, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for x, y, text, style in texts:
        ax.text(x, y, text, **style)
    ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas_agg = FigureCanvasAgg(fig)
    canvas_agg.draw()
    rgba = np.asarray(canvas_agg.buffer_rgba())
    Image.fromarray(rgba[..., :3]).convert("L").save(str(path), optimize=True)  # all grey: 8-bit grey PNG
    return path
