"""Measures of the evaluation stage, on arrays: classification, fidelity, memorisation.

Everything here is free of I/O so that tests can check each measure on known cases.

- Classification: AUC, balanced accuracy, sensitivity, specificity with per-sample weights, so
  that a bootstrap over test patients is a matrix of weights (how often each slice's patient was
  drawn) and costs one pass, not thousands of scikit-learn calls. Weighted values equal
  scikit-learn's ``roc_auc_score`` / ``balanced_accuracy_score`` with ``sample_weight`` (tested).
- Fidelity: FID and KID (torchmetrics) and precision/recall/density/coverage (``prdc``, the
  authors' reference code) on features of :class:`augment.nets.classifier.RandomFeatures`.
- Memorisation: nearest training slice of every synthetic and every held-out real slice, by
  normalised pixel correlation and by feature distance, and the copy rate.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment.errors import ConfigError

CLASSIFICATION_METRICS = ("auc", "balanced_accuracy", "sensitivity", "specificity")


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y: np.ndarray, prob: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """AUC, balanced accuracy, sensitivity and specificity, for one or many weightings.

    Binary problems (two classes) take class 1 as positive. With more classes, AUC,
    sensitivity and specificity are macro means of one-vs-rest values (scikit-learn's
    ``average="macro", multi_class="ovr"``) and balanced accuracy is the mean recall.

    Args:
        y: (n,) true class ids in ``[0, K)``.
        prob: (n, K) class probabilities.
        weights: (B, n) non-negative sample weights (B bootstrap draws), or None for ones.

    Returns:
        Metric name -> (B,) values (B = 1 without weights); NaN where a class has zero weight.
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    n_classes = prob.shape[1]
    pred = prob.argmax(axis=1)
    classes = [1] if n_classes == 2 else list(range(n_classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.stack([_weighted_rate(w, y == c, pred == c) for c in range(n_classes)])
        sens = np.stack([_weighted_rate(w, y == c, pred == c) for c in classes])
        spec = np.stack([_weighted_rate(w, y != c, pred != c) for c in classes])
        auc = np.stack([_weighted_auc(w, y == c, prob[:, c]) for c in classes])
    return {
        "auc": auc.mean(axis=0),
        "balanced_accuracy": recall.mean(axis=0),
        "sensitivity": sens.mean(axis=0),
        "specificity": spec.mean(axis=0),
    }


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


def patient_bootstrap_weights(patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Sample weights of a bootstrap over patients: each draw resamples whole patients.

    Args:
        patients: (n,) patient key of every test sample.
        n_boot: number of bootstrap draws B.
        seed: seed of the draws (the same seed gives the same draws, so arms stay paired).

    Returns:
        (B, n) weights: how many times each sample's patient was drawn.
    """
    keys, inverse = np.unique(np.asarray(patients), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=n_boot)
    return counts[:, inverse].astype(np.float64)  # (B, n)


@dataclass
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float
    valid: int  # bootstrap draws where the metric was defined (every class present)
    assessable: bool = True  # enough test patients for a patient bootstrap to mean anything

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes 0 and the test set allows an interval at all."""
        return bool(self.assessable and (self.low > 0 or self.high < 0))


def interval(
    point: float, draws: np.ndarray, level: float = 0.95, assessable: bool = True
) -> Interval:
    """Percentile interval of bootstrap ``draws`` (NaN draws, undefined metrics, are dropped)."""
    ok = draws[np.isfinite(draws)]
    if len(ok) == 0:
        return Interval(float(point), float("nan"), float("nan"), 0, assessable)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high), int(len(ok)), assessable)


MIN_TEST_PATIENTS = 5
MIN_PATIENTS_PER_CLASS = 2


def bootstrap_assessable(y: np.ndarray, patients: np.ndarray, n_classes: int) -> bool:
    """Whether a bootstrap over these test patients can support a significance claim.

    With fewer than 5 test patients, or a class seen in fewer than 2 of them, resampling
    patients cannot estimate how much the metric varies between patients: the percentile
    interval comes out far too narrow (with one lesion patient, every draw holds the same
    positives), so no gain is called significant.
    """
    per_class = [len(set(patients[y == c])) for c in range(n_classes)]
    return len(set(patients)) >= MIN_TEST_PATIENTS and min(per_class) >= MIN_PATIENTS_PER_CLASS


# --------------------------------------------------------------------------- features


def extract_features(
    net: Callable[[Tensor], Tensor], images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Features of (N, 1, S, S) images in [-1, 1], in batches: (N, D) float32."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size], np.float32))
            out.append(net(batch).float().numpy())
    return np.concatenate(out, axis=0)


class _Precomputed(nn.Module):
    """Hands precomputed features to torchmetrics, which otherwise runs its network itself."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N, D), with torchmetrics' implementation."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(torch.from_numpy(real).double(), real=True)
    metric.update(torch.from_numpy(fake).double(), real=False)
    return float(metric.compute())


def kid(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets) between feature sets (N, D)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(1000, len(real), len(fake))
    with warnings.catch_warnings():  # the buffer warning is about Inception-sized inputs
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=50, subset_size=size
        )
    metric.update(torch.from_numpy(real).double(), real=True)
    metric.update(torch.from_numpy(fake).double(), real=False)
    with torch.random.fork_rng():  # KID draws its subsets from torch's global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    For two independent samples of one distribution, density is 1 in expectation and coverage
    is ``1 - (N-1)...(N-k) / ((2N-1)...(2N-k))`` (about ``1 - 2**-k``, 0.97 for k = 5); for two
    identical sets both are exactly 1 (every real ball holds its own centre).
    """
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {name: float(value) for name, value in out.items()}


def expected_coverage(n: int, k: int) -> float:
    """Coverage expected for two independent samples of size ``n`` of one distribution."""
    ratio = np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    return float(1 - ratio)


def fidelity(
    train: np.ndarray, test: np.ndarray, synthetic: np.ndarray, k: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Every fidelity measure for synthetic vs real-train, next to real-test vs real-train.

    The synthetic set is subsampled to the size of the real test set first, because FID, KID
    and the k-NN measures depend on the sample size: the baseline and the synthetic value are
    then measured with equal numbers.

    Args:
        train: (N_train, D) features of the real training slices (the reference).
        test: (N_test, D) features of the real test slices (the baseline candidate).
        synthetic: (N_syn, D) features of the synthetic slices.
        k: neighbours of precision/recall/density/coverage.
        seed: seed of the subsampling and of KID's subsets.

    Returns:
        ``{"synthetic": {...}, "baseline": {...}}`` with fid, kid, kid_std, precision, recall,
        density, coverage.
    """
    rng = np.random.default_rng(seed)
    n = min(len(test), len(synthetic))
    syn = synthetic[np.sort(rng.choice(len(synthetic), n, replace=False))]
    if min(len(train), n) <= k:
        raise ConfigError(f"expected more than k = {k} slices per set, got {min(len(train), n)}")
    out = {}
    for name, cand in (("synthetic", syn), ("baseline", test)):
        kid_mean, kid_std = kid(train, cand, seed)
        out[name] = {"fid": fid(train, cand), "kid": kid_mean, "kid_std": kid_std}
        out[name].update(prdc(train, cand, k))
    return out


def inception_fid(
    weights: Path, train: np.ndarray, test: np.ndarray, synthetic: np.ndarray
) -> dict[str, float]:
    """Standard Inception-v3 FID from local weights (torch-fidelity's FID network).

    Args:
        weights: path of the ``pt_inception-2015-12-05`` weights file.
        train, test, synthetic: (N, 1, S, S) images in [-1, 1].

    Returns:
        ``{"synthetic": FID(train, synthetic), "baseline": FID(train, test)}``.

    Raises:
        ConfigError: the weights file is missing or torch-fidelity is not installed.
    """
    check_inception_weights(weights)
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        def one(fake: np.ndarray) -> float:
            metric = FrechetInceptionDistance(
                feature=2048, feature_extractor_weights_path=str(weights)
            )
            metric.update(_to_rgb_uint8(train), real=True)
            metric.update(_to_rgb_uint8(fake), real=False)
            return float(metric.compute())

        return {"synthetic": one(synthetic), "baseline": one(test)}
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "evaluate.inception_weights: Inception FID needs torch-fidelity "
            f"(pip install torch-fidelity), got {exc}"
        ) from exc


def check_inception_weights(weights: Path) -> None:
    """Raise a ConfigError naming ``weights`` when it is not a file."""
    if not Path(weights).is_file():
        raise ConfigError(
            f"evaluate.inception_weights: expected a local Inception weights file, "
            f"got {weights} (missing); nothing is downloaded"
        )


def _to_rgb_uint8(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.asarray(images, np.float32))  # (N, 1, S, S) in [-1, 1]
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1)  # (N, 3, S, S); torchmetrics resizes to 299


# --------------------------------------------------------------------------- memorisation


def _standardise(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.asarray(images, np.float32))  # (N, 1, S, S)
    if x.shape[-1] >= 32:
        # 2 x 2 averaging first: pixel noise, which a generator need not copy, would otherwise
        # lower the correlation of real pairs more than that of smooth synthetic slices.
        x = F.avg_pool2d(x, 2)
    x = x.flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (N, P) unit vectors


def nearest_by_correlation(
    queries: np.ndarray, reference: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each query slice, the reference slice of highest normalised pixel correlation.

    Args:
        queries: (N, 1, S, S) images.
        reference: (M, 1, S, S) images.
        chunk: slices per matrix product (bounds memory).

    Returns:
        (N,) highest Pearson correlations and (N,) indices into ``reference``.
    """
    best = torch.full((len(queries),), -2.0)
    arg = torch.zeros(len(queries), dtype=torch.int64)
    for r0 in range(0, len(reference), chunk):
        ref = _standardise(reference[r0 : r0 + chunk])  # (m, P)
        for q0 in range(0, len(queries), chunk):
            q = _standardise(queries[q0 : q0 + chunk])  # (n, P)
            val, idx = (q @ ref.T).max(dim=1)  # (n,)
            better = val > best[q0 : q0 + chunk]
            best[q0 : q0 + chunk][better] = val[better]
            arg[q0 : q0 + chunk][better] = idx[better] + r0
    return best.numpy(), arg.numpy()


def nearest_by_feature(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest reference feature vector of each query: (N,) distances, (N,) indices."""
    from sklearn.neighbors import NearestNeighbors

    nn_index = NearestNeighbors(n_neighbors=1).fit(reference)
    dist, idx = nn_index.kneighbors(queries)
    return dist[:, 0], idx[:, 0]


@dataclass
class Memorisation:
    """How close synthetic slices come to training slices, next to held-out real slices.

    A synthetic slice counts as a copy when its correlation with its nearest training slice
    exceeds ``corr_threshold``, the ``quantile`` of the same correlation over held-out real
    slices (patients the GAN never saw). With quantile 0.99, a generator that draws new slices
    from the patients' distribution has an expected copy rate of about 1%; a generator that
    returns training slices has a copy rate near 100%.
    """

    syn_corr: np.ndarray  # (N_syn,) correlation with the nearest training slice
    syn_corr_idx: np.ndarray  # (N_syn,) index of that training slice
    held_corr: np.ndarray  # (N_held,)
    syn_dist: np.ndarray  # (N_syn,) feature distance to the nearest training slice
    syn_dist_idx: np.ndarray
    held_dist: np.ndarray  # (N_held,)
    quantile: float
    corr_threshold: float
    dist_threshold: float
    copy_rate: float  # by correlation: the gated number
    copy_rate_features: float  # by feature distance: reported

    def closest(self, n: int) -> np.ndarray:
        """Indices of the ``n`` synthetic slices most correlated with a training slice."""
        return np.argsort(-self.syn_corr, kind="stable")[:n]

    def summary(self) -> dict[str, float]:
        """Scalars for metrics.json."""
        return {
            "copy_rate": self.copy_rate,
            "copy_rate_features": self.copy_rate_features,
            "quantile": self.quantile,
            "corr_threshold": self.corr_threshold,
            "synthetic_corr_median": float(np.median(self.syn_corr)),
            "synthetic_corr_max": float(self.syn_corr.max()),
            "heldout_corr_median": float(np.median(self.held_corr)),
            "heldout_corr_max": float(self.held_corr.max()),
            "feature_dist_threshold": self.dist_threshold,
        }


def memorisation(
    synthetic: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    quantile: float = 0.99,
) -> Memorisation:
    """Nearest training slice of synthetic and held-out real slices, and the copy rate.

    Args:
        synthetic: (images (N, 1, S, S), features (N, D)) of the synthetic slices.
        train: the same for the real training slices (the GAN's training set).
        heldout: the same for real val + test slices.
        quantile: share of held-out real slices that a copy must come closer than.

    Returns:
        A :class:`Memorisation` with per-slice values, thresholds and copy rates.
    """
    syn_corr, syn_idx = nearest_by_correlation(synthetic[0], train[0])
    held_corr, _ = nearest_by_correlation(heldout[0], train[0])
    syn_dist, syn_didx = nearest_by_feature(synthetic[1], train[1])
    held_dist, _ = nearest_by_feature(heldout[1], train[1])
    corr_thr = float(np.quantile(held_corr, quantile))
    dist_thr = float(np.quantile(held_dist, 1 - quantile))
    return Memorisation(
        syn_corr=syn_corr,
        syn_corr_idx=syn_idx,
        held_corr=held_corr,
        syn_dist=syn_dist,
        syn_dist_idx=syn_didx,
        held_dist=held_dist,
        quantile=quantile,
        corr_threshold=corr_thr,
        dist_threshold=dist_thr,
        copy_rate=float((syn_corr > corr_thr).mean()),
        copy_rate_features=float((syn_dist < dist_thr).mean()),
    )
