"""The classification task: a slice classifier (normal / lesion), scored by AUC and rates.

AUC, balanced accuracy, sensitivity and specificity take per-sample weights, so a bootstrap
over test patients is one matrix of weights and one pass; the weighted values equal
scikit-learn's ``roc_auc_score`` / ``balanced_accuracy_score`` with ``sample_weight`` (tested).

Thresholded rates use the threshold chosen on the val split (Youden's J), never 0.5: a model
whose scores are shifted is not a model that misses every lesion. Sensitivity at 90%
specificity reads the ROC curve itself and needs no threshold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import EvaluateConfig
from augment.evaluation.floors import SHORTCUTS, fit_probe, shortcut_statistics
from augment.evaluation.tasks.base import batches
from augment.nets.classifier import build_classifier

if TYPE_CHECKING:
    from augment.evaluation.experiment import ExperimentData, Split

CLASSIFICATION_METRICS = (
    "auc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "sensitivity_at_90_specificity",
)
FIXED_SPECIFICITY = 0.9


def classification_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    weights: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """AUC, balanced accuracy, sensitivity, specificity, sensitivity at 90% specificity.

    Binary problems (two classes) take class 1 as positive and call a slice positive when its
    class-1 probability is at least ``threshold`` (chosen on val; None: the argmax). With more
    classes, AUC, sensitivity and specificity are macro means of one-vs-rest values
    (scikit-learn's ``average="macro", multi_class="ovr"``), decisions are the argmax and
    balanced accuracy is the mean recall.

    Args:
        y: (n,) true class ids in ``[0, K)``.
        prob: (n, K) class probabilities.
        weights: (B, n) non-negative sample weights (B bootstrap draws), or None for ones.
        threshold: decision threshold on the class-1 probability (binary only).

    Returns:
        Metric name -> (B,) values (B = 1 without weights); NaN where a class has zero weight.
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    n_classes = prob.shape[1]
    pred = prob.argmax(axis=1)
    if n_classes == 2 and threshold is not None:
        pred = (prob[:, 1] >= threshold).astype(np.int64)
    classes = [1] if n_classes == 2 else list(range(n_classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.stack([_weighted_rate(w, y == c, pred == c) for c in range(n_classes)])
        sens = np.stack([_weighted_rate(w, y == c, pred == c) for c in classes])
        spec = np.stack([_weighted_rate(w, y != c, pred != c) for c in classes])
        auc = np.stack([_weighted_auc(w, y == c, prob[:, c]) for c in classes])
        at_spec = np.stack([_sensitivity_at_specificity(w, y == c, prob[:, c]) for c in classes])
    return {
        "auc": auc.mean(axis=0),
        "balanced_accuracy": recall.mean(axis=0),
        "sensitivity": sens.mean(axis=0),
        "specificity": spec.mean(axis=0),
        "sensitivity_at_90_specificity": at_spec.mean(axis=0),
    }


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float | None:
    """The class-1 probability threshold that maximises sensitivity + specificity on (y, prob).

    Returns None when there is nothing to choose from (not binary, or one class only): the
    decisions are then the argmax.
    """
    y = np.asarray(y)
    if prob.shape[1] != 2 or len(np.unique(y)) < 2:
        return None
    score = np.asarray(prob[:, 1], np.float64)
    cuts = np.unique(score)  # a slice is positive when its score >= cut
    pos, neg = (y == 1), (y != 1)
    sens = (score[pos][None, :] >= cuts[:, None]).mean(axis=1)
    spec = (score[neg][None, :] < cuts[:, None]).mean(axis=1)
    return float(cuts[int(np.argmax(sens + spec))])


def _sensitivity_at_specificity(
    w: np.ndarray, positive: np.ndarray, score: np.ndarray, specificity: float = FIXED_SPECIFICITY
) -> np.ndarray:
    """Weighted sensitivity at the lowest threshold that keeps ``specificity``: (B,)."""
    order = np.argsort(score, kind="stable")
    s, pos, ws = score[order], positive[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups
    w_pos = np.add.reduceat(ws * pos, starts, axis=1)  # (B, G)
    w_neg = np.add.reduceat(ws * ~pos, starts, axis=1)  # (B, G)
    neg_share = np.cumsum(w_neg, axis=1) / w_neg.sum(axis=1, keepdims=True)
    # Positive above group g: scores strictly above the cut leave >= `specificity` negatives below.
    cut = np.argmax(neg_share >= specificity - 1e-12, axis=1)  # (B,) first such group
    pos_total = w_pos.sum(axis=1)
    pos_upto = np.take_along_axis(np.cumsum(w_pos, axis=1), cut[:, None], axis=1)[:, 0]
    return (pos_total - pos_upto) / pos_total


def _weighted_rate(w: np.ndarray, member: np.ndarray, hit: np.ndarray) -> np.ndarray:
    # Share of the weight of `member` samples that are `hit`, per weighting: (B,).
    return (w[:, member & hit]).sum(axis=1) / w[:, member].sum(axis=1)


def _weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC (ties count one half), for B weightings at once: (B,)."""
    order = np.argsort(score, kind="stable")
    s, pos, ws = score[order], positive[order], w[:, order]  # sorted by score
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    w_pos = np.add.reduceat(ws * pos, starts, axis=1)  # (B, G)
    w_neg = np.add.reduceat(ws * ~pos, starts, axis=1)  # (B, G)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    pairs = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    return pairs / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


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
    auc = float(classification_metrics(y, prob)["auc"][0])
    if np.isfinite(auc):
        return auc
    # One class only in val: fall back to the mean probability of the true class.
    return float(prob[np.arange(len(y)), y].mean()) - 1.0


def train_classifier(
    train: Split,
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
        train: the arm's training slices (images (n, C, S, S) float32, labels (n,)).
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
    images, labels = train.images, train.labels
    torch.manual_seed(seed)
    model = build_classifier(cfg.classifier, n_classes, images.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    counts = np.bincount(labels, minlength=n_classes).clip(min=1)
    # Inverse-frequency weights: lesion slices are rarer, and arms differ in class balance.
    weight = torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32, device=device)
    order = torch.Generator().manual_seed(seed)
    augment = classic_augmentation(seed) if classic else None
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = steps_per_epoch or -(-len(labels) // cfg.batch_size)
    batches_ = batches(len(labels), cfg.batch_size, order)
    best, best_state, curve = -np.inf, None, []
    for _ in range(cfg.epochs):
        model.train()
        for _ in range(steps):
            idx = next(batches_)
            x = augment(x_all[idx]) if augment else x_all[idx]  # (B, 1, S, S)
            loss = F.cross_entropy(model(x.to(device)), y_all[idx].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = _val_score(val.labels, _predict(model, val.images, device))
        curve.append(score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    if best_state is None:
        raise RuntimeError(
            f"expected an epoch with a val score above -inf to keep, got scores {curve} "
            f"over {cfg.epochs} epochs"
        )
    model.load_state_dict(best_state)
    return model.eval(), curve


class ClassificationTask:
    """Slice classes from a classifier (``evaluate.classifier``) trained with weighted CE."""

    metrics = CLASSIFICATION_METRICS
    needs_masks = False

    def train(
        self,
        train: Split,
        val: Split,
        n_classes: int,
        cfg: EvaluateConfig,
        seed: int,
        classic: bool,
        device: torch.device,
        steps_per_epoch: int | None = None,
    ) -> tuple[torch.nn.Module, list[float]]:
        return train_classifier(train, val, n_classes, cfg, seed, classic, device, steps_per_epoch)

    def predict(
        self, model: torch.nn.Module, images: np.ndarray, device: torch.device
    ) -> np.ndarray:
        return _predict(model, images, device)

    def calibrate(self, truth: Split, pred: np.ndarray) -> float | None:
        return youden_threshold(truth.labels, pred)

    def score(
        self,
        truth: Split,
        pred: np.ndarray,
        weights: np.ndarray | None = None,
        decision: float | None = None,
    ) -> dict[str, np.ndarray]:
        return classification_metrics(truth.labels, pred, weights, decision)

    def floors(
        self, data: ExperimentData, features: dict[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        k = len(data.class_names)
        y = data.train.labels
        stats = {s: shortcut_statistics(getattr(data, s).images) for s in ("train", "val", "test")}
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in SHORTCUTS:
            x = {s: stats[s][name][:, None] for s in stats}  # (n, 1): one number per slice
            val, test = fit_probe(x["train"], y, k, x["val"], x["test"])
            out[name] = (val, test)
        val, test = fit_probe(features["train"], y, k, features["val"], features["test"])
        out["linear_probe"] = (val, test)
        return out
