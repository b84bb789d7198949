"""The gain experiment of ``augment evaluate``: does the synthetic data help a classifier?

A classifier is trained in four arms, each with several seeds paired across arms (the same seed
gives the same initial weights and batch order):

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

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress

from augment.config import EvaluateConfig
from augment.evaluation import stats as metrics
from augment.nets.classifier import build_classifier

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
    arm_ci: dict[str, dict[str, metrics.Interval]]  # arm -> metric -> mean over seeds + CI
    gains: dict[str, dict[str, metrics.Interval]]  # "a_vs_b" -> metric -> gain + CI
    n_synthetic: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- training


def classic_augmentation(seed: int, group: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI augmentation of a batch (B, 1, S, S), seeded.

    Left-right flips, rotations up to 15 degrees, intensity scaling and shifting by up to 10%:
    the changes a radiologist would call "the same image". One random draw covers a group of
    ``group`` slices (stacked as channels): MONAI's per-call overhead, not the arithmetic,
    dominates on CPU, and batches are reshuffled every epoch so the groups keep changing.
    """
    from monai.transforms import (
        Compose,
        RandFlip,
        RandRotate,
        RandScaleIntensity,
        RandShiftIntensity,
    )
    from monai.utils import convert_to_tensor

    chain = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=1),
            RandRotate(range_x=np.pi / 12, prob=0.5, padding_mode="border"),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.1, prob=0.5),
        ]
    )
    chain.set_random_state(seed)

    def apply(batch: torch.Tensor) -> torch.Tensor:
        # Plain tensors out: a MetaTensor would route every op of the network through MONAI's
        # metadata tracking and make training several times slower.
        parts = [
            convert_to_tensor(chain(batch[i : i + group, 0]), track_meta=False)  # (g, S, S)
            for i in range(0, len(batch), group)
        ]
        return torch.cat(parts)[:, None].clamp(-1, 1)  # (B, 1, S, S)

    return apply


def _predict(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).to(device)  # (b, 1, S, S)
            out.append(F.softmax(model(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out)  # (n, K)


def _val_score(y: np.ndarray, prob: np.ndarray) -> float:
    auc = float(metrics.classification_metrics(y, prob)["auc"][0])
    if np.isfinite(auc):
        return auc
    # One class only in val: fall back to the mean probability of the true class.
    return float(prob[np.arange(len(y)), y].mean()) - 1.0


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    val: Split,
    n_classes: int,
    cfg: EvaluateConfig,
    seed: int,
    classic: bool,
    device: torch.device,
    steps_per_epoch: int | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train one arm's classifier for one seed; keep the epoch with the best val AUC.

    Every arm gets the same number of optimisation steps (``steps_per_epoch`` per epoch, set
    from the real training set), so that an arm with synthetic slices does not win merely by
    being trained longer; its batches are drawn from the larger pool instead.

    Args:
        images: (n, 1, S, S) float32 training slices.
        labels: (n,) class ids.
        val: the val split (model selection only).
        n_classes: number of classes.
        cfg: epochs, batch size, learning rate, classifier name.
        seed: fixes the initial weights, batch order and augmentation draws.
        classic: apply :func:`classic_augmentation` to each batch.
        device: where to train.
        steps_per_epoch: optimisation steps between two val checks (None: one pass).

    Returns:
        The model with the best epoch's weights, and the val score of every epoch.
    """
    torch.manual_seed(seed)
    model = build_classifier(cfg.classifier, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    counts = np.bincount(labels, minlength=n_classes).clip(min=1)
    # Inverse-frequency weights: lesion slices are rarer, and arms differ in class balance.
    weight = torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32, device=device)
    order = torch.Generator().manual_seed(seed)
    augment = classic_augmentation(seed) if classic else None
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = steps_per_epoch or -(-len(labels) // cfg.batch_size)
    batches = _batches(len(labels), cfg.batch_size, order)
    best, best_state, curve = -np.inf, None, []
    for _ in range(cfg.epochs):
        model.train()
        for _ in range(steps):
            idx = next(batches)
            x = augment(x_all[idx]) if augment else x_all[idx]  # (B, 1, S, S)
            loss = F.cross_entropy(model(x.to(device)), y_all[idx].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = _val_score(val.labels, _predict(model, val.images, device))
        curve.append(score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), curve


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices: successive permutations, cut into batches of >= 2."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) >= 2:  # batch norm needs two samples
                yield idx


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
    if not metrics.bootstrap_assessable(data.test.labels, data.test.patients, n_classes):
        notes.append(
            f"The test split is too small to call any difference significant: it needs at least "
            f"{metrics.MIN_TEST_PATIENTS} patients and every class in at least "
            f"{metrics.MIN_PATIENTS_PER_CLASS} of them; intervals are shown but no gain is marked."
        )
    steps = -(-len(data.train.labels) // cfg.batch_size)  # one real epoch, for every arm
    probs: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    best_epoch: dict[str, list[int]] = {a: [] for a in arms}
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("gain experiment", total=len(arms) * len(seeds))
        for seed in seeds:
            for arm in arms:
                x, y = _arm_training_set(data, arm, n_syn, cfg.seed)
                model, curve = train_classifier(
                    x, y, data.val, n_classes, cfg, seed, "classic" in arm, device, steps
                )
                probs[arm].append(_predict(model, data.test.images, device))
                best_epoch[arm].append(int(np.argmax(curve)))
                curves[arm].append(curve)
                bar.advance(task)
    stacked = {a: np.stack(p) for a, p in probs.items()}  # (n_seeds, n_test, K)
    per_seed, arm_ci, gains = compare_arms(
        data.test.labels, data.test.patients, stacked, cfg.bootstrap, cfg.seed
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
        notes=notes,
    )


def compare_arms(
    y: np.ndarray, patients: np.ndarray, probs: dict[str, np.ndarray], n_boot: int, seed: int
) -> tuple[dict, dict, dict]:
    """Per-arm metrics and paired gains with a bootstrap over test patients.

    Every arm and seed is scored on the same bootstrap draws; a draw's value for an arm is the
    mean over seeds, and a gain's draw is the difference of two arms' draws.

    Args:
        y: (n,) test labels.
        patients: (n,) test patient keys.
        probs: arm -> (n_seeds, n, K) test probabilities.
        n_boot: bootstrap draws.
        seed: seed of the draws.

    Returns:
        per_seed (arm -> metric -> list), arm_ci (arm -> metric -> Interval),
        gains ("a_vs_b" -> metric -> Interval).
    """
    weights = metrics.patient_bootstrap_weights(patients, n_boot, seed)  # (B, n)
    n_classes = next(iter(probs.values())).shape[2]
    ok = metrics.bootstrap_assessable(y, patients, n_classes)
    point, draws, per_seed = {}, {}, {}
    for arm, p in probs.items():
        full = [metrics.classification_metrics(y, ps) for ps in p]
        boot = [metrics.classification_metrics(y, ps, weights) for ps in p]
        per_seed[arm] = {m: [float(f[m][0]) for f in full] for m in metrics.CLASSIFICATION_METRICS}
        point[arm] = {m: float(np.mean(per_seed[arm][m])) for m in per_seed[arm]}
        draws[arm] = {m: np.mean([b[m] for b in boot], axis=0) for m in per_seed[arm]}
    arm_ci = {
        a: {m: metrics.interval(point[a][m], draws[a][m], assessable=ok) for m in point[a]}
        for a in probs
    }
    gains = {}
    for arm, ref in COMPARISONS:
        if arm in probs and ref in probs:
            gains[f"{arm}_vs_{ref}"] = {
                m: metrics.interval(
                    point[arm][m] - point[ref][m], draws[arm][m] - draws[ref][m], assessable=ok
                )
                for m in point[arm]
            }
    return per_seed, arm_ci, gains
