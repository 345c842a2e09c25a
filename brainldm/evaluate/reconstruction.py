"""First-stage reconstruction report (thesis Tables A.1/A.2).

For one subject: encode and decode the preprocessed volume with the model's first stage and
report, per sequence and inside the brain, the mean, 95th and 99th percentile and maximum
of the absolute (L1) and squared (L2) error, in normalised [-1, 1] units.
"""

from __future__ import annotations

import numpy as np
import torch

from brainldm.data.sequences import SEQUENCES
from brainldm.data.subject import Subject


def error_statistics(error: np.ndarray) -> dict[str, float]:
    """Mean, 95th / 99th percentile and maximum of a 1-D array of errors."""
    if error.size == 0:
        return {"mean": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    p95, p99 = np.percentile(error, [95.0, 99.0])
    return {"mean": float(error.mean()), "p95": float(p95), "p99": float(p99), "max": float(error.max())}


def reconstruction_report(subject: Subject, bundle) -> dict:
    """Per-sequence L1 and L2 reconstruction errors inside the brain (see the module docstring)."""
    from brainldm.data.preprocess import preprocess_subject
    from brainldm.nets.cpu_speed import use_onednn_convolutions

    prepared = preprocess_subject(subject, bundle.preprocess_config)
    autoencoder = bundle.autoencoder.eval()
    use_onednn_convolutions(autoencoder)
    with torch.inference_mode():
        x = torch.from_numpy(prepared.images)[None]
        reconstruction = autoencoder.decode(autoencoder.encode(x))[0].float().numpy()
    report: dict[str, dict] = {}
    for i, seq in enumerate(SEQUENCES):
        difference = (reconstruction[i] - prepared.images[i])[prepared.mask]
        report[seq] = {"l1": error_statistics(np.abs(difference)), "l2": error_statistics(difference ** 2)}
    all_l1 = np.abs(reconstruction - prepared.images)[:, prepared.mask]
    report["all"] = {"l1": error_statistics(all_l1.ravel()), "l2": error_statistics((all_l1 ** 2).ravel())}
    return {"subject": subject.subject_id, "model": bundle.model_id, "errors": report}
