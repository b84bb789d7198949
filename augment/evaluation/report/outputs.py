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
from augment.io.jsonfile import write_json


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    exp: ExperimentData,
    gain: GainResult,
    fid: dict[str, dict[str, float]],
    mem: Memorisation,
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
    write_json(out / "metrics.json", summary)
    plots = out / "plots"
    _write_roc(plots / "roc", gain)
    _write_gain(plots / "gain.csv", summary, gain)
    _copy_training_logs(model, plots / "train")
    page = render_html(summary, exp, gain, fid, mem, training_logs)
    (out / "report.html").write_text(page, encoding="utf-8")


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
