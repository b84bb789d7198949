"""The classification task: a slice classifier (normal / lesion), scored by AUC and rates.

AUC, balanced accuracy, sensitivity and specificity take per-sample weights, so a bootstrap
over test patients is one matrix of weights and one pass; the weighted values equal
scikit-learn's ``roc_auc_score`` / ``balanced_accuracy_score`` with ``sample_weight`` (tested).

Thresholded rates use the threshold chosen on the val split (Youden's J), never 0.5: a model
whose scores are shifted is not a model that misses every lesion. Sensitivity at 90%
specificity reads the ROC curve itself and needs no threshold.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import EvaluateConfig
from augment.evaluation.floors import SHORTCUTS, fit_probe, shortcut_statistics
from augment.evaluation.tasks import augmentation
from augment.evaluation.tasks.base import LAST, Schedule, fit
from augment.nets.classifier import build_classifier
from augment.nets.device import to_device

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


def _predict(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, flips: bool = True
) -> np.ndarray:
    """Class probabilities, averaged over the four flips of each slice (the training
    augmentation flips, so all four are the same image to the model; the average is steadier:
    +0.01-0.03 val AUC on the demo). ``flips=False``: one pass (the val curve's checks)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).to(device, memory_format=LAST)
            views = (x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)) if flips else (x,)
            probs = [F.softmax(model(v).float(), dim=1) for v in views]
            out.append(torch.stack(probs).mean(dim=0).cpu().numpy())
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
) -> tuple[torch.nn.Module, list[float]]:
    """Train one arm's classifier for one seed: ``evaluate.steps`` steps, the same in every arm.

    The recipe, measured on the demo's val split (docs/results.md): class-balanced batches
    (lesion slices are rare, and arms differ in class balance), flips, small rotations, zooms,
    shifts and intensity changes on every batch, Adam with a one-cycle cosine schedule, and the
    last weights (``evaluate.select: last``) or the best val AUC of ``evaluate.val_checks``
    checks (``best``). An arm with synthetic slices draws its batches from the larger pool
    rather than training longer.

    Args:
        train: the arm's training slices (images (n, C, S, S) float32, labels (n,)).
        val: the val split (curve and, with ``select: best``, model selection).
        n_classes: number of classes.
        cfg: steps, batch size, learning rate, classifier name, selection.
        seed: fixes the initial weights, batches and augmentation draws.
        classic: add :func:`augmentation.classic_intensity` to each batch.
        device: where to train.

    Returns:
        The trained model and the val AUC at each check.

    Raises:
        RuntimeError: no val check gave a finite score (``select: best``).
    """
    images, labels = train.images, train.labels
    torch.manual_seed(seed)
    model = to_device(build_classifier(cfg.classifier, n_classes, images.shape[1]), device, LAST)
    gen = torch.Generator().manual_seed(seed)
    counts = np.bincount(labels, minlength=n_classes).clip(min=1)
    draw_weight = torch.from_numpy(1.0 / counts[labels])  # each class drawn equally often
    extra = augmentation.classic_intensity(seed) if classic else None
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x = augmentation.apply(x_all[idx], augmentation.draw(len(idx), gen))
        x = extra(x) if extra else x  # (B, C, S, S)
        return F.cross_entropy(model(x.to(device, memory_format=LAST)), y_all[idx].to(device))

    schedule = Schedule(cfg.steps, cfg.batch_size, cfg.lr, cfg.val_checks, cfg.select)
    curve = fit(
        model, schedule, draw_weight, batch_loss,
        lambda: _val_score(val.labels, _predict(model, val.images, device, flips=False)), gen,
    )  # fmt: skip
    return model, curve


def _ambiguous(split: Split) -> np.ndarray:
    """Slices labelled normal whose mask shows some lesion (below the positive-slice size)."""
    if split.masks is None:
        return np.zeros(len(split.labels), bool)
    some = split.masks.reshape(len(split.masks), -1).any(axis=1)
    return some & (split.labels == 0)


def _take(split: Split, idx: np.ndarray) -> Split:
    masks = None if split.masks is None else split.masks[idx]
    return dataclasses.replace(
        split, images=split.images[idx], labels=split.labels[idx],
        patients=split.patients[idx], masks=masks,
    )  # fmt: skip


class ClassificationTask:
    """Slice classes from a classifier (``evaluate.classifier``), class-balanced batches.

    With ``evaluate.drop_ambiguous``, slices that show some lesion but fewer than
    ``preprocess.min_lesion_pixels`` pixels are neither clearly normal nor clearly lesion and
    are left out of this task (train, val and test alike); the segmentation task keeps them.
    """

    metrics = CLASSIFICATION_METRICS
    needs_masks = False
    lower_is_better: frozenset[str] = frozenset()

    def train(
        self,
        train: Split,
        val: Split,
        n_classes: int,
        cfg: EvaluateConfig,
        seed: int,
        classic: bool,
        device: torch.device,
    ) -> tuple[torch.nn.Module, list[float]]:
        return train_classifier(train, val, n_classes, cfg, seed, classic, device)

    def view(
        self, data: ExperimentData, cfg: EvaluateConfig
    ) -> tuple[ExperimentData, dict[str, np.ndarray]]:
        if not cfg.drop_ambiguous:
            return data, {}
        keep = {s: np.flatnonzero(~_ambiguous(getattr(data, s))) for s in ("train", "val", "test")}
        if all(len(k) == len(getattr(data, s).labels) for s, k in keep.items()):
            return data, {}
        parts = {s: _take(getattr(data, s), k) for s, k in keep.items()}
        view = dataclasses.replace(data, train=parts["train"], val=parts["val"], test=parts["test"])
        return view, keep

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
