"""The whole pipeline end to end through DVC, on tiny phantoms, in a temporary git + DVC copy.

Checks each stage's output against its contract, that a second ``dvc repro`` with nothing
changed runs no stage, and that a changed parameter reruns only the stages downstream of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from augment.contracts.model_dir import load_generator
from augment.contracts.slice_store import SliceStore
from augment.sampling.read import load_synthetic

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGES = ["phantoms", "preprocess", "train", "sample", "evaluate"]
TINY = {
    "phantoms": {"patients": 10, "size": 48, "slices": 10},
    "preprocess": {"size": 32, "workers": 1},
    "train": {"steps": 30, "ngf": 16, "ndf": 16, "batch_size": 16, "log_every": 5,
              "sample_every": 15, "checkpoint_every": 15},
    # accept: all: 30 steps draw no lesion masks, and the demo's "consistent" filter would stop
    # the stage (as it should; tests/sampling/test_accept.py covers that path).
    "sample": {"n": 40, "batch_size": 20, "accept": "all"},
    "evaluate": {"seeds": 2, "steps": 20, "seg_steps": 10, "unet_width": 4, "bootstrap": 200},
}  # fmt: skip


def _sh(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def _ran(output: str) -> list[str]:
    # Stages of a dvc.yaml in a sub-folder are named 'folder/dvc.yaml:stage'.
    ran = re.findall(r"Running stage '(?:[^']*:)?([\w-]+)'", output)
    return [s for s in STAGES if s in ran]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "augment", root / "augment", ignore=skip)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(root, "git", "init", "-q")
    _sh(root, "dvc", "init", "-q")
    _sh(root, "dvc", "config", "core.analytics", "false")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    output = _sh(root, "dvc", "repro")
    assert _ran(output) == STAGES
    return root


def test_every_output_meets_its_contract(project):
    store = SliceStore.open(project / "data/slices")
    assert store.images.shape[1:] == (1, 32, 32)
    assert store.masks is not None and store.masks.shape == store.images.shape
    for split in ("train", "val", "test"):
        assert store.patients(split), f"no {split} patients"
    patients = {s: set(store.patients(s)) for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])

    generator, info = load_generator(project / "models/dcgan")
    assert info.spec.image_size == 32
    assert set(info.config["train_patients"]) <= patients["train"]

    synthetic = load_synthetic(project / "data/synthetic")
    assert synthetic.images.shape == (40, 1, 32, 32)
    assert np.isfinite(synthetic.images).all()
    assert (project / "data/synthetic/dataset.json").is_file()

    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics, "metrics.json is empty"
    assert (project / "reports/report.html").stat().st_size > 10_000


def test_metrics_and_plots_commands_work(project):
    assert "reports/metrics.json" in _sh(project, "dvc", "metrics", "show")
    out = _sh(project, "dvc", "plots", "show", "-o", str(project / "plots_html"))
    assert (project / "plots_html" / "index.html").is_file(), out


def test_nothing_changed_reruns_nothing(project):
    assert "up to date" in _sh(project, "dvc", "status")
    assert _ran(_sh(project, "dvc", "repro")) == []


def test_changed_parameter_reruns_only_downstream(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"]["n"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_sh(project, "dvc", "repro")) == ["sample", "evaluate"]
    assert load_synthetic(project / "data/synthetic").images.shape[0] == 30


def test_parameter_sweep_with_dvc_experiments(project):
    # The documented learning-curve / ratio / loss sweeps are dvc experiments with -S.
    sets = ["train.fraction=0.5", "train.loss=hinge", "evaluate.synthetic_ratio=2"]
    output = _sh(project, "dvc", "exp", "run", *[a for s in sets for a in ("-S", s)])
    assert _ran(output) == ["train", "sample", "evaluate"]
    names = _sh(project, "dvc", "exp", "ls", "--name-only").split()
    assert len(names) == 1
    table = json.loads(_sh(project, "dvc", "exp", "show", "--json"))
    exps = [e for row in table for e in (row.get("experiments") or [])]
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["fraction"] == 0.5
    assert data["metrics"]["reports/metrics.json"]["data"]
    out = project / "curve"
    target = "reports/plots/gain_classification.csv"
    _sh(project, "dvc", "plots", "diff", *names, "--targets", target,
        "-x", "fraction", "-y", "gain_vs_real", "-o", str(out))  # fmt: skip
    assert (out / "index.html").is_file()


@pytest.mark.parametrize(
    ("template", "layout"), [("ct-dicom", "dicom"), ("msd-nifti", "nifti")]
)  # fmt: skip
def test_pipeline_template_runs_on_phantoms_in_its_layout(tmp_path, template, layout):
    # As the README walks a new user through it: export phantoms, point the template at them.
    root = tmp_path / "project"
    shutil.copytree(REPO / "pipelines" / template, root / template)
    params_file = root / template / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for section in ("preprocess", "train", "sample", "evaluate"):
        params[section].update(TINY[section])
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    raw = root / template / "data" / "raw"
    tiny = [f"--{k}={v}" for k, v in TINY["phantoms"].items()]
    _sh(root, "git", "init", "-q")
    _sh(root, "dvc", "init", "-q")
    _sh(root, "augment", "phantoms", "--out", str(raw), *tiny)  # no params.yaml here: defaults
    assert (raw / layout).is_dir()
    output = _sh(root / template, "dvc", "repro")  # the template is a DVC subrepo
    assert _ran(output) == ["preprocess", "train", "sample", "evaluate"]
    metrics = json.loads((root / template / "reports" / "metrics.json").read_text())
    assert metrics
    assert load_synthetic(root / template / "data" / "synthetic").images.shape[0] == 40
