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
    load_generator(out)  # the rewritten model still checks out (checksum, spec)
    logged = (out / "live" / "plots" / "metrics" / "fidelity" / "fid.tsv").read_text()
    assert len(logged.strip().splitlines()) == 4  # header + three scores
