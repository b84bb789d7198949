"""Every fidelity measure of a synthetic set, next to the real-vs-real baseline."""

from __future__ import annotations

import numpy as np

from augment.errors import ConfigError
from augment.evaluation.fidelity import FIDELITY


def fidelity(
    train: np.ndarray,
    test: np.ndarray,
    synthetic: np.ndarray,
    k: int,
    seed: int = 0,
    names: tuple[str, ...] | list[str] = FIDELITY.names(),
) -> dict[str, dict[str, float]]:
    """Every fidelity measure for synthetic vs real-train, next to real-test vs real-train.

    The synthetic set is subsampled to the size of the real test set first, because FID, KID
    and the k-NN measures depend on the sample size: the baseline and the synthetic value are
    then measured with equal numbers.

    Args:
        train: (N_train, D) features of the real training slices (the reference).
        test: (N_test, D) features of the real test slices (the baseline candidate).
        synthetic: (N_syn, D) features of the synthetic slices.
        k: neighbours of precision/recall/density/coverage.
        seed: seed of the subsampling and of KID's subsets.
        names: the registered metrics to compute.

    Returns:
        ``{"synthetic": {...}, "baseline": {...}}``, each with every value of every metric
        (fid; kid, kid_std; precision, recall, density, coverage).
    """
    rng = np.random.default_rng(seed)
    n = min(len(test), len(synthetic))
    syn = synthetic[np.sort(rng.choice(len(synthetic), n, replace=False))]
    if min(len(train), n) <= k:
        raise ConfigError(f"expected more than k = {k} slices per set, got {min(len(train), n)}")
    metrics = [FIDELITY.get(name)() for name in names]
    out: dict[str, dict[str, float]] = {}
    for side, cand in (("synthetic", syn), ("baseline", test)):
        out[side] = {}
        for metric in metrics:
            out[side].update(metric.compute(train, cand, k, seed))
    return out


def report_rows(names: tuple[str, ...] | list[str]) -> list[tuple[str, str, str]]:
    """The report's rows (value name, label, reading) of the metrics ``names``."""
    return [row for name in names for row in FIDELITY.get(name).rows]
