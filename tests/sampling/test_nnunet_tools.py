"""nnU-Net v2's own tools on what ``augment`` writes: the checks users run before training.

- ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` on a synthetic set written with
  ``--nnunet-raw`` and on one merged with the phantoms' Decathlon export (``--merge-with-real``);
  the planner must copy our ``splits_final.json`` (synthetic cases never in validation).
- ``nnUNetv2_convert_MSD_dataset`` on the phantoms' Decathlon export (it asserts ``imagesTs/``).

Slow (nnU-Net plans and preprocesses for real). nnU-Net runs from its own environment, as users
keep it: ``make test-slow`` makes ``.venv-nnunet`` and names its ``bin`` in ``AUGMENT_NNUNET_BIN``
(else the test looks beside this Python). In CI a missing nnU-Net is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from augment.cli import app
from tests.sampling.test_merge_msd import conditional_model, decathlon_export

pytestmark = pytest.mark.slow

BIN = Path(os.environ.get("AUGMENT_NNUNET_BIN") or Path(sys.executable).parent)


@pytest.fixture(autouse=True, scope="module")
def _nnunet_installed() -> None:
    """At run time, not import time: `make test` collects this module and deselects it."""
    if (BIN / "nnUNetv2_plan_and_preprocess").is_file():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{BIN}: no nnUNetv2_plan_and_preprocess; run `make setup-nnunet`")
    pytest.skip(f"nnU-Net v2 not found in {BIN} (make setup-nnunet)")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: root / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        d.mkdir()
    return dict(os.environ, **{k: str(v) for k, v in dirs.items()}, nnUNet_n_proc_DA="1")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return conditional_model(tmp_path_factory.mktemp("model") / "dcgan")


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory) -> Path:
    return decathlon_export(tmp_path_factory.mktemp("ph") / "phantoms", slices=6)


def _nnunet(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _sample(env: dict[str, str], model: Path, dataset_id: int, *more: str) -> Path:
    raw = env["nnUNet_raw"]
    args = ["sample", "--model", str(model), "--n", "24", "--device", "cpu", "--nnunet-raw", raw,
            "--dataset-id", str(dataset_id), "--dataset-name", "Syn", "--params", os.devnull,
            *more]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return Path(raw) / f"Dataset{dataset_id:03d}_Syn"


def _plan(env: dict[str, str], dataset_id: int) -> Path:
    _nnunet(env, "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d",
                  "--verify_dataset_integrity", "-np", "1", "-npfp", "1")  # fmt: skip
    (folder,) = Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id:03d}_*")
    assert (folder / "nnUNetPlans.json").is_file()
    assert list((folder / "nnUNetPlans_2d").glob("*")), "nothing preprocessed"
    return folder


def test_nnunet_verifies_and_preprocesses_a_synthetic_set(env, model):
    raw = _sample(env, model, 501)
    _plan(env, 501)
    assert json.loads((raw / "dataset.json").read_text())["numTraining"] == 24


def test_nnunet_takes_a_merged_set_and_its_folds(env, model, decathlon):
    raw = _sample(env, model, 502, "--merge-with-real", str(decathlon))
    preprocessed = _plan(env, 502)
    ours = json.loads((raw / "splits_final.json").read_text())
    assert json.loads((preprocessed / "splits_final.json").read_text()) == ours
    synthetic = {f"syn_{i:06d}" for i in range(24)}
    assert all(not synthetic & set(fold["val"]) for fold in ours)
    assert all(synthetic <= set(fold["train"]) for fold in ours)


def test_nnunet_converts_the_phantoms_decathlon_export(env, decathlon, tmp_path):
    task = tmp_path / "Task09_Phantoms"  # the converter takes the id and name from the folder
    shutil.copytree(decathlon, task)
    _nnunet(env, "nnUNetv2_convert_MSD_dataset", "-i", str(task), "-overwrite_id", "503",
            "-np", "1")  # fmt: skip
    converted = Path(env["nnUNet_raw"]) / "Dataset503_Phantoms"
    assert len(list((converted / "imagesTr").glob("*_0000.nii.gz"))) == 6
    assert len(list((converted / "labelsTr").glob("*.nii.gz"))) == 6
