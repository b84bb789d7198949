"""Statistics of the gain experiment, on arrays: the patient bootstrap and its intervals.

A bootstrap over test patients is a matrix of sample weights (how often each slice's patient
was drawn), so every task's metrics take weights and a whole bootstrap costs one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def patient_bootstrap_weights(patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Sample weights of a bootstrap over patients: each draw resamples whole patients.

    Args:
        patients: (n,) patient key of every test sample.
        n_boot: number of bootstrap draws B.
        seed: seed of the draws (the same seed gives the same draws, so arms stay paired).

    Returns:
        (B, n) weights: how many times each sample's patient was drawn.
    """
    keys, inverse = np.unique(np.asarray(patients), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=n_boot)
    return counts[:, inverse].astype(np.float64)  # (B, n)


@dataclass
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float
    valid: int  # bootstrap draws where the metric was defined (every class present)
    assessable: bool = True  # enough test patients for a patient bootstrap to mean anything

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes 0 and the test set allows an interval at all."""
        return bool(self.assessable and (self.low > 0 or self.high < 0))


def interval(
    point: float, draws: np.ndarray, level: float = 0.95, assessable: bool = True
) -> Interval:
    """Percentile interval of bootstrap ``draws`` (NaN draws, undefined metrics, are dropped)."""
    ok = draws[np.isfinite(draws)]
    if len(ok) == 0:
        return Interval(float(point), float("nan"), float("nan"), 0, assessable)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high), int(len(ok)), assessable)


MIN_TEST_PATIENTS = 5
MIN_PATIENTS_PER_CLASS = 2


def bootstrap_assessable(y: np.ndarray, patients: np.ndarray, n_classes: int) -> bool:
    """Whether a bootstrap over these test patients can support a significance claim.

    With fewer than 5 test patients, or a class seen in fewer than 2 of them, resampling
    patients cannot estimate how much the metric varies between patients: the percentile
    interval comes out far too narrow (with one lesion patient, every draw holds the same
    positives), so no gain is called significant.
    """
    per_class = [len(set(patients[y == c])) for c in range(n_classes)]
    return len(set(patients)) >= MIN_TEST_PATIENTS and min(per_class) >= MIN_PATIENTS_PER_CLASS
