"""Outputs of ``augment evaluate``: metrics.json, plot tables for ``dvc plots`` and report.html.

The report is one self-contained HTML file: every figure is a matplotlib PNG embedded as
base64, so it can be mailed or archived as is. No patient key appears in any output.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from augment.evaluation import stats as metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from augment.evaluation.experiment import ExperimentData, GainResult

_NOT_CURVES = ("lr_", "images_per_s")
_FIDELITY_ROWS = (
    ("fid", "FID", "lower is closer"),
    ("kid", "KID", "lower is closer"),
    ("precision", "precision", "share of samples that look real (higher)"),
    ("recall", "recall", "share of the real variety reproduced (higher)"),
    ("density", "density", "about 1 for a matching distribution"),
    ("coverage", "coverage", "about 0.97 for a matching distribution (k = 5)"),
)


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    exp: ExperimentData,
    gain: GainResult,
    fid: dict[str, dict[str, float]],
    mem: metrics.Memorisation,
    training_logs: dict[str, list[tuple[float, float]]],
    model: Path | None,
) -> None:
    """Write metrics.json, plots/ and report.html into ``out`` (a fresh directory).

    Args:
        out: the (temporary) reports directory.
        summary: the metrics dictionary.
        exp: the experiment's slices.
        gain: the gain experiment's outcome.
        fid: fidelity measures, ``{"synthetic": {...}, "baseline": {...}}``.
        mem: the memorisation check.
        training_logs: the GAN's dvclive scalars, name -> [(step, value)].
        model: the model directory, whose dvclive TSV files are copied to plots/train/.
    """
    from augment.evaluation.stage import write_json

    write_json(out / "metrics.json", summary)
    plots = out / "plots"
    _write_roc(plots / "roc", gain)
    _write_gain(plots / "gain.csv", summary, gain)
    _copy_training_logs(model, plots / "train")
    page = render_html(summary, exp, gain, fid, mem, training_logs)
    (out / "report.html").write_text(page, encoding="utf-8")


def _roc(gain: GainResult, arm: str) -> tuple[np.ndarray, np.ndarray]:
    # Pooled over seeds: every seed's test predictions are one more set of operating points.
    from sklearn.metrics import roc_curve

    probs = gain.probs[arm]  # (n_seeds, n_test, K)
    y = np.tile(gain.test_labels, len(probs))
    score = probs[:, :, -1].reshape(-1) if probs.shape[2] == 2 else None
    if score is None or len(np.unique(y)) < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def _write_roc(folder: Path, gain: GainResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for arm in gain.arms:
        fpr, tpr = _roc(gain, arm)
        with open(folder / f"{arm}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["fpr", "tpr"])
            writer.writerows(zip(np.round(fpr, 5), np.round(tpr, 5), strict=True))


def _write_gain(path: Path, summary: dict[str, Any], gain: GainResult) -> None:
    # One row per arm of this run; `dvc plots diff` over experiments gives gain vs fraction.
    rows = []
    for arm in gain.arms:
        ci = gain.arm_ci[arm]["auc"]
        row = {"fraction": summary.get("fraction"), "arm": arm, "auc": round(ci.value, 4)}
        row.update({"auc_low": round(ci.low, 4), "auc_high": round(ci.high, 4)})
        g = gain.gains.get(f"{arm}_vs_real", {}).get("auc")
        row["gain_auc_vs_real"] = round(g.value, 4) if g else 0.0
        row["gain_low"] = round(g.low, 4) if g else 0.0
        row["gain_high"] = round(g.high, 4) if g else 0.0
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _copy_training_logs(model: Path | None, folder: Path) -> None:
    root = Path(model) / "live" / "plots" / "metrics" if model else None
    if root is None or not root.is_dir():
        return
    for path in root.rglob("*.tsv"):
        target = folder / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


# --------------------------------------------------------------------------- figures


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
    """A grid of (N, 1, S, S) slices in [-1, 1] as an embedded PNG."""
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
        fpr, tpr = _roc(gain, arm)
        ax.plot(fpr, tpr, label=f"{arm} (AUC {gain.arm_ci[arm]['auc'].value:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC on the test split")
    ax.legend(fontsize=8)
    return _png(fig)


def memorisation_figures(exp: ExperimentData, mem: metrics.Memorisation, n: int = 8) -> str:
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


def curves_figure(logs: dict[str, list[tuple[float, float]]], gain: GainResult) -> str:
    """GAN training scalars (dvclive; learning rates and speed left out) and classifier val AUC."""
    panels = [n for n in sorted(logs) if logs[n] and not any(k in n for k in _NOT_CURVES)]
    cols = 4
    rows = -(-(len(panels) + 1) // cols)
    fig, axes = _figure(rows, cols, 3.0)
    for ax in axes.flat[len(panels) + 1 :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, panels, strict=False):
        steps, values = zip(*logs[name], strict=True)
        ax.plot(steps, values, lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    ax = axes.flat[len(panels)]
    for arm in gain.arms:
        curve = np.mean(np.array(gain.val_curves[arm]), axis=0)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=arm)
    ax.set_title("classifier val AUC (mean over seeds)", fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- page


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(ci: metrics.Interval, digits: int = 3, sign: bool = False) -> str:
    value = f"{ci.value:+.{digits}f}" if sign else _fmt(ci.value, digits)
    return f"{value} [{_fmt(ci.low, digits)}, {_fmt(ci.high, digits)}]"


def gain_table(gain: GainResult) -> str:
    """Per-arm metrics and the paired gains, as HTML tables."""
    head = "".join(f"<th>{m.replace('_', ' ')}</th>" for m in metrics.CLASSIFICATION_METRICS)
    rows = []
    for arm in gain.arms:
        cells = "".join(
            f"<td>{_ci(gain.arm_ci[arm][m])}<br><small>sd {np.std(gain.per_seed[arm][m]):.3f}"
            "</small></td>"
            for m in metrics.CLASSIFICATION_METRICS
        )
        rows.append(f"<tr><th>{arm}</th>{cells}</tr>")
    arms = f"<table><tr><th>arm</th>{head}</tr>{''.join(rows)}</table>"
    rows = []
    for name, g in gain.gains.items():
        cells = "".join(
            f"<td class='{'sig' if g[m].significant else ''}'>{_ci(g[m], sign=True)}"
            f"{' *' if g[m].significant else ''}</td>"
            for m in metrics.CLASSIFICATION_METRICS
        )
        rows.append(f"<tr><th>{name.replace('_vs_', ' vs ')}</th>{cells}</tr>")
    gains = f"<table><tr><th>gain</th>{head}</tr>{''.join(rows)}</table>"
    return arms + "<h3>Gains (paired by seed)</h3>" + gains


def fidelity_table(fid: dict[str, dict[str, float]]) -> str:
    """Each measure for synthetic vs real-train next to real-test vs real-train."""
    rows = []
    for key, label, hint in _FIDELITY_ROWS:
        syn, base = fid["synthetic"][key], fid["baseline"][key]
        rows.append(
            f"<tr><th>{label}</th><td>{_fmt(syn, 4)}</td><td>{_fmt(base, 4)}</td>"
            f"<td>{hint}</td></tr>"
        )
    note = ""
    if fid["baseline"]["coverage"] < 0.5:
        # Seen on the demo: the k nearest neighbours of a training slice are the adjacent slices
        # of the same patient, so the k-NN balls are too small to hold another patient's slices.
        note = (
            "<p><small>The baseline's precision, recall, density and coverage are themselves "
            "low: the nearest neighbours of a training slice are neighbouring slices of the same "
            "patient, so even new real patients fall outside the k-NN balls. On this data read "
            "those four only against their baseline; FID and KID are the clearer "
            "measures.</small></p>"
        )
    if "inception_fid" in fid:
        inc = fid["inception_fid"]
        rows.append(
            f"<tr><th>Inception FID</th><td>{_fmt(inc['synthetic'], 3)}</td>"
            f"<td>{_fmt(inc['baseline'], 3)}</td><td>standard FID, local weights</td></tr>"
        )
    return (
        "<table><tr><th>measure</th><th>synthetic vs real-train</th>"
        "<th>baseline: real-test vs real-train</th><th>reading</th></tr>"
        f"{''.join(rows)}</table>{note}"
    )


def verdict_text(summary: dict[str, Any], gain: GainResult) -> str:
    """A plain-language answer to "does the synthetic data help?"."""
    g = gain.gains.get("real_synthetic_vs_real", {}).get("auc")
    if g is None:
        return "The synthetic arms could not be run (see the note below)."
    effect = f"{g.value:+.3f} AUC (95% CI {_fmt(g.low)} to {_fmt(g.high)})"
    if not g.assessable:
        return (
            f"Cannot tell whether the synthetic slices help: {effect} over real data only, but "
            f"the test split ({summary['n_test_patients']} patients) is too small for the "
            "interval to mean anything, so no difference is called significant."
        )
    if g.significant and g.value > 0:
        return f"Adding synthetic slices helped: {effect} over real data only."
    if g.significant:
        return f"Adding synthetic slices made the classifier worse: {effect}."
    return (
        f"No evidence that the synthetic slices help: {effect} over real data only; the "
        f"interval includes 0 (test set of {summary['n_test_patients']} patients)."
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:13px;text-align:left}td.sig{background:#e4f4e4}.verdict{font-size:17px;padding:10px;
background:#f4f4f8;border-left:4px solid #446}.fail{border-left-color:#b00;background:#fbeaea}
.side{display:flex;gap:16px;flex-wrap:wrap}img{max-width:100%}small{color:#666}
"""


def render_html(
    summary: dict[str, Any],
    exp: ExperimentData,
    gain: GainResult,
    fid: dict[str, dict[str, float]],
    mem: metrics.Memorisation,
    logs: dict[str, list[tuple[float, float]]],
) -> str:
    """The whole report as one HTML string with embedded PNGs."""
    real_png, syn_png = grids(exp)
    m = summary["memorisation"]
    gate = "passed" if m["passed"] else "FAILED"
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in gain.notes)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>augment evaluation</title>",
        f"<style>{_CSS}</style></head><body><h1>Does the synthetic data help?</h1>",
        f"<p class='verdict'>{html.escape(verdict_text(summary, gain))}</p>",
        f"<p class='verdict {'' if m['passed'] else 'fail'}'>Memorisation check {gate}: "
        f"copy rate {m['copy_rate']:.1%} (threshold {m['threshold']:.1%}).</p>",
        f"<p>Classifier <b>{summary['classifier']}</b>, {summary['seeds']} seed(s) per arm; "
        f"{summary['n_train_patients']} training patients ({summary['n_train_slices']} slices, "
        f"the GAN's), {summary['n_synthetic_used']} synthetic slices in the synthetic arms; "
        f"test: {summary['n_test_patients']} patients ({summary['n_test_slices']} slices). "
        "Best epoch chosen on val; all numbers below are on the test split, with 95% intervals "
        "from a bootstrap over test patients. * = interval excludes 0.</p>",
        notes,
        "<h2>Real and synthetic slices</h2>",
        f"<div class='side'><div>{real_png}</div><div>{syn_png}</div></div>",
        "<h2>Gain experiment</h2>",
        gain_table(gain),
        roc_figure(gain),
        "<h2>Fidelity and diversity</h2>",
        "<p>Features: a fixed, seeded random convolutional network (no download; the same "
        "yardstick in every run). The synthetic set is subsampled to the test set's size so "
        "that both columns use equal numbers.</p>",
        fidelity_table(fid),
        "<h2>Memorisation</h2>",
        f"<p>For each synthetic slice, its most correlated training slice (pixel correlation "
        f"after 2 x 2 averaging). A synthetic slice counts as a copy when it is closer than "
        f"{mem.quantile:.0%} of held-out real slices (patients the GAN never saw) come: "
        f"correlation above {mem.corr_threshold:.3f}. Copy rate {mem.copy_rate:.1%}; by "
        f"feature distance {mem.copy_rate_features:.1%}.</p>",
        memorisation_figures(exp, mem),
        "<h2>Training curves</h2>",
        curves_figure(logs, gain),
        "</body></html>",
    ]
    return "\n".join(parts)
