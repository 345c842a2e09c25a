"""Detection in a child process: ``python -m brainldm.logic.worker JOB.json``.

The Slicer module (and anything else that must stay responsive) runs detection in a separate
process - in Slicer ``PythonSlicer -m brainldm.logic.worker JOB.json`` - so the application
never freezes and a cancel can kill the whole process tree at once.

``JOB.json`` (written by :func:`write_job`)::

    {"format": "brainldm-detection-job", "version": 1,
     "inputs": {"t1n": "...nii", "t1c": ..., "t2w": ..., "t2f": ...},
     "model": "<bundle folder or catalogue id, or null for the default model>",
     "settings": {<DetectionSettings fields>; device may be "auto">,
     "out_dir": "..."}

The worker writes the outputs of :func:`brainldm.logic.detection.write_detection_outputs`
into ``out_dir`` (every volume in the grid of the input files) and reports on **stdout**, one
JSON object per line (anything else on stdout is to be ignored by readers)::

    {"event": "started", "pid": 1234}
    {"event": "progress", "stage": "inversion", "fraction": 0.31}
    {"event": "finished", "out_dir": "...", "report": "<out_dir>/report.json"}
    {"event": "error", "kind": "InputDataError", "message": "..."}      (user error, exit 2)
    {"event": "cancelled"}                                                (exit 3)

Logging goes to stderr. Exit status 0 = success, 2 = user error (message says what to do),
3 = cancelled, 1 = a bug (traceback on stderr). A cancel can also be requested without
killing: create ``<out_dir>/CANCEL``; the worker then stops between diffusion steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from brainldm.data.sequences import SEQUENCES
from brainldm.errors import BrainLDMError, SettingsError

JOB_FORMAT = "brainldm-detection-job"
JOB_VERSION = 1
CANCEL_FILE = "CANCEL"
EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 1, 2, 3


def write_job(path: str | Path, inputs: dict[str, str | Path], out_dir: str | Path, settings: dict,
              model: str | Path | None = None) -> Path:
    """Write a job file for the worker and return its path."""
    missing = [s for s in SEQUENCES if s not in inputs]
    if missing:
        raise SettingsError(f"detection job lacks input files for {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    job = {
        "format": JOB_FORMAT, "version": JOB_VERSION,
        "inputs": {s: str(inputs[s]) for s in SEQUENCES},
        "model": None if model in (None, "") else str(model),
        "settings": dict(settings),
        "out_dir": str(out_dir),
    }
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def read_job(path: str | Path) -> dict:
    path = Path(path)
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BrainLDMError(f"Detection job file {path} is unreadable ({error}).") from error
    if not isinstance(job, dict) or job.get("format") != JOB_FORMAT:
        raise BrainLDMError(f"{path} is not a BrainLDM detection job file.")
    if job.get("version") != JOB_VERSION:
        raise BrainLDMError(f"Detection job {path} has version {job.get('version')!r}; this worker reads "
                            f"{JOB_VERSION}. The BrainLDM core and the Slicer module are from different versions.")
    return job


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def settings_from_dict(data: dict):
    """A validated :class:`DetectionSettings` from a job's settings (unknown keys are an error)."""
    from brainldm.detect.settings import DetectionSettings

    known = {f.name for f in fields(DetectionSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"Unknown detection setting(s): {', '.join(unknown)}.")
    values = dict(data)
    values["device"] = resolve_device(str(values.get("device", "cpu")))
    try:
        return DetectionSettings(**values).validate()
    except TypeError as error:
        raise SettingsError(f"Invalid detection settings: {error}") from error


class _Emitter:
    """Writes the JSON event lines (flushed at once so the reader sees them live)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._last_fraction = -1.0
        self._last_time = 0.0

    def __call__(self, event: str, **data) -> None:
        self.stream.write(json.dumps({"event": event, **data}, default=str) + "\n")
        self.stream.flush()

    def progress(self, stage: str, fraction: float) -> None:
        # At most ~10 lines per second, but always the first and the last one of a stage.
        now = time.monotonic()
        if fraction >= 1.0 or fraction - self._last_fraction >= 0.005 or now - self._last_time > 0.5:
            self._last_fraction, self._last_time = fraction, now
            self("progress", stage=stage, fraction=round(float(fraction), 4))


def run_job(job_path: str | Path, emit: _Emitter | None = None) -> int:
    """Run one job file; returns the exit status (see the module docstring)."""
    emit = emit or _Emitter()
    emit("started", pid=os.getpid())
    try:
        job = read_job(job_path)
        from brainldm.diffusion.sampler import Cancelled
        from brainldm.logic.detection import SubjectInputs, run_segmentation

        out_dir = Path(job["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        cancel_file = out_dir / CANCEL_FILE
        settings = settings_from_dict(job.get("settings", {}))
        inputs = SubjectInputs(files={s: Path(job["inputs"][s]) for s in SEQUENCES})
        try:
            report = run_segmentation(inputs, out_dir, settings, model=job.get("model"), overwrite=True,
                                      progress=emit.progress, cancel=cancel_file.exists)
        except Cancelled:
            emit("cancelled")
            return EXIT_CANCELLED
        emit("finished", out_dir=str(out_dir), report=str(out_dir / "report.json"),
             threshold=report.get("threshold"), warnings=report.get("warnings", []))
        return EXIT_OK
    except BrainLDMError as error:
        emit("error", kind=type(error).__name__, message=str(error))
        return EXIT_USER_ERROR
    except MemoryError:
        emit("error", kind="MemoryError", message="Out of memory. Close other programs, use a smaller overlap, "
                                                  "or run on a machine with more memory.")
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: report it, and keep the traceback on stderr
        logging.getLogger("brainldm.worker").exception("detection failed")
        emit("error", kind=type(error).__name__, message=f"Internal error: {error} (see the worker log).")
        return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainldm.logic.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, help="job file written by brainldm.logic.worker.write_job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return run_job(args.job)


if __name__ == "__main__":  # pragma: no cover - exercised through a real child process in the tests
    sys.exit(main())
