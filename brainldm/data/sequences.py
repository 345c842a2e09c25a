"""MRI sequence names and file-name conventions (BraTS 2023 and BraTS 2021)."""

#: Canonical order of the four sequences everywhere in BrainLDM (channel axis 0).
SEQUENCES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")

#: Human-readable names, for plots and messages.
SEQUENCE_TITLES: dict[str, str] = {
    "t1n": "T1",
    "t1c": "T1 contrast",
    "t2w": "T2",
    "t2f": "T2-FLAIR",
}

#: File-name suffixes per sequence: BraTS 2023 (``<id>-t1n.nii.gz``) first,
#: then BraTS 2021 (``<id>_t1.nii.gz``).
BRATS2023_SUFFIX: dict[str, str] = {s: f"-{s}" for s in (*SEQUENCES, "seg")}
BRATS2021_SUFFIX: dict[str, str] = {
    "t1n": "_t1",
    "t1c": "_t1ce",
    "t2w": "_t2",
    "t2f": "_flair",
    "seg": "_seg",
}

FLAIR_INDEX = SEQUENCES.index("t2f")
