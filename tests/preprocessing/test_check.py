"""``augment check``: preprocess's report without its store, and the training-time estimate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from augment.cli import app
from augment.config import PreprocessConfig, TrainConfig
from augment.contracts.slice_store import SliceStore
from augment.preprocessing.check import NothingToStore, check
from augment.preprocessing.privacy import ENV_VAR
from augment.preprocessing.stage import preprocess
from augment.training.data import load_train_data
from augment.training.stage import _spec
from tests.preprocessing.badinputs import (
    make_nifti_corpus,
    write_demo,
)

N_PATIENTS = 6
TINY_TRAIN = {"ngf": 8, "ndf": 8, "nz": 16, "batch_size": 4, "steps": 40, "threads": 1,
              "device": "cpu"}  # fmt: skip


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "test-key")


def _cfg(**kw) -> PreprocessConfig:
    return PreprocessConfig(**{"size": 32, "min_body_fraction": 0.0, **kw})


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The same patients as a DICOM tree and a Decathlon NIfTI set, with labels.csv."""
    return write_demo(tmp_path_factory.mktemp("demo"), N_PATIENTS)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _json(value: object) -> object:
    return json.loads(json.dumps(value))


def _invoke(*args: str):
    return CliRunner().invoke(app, ["check", *args], env={"COLUMNS": "300"})


@pytest.mark.parametrize(
    ("layout", "kw"),
    [("nifti", {"min_lesion_pixels": 5}), ("dicom", {"labels_from": "csv"})],
)
def test_check_reports_the_meta_json_preprocess_then_writes(demo, tmp_path, layout, kw):
    labels = demo / "labels.csv" if layout == "dicom" else None
    report = check(_cfg(**kw), [demo / layout], labels_csv=labels)
    meta = preprocess(_cfg(**kw), [demo / layout], tmp_path / "out", labels_csv=labels)
    assert meta["n_slices"] > 0 and set(meta["counts"]["slices"]) == {"train", "val", "test"}
    assert _json({k: report[k] for k in meta}) == _json(meta)  # counts, splits, channels...
    store = SliceStore.open(tmp_path / "out")
    assert report["splits"] == {r["patient"]: r["split"] for r in store.rows}
    assert report["patients"] == N_PATIENTS
    assert report["training"] is None


def test_bad_files_are_listed_with_their_reasons_as_preprocess_records_them(tmp_path):
    expected = make_nifti_corpus(tmp_path / "in")
    report = check(_cfg(strict=True), [tmp_path / "in"])  # strict: reported, not obeyed
    meta = preprocess(_cfg(), [tmp_path / "in"], tmp_path / "out")
    assert report["skipped"] == meta["skipped"] and report["volumes_read"] == 2
    assert report["strict"] is True and report["files_skipped"] == 2 * len(expected)
    result = _invoke(str(tmp_path / "in"), "--no-estimate", "--size", "32", "--params", os.devnull)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for entry in meta["skipped"]:  # one line per file: its token and its reason
        assert any(entry["input"] in line and entry["reason"][:40] in line for line in lines)
    assert "in/" not in result.output and "_0000" not in result.output  # tokens, not paths


def test_check_writes_nothing_not_even_a_key(demo, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    params = work / "params.yaml"
    params.write_text(json.dumps({"preprocess": {"size": 32, "min_body_fraction": 0.0,
                                                 "workers": 2}, "train": TINY_TRAIN}))  # fmt: skip
    monkeypatch.chdir(work)
    monkeypatch.delenv(ENV_VAR)  # preprocess would create .augment/pseudonym.key here
    before, inputs = _files(tmp_path), _files(demo)
    result = _invoke(str(demo / "nifti"), "--params", str(params))
    assert result.exit_code == 0, result.output
    assert "temporary key" in result.output and "estimated seconds" in result.output
    assert _files(tmp_path) == before and _files(demo) == inputs
    assert not (work / ".augment").exists() and not (work / "data").exists()


def test_nothing_readable_lists_every_file_then_fails_in_one_line(demo, tmp_path):
    # labels_from mask on DICOM (no masks): every file is skipped, as preprocess would.
    out = tmp_path / "report.json"
    before = _files(tmp_path)
    with pytest.raises(NothingToStore, match="expected readable volumes") as err:
        check(_cfg(), [demo / "dicom"], json_out=out)
    n_files = sum(1 for p in (demo / "dicom").rglob("*") if p.is_file())
    assert len(err.value.report["skipped"]) == n_files
    assert json.loads(out.read_text())["skipped"] == err.value.report["skipped"]
    out.unlink()
    assert _files(tmp_path) == before  # no skipped record beside a store, unlike preprocess
    result = _invoke("-i", str(demo / "dicom"), "--size", "32", "--params", os.devnull)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0]
    assert all(s["input"] in result.output for s in err.value.report["skipped"])
    assert "PHANTOM" not in result.output and "Doe" not in result.output
    assert _invoke("--params", os.devnull).exit_code == 1  # no input at all


def test_training_estimate_times_the_network_train_builds(demo, tmp_path):
    train_cfg = TrainConfig(**TINY_TRAIN)
    cfg = _cfg(min_lesion_pixels=5)
    out = tmp_path / "report.json"
    report = check(cfg, [demo / "nifti"], train_cfg=train_cfg, json_out=out)
    est = report["training"]
    assert est["seconds"] > 0 and est["steps_per_s"] > 0 and est["timed_steps"] >= 5
    assert est["seconds"] == pytest.approx(train_cfg.steps / est["steps_per_s"])
    assert json.loads(out.read_text())["training"] == _json(est)
    preprocess(cfg, [demo / "nifti"], tmp_path / "store")
    store = SliceStore.open(tmp_path / "store")
    data, info = load_train_data(store, train_cfg)
    assert est["spec"] == _spec(train_cfg, store, data, info).to_dict()  # masks, classes, size
    wider = train_cfg.model_copy(update={"ngf": 64, "ndf": 64, "batch_size": 16})
    slower = check(cfg, [demo / "nifti"], train_cfg=wider)["training"]
    assert slower["seconds"] > 3 * est["seconds"]  # a measure: ~10x the time on 1 thread
    assert est["timed_steps"] <= 64 and slower["timed_steps"] >= 5


def test_training_estimate_of_progressive_growing_times_full_resolution(monkeypatch):
    from augment.preprocessing.check import estimate_training
    from augment.training.step import Trainer

    seen = []
    real_step = Trainer.step

    def spy(self, next_batch):
        seen.append(self.level())
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", spy)
    cfg = TrainConfig(**{**TINY_TRAIN, "grow_from": 8, "grow_steps": 10, "steps": 100})
    est = estimate_training(cfg, 32, 1, 2, 3)
    assert seen and set(seen) == {(32, 1.0)}  # never the cheaper 8 or 16 px phases
    assert est["spec"]["progressive"] == 8
