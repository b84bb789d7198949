"""FID on the fixed features, with torchmetrics' implementation."""

from __future__ import annotations

import numpy as np
import torch

from augment.evaluation.fidelity.base import _Precomputed


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N, D), with torchmetrics' implementation."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute off: a torchrun training scores snapshots on rank 0 only, and torchmetrics
    # would otherwise wait there for the other ranks to join a gather they never reach.
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), sync_on_compute=False)
    metric.update(torch.from_numpy(real).double(), real=True)
    metric.update(torch.from_numpy(fake).double(), real=False)
    return float(metric.compute())


class FID:
    """Frechet distance between Gaussians fitted to the two feature sets."""

    rows = (("fid", "FID", "lower is closer"),)

    def compute(self, real: np.ndarray, fake: np.ndarray, k: int, seed: int) -> dict[str, float]:
        return {"fid": fid(real, fake)}
