"""``augment sample`` refuses model directories that would write wrong data, and says why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from augment.contracts.model_dir import load_generator
from augment.errors import StoreError
from augment.nets.dcgan import DCGANSpec
from augment.sampling.stage import sample
from tests.sampling.test_stage import CLASSES, LABELS, _cfg, _model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    spec = DCGANSpec(image_size=32, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)
    return _model(tmp_path / "dcgan", spec, class_names=CLASSES, label_names=LABELS)


def _edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("spec_"):
            config["spec"][key[5:]] = value
        else:
            config[key] = value
    (model / "config.json").write_text(json.dumps(config))


def _rewrite_weights(model: Path, change) -> None:
    path = model / "generator.safetensors"
    state = {k: v.clone() for k, v in load_file(str(path)).items()}
    change(state)
    save_file(state, str(path))


def test_weights_changed_after_training_are_refused(model: Path, tmp_path: Path) -> None:
    _rewrite_weights(model, lambda s: [v.zero_() for v in s.values() if v.is_floating_point()])
    with pytest.raises(StoreError, match="changed after training"):
        sample(_cfg(), model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_refused_even_with_a_matching_checksum(model: Path, tmp_path) -> None:
    from augment.contracts.model_dir import sha256_file

    _rewrite_weights(model, lambda s: next(v for v in s.values() if v.is_floating_point()).fill_(
        float("nan")))  # fmt: skip
    _edit_config(model, generator_sha256=sha256_file(model / "generator.safetensors"))
    with pytest.raises(StoreError, match="finite weights"):
        load_generator(model)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"spec_nz": 100_000}, "spec.nz"),
        ({"spec_ngf": 10**6}, "spec.ngf"),
        ({"spacing": [0, -1]}, "positive finite spacing"),
        ({"spacing": "wide"}, "spacing"),
        ({"window": {"kind": "abdomen", "low": float("nan"), "high": 240.0}}, "finite low"),
    ],
)
def test_damaged_config_is_refused_before_anything_is_written(
    model: Path, tmp_path: Path, changes: dict, needle: str
) -> None:
    _edit_config(model, **changes)
    with pytest.raises(StoreError, match=needle):
        sample(_cfg(), model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_finite_output_is_refused_and_nothing_is_left(model: Path, tmp_path, monkeypatch):
    import augment.sampling.writer as writer

    real = writer.generate

    def poisoned(*args, **kwargs):
        images, masks = real(*args, **kwargs)
        images[0, 0, 0] = float("inf")
        return images, masks

    monkeypatch.setattr(writer, "generate", poisoned)
    with pytest.raises(StoreError, match="non-finite pixels"):
        sample(_cfg(), model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*out*"))


def test_a_copied_model_directory_still_loads(model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    generator, info = load_generator(copy)
    assert info.class_names == CLASSES and not any(
        torch.isnan(p).any() for p in generator.parameters()
    )


def test_sample_reports_how_often_masks_agree_with_their_class(model: Path, tmp_path) -> None:
    from augment.contracts.synthetic_set import META
    from augment.sampling.stage import summary_table

    # A lesion rule nothing random can meet: no lesion-class sample agrees, every one is counted.
    _edit_config(model, lesion_rule={"lesion_ids": [1], "min_lesion_pixels": 10**6})
    from augment.contracts.model_dir import sha256_file

    _edit_config(model, generator_sha256=sha256_file(model / "generator.safetensors"))
    summary = sample(_cfg(), model, tmp_path / "out")
    assert summary["mask_agrees_with_class"]["lesion"] == 0.0
    meta = json.loads((tmp_path / "out" / META).read_text())
    assert meta["mask_agrees_with_class"] == summary["mask_agrees_with_class"]
    assert "disagree with their class" in str(summary_table(summary).caption)
