"""A killed ``dvc repro`` resumes training where it stopped (``train --state-dir``, persisted).

DVC deletes a stage's outputs before running it again, so the model directory's checkpoint
cannot help; the demo's train stage keeps its unfinished run in ``models/.train_state``, a
persisted output. This kills a real ``dvc repro`` (SIGKILL to its process group, as a power cut
or an out-of-memory kill would) during training and reruns it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from augment.contracts.model_dir import CHECKPOINT_FILE, read_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "phantoms": {"patients": 8, "size": 48, "slices": 8},
    "preprocess": {"size": 32, "workers": 1},
    "train": {"steps": 400, "ngf": 8, "ndf": 8, "nz": 16, "batch_size": 8, "log_every": 10,
              "sample_every": 200, "checkpoint_every": 10, "fidelity_every": 0, "threads": 1},
}  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _sh(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _checkpoint_step(state: Path) -> int:
    steps = [0]
    for path in state.glob(f"*/{CHECKPOINT_FILE}"):
        try:
            steps.append(int(torch.load(path, map_location="cpu", weights_only=True)["step"]))
        except Exception:  # noqa: BLE001 - a checkpoint being replaced right now; look again
            continue
    return max(steps)


def test_killed_dvc_repro_resumes_training(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(
        REPO / "augment", root / "augment", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (("git", "init", "-q"), ("dvc", "init", "-q"),
                 ("dvc", "config", "core.analytics", "false"), ("git", "add", "-A"),
                 ("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"),
                 ("dvc", "repro", "preprocess")):  # fmt: skip
        _sh(root, *args)

    state = root / "models" / ".train_state"
    proc = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=root, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while _checkpoint_step(state) < 30:
        assert proc.poll() is None, "dvc repro ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint in the state folder within 300 s"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(state)
    assert 30 <= killed_at < 400
    assert not (root / "models" / "dcgan" / CHECKPOINT_FILE).exists()

    output = _sh(root, "dvc", "repro", "train")
    found = re.search(r"resuming the interrupted run in \S+ from step (\d+)", output)
    assert found, output
    assert int(found.group(1)) >= killed_at
    config = read_config(root / "models" / "dcgan")
    assert config["steps"] == 400
    assert [p.name for p in state.iterdir()] == ["README.txt"]  # the finished run is cleared
    assert "up to date" in _sh(root, "dvc", "status", "train")  # dvc.lock took the run
