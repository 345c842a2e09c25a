"""A terminal progress bar fed by the ``progress(stage, fraction)`` callbacks of the core."""

from __future__ import annotations


def progress_bar():
    """A tqdm bar (0-100 %) and the ``update(stage, fraction)`` callback that drives it."""
    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc="detect", unit="%", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]")

    def update(stage: str, fraction: float) -> None:
        bar.set_description(stage)
        bar.n = round(100 * fraction, 1)
        bar.refresh()

    return bar, update
