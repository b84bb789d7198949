"""Measures of augment.evaluation.stats on known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from augment.errors import ConfigError
from augment.evaluation import stats
from augment.evaluation.fidelity import FIDELITY
from augment.evaluation.fidelity.fid import fid
from augment.evaluation.fidelity.inception import inception_fid
from augment.evaluation.fidelity.kid import kid
from augment.evaluation.fidelity.measure import fidelity
from augment.evaluation.fidelity.prdc import expected_coverage, prdc
from augment.evaluation.memorisation import memorisation, nearest_by_correlation
from augment.evaluation.tasks.classification import classification_metrics
from augment.nets.classifier import SmallCNN, build_classifier
from augment.nets.features import RandomFeatures, extract_features


def _binary(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)  # rounding makes ties
    return y, np.stack([1 - p1, p1], axis=1)


def test_classification_metrics_match_sklearn_with_and_without_weights() -> None:
    y, prob = _binary()
    w = np.random.default_rng(1).integers(0, 4, (3, len(y))).astype(float)
    got = classification_metrics(y, prob, w)
    pred = prob.argmax(1)
    for b in range(3):
        sw = w[b]
        assert got["auc"][b] == pytest.approx(roc_auc_score(y, prob[:, 1], sample_weight=sw))
        assert got["balanced_accuracy"][b] == pytest.approx(
            balanced_accuracy_score(y, pred, sample_weight=sw)
        )
        assert got["sensitivity"][b] == pytest.approx(recall_score(y, pred, sample_weight=sw))
        assert got["specificity"][b] == pytest.approx(
            recall_score(y, pred, pos_label=0, sample_weight=sw)
        )
    plain = classification_metrics(y, prob)
    assert plain["auc"][0] == pytest.approx(roc_auc_score(y, prob[:, 1]))


def test_multiclass_auc_is_sklearn_macro_ovr() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    prob = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y] * 0.3
    prob /= prob.sum(1, keepdims=True)
    got = classification_metrics(y, prob)
    assert got["auc"][0] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"))


def test_missing_class_in_a_draw_gives_nan_not_an_error() -> None:
    y, prob = _binary()
    w = np.ones((1, len(y)))
    w[0, y == 1] = 0
    got = classification_metrics(y, prob, w)
    assert np.isnan(got["auc"][0]) and np.isnan(got["sensitivity"][0])


def test_patient_bootstrap_resamples_whole_patients() -> None:
    patients = np.array(["a", "a", "b", "c", "c", "c"])
    w = stats.patient_bootstrap_weights(patients, 200, seed=3)
    assert w.shape == (200, 6)
    # every slice of a patient gets the same weight, and each draw has 3 patients
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()
    assert np.array_equal(w, stats.patient_bootstrap_weights(patients, 200, seed=3))


def test_interval_significance() -> None:
    assert stats.interval(0.1, np.linspace(0.01, 0.2, 100)).significant
    assert not stats.interval(0.1, np.linspace(-0.1, 0.2, 100)).significant
    assert stats.interval(0.0, np.full(5, np.nan)).valid == 0


def _gaussian_features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, (n, 8)).astype(np.float32)


def test_identical_sets_fid_zero_density_and_coverage_one() -> None:
    feats = _gaussian_features(300, 0)
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-3)
    out = prdc(feats, feats, k=5)
    assert out["density"] == pytest.approx(1.0) and out["coverage"] == pytest.approx(1.0)


def test_same_distribution_density_near_1_coverage_near_097() -> None:
    a, b = _gaussian_features(1000, 0), _gaussian_features(1000, 1)
    out = prdc(a, b, k=5)
    assert expected_coverage(1000, 5) == pytest.approx(0.97, abs=0.002)
    assert out["density"] == pytest.approx(1.0, abs=0.08)
    assert out["coverage"] == pytest.approx(expected_coverage(1000, 5), abs=0.02)
    assert fid(a, b) < 0.2  # finite-sample bias only
    kid_mean, _ = kid(a, b)
    assert abs(kid_mean) < 0.01


def test_shifted_distribution_scores_worse_than_its_baseline() -> None:
    train, test = _gaussian_features(400, 0), _gaussian_features(200, 1)
    far = _gaussian_features(500, 2, shift=2.0)
    out = fidelity(train, test, far, k=5)
    assert out["synthetic"]["fid"] > 10 * max(out["baseline"]["fid"], 0.1)
    assert out["synthetic"]["kid"] > out["baseline"]["kid"]
    assert out["synthetic"]["coverage"] < out["baseline"]["coverage"]
    assert out["synthetic"]["density"] < out["baseline"]["density"]


def test_inception_fid_names_the_missing_weights_file(tmp_path) -> None:
    missing = tmp_path / "pt_inception.pth"
    x = np.zeros((4, 1, 16, 16), np.float32)
    with pytest.raises(ConfigError, match="pt_inception.pth"):
        inception_fid(missing, x, x, x)


def _slices(n: int, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r**2, 0.5, -0.8)
        out.append(img + rng.normal(0, 0.05, img.shape))
    return np.clip(np.array(out, np.float32)[:, None], -1, 1)


def test_nearest_by_correlation_finds_the_copied_slice() -> None:
    train = _slices(50, 0)
    queries = train[[7, 3, 41]] * 0.5 + 0.1  # affine changes keep the correlation at 1
    corr, idx = nearest_by_correlation(queries, train, chunk=16)
    assert list(idx) == [7, 3, 41]
    assert np.allclose(corr, 1.0, atol=1e-5)


def test_copies_of_training_slices_have_a_high_copy_rate_and_noise_none() -> None:
    net = RandomFeatures()
    train, held = _slices(80, 0), _slices(40, 1)
    tf, hf = extract_features(net, train), extract_features(net, held)
    copies = train[np.random.default_rng(2).integers(0, 80, 60)]
    mem = memorisation((copies, extract_features(net, copies)), (train, tf), (held, hf))
    assert mem.copy_rate == 1.0 and mem.copy_rate_features == 1.0
    assert mem.syn_corr[mem.closest(1)[0]] == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(3).uniform(-1, 1, (60, 1, 32, 32)).astype(np.float32)
    mem = memorisation((noise, extract_features(net, noise)), (train, tf), (held, hf))
    assert mem.copy_rate == 0.0


def test_random_features_are_fixed_by_the_seed_and_size_independent() -> None:
    x = torch.from_numpy(_slices(4, 0, size=64))
    a, b = RandomFeatures(0)(x), RandomFeatures(0)(x)
    assert torch.equal(a, b) and a.shape == (4, RandomFeatures().num_features)
    assert not torch.equal(a, RandomFeatures(1)(x))
    assert RandomFeatures()(torch.from_numpy(_slices(2, 0, size=32))).shape[1] == a.shape[1]


@pytest.mark.parametrize("name", ["small", "resnet18", "densenet121"])
def test_classifiers_map_slices_to_logits(name: str) -> None:
    net = build_classifier(name, n_classes=3).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    if name == "small":
        assert isinstance(net, SmallCNN)


def test_unknown_classifier_is_rejected() -> None:
    with pytest.raises(ValueError, match="vgg"):
        build_classifier("vgg", 2)


def test_too_few_test_patients_never_give_a_significant_result() -> None:
    y = np.array([0, 1, 0, 0, 0, 0])
    patients = np.array(["a", "a", "b", "c", "d", "e"])
    assert not stats.bootstrap_assessable(y, patients, 2)  # lesions in one patient only
    assert stats.bootstrap_assessable(np.append(y, 1), np.append(patients, "e"), 2)
    assert not stats.bootstrap_assessable(y[:4], patients[:4], 2)
    ci = stats.interval(0.3, np.linspace(0.2, 0.4, 50), assessable=False)
    assert ci.low > 0 and not ci.significant


@pytest.mark.parametrize("name", FIDELITY.names())
def test_every_registered_fidelity_metric_computes_its_rows(name):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 8))
    near, far = real + rng.normal(0, 0.01, real.shape), rng.normal(3, 1, size=(120, 8))
    metric = FIDELITY.get(name)()
    close, away = metric.compute(real, near, 5, 0), metric.compute(real, far, 5, 0)
    for key, _, _ in metric.rows:  # every value the report lists is computed and finite
        assert np.isfinite(close[key]) and np.isfinite(away[key]), key
    assert close != away  # the metric sees the difference between a copy and a shifted set
