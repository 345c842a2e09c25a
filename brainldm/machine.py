"""What this machine is (CPU model, cores, GPU), for model cards and benchmark reports.

A leaf module: anything from training to the command line may import it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_description() -> str:
    """CPU model, core count and GPU (if any) of this machine (for 'trained/measured on')."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a description must never fail
        pass
    return f"{name}, {cores} core{'s' if cores != 1 else ''}, {gpu}"
