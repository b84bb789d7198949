"""The memorisation check: does the generator return its training slices?

For every synthetic and every held-out real slice, the nearest training slice by normalised
pixel correlation and by feature distance; a synthetic slice is a copy when it comes closer to a
training slice than ``quantile`` of held-out real slices do, and the copy rate gates the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from augment.errors import AugmentError


class MemorisationError(AugmentError):
    """The copy rate is above the gate; raised after the reports are written.

    Attributes:
        summary: the metrics written to ``metrics.json``.
    """

    def __init__(self, summary: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.summary = summary


def _standardise(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.asarray(images, np.float32))  # (N, C, S, S)
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
        queries: (N, C, S, S) images.
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
    held_dist: np.ndarray  # (N_held,)
    quantile: float
    corr_threshold: float
    dist_threshold: float
    copy_rate: float  # by correlation (relative or absolute criterion): the gated number
    copy_rate_features: float  # by feature distance: reported
    held_corr_idx: np.ndarray | None = None  # (N_held,) index of the nearest training slice
    near_duplicate: float = 1.0  # absolute correlation at which two slices are the same image
    leakage_rate: float = 0.0  # share of held-out slices that near-duplicate a training slice

    def leaked(self, n: int) -> np.ndarray:
        """Indices of up to ``n`` held-out slices that near-duplicate a training slice."""
        hits = np.flatnonzero(self.held_corr >= self.near_duplicate)
        return hits[np.argsort(-self.held_corr[hits], kind="stable")][:n]

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
            "near_duplicate_corr": self.near_duplicate,
            "leakage_rate": self.leakage_rate,
        }


def memorisation(
    synthetic: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    quantile: float = 0.99,
    near_duplicate: float = 0.985,
) -> Memorisation:
    """Nearest training slice of synthetic and held-out real slices, and the copy rate.

    Two criteria make a synthetic slice a copy: the relative one (closer to a training slice
    than ``quantile`` of held-out real slices come) and an absolute one (correlation at least
    ``near_duplicate``). The relative one alone is blind when held-out patients are themselves
    near-copies of training patients (one subject under several IDs, repeated scans): its
    threshold then rises with them. Held-out slices above the absolute one are leakage between
    the splits, reported by :attr:`Memorisation.leakage_rate`.

    Args:
        synthetic: (images (N, C, S, S), features (N, D)) of the synthetic slices.
        train: the same for the real training slices (the GAN's training set).
        heldout: the same for real val + test slices.
        quantile: share of held-out real slices that a copy must come closer than.
        near_duplicate: correlation (after 2 x 2 averaging) at which two slices are one image.

    Returns:
        A :class:`Memorisation` with per-slice values, thresholds and copy rates.
    """
    syn_corr, syn_idx = nearest_by_correlation(synthetic[0], train[0])
    held_corr, held_idx = nearest_by_correlation(heldout[0], train[0])
    syn_dist, _ = nearest_by_feature(synthetic[1], train[1])
    held_dist, _ = nearest_by_feature(heldout[1], train[1])
    corr_thr = float(np.quantile(held_corr, quantile))
    dist_thr = float(np.quantile(held_dist, 1 - quantile))
    return Memorisation(
        syn_corr=syn_corr,
        syn_corr_idx=syn_idx,
        held_corr=held_corr,
        syn_dist=syn_dist,
        held_dist=held_dist,
        quantile=quantile,
        corr_threshold=corr_thr,
        dist_threshold=dist_thr,
        copy_rate=float(((syn_corr > corr_thr) | (syn_corr >= near_duplicate)).mean()),
        copy_rate_features=float((syn_dist < dist_thr).mean()),
        held_corr_idx=held_idx,
        near_duplicate=near_duplicate,
        leakage_rate=float((held_corr >= near_duplicate).mean()),
    )
