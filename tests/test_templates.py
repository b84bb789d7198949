"""The pipeline templates are DVC projects of their own: unrun, they warn nowhere.

A template's dvc.yaml declares metrics and plots that exist only once it has run; inside the
repository's DVC project they made every ``dvc metrics show`` and ``dvc plots show`` of the demo
say "DVC failed to load some metrics". As subrepos (``dvc init --subdir``) they stay out of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(p.parent.name for p in (REPO / "pipelines").glob("*/dvc.yaml"))


def _dvc(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_every_template_is_a_dvc_subrepo():
    assert TEMPLATES == ["ct-dicom", "msd-nifti"]
    for name in TEMPLATES:
        assert (REPO / "pipelines" / name / ".dvc" / "config").is_file(), name


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    return root


def test_unrun_templates_do_not_warn_in_the_repositorys_dvc(project: Path):
    for command in (["metrics", "show"], ["plots", "show", "--json"], ["status"]):
        output = _dvc(project, *command)
        assert "failed to load" not in output.lower(), (command, output)
        assert "pipelines/" not in output, (command, output)


def test_a_template_is_run_from_its_own_folder(project: Path):
    for name in TEMPLATES:
        status = _dvc(project / "pipelines" / name, "status")
        assert "preprocess" in status, status  # its own stages, not the repository's
