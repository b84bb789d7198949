"""Two MR sequences end to end: preprocess, train, sample and evaluate keep both channels.

The lesion shows only in the second sequence (FLAIR), as edema does: a pipeline that dropped or
mixed up a channel would lose it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from augment.config import EvaluateConfig, PreprocessConfig, SampleConfig, TrainConfig
from augment.contracts.slice_store import SliceStore
from augment.errors import ConfigError
from augment.evaluation.stage import evaluate
from augment.preprocessing.privacy import ENV_VAR
from augment.preprocessing.stage import preprocess
from augment.sampling.read import load_synthetic
from augment.sampling.stage import sample
from augment.training.stage import train
from tests.preprocessing.badinputs import SPACING, phantom, write_nifti

N = 12  # patients


@pytest.fixture(scope="module")
def two_sequences(tmp_path_factory) -> Path:
    """nnU-Net raw: imagesTr/<case>_0000 (T1) and _0001 (FLAIR), labelsTr, dataset.json."""
    root = tmp_path_factory.mktemp("mr2")
    rng = np.random.default_rng(0)
    for i in range(N):
        image, mask = phantom((10, 32, 32), seed=i, lesion=i % 2 == 0)
        tissue = image > -500
        t1 = np.where(tissue, 500.0, 0.0) + np.abs(rng.normal(0, 10, image.shape))  # no lesion
        flair = np.where(tissue, 300.0, 0.0) + np.abs(rng.normal(0, 10, image.shape))
        flair[mask == 1] = 900.0  # the lesion, in FLAIR only
        case = f"MR-{i:03d}"
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", t1.astype(np.float32), SPACING)
        write_nifti(root / "imagesTr" / f"{case}_0001.nii.gz", flair.astype(np.float32), SPACING)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", mask, SPACING, dtype=np.uint8)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": N, "file_ending": ".nii.gz",
    }))  # fmt: skip
    return root


def test_both_sequences_go_through_every_stage(two_sequences, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "test-key")
    cfg = PreprocessConfig(size=32, min_lesion_pixels=4, min_body_fraction=0.05)
    meta = preprocess(cfg, [two_sequences], tmp_path / "slices")
    store = SliceStore.open(tmp_path / "slices")
    assert store.images.shape[1] == 2 and store.channels == ["T1", "FLAIR"]
    assert meta["modality"] == "MR" and len(meta["windows"]) == 2
    assert [w["kind"] for w in meta["windows"]] == ["percentile", "percentile"]
    # The lesion is bright in FLAIR and invisible in T1, pixel for pixel under the masks.
    lesion = store.masks[:, 0] > 0
    t1, flair = (np.asarray(store.images[:, c], np.float32) for c in (0, 1))
    tissue = (t1 > -0.5) & ~lesion
    assert flair[lesion].mean() > flair[tissue].mean() + 0.5
    assert abs(t1[lesion].mean() - t1[tissue].mean()) < 0.2

    tcfg = TrainConfig(nz=8, ngf=8, ndf=8, steps=4, batch_size=8, log_every=2, sample_every=4,
                       checkpoint_every=2, device="cpu", seed=0)  # fmt: skip
    train(tcfg, tmp_path / "slices", tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["channels"] == ["T1", "FLAIR"] and len(config["windows"]) == 2

    sample(SampleConfig(n=8, batch_size=4), tmp_path / "model", tmp_path / "syn")
    files = sorted(p.name for p in (tmp_path / "syn" / "imagesTr").iterdir())
    assert len(files) == 16 and sum(f.endswith("_0001.nii.gz") for f in files) == 8
    dataset = json.loads((tmp_path / "syn" / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert len(dataset["training"][0]["image"]) == 2  # MONAI reads the list as two channels
    syn = load_synthetic(tmp_path / "syn")
    assert syn.images.shape == (8, 2, 32, 32)

    merged = tmp_path / "merged"
    sample(SampleConfig(n=8, batch_size=4), tmp_path / "model", merged, two_sequences)
    assert (merged / "imagesTr" / "MR-000_0001.nii.gz").is_file()  # the real FLAIR, linked
    assert json.loads((merged / "dataset.json").read_text())["numTraining"] == N + 8

    sample(SampleConfig(n=8, batch_size=4, format="npz"), tmp_path / "model", tmp_path / "npz")
    npz = load_synthetic(tmp_path / "npz")
    np.testing.assert_allclose(npz.images, syn.images, atol=1e-5)  # the same samples
    with pytest.raises(ConfigError, match="png holds 1 image channel.*makes 2; use nnunet, npz"):
        sample(SampleConfig(n=8, format="png"), tmp_path / "model", tmp_path / "png")

    ecfg = EvaluateConfig(seeds=1, steps=6, seg_steps=4, unet_width=4, bootstrap=100,
                          batch_size=8, seg_batch_size=8, memorisation_threshold=1.0,
                          device="cpu", workers=1)  # fmt: skip
    result = evaluate(ecfg, tmp_path / "slices", tmp_path / "model", tmp_path / "syn",
                      tmp_path / "reports")  # fmt: skip
    assert set(result["tasks"]) == {"classification", "segmentation"}
    assert (tmp_path / "reports" / "report.html").is_file()
