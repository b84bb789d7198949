"""What ``augment sample`` draws: exact class counts, per-sample noise, generation, units.

Sample ``i`` of a run is G(z_i | y_i) with ``z_i`` drawn from ``np.random.default_rng([seed, i])``
(see :func:`noise`), so it does not depend on the batch size or the number of writer threads:
the manifest row (seed, noise_index, class) regenerates exactly that sample
(:func:`generate`). Classes get exact counts (largest remainder of the requested shares) in
contiguous blocks of indices (:func:`class_counts`, :func:`class_of`).

With ``sample.accept: consistent`` only samples whose generated mask agrees with their class are
kept: class ``c``'s candidates are drawn with noise indices ``j * K + c`` (j = 0, 1, ...; K the
number of classes; :func:`candidate_indices`), and its k-th kept candidate becomes case
``start_c + k`` of the class's block. The manifest's noise index still regenerates each kept
sample, and the same seed gives the same files.
"""

from __future__ import annotations

import numpy as np
import torch

from augment.contracts.model_dir import ModelInfo
from augment.errors import ConfigError


def class_counts(n: int, class_names: list[str], ratio: dict[str, float] | None) -> np.ndarray:
    """Exact per-class counts summing to ``n`` by the largest-remainder method.

    Shares may be proportions or counts ('normal=300,lesion=700' with n=1000 gives exactly
    those). Without a ratio the classes get equal shares; ties go to the lower class id.

    Raises:
        ConfigError: an unknown class name (the known ones are listed), a ratio for an
            unconditional model, or shares that are negative or sum to 0.
    """
    if not class_names:
        if ratio:
            raise ConfigError("sample.class_ratio: the model is unconditional, it has no classes")
        return np.array([n], dtype=np.int64)
    ratio = ratio or dict.fromkeys(class_names, 1.0)
    unknown = sorted(set(ratio) - set(class_names))
    if unknown:
        raise ConfigError(
            f"sample.class_ratio: unknown class {', '.join(map(repr, unknown))}; "
            f"the model's classes are {class_names}"
        )
    shares = np.array([float(ratio.get(c, 0.0)) for c in class_names])
    if (shares < 0).any() or shares.sum() <= 0:
        raise ConfigError(
            f"sample.class_ratio: expected shares >= 0 with a positive sum, got {ratio}"
        )
    quota = shares / shares.sum() * n
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")  # largest remainders first
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def noise(seed: int, indices: np.ndarray, nz: int, truncation: float | None = None) -> np.ndarray:
    """The noise of samples ``indices``: row k from ``np.random.default_rng([seed, indices[k]])``.

    Args:
        seed: the run's seed.
        indices: (B,) sample indices (the manifest's noise_index).
        nz: noise dimension.
        truncation: if set, entries with |z| > truncation are redrawn from the same stream
            (the truncation trick: a truncated normal, fidelity over diversity).

    Returns:
        (B, nz) float32.
    """
    out = np.empty((len(indices), nz), dtype=np.float32)
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, int(i)])
        z = rng.standard_normal(nz, dtype=np.float32)
        while truncation is not None and (bad := np.abs(z) > truncation).any():
            z[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        out[row] = z
    return out


@torch.inference_mode()
def generate(
    generator: torch.nn.Module,
    info: ModelInfo,
    seed: int,
    indices: np.ndarray,
    classes: np.ndarray,
    truncation: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Generate samples ``indices`` of a run (also used to regenerate one manifest row).

    Args:
        generator: from :func:`augment.contracts.model_dir.load_generator` (eval mode).
        info: its :class:`augment.contracts.model_dir.ModelInfo`.
        seed: the run's seed.
        indices: (B,) noise indices.
        classes: (B,) class ids (ignored by unconditional models).
        truncation: as in :func:`noise`.

    Returns:
        images (B, C, S, S) float32 in [-1, 1]; masks (B, S, S) uint8 label ids or None.
    """
    device = next(generator.parameters()).device
    z = torch.from_numpy(noise(seed, indices, info.spec.nz, truncation)).to(device)  # (B, nz)
    y = (
        torch.from_numpy(np.asarray(classes, dtype=np.int64)).to(device)
        if info.class_names
        else None
    )
    images, masks = info.split(generator(z, y))  # (B, C, S, S), (B, S, S)
    return images, masks


def class_of(cum: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The class of each sample index, given the cumulative class counts ``cum``."""
    return np.searchsorted(cum, indices, side="right").astype(np.int64)  # block of each index


ACCEPT_CAP = 20  # candidates drawn per sample asked for, at most, before the filter gives up


def candidate_indices(c: int, n_classes: int, start: int, count: int) -> np.ndarray:
    """Noise indices of candidates ``start .. start+count-1`` of class ``c``: ``j * K + c``.

    Every class has its own stream of noise indices, disjoint from the others', so how many
    candidates one class needs does not change another class's samples.
    """
    return np.arange(start, start + count, dtype=np.int64) * max(1, n_classes) + c
