"""The command line, in process: help, version, and one-line errors without tracebacks."""

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from augment import __version__
from augment.cli import app

runner = CliRunner()
STAGES = ["phantoms", "preprocess", "train", "sample", "evaluate"]


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_help_shows_an_example(stage):
    result = runner.invoke(app, [stage, "--help"])
    assert result.exit_code == 0
    assert f"Example: augment {stage}" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_bad_param_is_one_line_naming_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  steps: -3\n")
    result = runner.invoke(app, ["train", "--params", str(params), "--data", str(tmp_path)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "train.steps" in lines[0] and "Traceback" not in result.output


def test_option_out_of_range_is_refused(tmp_path):
    result = runner.invoke(
        app, ["phantoms", "--patients", "1", "--out", str(tmp_path / "x"), "--params", os.devnull]
    )
    assert result.exit_code == 1
    assert "phantoms.patients" in result.output
    assert not (tmp_path / "x").exists()


def test_a_params_file_named_but_missing_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--params", str(tmp_path / "pramas.yaml")])
    assert result.exit_code == 1
    assert "pramas.yaml: no such file" in result.output


def test_short_help_and_registry_help_and_boolean_pairs():
    result = CliRunner().invoke(app, ["train", "-h"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--no-resume" in text
    from augment.training.losses import LOSSES

    for name in LOSSES.names():  # the help lists what the registry holds
        assert name in text
    assert CliRunner().invoke(app, ["train", "--resume", "--no-resume", "-h"]).exit_code == 0


def _dev_full_tofile() -> None:
    np.zeros(100_000).tofile("/dev/full")  # numpy's short write: no errno, only a message


def _dev_full_write() -> None:
    with open("/dev/full", "wb") as f:
        np.save(f, np.zeros(100_000))  # ENOSPC


def _read_only() -> None:
    raise OSError(errno.EROFS, "Read-only file system", "data/slices")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (_dev_full_tofile, "output: no space left on the device"),
        (_dev_full_write, "no space left on the device"),
        (_read_only, "data/slices: read-only file system"),
    ],
)
def test_full_disk_and_read_only_output_are_one_clear_line(monkeypatch, tmp_path, fault, says):
    import augment.phantoms.stage as stage

    monkeypatch.setattr(stage, "make_phantoms", lambda *a, **k: fault())
    result = runner.invoke(app, ["phantoms", "--out", str(tmp_path / "o"), "--params", os.devnull])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: ") and says in line


@pytest.mark.parametrize(
    "stage", ["phantoms", "preprocess", "check", "train", "sample", "evaluate"]
)
def test_every_setting_shows_its_params_key_and_default(stage):
    from augment.cli import SECTIONS

    section, model = SECTIONS[stage]
    result = CliRunner().invoke(app, [stage, "-h"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    shown = re.findall(rf"\(params\.yaml: {section}\.(\w+); default: ([^)]*)\)", text)
    assert len(shown) >= 4, text
    for key, default in shown:
        expected = model.model_fields[key].get_default(call_default_factory=True)
        assert default.strip() == ("none" if expected is None else str(expected)), key
    assert f"Settings (params.yaml section {section})" in text
    assert "Paths and run" in text or stage == "phantoms"


def test_window_and_lesion_labels_options_reach_the_config(monkeypatch, tmp_path):
    import augment.preprocessing.stage as stage

    seen = {}

    def fake(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(stage, "preprocess", fake)
    args = ["preprocess", "-i", str(tmp_path), "--window", "lung", "--lesion-labels", "2",
            "--lesion-labels", "3", "--params", os.devnull]  # fmt: skip
    CliRunner().invoke(app, args)
    assert seen["cfg"].window == "lung" and seen["cfg"].lesion_labels == [2, 3]
    bad = CliRunner().invoke(app, ["preprocess", "-i", str(tmp_path), "--window", "liver"])
    assert bad.exit_code == 1
    assert "--window (preprocess.window)" in bad.output and "liver" in bad.output
