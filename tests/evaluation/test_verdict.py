"""Floors, thresholds, seed-aware intervals and the verdict, on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from augment.config import EvaluateConfig
from augment.evaluation import experiment as gx
from augment.evaluation import stats
from augment.evaluation.floors import fit_probe, shortcut_statistics
from augment.evaluation.tasks.classification import (
    ClassificationTask,
    classification_metrics,
    youden_threshold,
)
from augment.evaluation.verdict import CANNOT_TELL, DID_NOT_LEARN, HELPS, HURTS, decide

S = 8
TASK = ClassificationTask()


def _split(n_patients: int, per: int, seed: int) -> gx.Split:
    """Lesion slices (label 1) are brighter overall: a shortcut a floor can find."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(per) % 2, n_patients).astype(np.int64)
    base = rng.uniform(-1, 0.1, (len(labels), 1, S, S))
    bright = rng.uniform(0, 0.35, len(labels)) + 0.1 * labels  # overlapping, not separable
    images = np.clip(base + bright[:, None, None, None], -1, 1).astype(np.float32)
    patients = np.repeat([f"p{seed}-{i}" for i in range(n_patients)], per)
    return gx.Split(images, labels, patients)


def _data() -> gx.ExperimentData:
    train, val, test = _split(10, 10, 0), _split(6, 10, 1), _split(12, 10, 2)
    empty = np.zeros((0, 1, S, S), np.float32)
    return gx.ExperimentData(train, val, test, empty, np.zeros(0, np.int64), ["normal", "lesion"])


def _features(data: gx.ExperimentData) -> dict[str, np.ndarray]:
    return {s: getattr(data, s).images.reshape(-1, S * S) for s in ("train", "val", "test")}


def _gain(data: gx.ExperimentData, probs: dict[str, np.ndarray], n_boot: int = 300):
    cfg = EvaluateConfig(bootstrap=n_boot)
    y = data.test.labels
    per_seed, arm_ci, gains = gx.compare_arms(TASK, data.test, probs, n_boot, 0)
    return gx.GainResult(
        arms=list(probs),
        seeds=list(range(len(next(iter(probs.values()))))),
        test_labels=y,
        probs=probs,
        best_epoch={},
        val_curves={},
        per_seed=per_seed,
        arm_ci=arm_ci,
        gains=gains,
        n_synthetic=1,
        metrics=TASK.metrics,
        floors=gx.floor_intervals(TASK, data, _features(data), cfg),
    )


def _as_probs(score: np.ndarray) -> np.ndarray:
    p1 = (score - score.min()) / (np.ptp(score) or 1.0)
    return np.stack([1 - p1, p1], axis=1)


def test_floors_find_the_shortcut_with_the_sign_chosen_on_train() -> None:
    data = _data()
    floors = gx.floor_intervals(TASK, data, _features(data), EvaluateConfig(bootstrap=200))
    assert set(floors) == {"intensity_share", "mean_intensity", "body_share", "linear_probe"}
    assert floors["mean_intensity"]["auc"].value > 0.6  # lesion slices are brighter
    # Flip the training labels: the fitted sign flips and the same shortcut scores below 0.5.
    flipped = _data()
    flipped.train.labels[:] = 1 - flipped.train.labels
    wrong = gx.floor_intervals(TASK, flipped, _features(flipped), EvaluateConfig(bootstrap=200))
    assert wrong["mean_intensity"]["auc"].value < 0.4


def test_a_model_that_outputs_the_shortcut_did_not_learn() -> None:
    data = _data()
    shortcut = _as_probs(shortcut_statistics(data.test.images)["mean_intensity"])
    probs = {"real": np.stack([shortcut] * 2), "real_synthetic": np.stack([shortcut] * 2)}
    answer = decide(_gain(data, probs), 12)
    assert answer.verdict == DID_NOT_LEARN
    assert "did not learn" in answer.text and "no verdict" in answer.text


def test_a_perfect_model_on_separable_data_learned_and_equal_arms_cannot_tell() -> None:
    data = _data()
    perfect = _as_probs(data.test.labels.astype(float))
    probs = {"real": np.stack([perfect] * 2), "real_synthetic": np.stack([perfect] * 2)}
    answer = decide(_gain(data, probs), 12)
    assert answer.verdict == CANNOT_TELL
    assert answer.real.value == 1.0 and answer.real.low > answer.floor.value


def _noisy(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _as_probs(y + rng.normal(0, noise, len(y)))


def test_a_clear_gain_helps_and_a_clear_loss_hurts() -> None:
    data = _data()
    y = data.test.labels.astype(float)
    good = np.stack([_noisy(y, 0.15, s) for s in range(3)])
    weak = np.stack([_noisy(y, 0.45, s) for s in range(3)])
    helps = decide(_gain(data, {"real": weak, "real_synthetic": good}), 12)
    hurts = decide(_gain(data, {"real": good, "real_synthetic": weak}), 12)
    assert helps.verdict == HELPS and helps.gain is not None and helps.gain.low > 0
    assert hurts.verdict == HURTS and hurts.gain is not None and hurts.gain.high < 0
    assert 0 < helps.mde < 0.2 and "detects a true gain of" in helps.text


def test_too_few_test_patients_cannot_tell() -> None:
    data = _data()
    keep = np.isin(data.test.patients, np.unique(data.test.patients)[:3])
    data.test = gx.Split(data.test.images[keep], data.test.labels[keep], data.test.patients[keep])
    y = data.test.labels.astype(float)
    probs = {"real": np.stack([_noisy(y, 0.3, 0)]), "real_synthetic": np.stack([_as_probs(y)])}
    answer = decide(_gain(data, probs), 3)
    assert answer.verdict == CANNOT_TELL and "too small" in answer.text


def test_seeds_move_the_interval() -> None:
    # Two designs with the same per-seed mean: seeds that agree, and seeds that disagree. Only
    # an interval that resamples seeds is wider for the second.
    data = _data()
    y = data.test.labels.astype(float)
    same = np.stack([_noisy(y, 0.6, 0)] * 3)
    spread = np.stack([_noisy(y, 0.2, 1), _noisy(y, 0.6, 0), _noisy(y, 2.0, 2)])
    a = gx.compare_arms(TASK, data.test, {"real": same}, 400, 0)[1]
    b = gx.compare_arms(TASK, data.test, {"real": spread}, 400, 0)[1]
    width = {k: ci["real"]["auc"].high - ci["real"]["auc"].low for k, ci in (("a", a), ("b", b))}
    assert width["b"] > 1.5 * width["a"]
    idx = stats.seed_bootstrap_indices(3, 400, 0)
    assert idx.shape == (400, 3) and set(np.unique(idx)) == {0, 1, 2}
    assert (stats.seed_bootstrap_indices(1, 10, 0) == 0).all()


def test_youden_threshold_is_chosen_on_the_data_given_and_used_for_the_rates() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.01, 0.02, 0.2, 0.25, 0.05, 0.3, 0.35, 0.4])  # all below 0.5
    prob = np.stack([1 - p1, p1], axis=1)
    t = youden_threshold(y, prob)
    assert t == pytest.approx(0.3)
    at_t = classification_metrics(y, prob, threshold=t)
    argmax = classification_metrics(y, prob)
    assert argmax["sensitivity"][0] == 0.0  # the 0.5 artefact
    assert at_t["sensitivity"][0] == 0.75 and at_t["specificity"][0] == 1.0
    assert youden_threshold(np.zeros(4, int), prob[:4]) is None


def test_sensitivity_at_90_specificity_reads_the_roc_curve() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(0.25 * y + rng.random(400) * 0.75, 0, 1).round(3)
    prob = np.stack([1 - p1, p1], axis=1)
    fpr, tpr, _ = roc_curve(y, p1)
    expected = tpr[fpr <= 0.1].max()
    got = classification_metrics(y, prob)["sensitivity_at_90_specificity"][0]
    assert got == pytest.approx(expected, abs=0.02)
    w = rng.integers(0, 3, (2, 400)).astype(float)
    repeated = np.repeat(np.arange(400), w[0].astype(int))
    weighted = classification_metrics(y, prob, w)["sensitivity_at_90_specificity"][0]
    plain = classification_metrics(y[repeated], prob[repeated])["sensitivity_at_90_specificity"]
    assert weighted == pytest.approx(plain[0])


def test_probe_gives_no_score_to_a_damaged_slice() -> None:
    x = np.arange(20, dtype=float)[:, None]
    y = (x[:, 0] > 9).astype(int)
    bad = x.copy()
    bad[3] = np.nan
    (out,) = fit_probe(x, y, 2, bad)
    assert np.isnan(out[3]).all() and np.isfinite(np.delete(out, 3, axis=0)).all()
