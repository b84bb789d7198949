"""The answer of the gain experiment, in words a user can put in a paper, or a refusal.

A gain is read only where the yardstick works: the real-only arm must beat the best untrained
floor on the same test patients with its interval's lower bound, and the test split must be
large enough for a patient bootstrap to mean anything. Otherwise the verdict says which of the
two failed and calls no gain. Every verdict carries the design's minimum detectable effect, so
"cannot tell" says how large an effect this data could have shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment.evaluation.experiment import GainResult
from augment.evaluation.stats import Interval, minimum_detectable_effect

HELPS, HURTS, CANNOT_TELL, DID_NOT_LEARN, NOT_RUN, LEAKAGE = (
    "helps",
    "hurts",
    "cannot tell",
    "did not learn",
    "not run",
    "leakage between splits",
)
VERDICTS = (HELPS, HURTS, CANNOT_TELL, DID_NOT_LEARN, NOT_RUN, LEAKAGE)
HEADLINE_GAIN = "real_synthetic_vs_real"


@dataclass
class Verdict:
    """One task's answer.

    Attributes:
        task: the evaluation task (``classification``).
        verdict: one of :data:`VERDICTS`.
        metric: the headline metric it was read on.
        real: the real-only arm's headline metric.
        floor_name: the best floor; ``floor`` its value on the same test patients.
        gain: the real+synthetic minus real-only gain (None: the synthetic arms did not run).
        mde: the smallest gain this design detects with 80% power (NaN when unknown).
        text: one paragraph saying all of the above.
    """

    task: str
    verdict: str
    metric: str
    real: Interval
    floor_name: str
    floor: Interval | None
    gain: Interval | None
    mde: float
    text: str


def _f(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3f}"


def _best_floor(gain: GainResult) -> tuple[str, Interval | None]:
    m = gain.headline
    scored = [(name, ci[m]) for name, ci in gain.floors.items() if np.isfinite(ci[m].value)]
    if not scored:
        return "", None
    return max(scored, key=lambda item: item[1].value)


def decide(gain: GainResult, n_test_patients: int, leakage_rate: float | None = None) -> Verdict:
    """The verdict of one task's gain experiment (see the module docstring for the rules).

    Args:
        gain: the experiment's outcome.
        n_test_patients: for the text.
        leakage_rate: the share of held-out slices that near-duplicate a training slice, when
            it is above the tolerated share (None: no leakage): the verdict is then withheld.
    """
    m = gain.headline
    real = gain.arm_ci["real"][m]
    floor_name, floor = _best_floor(gain)
    g = gain.gains.get(HEADLINE_GAIN, {}).get(m)
    mde = minimum_detectable_effect(g) if g is not None else float("nan")
    real_txt = f"real-only {m.upper()} {_f(real.value)} [{_f(real.low)}, {_f(real.high)}]"
    floor_txt = f"the best untrained floor ({floor_name}) scores {_f(floor.value)}" if floor else ""

    def verdict(kind: str, text: str) -> Verdict:
        return Verdict(gain.task, kind, m, real, floor_name, floor, g, mde, text)

    if leakage_rate is not None:
        return verdict(
            LEAKAGE,
            f"No verdict: {leakage_rate:.1%} of the val/test slices are near-duplicates of "
            "training slices (the same patient under two IDs, repeated scans, or one subject "
            "split into several patients), so the held-out patients are not new and no "
            "measure on them is honest. See the pairs under Memorisation.",
        )
    if floor is not None and not real.low > floor.value:
        return verdict(
            DID_NOT_LEARN,
            f"The downstream model did not learn; no verdict. Its {real_txt} does not beat "
            f"{floor_txt} on the same test patients with its interval's lower bound, so it has "
            "learned no more than a shortcut, and a gain over it would mean nothing.",
        )
    if not real.assessable:
        return verdict(
            CANNOT_TELL,
            f"Cannot tell: the test split ({n_test_patients} patients) is too small for a "
            "bootstrap over patients to mean anything, so no difference is called.",
        )
    if g is None:
        return verdict(NOT_RUN, f"The synthetic arms did not run (see the notes); {real_txt}.")
    effect = f"{g.value:+.3f} {m.upper()} (95% CI {_f(g.low)} to {_f(g.high)})"
    design = (
        f"With {n_test_patients} test patients and {len(gain.seeds)} seed(s) this design "
        f"detects a true gain of {_f(mde)} {m.upper()} or more (80% power, 5% level)."
    )
    context = f"The yardstick learned: {real_txt}, above {floor_txt}." if floor else ""
    if g.significant and g.value > 0:
        kind, head = HELPS, f"Adding synthetic slices helped: {effect} over real data only."
    elif g.significant:
        kind, head = HURTS, f"Adding synthetic slices made the model worse: {effect}."
    else:
        kind = CANNOT_TELL
        head = (
            f"Cannot tell whether the synthetic slices help: {effect} over real data only; the "
            "interval includes 0."
        )
    return verdict(kind, " ".join(p for p in (head, context, design) if p))
