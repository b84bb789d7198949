"""The segmentation task: its metrics on known masks, its floors, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.config import EvaluateConfig
from augment.evaluation import experiment as gx
from augment.evaluation.tasks import TASKS
from augment.evaluation.tasks.segmentation import (
    SegmentationTask,
    fit_intensity_threshold,
    segmentation_metrics,
)

S = 16


def _toy(n_patients: int, seed: int, per: int = 6) -> gx.Split:
    """Dark discs; lesion slices (every other one) carry a bright square, masked."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(per) % 2, n_patients).astype(np.int64)
    images = np.full((len(labels), 1, S, S), -0.2, np.float32)
    masks = np.zeros((len(labels), S, S), np.uint8)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(2, S - 6, 2)
        masks[i, y : y + 4, x : x + 4] = 1
    images[:, 0][masks > 0] = 0.7
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    patients = np.repeat([f"s{seed}-{i}" for i in range(n_patients)], per)
    return gx.Split(images, labels, patients, masks)


def test_metrics_on_known_masks() -> None:
    truth = _toy(4, 0)
    perfect = truth.masks.astype(np.float32)
    m = segmentation_metrics(truth.masks, truth.patients, perfect)
    assert m["dice"][0] == 1.0 and m["lesion_sensitivity"][0] == 1.0
    assert np.isnan(m["normal_false_positive"][0])  # every toy patient has a lesion
    empty = segmentation_metrics(truth.masks, truth.patients, np.zeros_like(perfect))
    assert empty["dice"][0] == 0.0 and empty["lesion_sensitivity"][0] == 0.0
    half = perfect.copy()
    half[:, :, : S // 2] = 0  # drop the left half of every prediction
    got = segmentation_metrics(truth.masks, truth.patients, half)
    assert 0 < got["dice"][0] < 1


def test_bootstrap_weights_count_a_patient_as_often_as_it_was_drawn() -> None:
    truth = _toy(3, 1)
    rng = np.random.default_rng(0)
    prob = np.clip(truth.masks + rng.normal(0, 0.4, truth.masks.shape), 0, 1)
    keys = np.unique(truth.patients)
    draw = {keys[0]: 2, keys[1]: 0, keys[2]: 1}
    w = np.array([[draw[p] for p in truth.patients]], float)
    rows = np.concatenate(
        [np.flatnonzero(truth.patients == k) for k in keys for _ in range(draw[k])]
    )
    # Duplicated patients are distinct patients in the explicit copy.
    copies = np.concatenate(
        [np.full((truth.patients == k).sum(), f"{k}-{j}") for k in keys
         for j in range(draw[k])]
    )  # fmt: skip
    weighted = segmentation_metrics(truth.masks, truth.patients, prob, w)
    explicit = segmentation_metrics(truth.masks[rows], copies, prob[rows])
    for name in ("dice", "lesion_sensitivity"):
        assert weighted[name][0] == pytest.approx(explicit[name][0])


def test_intensity_threshold_floor_finds_bright_lesions_fitted_on_train() -> None:
    rule = fit_intensity_threshold(_toy(4, 2))
    test = _toy(3, 3)
    m = segmentation_metrics(test.masks, test.patients, rule(test.images))
    assert m["dice"][0] > 0.9  # bright squares on a dark disc: a threshold is enough here


def test_every_registered_task_runs_end_to_end_on_a_tiny_store() -> None:
    train, val, test = _toy(4, 4), _toy(2, 5), _toy(5, 6)
    syn = _toy(4, 7)
    data = gx.ExperimentData(
        train, val, test, syn.images, syn.labels, ["normal", "lesion"], syn.masks
    )
    cfg = EvaluateConfig(
        seeds=1, steps=10, seg_steps=10, batch_size=8, seg_batch_size=8, bootstrap=100, unet_width=4
    )
    for name in TASKS.names():
        gain = gx.gain_experiment(data, cfg, torch.device("cpu"), task_name=name)
        assert gain.arms == cfg.arms and gain.task == name
        assert gain.floors and all(
            np.isfinite(gain.arm_ci["real"][gain.headline].value) for _ in [0]
        )


def test_segmentation_without_synthetic_masks_skips_the_synthetic_arms() -> None:
    train, val, test = _toy(4, 4), _toy(2, 5), _toy(5, 6)
    data = gx.ExperimentData(
        train, val, test, train.images, train.labels, ["normal", "lesion"], None
    )
    cfg = EvaluateConfig(
        seeds=1, steps=10, seg_steps=10, batch_size=8, seg_batch_size=8, bootstrap=100, unet_width=4
    )
    gain = gx.gain_experiment(data, cfg, torch.device("cpu"), task_name="segmentation")
    assert gain.arms == ["real", "real_classic"] and gain.notes
    assert SegmentationTask.needs_masks
