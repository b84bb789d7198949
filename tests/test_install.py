"""A built wheel gives a working ``augment`` without make or the source tree.

Builds the wheel from this checkout, installs it (no dependencies: they are this environment's)
into a folder of its own, and runs the commands a new user would from another directory: the
stages end to end on tiny phantoms, with the wheel's copy of the package, not the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def test_wheel_installs_a_working_augment(tmp_path: Path) -> None:
    env = dict(os.environ)
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = tmp_path / "source"  # a copy: setuptools leaves build/ beside what it builds
    shutil.copytree(REPO / "augment", source / "augment",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
         work, env)  # fmt: skip
    (wheel,) = dist.glob("augment-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("augment/**/__init__.py")}
    assert packages <= {n.rsplit("/", 1)[0] for n in names}, "a subpackage is missing"
    assert not [n for n in names if n.startswith("tests/")], "tests shipped in the wheel"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], work, env)

    env["PYTHONPATH"] = str(site)  # before the checkout's editable install
    py = [sys.executable, "-m", "augment"]
    where = _run([sys.executable, "-c", "import augment; print(augment.__file__)"], work, env)
    assert where.strip().startswith(str(site)), where
    none = ["--params", os.devnull]
    _run([*py, "phantoms", "--out", "ph", "--patients", "6", "--size", "32", "--slices", "6",
          *none], work, env)  # fmt: skip
    env["AUGMENT_PSEUDONYM_KEY"] = "wheel-test"
    _run([*py, "preprocess", "-i", "ph/nifti", "--out", "slices", "--size", "32", *none], work, env)
    _run([*py, "train", "--data", "slices", "--out", "model", "--dry-run", "--device", "cpu",
          *none], work, env)  # fmt: skip
    _run([*py, "sample", "--model", "model", "--out", "syn", "--n", "6", "--format", "npz",
          "--device", "cpu", *none], work, env)  # fmt: skip
    assert (work / "syn" / "samples.npz").is_file()
    assert "augment" in _run([*py, "--version"], work, env)
