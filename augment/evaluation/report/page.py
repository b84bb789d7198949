"""The report page: tables of the gain experiment and fidelity, the verdict, the HTML."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from augment.evaluation.experiment import ExperimentData, GainResult
from augment.evaluation.fidelity import FIDELITY
from augment.evaluation.memorisation import Memorisation
from augment.evaluation.report.figures import (
    curves_figure,
    grids,
    leakage_figure,
    memorisation_figures,
    roc_figure,
)
from augment.evaluation.stats import Interval
from augment.evaluation.verdict import CANNOT_TELL, HELPS, HURTS, NOT_RUN, Verdict

_VERDICT_CLASS = {HELPS: "helps", HURTS: "hurts", CANNOT_TELL: "", NOT_RUN: ""}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(ci: Interval, digits: int = 3, sign: bool = False) -> str:
    value = f"{ci.value:+.{digits}f}" if sign else _fmt(ci.value, digits)
    return f"{value} [{_fmt(ci.low, digits)}, {_fmt(ci.high, digits)}]"


def _shade(ci: Interval, lower_is_better: bool = False) -> str:
    # Green: a significant gain; red: a significant harm; nothing: the interval includes 0.
    if not ci.significant:
        return ""
    return "gain" if (ci.value > 0) != lower_is_better else "harm"


def gain_table(gain: GainResult) -> str:
    """Per-arm metrics next to the floors, and the paired gains, as HTML tables."""
    head = "".join(f"<th>{m.replace('_', ' ')}</th>" for m in gain.metrics)
    rows = []
    for arm in gain.arms:
        cells = "".join(
            f"<td>{_ci(gain.arm_ci[arm][m])}<br><small>sd {np.std(gain.per_seed[arm][m]):.3f}"
            "</small></td>"
            for m in gain.metrics
        )
        rows.append(f"<tr><th>{arm}</th>{cells}</tr>")
    for name, floor in gain.floors.items():
        cells = "".join(f"<td class='floor'>{_ci(floor[m])}</td>" for m in gain.metrics)
        rows.append(f"<tr><th class='floor'>floor: {name.replace('_', ' ')}</th>{cells}</tr>")
    arms = f"<table><tr><th>arm</th>{head}</tr>{''.join(rows)}</table>"
    rows = []
    for name, g in gain.gains.items():
        cells = "".join(
            f"<td class='{_shade(g[m], m in gain.lower_is_better)}'>{_ci(g[m], sign=True)}"
            f"{' *' if g[m].significant else ''}</td>"
            for m in gain.metrics
        )
        rows.append(f"<tr><th>{name.replace('_vs_', ' vs ')}</th>{cells}</tr>")
    gains = f"<table><tr><th>gain</th>{head}</tr>{''.join(rows)}</table>"
    return arms + "<h3>Gains (paired by seed)</h3>" + gains


def fidelity_table(fid: dict[str, dict[str, float]]) -> str:
    """Each measure for synthetic vs real-train next to real-test vs real-train."""
    rows = []
    rows_of = [row for name in FIDELITY.names() for row in FIDELITY.get(name).rows]
    for key, label, hint in [r for r in rows_of if r[0] in fid["synthetic"]]:
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


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:13px;text-align:left}td.gain{background:#dff2df}td.harm{background:#f8dcdc}
.floor{color:#666;background:#fafafa}.verdict{font-size:17px;padding:10px;
background:#f4f4f8;border-left:4px solid #446}.fail{border-left-color:#b00;background:#fbeaea}
.helps{border-left-color:#282;background:#e8f5e8}.hurts{border-left-color:#b00;background:#fbeaea}
.side{display:flex;gap:16px;flex-wrap:wrap}img{max-width:100%}small{color:#666}
"""


def render_html(
    summary: dict[str, Any],
    exp: ExperimentData,
    gains: dict[str, GainResult],
    fid: dict[str, dict[str, float]],
    mem: Memorisation,
    logs: dict[str, list[tuple[float, float]]],
    answers: dict[str, Verdict],
) -> str:
    """The whole report as one HTML string with embedded PNGs."""
    real_png, syn_png = grids(exp)
    m = summary["memorisation"]
    gate = "passed" if m["passed"] else "FAILED"
    verdicts = [
        f"<p class='verdict {_VERDICT_CLASS.get(a.verdict, 'fail')}'>"
        f"<b>{html.escape(task)}: {html.escape(a.verdict)}.</b> {html.escape(a.text)}</p>"
        for task, a in answers.items()
    ]
    sections = []
    for task, gain in gains.items():
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in gain.notes)
        sections += [f"<h2>Gain experiment: {html.escape(task)}</h2>", notes, gain_table(gain)]
        if "auc" in gain.metrics:
            sections.append(roc_figure(gain))
    first = next(iter(gains.values()))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>augment evaluation</title>",
        f"<style>{_CSS}</style></head><body><h1>Does the synthetic data help?</h1>",
        *verdicts,
        f"<p class='verdict {'' if m['passed'] else 'fail'}'>Memorisation check {gate}: "
        f"copy rate {m['copy_rate']:.1%} (threshold {m['threshold']:.1%}).</p>",
        f"<p>Tasks: {', '.join(html.escape(t) for t in gains)} (classifier "
        f"<b>{summary['classifier']}</b>), {summary['seeds']} seed(s) per arm; "
        f"{summary['n_train_patients']} training patients ({summary['n_train_slices']} slices, "
        f"the GAN's), {first.n_synthetic} synthetic slices in the synthetic arms; "
        f"test: {summary['n_test_patients']} patients ({summary['n_test_slices']} slices). "
        "Decision thresholds (and, with evaluate.select: best, the kept weights) chosen on val; "
        "all numbers below are on the test split, with 95% intervals from a bootstrap over "
        "test patients and seeds (see "
        "docs/evaluation.md). Floors are untrained shortcuts fitted on the training slices; the "
        "real-only arm must beat the best of them before any gain is read. * = interval "
        "excludes 0; green a gain, red a harm.</p>",
        "<h2>Real and synthetic slices</h2>",
        f"<div class='side'><div>{real_png}</div><div>{syn_png}</div></div>",
        *sections,
        "<h2>Fidelity and diversity</h2>",
        "<p>Features: a fixed, seeded random convolutional network (no download; the same "
        "yardstick in every run). The synthetic set is subsampled to the test set's size so "
        "that both columns use equal numbers.</p>",
        fidelity_table(fid),
        "<h2>Memorisation</h2>",
        f"<p>For each synthetic slice, its most correlated training slice (pixel correlation "
        f"after 2 x 2 averaging). A synthetic slice counts as a copy when it is closer than "
        f"{mem.quantile:.0%} of held-out real slices (patients the GAN never saw) come: "
        f"correlation above {mem.corr_threshold:.3f}, or, whatever the held-out slices do, at "
        f"least {mem.near_duplicate:.3f} (the same image). Copy rate {mem.copy_rate:.1%}; by "
        f"feature distance {mem.copy_rate_features:.1%}.</p>",
        memorisation_figures(exp, mem),
        f"<p class='verdict {'fail' if m.get('leakage_between_splits') else ''}'>Leakage "
        f"between the real splits: {mem.leakage_rate:.1%} of val/test slices correlate at least "
        f"{mem.near_duplicate:.3f} with a training slice (most similar: "
        f"{float(mem.held_corr.max()):.3f}).</p>",
        leakage_figure(exp, mem),
        "<h2>Training curves</h2>",
        curves_figure(logs, gains),
        "</body></html>",
    ]
    return "\n".join(parts)
