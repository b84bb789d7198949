"""Precision, recall, density and coverage on the fixed features (the authors' ``prdc``)."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    For two independent samples of one distribution, density is 1 in expectation and coverage
    is ``1 - (N-1)...(N-k) / ((2N-1)...(2N-k))`` (about ``1 - 2**-k``, 0.97 for k = 5); for two
    identical sets both are exactly 1 (every real ball holds its own centre).
    """
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {name: float(value) for name, value in out.items()}


def expected_coverage(n: int, k: int) -> float:
    """Coverage expected for two independent samples of size ``n`` of one distribution."""
    ratio = np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    return float(1 - ratio)


class PRDC:
    """k-NN precision/recall (Kynkaanniemi et al.) and density/coverage (Naeem et al.)."""

    rows = (
        ("precision", "precision", "share of samples that look real (higher)"),
        ("recall", "recall", "share of the real variety reproduced (higher)"),
        ("density", "density", "about 1 for a matching distribution"),
        ("coverage", "coverage", "about 0.97 for a matching distribution (k = 5)"),
    )

    def compute(self, real: np.ndarray, fake: np.ndarray, k: int, seed: int) -> dict[str, float]:
        return prdc(real, fake, k)
