"""The segmentation task: a MONAI 2D UNet on the lesion masks, scored per patient.

What users do with a synthetic set is mostly segmentation (nnU-Net, MONAI), so the gain
experiment also trains a UNet with Dice + cross-entropy in every arm; the synthetic arms train
on synthetic image and mask pairs. Scores, with a patient bootstrap's weights:

- ``dice``: per-patient Dice (all of a patient's slices pooled) averaged over the test patients
  that have a lesion;
- ``lesion_sensitivity``: the share of lesions (connected components of a slice's lesion mask)
  that the predicted mask touches;
- ``normal_false_positive``: the share of lesion-free test patients with a predicted lesion of
  at least ``MIN_COMPONENT`` pixels (a few stray pixels in one of 40 slices are not a finding).

The mask threshold is chosen on val (best pooled Dice), never on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import EvaluateConfig
from augment.evaluation.tasks import augmentation
from augment.evaluation.tasks.base import LAST, Schedule, fit
from augment.nets.device import to_device

if TYPE_CHECKING:
    from augment.evaluation.experiment import ExperimentData, Split

SEGMENTATION_METRICS = ("dice", "lesion_sensitivity", "normal_false_positive")
THRESHOLDS = np.round(np.arange(0.1, 0.95, 0.1), 2)
MIN_COMPONENT = 10  # predicted pixels a component needs to count as a finding on a normal patient


def build_unet(in_channels: int, width: int) -> torch.nn.Module:
    """MONAI's 2D UNet: four levels from ``width`` channels, residual units, two outputs."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=2,
        channels=(width, width * 2, width * 4, width * 8),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def _dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice of the lesion channel over the batch (B, 2, S, S), (B, S, S)."""
    ce = F.cross_entropy(logits, target)
    p = logits.softmax(dim=1)[:, 1]
    t = target.float()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + (1 - dice)


def _predict(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            x = torch.from_numpy(np.asarray(images[start : start + 128], np.float32))
            x = x.to(device, memory_format=LAST)
            out.append(model(x).float().softmax(dim=1)[:, 1].cpu().numpy().astype(np.float16))
    return np.concatenate(out)  # (n, S, S) lesion probability


def _pooled_dice(mask: np.ndarray, prob: np.ndarray, threshold: float) -> float:
    pred = prob >= threshold
    inter = float((pred & (mask > 0)).sum())
    total = float(pred.sum() + (mask > 0).sum())
    return 2 * inter / total if total else 1.0


def train_segmenter(
    train: Split,
    val: Split,
    cfg: EvaluateConfig,
    seed: int,
    classic: bool,
    device: torch.device,
) -> tuple[torch.nn.Module, list[float]]:
    """Train one arm's UNet for one seed: ``evaluate.seg_steps`` steps in every arm.

    Batches draw lesion slices as often as lesion-free ones (lesions are rare); every batch gets
    the paired geometric augmentation of :mod:`augmentation` (image and mask alike), ``classic``
    adds its intensity augmentation; the last weights are kept, or with ``evaluate.select:
    best`` those of the best val Dice.

    Raises:
        ValueError: the training slices carry no masks.
    """
    if train.masks is None or val.masks is None:
        raise ValueError("expected lesion masks for the segmentation task, got none")
    torch.manual_seed(seed)
    model = to_device(build_unet(train.images.shape[1], cfg.unet_width), device, LAST)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.asarray(train.images, np.float32))
    y_all = torch.from_numpy(np.asarray(train.masks > 0, np.int64))
    has = torch.from_numpy((train.masks.reshape(len(train.masks), -1) > 0).any(axis=1))
    counts = torch.bincount(has.long(), minlength=2).clamp(min=1)
    draw_weight = 1.0 / counts[has.long()].double()  # lesion slices as often as the others
    extra = augmentation.classic_intensity(seed) if classic else None
    val_masks = val.masks

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        moves = augmentation.draw(len(idx), gen)
        x, y = augmentation.apply(x_all[idx], moves), augmentation.apply_to_mask(y_all[idx], moves)
        x = extra(x) if extra else x  # (B, C, S, S)
        return _dice_ce(model(x.to(device, memory_format=LAST)), y.to(device))

    def val_score() -> float:
        # The best pooled Dice over the thresholds calibration may choose (not a fixed 0.5,
        # where an early model scores 0 at every check).
        prob = _predict(model, val.images, device)
        return max(_pooled_dice(val_masks, prob, float(t)) for t in THRESHOLDS)

    schedule = Schedule(cfg.seg_steps, cfg.seg_batch_size, cfg.seg_lr, cfg.val_checks, cfg.select)
    curve = fit(model, schedule, draw_weight, batch_loss, val_score, gen)
    return model, curve


@dataclass
class _Counts:
    """Per-slice pieces every metric is a weighted sum of."""

    inter: np.ndarray  # (n,) predicted and true lesion pixels
    pred: np.ndarray  # (n,) predicted lesion pixels
    findings: np.ndarray  # (n,) predicted components of at least MIN_COMPONENT pixels
    true: np.ndarray  # (n,) true lesion pixels
    lesions: np.ndarray  # (n,) lesions (connected components) in the true mask
    found: np.ndarray  # (n,) of those, touched by the prediction


def _counts(masks: np.ndarray, prob: np.ndarray, threshold: float) -> _Counts:
    from scipy import ndimage

    pred = np.asarray(prob, np.float32) >= threshold  # (n, S, S)
    true = np.asarray(masks) > 0
    lesions = np.zeros(len(true))
    found = np.zeros(len(true))
    findings = np.zeros(len(true))
    for i in np.flatnonzero(pred.reshape(len(pred), -1).sum(axis=1) >= MIN_COMPONENT):
        labels, n = ndimage.label(pred[i])
        findings[i] = int((np.bincount(labels.ravel())[1:] >= MIN_COMPONENT).sum()) if n else 0
    for i in np.flatnonzero(true.reshape(len(true), -1).any(axis=1)):
        labels, n = ndimage.label(true[i])
        lesions[i] = n
        if n:
            hit = np.unique(labels[pred[i] & (labels > 0)])
            found[i] = len(hit)
    flat = (len(true), -1)
    return _Counts(
        inter=(pred & true).reshape(flat).sum(axis=1).astype(np.float64),
        pred=pred.reshape(flat).sum(axis=1).astype(np.float64),
        findings=findings,
        true=true.reshape(flat).sum(axis=1).astype(np.float64),
        lesions=lesions,
        found=found,
    )


def segmentation_metrics(
    masks: np.ndarray,
    patients: np.ndarray,
    prob: np.ndarray,
    weights: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Per-patient Dice, lesion-wise sensitivity and normal-patient false positives.

    Args:
        masks: (n, S, S) true lesion masks.
        patients: (n,) patient keys.
        prob: (n, S, S) predicted lesion probabilities.
        weights: (B, n) slice weights of a patient bootstrap (constant within a patient), or
            None for ones.
        threshold: lesion-probability threshold of the predicted mask.

    Returns:
        Metric name -> (B,) values; NaN where no weighted patient qualifies.
    """
    c = _counts(masks, prob, threshold)
    keys, first, inverse = np.unique(patients, return_index=True, return_inverse=True)
    w = np.ones((1, len(patients))) if weights is None else np.asarray(weights, np.float64)
    w_patient = w[:, first]  # (B, P): how often each patient was drawn

    def per_patient(x: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=x, minlength=len(keys))  # (P,)

    inter, pred, true = per_patient(c.inter), per_patient(c.pred), per_patient(c.true)
    lesion_patient = true > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * inter / (pred + true)  # (P,)
        wl = w_patient[:, lesion_patient]
        mean_dice = (wl * dice[lesion_patient]).sum(axis=1) / wl.sum(axis=1)
        sens = (w_patient @ per_patient(c.found)) / (w_patient @ per_patient(c.lesions))
        wn = w_patient[:, ~lesion_patient]
        flagged = per_patient(c.findings)[~lesion_patient] > 0
        fp = (wn * flagged).sum(axis=1) / wn.sum(axis=1)
    return {"dice": mean_dice, "lesion_sensitivity": sens, "normal_false_positive": fp}


class SegmentationTask:
    """Lesion masks from a MONAI 2D UNet trained with Dice + cross-entropy."""

    metrics = SEGMENTATION_METRICS
    needs_masks = True
    lower_is_better: frozenset[str] = frozenset({"normal_false_positive"})

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
        return train_segmenter(train, val, cfg, seed, classic, device)

    def view(
        self, data: ExperimentData, cfg: EvaluateConfig
    ) -> tuple[ExperimentData, dict[str, np.ndarray]]:
        return data, {}

    def predict(
        self, model: torch.nn.Module, images: np.ndarray, device: torch.device
    ) -> np.ndarray:
        return _predict(model, images, device)

    def calibrate(self, truth: Split, pred: np.ndarray) -> float | None:
        if truth.masks is None:
            return None
        scores = [_pooled_dice(truth.masks, pred, float(t)) for t in THRESHOLDS]
        return float(THRESHOLDS[int(np.argmax(scores))])

    def score(
        self,
        truth: Split,
        pred: np.ndarray,
        weights: np.ndarray | None = None,
        decision: float | None = None,
    ) -> dict[str, np.ndarray]:
        if truth.masks is None:
            raise ValueError("expected test masks for the segmentation task, got none")
        threshold = 0.5 if decision is None else decision
        return segmentation_metrics(truth.masks, truth.patients, pred, weights, threshold)

    def floors(
        self, data: ExperimentData, features: dict[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        empty = {s: np.zeros(getattr(data, s).images.shape[:1] + data.test.images.shape[2:],
                             np.float16) for s in ("val", "test")}  # fmt: skip
        out = {"empty_mask": (empty["val"], empty["test"])}
        rule = fit_intensity_threshold(data.train)
        out["intensity_threshold"] = (rule(data.val.images), rule(data.test.images))
        return out


def fit_intensity_threshold(train: Split) -> Callable[[np.ndarray], np.ndarray]:
    """The best single-intensity rule on the training slices: pixels below (or above) a level.

    The level and direction maximise pooled Dice on the training slices' masks; the returned
    function maps (n, C, S, S) images to (n, S, S) 0/1 masks (channel 0).
    """
    images = np.asarray(train.images[:, 0], np.float32)
    masks = train.masks if train.masks is not None else np.zeros(images.shape, np.uint8)
    best = (-1.0, 0.0, 1)
    for level in np.linspace(-0.9, 0.9, 37):
        for sign in (1, -1):  # 1: brighter than level; -1: darker (but not air)
            pred = (images > level) if sign == 1 else ((images < level) & (images > -0.9))
            dice = _pooled_dice(masks, pred.astype(np.float32), 0.5)
            if dice > best[0]:
                best = (dice, float(level), sign)
    _, level, sign = best

    def rule(x: np.ndarray) -> np.ndarray:
        img = np.asarray(x[:, 0], np.float32)
        pred = (img > level) if sign == 1 else ((img < level) & (img > -0.9))
        return pred.astype(np.float16)

    return rule
