"""Statistics of the gain experiment, on arrays: a two-level bootstrap and its intervals.

What varies between two runs of the same study is who the test patients are and how training
happened to go (initial weights, batch order: the seed). Each bootstrap draw resamples both:
whole test patients (a matrix of sample weights, so every task's metrics take weights and a
whole bootstrap costs one pass) and, independently, the seeds (with replacement, the same seed
draw for every arm, so the arms stay paired). Documented in ``docs/evaluation.md``.
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


def seed_bootstrap_indices(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """Which seeds each bootstrap draw uses: (B, n_seeds) indices drawn with replacement.

    The same ``seed`` gives the same draws, so every arm (and every metric) is averaged over the
    same resampled seeds in draw b and the gains stay paired. With one seed the indices are all
    0: training randomness is then not in the interval (the report says so).
    """
    rng = np.random.default_rng([seed, 0x5EED])
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def seed_averaged_draws(per_seed_draws: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Draw b's value: the mean over the seeds draw b picked of their values at patient draw b.

    Args:
        per_seed_draws: (n_seeds, B) a metric per seed and patient-bootstrap draw.
        seed_idx: (B, n_seeds) from :func:`seed_bootstrap_indices` (for these n_seeds).

    Returns:
        (B,) draws; NaN where a picked seed's metric is undefined in that draw.
    """
    by_draw = np.asarray(per_seed_draws, np.float64).T  # (B, n_seeds)
    return np.take_along_axis(by_draw, seed_idx, axis=1).mean(axis=1)


@dataclass
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float
    valid: int  # bootstrap draws where the metric was defined (every class present)
    assessable: bool = True  # enough test patients for a patient bootstrap to mean anything
    se: float = float("nan")  # standard deviation of the draws (bootstrap standard error)

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
    se = float(np.std(ok, ddof=1)) if len(ok) > 1 else float("nan")
    return Interval(float(point), float(low), float(high), int(len(ok)), assessable, se)


# Two-sided 5% test with 80% power: a true gain of (z_0.975 + z_0.8) standard errors is
# detected four times out of five.
MDE_FACTOR = 1.959964 + 0.841621


def minimum_detectable_effect(gain: Interval) -> float:
    """The smallest true gain this design detects with 80% power at the 5% level.

    Uses the bootstrap standard error of an observed paired gain as the design's standard
    error (the spread of a gain barely depends on its size), so a user with few test patients
    or seeds is told how large an effect must be before their data can show it.
    """
    return float(MDE_FACTOR * gain.se)


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
