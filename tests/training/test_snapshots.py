"""Conditional consistency on known cases, and the model chosen by fidelity during training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from augment.contracts.model_dir import CONFIG_FILE, load_generator
from augment.training import consistency
from augment.training.snapshots import SnapshotJudge
from augment.training.stage import train
from tests.training.test_stage import make_store, tiny

S = 16


def _samples(lesion_for_class_1: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = np.arange(20) % 2
    masks = np.zeros((20, S, S), np.uint8)
    images = np.full((20, 1, S, S), -0.2, np.float32)
    for i in np.flatnonzero(classes == 1) if lesion_for_class_1 else []:
        masks[i, 4:10, 4:10] = 2
        images[i, 0, 4:10, 4:10] = 0.4
    return images, masks, classes


def test_a_generator_that_ignores_its_class_fails_consistency() -> None:
    images, masks, classes = _samples(lesion_for_class_1=False)
    found = consistency.measure(images, masks, classes, ["normal", "lesion"], [2], 20, 0.6)
    assert found.match == {"normal": 1.0, "lesion": 0.0}
    assert np.isnan(found.contrast)


def test_a_generator_that_follows_its_class_passes_with_real_like_contrast() -> None:
    images, masks, classes = _samples(lesion_for_class_1=True)
    found = consistency.measure(images, masks, classes, ["normal", "lesion"], [2], 20, 0.6)
    assert found.match == {"normal": 1.0, "lesion": 1.0}
    assert found.contrast == pytest.approx(0.6) and found.contrast_ratio == pytest.approx(1.0)
    small = masks.copy()
    small[:, 7:, :] = 0  # lesions of 3 x 6 = 18 px: below a 20 px rule
    assert consistency.measure(images, small, classes, ["n", "l"], [2], 20, 0.6).match["l"] == 0


def test_the_model_is_the_best_snapshot_when_fid_worsens(tmp_path: Path, monkeypatch) -> None:
    store = make_store(tmp_path / "store")
    meta = json.loads((store / "meta.json").read_text())
    meta["params"] = {"lesion_labels": [2], "min_lesion_pixels": 5}
    (store / "meta.json").write_text(json.dumps(meta))
    fids = iter([3.0, 1.0, 2.0])  # steps 2, 4, 6: the best is step 4
    real_score = SnapshotJudge.score

    def scripted(self, g, step):
        entry, _ = real_score(self, g, step)
        entry["fid"] = next(fids)
        better = entry["fid"] < self.best_fid
        if better:
            self.best_fid, self.best_step = entry["fid"], step
        return entry, better

    monkeypatch.setattr(SnapshotJudge, "score", scripted)
    out = tmp_path / "model"
    train(tiny(steps=6, fidelity_every=2, fidelity_samples=16, checkpoint_every=2), store, out)
    config = json.loads((out / CONFIG_FILE).read_text())
    record = config["fidelity"]
    assert record["best_step"] == 4 and config["steps"] == 4
    assert [h["step"] for h in record["curve"]] == [2, 4, 6]
    assert set(record["curve"][0]["consistency"]["match"]) == {"normal", "lesion"}
    for h in record["curve"]:  # the other fidelity measures of the curve, in their ranges
        assert np.isfinite(h["kid"]) and 0 <= h["precision"] <= 1 and 0 <= h["recall"] <= 1
    assert len({h["kid"] for h in record["curve"]}) == 3  # measured per snapshot
    load_generator(out)  # the rewritten model still checks out (checksum, spec)
    logged = (out / "live" / "plots" / "metrics" / "fidelity" / "fid.tsv").read_text()
    assert len(logged.strip().splitlines()) == 4  # header + three scores
    for name in ("kid", "precision", "recall"):
        tsv = out / "live" / "plots" / "metrics" / "fidelity" / f"{name}.tsv"
        assert len(tsv.read_text().strip().splitlines()) == 4


def _judge(min_match: float) -> SnapshotJudge:
    empty = np.zeros((1, 1))
    return SnapshotJudge(None, None, 8, 0, [2], 20, empty, 0.2, min_match=min_match)  # type: ignore[arg-type]


def _entry(step: int, fid: float, lesion: float) -> dict:
    return {"step": step, "fid": fid, "consistency": {"match": {"normal": 1.0, "lesion": lesion}}}


def test_a_consistency_floor_keeps_the_best_snapshot_that_meets_it() -> None:
    # FID falls while the lesion class loses its lesions: the floor keeps step 6, FID alone step 4
    curve = [_entry(2, 5.0, 0.98), _entry(4, 3.0, 0.50), _entry(6, 4.0, 0.95), _entry(8, 4.5, 0.99)]
    floor, plain = _judge(0.9), _judge(0.0)
    assert [floor.keep(e) for e in curve] == [True, False, True, False]
    assert (floor.best_step, floor.best_fid, floor.best_met_floor) == (6, 4.0, True)
    assert [plain.keep(e) for e in curve] == [True, True, False, False]
    assert plain.best_step == 4
    assert "mask agreement >= 0.9" in floor.record()["selected_by"]


def test_until_a_snapshot_meets_the_floor_the_lowest_fid_stands_in() -> None:
    judge = _judge(0.9)
    assert judge.keep(_entry(2, 5.0, 0.1)) and judge.keep(_entry(4, 3.0, 0.2))
    assert not judge.keep(_entry(6, 4.0, 0.3))
    assert judge.record()["met_floor"] is False and judge.best_step == 4
    assert judge.keep(_entry(8, 9.0, 0.95))  # the first that meets it wins over any FID
    assert judge.record()["met_floor"] is True and judge.best_step == 8
