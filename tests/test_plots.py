"""Plots: the gain-curve template across DVC revisions, and the offline page (``augment plots``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from augment.cli import app
from augment.io.plots import PlotsError, collect, offline_plots

ROOT = Path(__file__).resolve().parents[1]
HEADER = "fraction,arm,metric,value,low,high,gain_vs_real,gain_low,gain_high\n"
GAINS = {"real": (0.0, 0.0, 0.0), "real_classic": (0.01, -0.02, 0.04),
         "real_synthetic": (-0.12, -0.17, -0.07)}  # fmt: skip
GAIN_OPTIONS = ["-x", "fraction", "-y", "gain_vs_real", "--template", "gain_curve"]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _gain_csv(fraction: float, shift: float) -> str:
    rows = [f"{fraction},{arm},auc,0.8,0.7,0.9,{g + shift if arm != 'real' else 0.0},{lo},{hi}\n"
            for arm, (g, lo, hi) in GAINS.items()]  # fmt: skip
    return HEADER + "".join(rows)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project with the gain file at fraction 0.5 in HEAD and 1.0 in the workspace."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = tmp_path / "p"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.org")
    _git(root, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / ".dvc" / "plots").mkdir()
    shutil.copy(ROOT / ".dvc" / "plots" / "gain_curve.json", root / ".dvc" / "plots")
    gain = root / "reports" / "plots" / "gain_classification.csv"
    gain.parent.mkdir(parents=True)
    gain.write_text(_gain_csv(0.5, 0.0))
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "half")
    gain.write_text(_gain_csv(1.0, 0.05))
    return root


def test_gain_curve_draws_one_line_per_arm_across_revisions(project: Path, tmp_path: Path) -> None:
    target = ["reports/plots/gain_classification.csv"]
    plots = collect(["HEAD"], target, GAIN_OPTIONS, tmp_path / "img", project)
    (render,) = plots[target[0]]
    spec = render["content"]
    points = {(r["rev"], r["arm"], float(r["fraction"])) for r in spec["data"]["values"]}
    for arm in GAINS:  # every arm of both revisions reaches the chart...
        assert {("HEAD", arm, 0.5), ("workspace", arm, 1.0)} <= points
    assert {"filter": "datum.arm != 'real'"} in spec["transform"]  # ...the reference is dropped
    line = next(layer for layer in spec["layer"] if layer["mark"].get("type") == "line")
    assert line["encoding"]["color"]["field"] == "arm"  # one coloured line per arm
    assert line["encoding"]["x"]["field"] == "fraction"
    assert line["encoding"]["y"]["field"] == "gain_vs_real"
    bars = next(layer for layer in spec["layer"] if "y2" in layer["encoding"])
    assert (bars["encoding"]["y"]["field"], bars["encoding"]["y2"]["field"]) == (
        "gain_low", "gain_high"
    )  # fmt: skip


def test_offline_page_has_every_chart_as_svg_and_no_script(project: Path) -> None:
    grid = project / "live" / "grid.png"
    grid.parent.mkdir()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(grid)
    out = project / "dvc_plots" / "offline.html"
    page, count = offline_plots(
        ["HEAD"], ["reports/plots/gain_classification.csv"], GAIN_OPTIONS, out, project
    )
    text = page.read_text()
    assert count == 1 and text.count("<svg") == 1
    assert "<script" not in text and 'src="http' not in text
    assert "real_synthetic" in text and "real_classic" in text  # the legend names the arms
    assert "HEAD, workspace" in text or "workspace, HEAD" in text
    # An image plot is embedded, not linked.
    page, count = offline_plots([], ["live/grid.png"], [], out, project)
    assert count == 1 and "data:image/png;base64," in page.read_text()


def test_plots_command_writes_the_page_and_names_a_missing_plot(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    ok = CliRunner().invoke(app, ["plots", "--target", "reports/plots/gain_classification.csv"])
    assert ok.exit_code == 0, ok.output
    assert re.search(r"1 plots -> dvc_plots/offline.html", ok.output)
    assert "<svg" in (project / "dvc_plots" / "offline.html").read_text()
    bad = CliRunner().invoke(app, ["plots", "--target", "reports/nothing.csv"])
    assert bad.exit_code == 1 and "error:" in bad.output and "nothing.csv" in bad.output
    with pytest.raises(PlotsError):
        collect([], ["reports/nothing.csv"], [], project / "img", project)
    json.loads((project / ".dvc" / "plots" / "gain_curve.json").read_text())  # valid JSON
