"""The gain experiment of ``augment evaluate``: does the synthetic data help a downstream model?

The task's model (:mod:`augment.evaluation.tasks`; a classifier by default) is trained in four
arms, each with several seeds paired across arms (the same seed gives the same initial weights
and batch order):

- ``real``: the GAN's real training patients only;
- ``real_classic``: the same, with classic MONAI augmentation (flips, rotations, intensity);
- ``real_synthetic``: the same real slices plus synthetic slices labelled by their class;
- ``real_classic_synthetic``: both.

Fairness: every arm gets exactly the real patients the GAN was trained on (recorded in the
model's ``config.json``); the best epoch is chosen on the val split; metrics are computed on the
test split only, with 95% intervals from a bootstrap over test patients (the same draws for every
arm and seed, so the gains are paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from augment.config import EvaluateConfig
from augment.evaluation import stats
from augment.evaluation.stats import Interval
from augment.evaluation.tasks import TASKS
from augment.evaluation.tasks.base import Task

ARMS = ("real", "real_classic", "real_synthetic", "real_classic_synthetic")
COMPARISONS = (
    ("real_classic", "real"),
    ("real_synthetic", "real"),
    ("real_classic_synthetic", "real"),
    ("real_synthetic", "real_classic"),
    ("real_classic_synthetic", "real_classic"),
)


@dataclass
class Split:
    """Slices of one split: images (n, 1, S, S) float32 in [-1, 1], labels (n,), patients (n,)."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray


@dataclass
class ExperimentData:
    """Everything the gain experiment sees; built by :func:`experiment_data` or by tests."""

    train: Split
    val: Split
    test: Split
    synthetic: np.ndarray  # (N_syn, 1, S, S) float32 in [-1, 1]
    synthetic_labels: np.ndarray  # (N_syn,) class ids; -1 when the generator is unconditional
    class_names: list[str]


@dataclass
class GainResult:
    """Outcome of the gain experiment."""

    arms: list[str]
    seeds: list[int]
    test_labels: np.ndarray  # (n_test,)
    probs: dict[str, np.ndarray]  # arm -> (n_seeds, n_test, K) test probabilities
    best_epoch: dict[str, list[int]]  # arm -> per seed
    val_curves: dict[str, list[list[float]]]  # arm -> per seed, val AUC per epoch
    per_seed: dict[str, dict[str, list[float]]]  # arm -> metric -> per seed (full test set)
    arm_ci: dict[str, dict[str, Interval]]  # arm -> metric -> mean over seeds + CI
    gains: dict[str, dict[str, Interval]]  # "a_vs_b" -> metric -> gain + CI
    n_synthetic: int
    metrics: tuple[str, ...]  # the task's metric names; the first is the headline
    notes: list[str] = field(default_factory=list)


def _arm_training_set(
    data: ExperimentData, arm: str, n_syn: int, rng_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.train.images, data.train.labels
    if "synthetic" not in arm:
        return images, labels
    usable = np.flatnonzero(data.synthetic_labels >= 0)
    pick = np.random.default_rng(rng_seed).choice(usable, n_syn, replace=False)
    pick.sort()
    return (
        np.concatenate([images, data.synthetic[pick]]),
        np.concatenate([labels, data.synthetic_labels[pick]]),
    )


def gain_experiment(
    data: ExperimentData, cfg: EvaluateConfig, device: torch.device, console: Console | None = None
) -> GainResult:
    """Train every arm with every seed and compare them on the test split.

    Args:
        data: the slices (see :func:`experiment_data`).
        cfg: the stage's configuration (classifier, seeds, epochs, ratio, bootstrap).
        device: where to train.
        console: where the progress bar goes (None: a default console).

    Returns:
        A :class:`GainResult` with test probabilities, per-arm summaries and paired gains.
    """
    task: Task = TASKS.get(cfg.task)()
    notes = []
    usable = int((data.synthetic_labels >= 0).sum())
    n_syn = min(int(round(cfg.synthetic_ratio * len(data.train.labels))), usable)
    arms = list(ARMS)
    if usable == 0 or n_syn == 0:
        arms = ["real", "real_classic"]
        notes.append(
            "The synthetic arms were skipped: the synthetic slices carry no class "
            "(unconditional generator) or synthetic_ratio is 0."
        )
    elif n_syn < round(cfg.synthetic_ratio * len(data.train.labels)):
        notes.append(
            f"Only {usable} labelled synthetic slices were available: the synthetic arms used "
            f"a ratio of {n_syn / len(data.train.labels):.2f} instead of {cfg.synthetic_ratio}."
        )
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    n_classes = len(data.class_names)
    if not stats.bootstrap_assessable(data.test.labels, data.test.patients, n_classes):
        notes.append(
            f"The test split is too small to call any difference significant: it needs at least "
            f"{stats.MIN_TEST_PATIENTS} patients and every class in at least "
            f"{stats.MIN_PATIENTS_PER_CLASS} of them; intervals are shown but no gain is marked."
        )
    steps = -(-len(data.train.labels) // cfg.batch_size)  # one real epoch, for every arm
    probs: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    best_epoch: dict[str, list[int]] = {a: [] for a in arms}
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    with Progress(console=console, transient=True) as bar:
        progress = bar.add_task(f"gain experiment ({cfg.task})", total=len(arms) * len(seeds))
        for seed in seeds:
            for arm in arms:
                x, y = _arm_training_set(data, arm, n_syn, cfg.seed)
                model, curve = task.train(
                    x, y, data.val, n_classes, cfg, seed, "classic" in arm, device, steps
                )
                probs[arm].append(task.predict(model, data.test.images, device))
                best_epoch[arm].append(int(np.argmax(curve)))
                curves[arm].append(curve)
                bar.advance(progress)
    stacked = {a: np.stack(p) for a, p in probs.items()}  # (n_seeds, n_test, K)
    per_seed, arm_ci, gains = compare_arms(
        task, data.test.labels, data.test.patients, stacked, cfg.bootstrap, cfg.seed
    )
    return GainResult(
        arms=arms,
        seeds=seeds,
        test_labels=data.test.labels,
        probs=stacked,
        best_epoch=best_epoch,
        val_curves=curves,
        per_seed=per_seed,
        arm_ci=arm_ci,
        gains=gains,
        n_synthetic=n_syn if "real_synthetic" in arms else 0,
        metrics=task.metrics,
        notes=notes,
    )


def compare_arms(
    task: Task,
    y: np.ndarray,
    patients: np.ndarray,
    probs: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
) -> tuple[
    dict[str, dict[str, list[float]]],
    dict[str, dict[str, Interval]],
    dict[str, dict[str, Interval]],
]:
    """Per-arm metrics and paired gains with a bootstrap over test patients.

    Every arm and seed is scored on the same bootstrap draws; a draw's value for an arm is the
    mean over seeds, and a gain's draw is the difference of two arms' draws.

    Args:
        task: scores the predictions.
        y: (n,) test labels.
        patients: (n,) test patient keys.
        probs: arm -> (n_seeds, n, K) test probabilities.
        n_boot: bootstrap draws.
        seed: seed of the draws.

    Returns:
        per_seed (arm -> metric -> list), arm_ci (arm -> metric -> Interval),
        gains ("a_vs_b" -> metric -> Interval).
    """
    weights = stats.patient_bootstrap_weights(patients, n_boot, seed)  # (B, n)
    n_classes = next(iter(probs.values())).shape[2]
    ok = stats.bootstrap_assessable(y, patients, n_classes)
    point: dict[str, dict[str, float]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    for arm, p in probs.items():
        full = [task.score(y, ps) for ps in p]
        boot = [task.score(y, ps, weights) for ps in p]
        per_seed[arm] = {m: [float(f[m][0]) for f in full] for m in task.metrics}
        point[arm] = {m: float(np.mean(per_seed[arm][m])) for m in per_seed[arm]}
        draws[arm] = {m: np.mean([b[m] for b in boot], axis=0) for m in per_seed[arm]}
    arm_ci = {
        a: {m: stats.interval(point[a][m], draws[a][m], assessable=ok) for m in point[a]}
        for a in probs
    }
    gains: dict[str, dict[str, Interval]] = {}
    for arm, ref in COMPARISONS:
        if arm in probs and ref in probs:
            gains[f"{arm}_vs_{ref}"] = {
                m: stats.interval(
                    point[arm][m] - point[ref][m], draws[arm][m] - draws[ref][m], assessable=ok
                )
                for m in point[arm]
            }
    return per_seed, arm_ci, gains
