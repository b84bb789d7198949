"""The gain experiment of ``augment evaluate``: does the synthetic data help a downstream model?

The task's model (:mod:`augment.evaluation.tasks`; a classifier by default) is trained in four
arms, each with several seeds paired across arms (the same seed gives the same initial weights
and batch order):

- ``real``: the GAN's real training patients only;
- ``real_classic``: the same, with classic MONAI augmentation (flips, rotations, intensity);
- ``real_synthetic``: the same real slices plus synthetic slices labelled by their class;
- ``real_classic_synthetic``: both.

Fairness: every arm gets exactly the real patients the GAN was trained on (recorded in the
model's ``config.json``); the best epoch and the decision threshold are chosen on the val split;
metrics are computed on the test split only, with 95% intervals from a bootstrap that resamples
test patients and seeds (the same draws for every arm, so the gains are paired).

Floors: the task's untrained shortcut predictors (:mod:`augment.evaluation.floors`) are scored
on the same test patients and draws; :func:`decide` reads a gain only where the real-only arm
beats the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from augment.config import ARMS, EvaluateConfig
from augment.evaluation import stats
from augment.evaluation.runner import Job, run_jobs
from augment.evaluation.stats import Interval
from augment.evaluation.tasks import TASKS
from augment.evaluation.tasks.base import Decision, Task

COMPARISONS = (
    ("real_classic", "real"),
    ("real_synthetic", "real"),
    ("real_classic_synthetic", "real"),
    ("real_synthetic", "real_classic"),
    ("real_classic_synthetic", "real_classic"),
)


@dataclass
class Split:
    """Slices of one split.

    Attributes:
        images: (n, C, S, S) float32 in [-1, 1].
        labels: (n,) class ids.
        patients: (n,) patient keys (``synthetic`` for synthetic slices).
        masks: (n, S, S) uint8, 1 on lesion pixels (the store's lesion labels), or None.
    """

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    masks: np.ndarray | None = None


@dataclass
class ExperimentData:
    """Everything the gain experiment sees; built by :func:`experiment_data` or by tests."""

    train: Split
    val: Split
    test: Split
    synthetic: np.ndarray  # (N_syn, C, S, S) float32 in [-1, 1]
    synthetic_labels: np.ndarray  # (N_syn,) class ids; -1 when the generator is unconditional
    class_names: list[str]
    synthetic_masks: np.ndarray | None = None  # (N_syn, S, S) uint8 lesion masks, or None


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
    task: str = "classification"
    lower_is_better: frozenset[str] = frozenset()  # metrics where a decrease is the gain
    floors: dict[str, dict[str, Interval]] = field(default_factory=dict)  # floor -> metric
    decisions: dict[str, list[Decision]] = field(default_factory=dict)  # arm -> per seed
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        """The metric verdicts and floors are read on."""
        return self.metrics[0]


def usable_synthetic(data: ExperimentData, task: Task) -> np.ndarray:
    """Indices of the synthetic slices a task can train on (a class; a mask if it needs one)."""
    ok = data.synthetic_labels >= 0
    if task.needs_masks and data.synthetic_masks is None:
        ok = np.zeros_like(ok)
    return np.flatnonzero(ok)


def _arm_training_set(
    data: ExperimentData, arm: str, n_syn: int, usable: np.ndarray, rng_seed: int
) -> Split:
    if "synthetic" not in arm:
        return data.train
    pick = np.random.default_rng(rng_seed).choice(usable, n_syn, replace=False)
    pick.sort()
    masks = None
    if data.train.masks is not None and data.synthetic_masks is not None:
        masks = np.concatenate([data.train.masks, data.synthetic_masks[pick]])
    return Split(
        images=np.concatenate([data.train.images, data.synthetic[pick]]),
        labels=np.concatenate([data.train.labels, data.synthetic_labels[pick]]),
        patients=np.concatenate([data.train.patients, np.full(n_syn, "synthetic")]),
        masks=masks,
    )


def gain_experiment(
    data: ExperimentData,
    cfg: EvaluateConfig,
    device: torch.device,
    console: Console | None = None,
    features: dict[str, np.ndarray] | None = None,
    task_name: str = "classification",
) -> GainResult:
    """Train every arm with every seed and compare them, and the floors, on the test split.

    Args:
        data: the slices (see :func:`experiment_data`).
        cfg: the stage's configuration (classifier, seeds, steps, ratio, bootstrap).
        device: where to train.
        console: where the progress bar goes (None: a default console).
        features: fixed random-network features of ``train``, ``val`` and ``test`` for the
            linear-probe floor (None: computed here).
        task_name: the evaluation task (a name of the task registry).

    Returns:
        A :class:`GainResult` with test predictions, per-arm summaries, floors and gains.
    """
    task: Task = TASKS.get(task_name)()
    notes = []
    data, kept = task.view(data, cfg)
    if kept:
        remaining = sum(len(getattr(data, s).labels) for s in kept)
        notes.append(
            f"Slices with some lesion but below the positive-slice size were left out of this "
            f"task (evaluate.drop_ambiguous); {remaining} slices remain in train, val and test."
        )
        if features is not None:
            features = {s: f[kept[s]] if s in kept else f for s, f in features.items()}
    usable_idx = usable_synthetic(data, task)
    usable = len(usable_idx)
    n_syn = min(int(round(cfg.synthetic_ratio * len(data.train.labels))), usable)
    arms: list[str] = [a for a in ARMS if a in cfg.arms]  # in the canonical order
    if usable == 0 or n_syn == 0:
        arms = [a for a in arms if "synthetic" not in a]
        notes.append(
            "The synthetic arms were skipped: the synthetic slices carry no class "
            "(unconditional generator), no mask where the task needs one, or synthetic_ratio "
            "is 0."
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
    if len(seeds) == 1:
        notes.append(
            "One seed per arm: the intervals cover the test patients but not training randomness "
            "(initial weights, batch order); use evaluate.seeds >= 3 before believing a gain."
        )
    splits = {a: _arm_training_set(data, a, n_syn, usable_idx, cfg.seed) for a in arms}
    splits.update(val=data.val, test=data.test)
    jobs = [Job(arm, seed, "classic" in arm) for seed in seeds for arm in arms]
    with Progress(console=console, transient=True) as bar:
        progress = bar.add_task(f"gain experiment ({task_name})", total=len(jobs))
        outcomes = run_jobs(
            jobs, task_name, splits, cfg, n_classes, device, lambda _: bar.advance(progress)
        )
    probs = {a: [o.test_pred for o in outcomes if o.job.arm == a] for a in arms}
    decisions = {a: [o.decision for o in outcomes if o.job.arm == a] for a in arms}
    curves = {a: [o.curve for o in outcomes if o.job.arm == a] for a in arms}
    best_epoch = {a: [int(np.argmax(c)) for c in curves[a]] for a in arms}
    stacked = {a: np.stack(p) for a, p in probs.items()}  # (n_seeds, n_test, ...)
    per_seed, arm_ci, gains = compare_arms(
        task, data.test, stacked, cfg.bootstrap, cfg.seed, decisions, n_classes
    )
    floors = floor_intervals(task, data, features, cfg)
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
        task=task_name,
        lower_is_better=task.lower_is_better,
        floors=floors,
        decisions=decisions,
        notes=notes,
    )


def floor_intervals(
    task: Task,
    data: ExperimentData,
    features: dict[str, np.ndarray] | None,
    cfg: EvaluateConfig,
) -> dict[str, dict[str, Interval]]:
    """The task's floors scored on the test patients with the arms' patient draws."""
    if features is None:
        from augment.nets.features import RandomFeatures, extract_features

        net = RandomFeatures()
        splits = {"train": data.train, "val": data.val, "test": data.test}
        features = {name: extract_features(net, split.images) for name, split in splits.items()}
    preds = task.floors(data, features)
    probs = {name: test[None] for name, (_, test) in preds.items()}  # (1, n_test, ...)
    decisions = {name: [task.calibrate(data.val, val)] for name, (val, _) in preds.items()}
    k = len(data.class_names)
    _, ci, _ = compare_arms(task, data.test, probs, cfg.bootstrap, cfg.seed, decisions, k)
    return ci


def compare_arms(
    task: Task,
    truth: Split,
    probs: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
    decisions: dict[str, list[Decision]] | None = None,
    n_classes: int = 2,
) -> tuple[
    dict[str, dict[str, list[float]]],
    dict[str, dict[str, Interval]],
    dict[str, dict[str, Interval]],
]:
    """Per-arm metrics and paired gains with a bootstrap over test patients and seeds.

    Every arm and seed is scored on the same patient draws; draw b's value for an arm is the
    mean over the seeds that draw b resampled (the same seed indices for every arm), and a
    gain's draw is the difference of two arms' draws. So the interval covers who the test
    patients are and how training went.

    Args:
        task: scores the predictions.
        truth: the test split (labels, patient keys, masks).
        probs: arm -> (n_seeds, n, ...) test predictions in the task's form.
        n_boot: bootstrap draws.
        seed: seed of the draws.
        decisions: arm -> per seed, the decision rule chosen on val (None: the task's default).
        n_classes: classes of the task's labels (a class absent from test makes the
            intervals unassessable).

    Returns:
        per_seed (arm -> metric -> list), arm_ci (arm -> metric -> Interval),
        gains ("a_vs_b" -> metric -> Interval).
    """
    weights = stats.patient_bootstrap_weights(truth.patients, n_boot, seed)  # (B, n)
    ok = stats.bootstrap_assessable(truth.labels, truth.patients, n_classes)
    point: dict[str, dict[str, float]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    seed_idx: dict[int, np.ndarray] = {}
    for arm, p in probs.items():
        rules = (decisions or {}).get(arm) or [None] * len(p)
        full = [task.score(truth, ps, None, d) for ps, d in zip(p, rules, strict=True)]
        boot = [task.score(truth, ps, weights, d) for ps, d in zip(p, rules, strict=True)]
        if len(p) not in seed_idx:
            seed_idx[len(p)] = stats.seed_bootstrap_indices(len(p), n_boot, seed)
        pick = seed_idx[len(p)]
        per_seed[arm] = {m: [float(f[m][0]) for f in full] for m in task.metrics}
        point[arm] = {m: float(np.mean(per_seed[arm][m])) for m in per_seed[arm]}
        draws[arm] = {
            m: stats.seed_averaged_draws(np.stack([b[m] for b in boot]), pick)
            for m in per_seed[arm]
        }
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
