"""The report's figures: matplotlib PNGs embedded as base64, so the page is one file."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

from augment.evaluation.experiment import ExperimentData, GainResult
from augment.evaluation.memorisation import Memorisation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_NOT_CURVES = ("lr_", "images_per_s")


def roc_points(gain: GainResult, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """ROC operating points of an arm: (fpr, tpr), pooled over seeds."""
    # Pooled over seeds: every seed's test predictions are one more set of operating points.
    from sklearn.metrics import roc_curve

    probs = gain.probs[arm]  # (n_seeds, n_test, K)
    y = np.tile(gain.test_labels, len(probs))
    score = probs[:, :, -1].reshape(-1) if probs.shape[2] == 2 else None
    if score is None or len(np.unique(y)) < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def _png(fig: Figure) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}">'


def _figure(rows: int, cols: int, size: float) -> tuple[Figure, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    return fig, axes


def grid_figure(images: np.ndarray, titles: list[str], title: str, cols: int = 4) -> str:
    """A grid of (N, C, S, S) slices in [-1, 1] as an embedded PNG (channel 0 of each)."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = _figure(rows, cols, 1.6)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, name in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img[0], cmap="gray", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))


def _class_name(names: list[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else "unlabelled"


def grids(exp: ExperimentData, n: int = 16) -> tuple[str, str]:
    """Random real training slices and random synthetic slices, with their classes."""
    real = _pick(len(exp.train.labels), n, 0)
    syn = _pick(len(exp.synthetic), n, 0)
    names = exp.class_names
    real_png = grid_figure(
        exp.train.images[real],
        [_class_name(names, int(c)) for c in exp.train.labels[real]],
        "real (training patients)",
    )
    syn_png = grid_figure(
        exp.synthetic[syn],
        [_class_name(names, int(c)) for c in exp.synthetic_labels[syn]],
        "synthetic",
    )
    return real_png, syn_png


def roc_figure(gain: GainResult) -> str:
    """ROC curves of every arm (test split, pooled over seeds)."""
    fig, axes = _figure(1, 1, 4.5)
    ax = axes[0, 0]
    for arm in gain.arms:
        fpr, tpr = roc_points(gain, arm)
        ax.plot(fpr, tpr, label=f"{arm} (AUC {gain.arm_ci[arm]['auc'].value:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC on the test split")
    ax.legend(fontsize=8)
    return _png(fig)


def memorisation_figures(exp: ExperimentData, mem: Memorisation, n: int = 8) -> str:
    """Histogram of nearest-training correlations and the gallery of the closest pairs."""
    fig, axes = _figure(1, 1, 4.5)
    ax = axes[0, 0]
    bins = np.linspace(min(mem.held_corr.min(), mem.syn_corr.min()), 1, 40)
    ax.hist(mem.held_corr, bins=bins, alpha=0.6, density=True, label="held-out real")
    ax.hist(mem.syn_corr, bins=bins, alpha=0.6, density=True, label="synthetic")
    ax.axvline(mem.corr_threshold, color="red", ls="--", label="copy threshold")
    ax.set(xlabel="correlation with the nearest training slice", ylabel="density")
    ax.legend(fontsize=8)
    hist = _png(fig)
    top = mem.closest(n)
    fig, axes = _figure(2, len(top), 1.6)
    for col, i in enumerate(top):
        j = mem.syn_corr_idx[i]
        axes[0, col].imshow(exp.synthetic[i, 0], cmap="gray", vmin=-1, vmax=1)
        axes[0, col].set_title(f"synthetic\nr = {mem.syn_corr[i]:.3f}", fontsize=8)
        axes[1, col].imshow(exp.train.images[j, 0], cmap="gray", vmin=-1, vmax=1)
        axes[1, col].set_title("nearest training", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return hist + _png(fig)


def leakage_figure(exp: ExperimentData, mem: Memorisation, n: int = 8) -> str:
    """Held-out real slices that near-duplicate a training slice, above their twins ('' if none)."""
    top = mem.leaked(n)
    if len(top) == 0 or mem.held_corr_idx is None:
        return ""
    held = np.concatenate([exp.val.images, exp.test.images])
    fig, axes = _figure(2, len(top), 1.6)
    for col, i in enumerate(top):
        axes[0, col].imshow(held[i, 0], cmap="gray", vmin=-1, vmax=1)
        axes[0, col].set_title(f"val/test\nr = {mem.held_corr[i]:.3f}", fontsize=8)
        axes[1, col].imshow(exp.train.images[mem.held_corr_idx[i], 0], cmap="gray", vmin=-1, vmax=1)
        axes[1, col].set_title("training", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return _png(fig)


_VAL_SCORE = {"classification": "val AUC", "segmentation": "val Dice"}


def curves_figure(logs: dict[str, list[tuple[float, float]]], gains: dict[str, GainResult]) -> str:
    """GAN training scalars (dvclive; learning rates and speed left out) and each downstream
    model's validation curve per arm (mean over seeds)."""
    panels = [n for n in sorted(logs) if logs[n] and not any(k in n for k in _NOT_CURVES)]
    cols = 4
    rows = -(-(len(panels) + len(gains)) // cols)
    fig, axes = _figure(rows, cols, 3.0)
    for ax in axes.flat[len(panels) + len(gains) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, panels, strict=False):
        steps, values = zip(*logs[name], strict=True)
        ax.plot(steps, values, lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax, (task, gain) in zip(axes.flat[len(panels) :], gains.items(), strict=False):
        for arm in gain.arms:
            curve = np.mean(np.array(gain.val_curves[arm]), axis=0)
            ax.plot(np.arange(1, len(curve) + 1), curve, label=arm)
        ax.set_title(f"{task}: {_VAL_SCORE.get(task, 'val score')} (mean over seeds)", fontsize=9)
        ax.set_xlabel("val check (evenly spaced over training)", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
