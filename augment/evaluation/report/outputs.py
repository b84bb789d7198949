"""Outputs of ``augment evaluate``: metrics.json, plot tables for ``dvc plots`` and report.html.

No patient key appears in any output.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from augment.evaluation.experiment import ExperimentData, GainResult
from augment.evaluation.memorisation import Memorisation
from augment.evaluation.report.figures import roc_points
from augment.evaluation.report.page import render_html
from augment.evaluation.verdict import HEADLINE_GAIN, Verdict
from augment.io.jsonfile import write_json

HEADLINE_FILE = "metrics.json"
DETAIL_FILE = "metrics_detail.json"


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    exp: ExperimentData,
    gains: dict[str, GainResult],
    fid: dict[str, dict[str, float]],
    mem: Memorisation,
    training_logs: dict[str, list[tuple[float, float]]],
    model: Path | None,
    answers: dict[str, Verdict],
) -> None:
    """Write metrics.json, metrics_detail.json, plots/ and report.html into ``out``.

    Args:
        out: the (temporary, fresh) reports directory.
        summary: the metrics dictionary (all of it goes to metrics_detail.json).
        exp: the experiment's slices.
        gains: task -> the gain experiment's outcome.
        fid: fidelity measures, ``{"synthetic": {...}, "baseline": {...}}``.
        mem: the memorisation check.
        training_logs: the GAN's dvclive scalars, name -> [(step, value)].
        model: the model directory, whose dvclive TSV files are copied to plots/train/.
        answers: task -> the verdict.
    """
    write_json(out / HEADLINE_FILE, headline(summary))
    write_json(out / DETAIL_FILE, summary)
    plots = out / "plots"
    for task, gain in gains.items():
        if gain.probs and next(iter(gain.probs.values())).ndim == 3:  # (seeds, n, K): scores
            _write_roc(plots / "roc", gain)
        _write_gain(plots / f"gain_{task}.csv", summary, gain)
    _copy_training_logs(model, plots / "train")
    page = render_html(summary, exp, gains, fid, mem, training_logs, answers)
    (out / "report.html").write_text(page, encoding="utf-8")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few figures of ``metrics.json`` that a user compares across ``dvc exp`` runs."""
    out: dict[str, Any] = {}
    for task, t in summary["tasks"].items():
        v = t["verdict"]
        m = v["metric"]
        real = t["arms"]["real"]
        floor = t["floors"].get(v["best_floor"], {}).get(m, {})
        gain = t["gain"].get(HEADLINE_GAIN, {})
        out[task] = {
            "verdict": v["verdict"],
            f"{m}_real": real[m],
            f"{m}_real_low": real[f"{m}_low"],
            f"{m}_best_floor": floor.get("value"),
            f"{m}_gain": gain.get(m),
            f"{m}_gain_low": gain.get(f"{m}_low"),
            f"{m}_gain_high": gain.get(f"{m}_high"),
            "mde": v["minimum_detectable_effect"],
        }
    fid = summary["fidelity"]
    out.update(
        {
            "fid": fid.get("synthetic", {}).get("fid"),
            "fid_baseline": fid.get("baseline", {}).get("fid"),
            "copy_rate": summary["memorisation"]["copy_rate"],
            "memorisation_passed": summary["memorisation"]["passed"],
            "n_test_patients": summary["n_test_patients"],
            "seeds": summary["seeds"],
        }
    )
    return out


def _write_roc(folder: Path, gain: GainResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for arm in gain.arms:
        fpr, tpr = roc_points(gain, arm)
        with open(folder / f"{arm}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["fpr", "tpr"])
            writer.writerows(zip(np.round(fpr, 5), np.round(tpr, 5), strict=True))


def _write_gain(path: Path, summary: dict[str, Any], gain: GainResult) -> None:
    # One row per arm of this run; `dvc plots diff` over experiments gives gain vs fraction.
    m = gain.headline
    rows = []
    for arm in gain.arms:
        ci = gain.arm_ci[arm][m]
        row = {"fraction": summary.get("fraction"), "arm": arm, "metric": m}
        row.update(
            {"value": round(ci.value, 4), "low": round(ci.low, 4), "high": round(ci.high, 4)}
        )
        g = gain.gains.get(f"{arm}_vs_real", {}).get(m)
        row["gain_vs_real"] = round(g.value, 4) if g else 0.0
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
