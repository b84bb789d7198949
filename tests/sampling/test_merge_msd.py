"""``--merge-with-real`` on a Decathlon (MSD) layout: the phantoms' own export and a 4D set."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from augment.config import PhantomsConfig
from augment.errors import InputError
from augment.nets.dcgan import DCGANSpec
from augment.phantoms.stage import make_phantoms
from augment.sampling.merge import MSD, read_real_set
from augment.sampling.stage import sample
from tests.sampling.test_stage import LABELS, _cfg, _model, check_nnunet_dataset


def conditional_model(root: Path) -> Path:
    """A tiny two-class model directory whose labels match the phantoms' (background, lesion)."""
    spec = DCGANSpec(image_size=32, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)
    return _model(root, spec, class_names=["normal", "lesion"], label_names=LABELS)


def decathlon_export(root: Path, slices: int) -> Path:
    """Six phantom patients in the Decathlon layout, as `augment phantoms` exports them."""
    make_phantoms(PhantomsConfig(patients=6, size=32, slices=slices, formats=["nifti"],
                                 workers=1), root)  # fmt: skip
    return root / "nifti"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return conditional_model(tmp_path_factory.mktemp("model") / "dcgan")


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory) -> Path:
    return decathlon_export(tmp_path_factory.mktemp("ph") / "phantoms", slices=4)


def test_merge_takes_the_phantoms_decathlon_export(tmp_path, model_dir, decathlon):
    out = tmp_path / "merged"
    summary = sample(_cfg(n=5), model_dir, out, merge_with_real=decathlon)
    assert summary["real_cases"] == 6
    ds = check_nnunet_dataset(out)  # every nnU-Net v2 raw rule
    assert ds["numTraining"] == 11 and ds["labels"] == LABELS
    assert ds["channel_names"] == {"0": "CT"} and ds["converted_from"] == MSD
    assert "modality" not in ds and "test" not in ds
    real = json.loads((decathlon / "dataset.json").read_text())
    for entry in real["training"]:
        src = decathlon / entry["image"]
        case = src.name[: -len(".nii.gz")]
        assert (out / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == src.read_bytes()
        label = decathlon / entry["label"]
        assert (out / "labelsTr" / label.name).read_bytes() == label.read_bytes()
    folds = json.loads((out / "splits_final.json").read_text())
    syn = {f"syn_{i:06d}" for i in range(5)}
    assert all(not syn & set(f["val"]) for f in folds)


def _msd_4d(root: Path, n: int = 5, channels: int = 2) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    affine = np.diag([1.2, 1.2, 4.0, 1.0])
    for i in range(n):
        image = rng.normal(0, 50, (16, 16, 3, channels)).astype(np.float32)
        label = (rng.random((16, 16, 3)) > 0.7).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"brain_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"brain_{i:03d}.nii.gz")
    dataset = {
        "name": "BrainMR",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": n,
        "training": [
            {
                "image": f"./imagesTr/brain_{i:03d}.nii.gz",
                "label": f"./labelsTr/brain_{i:03d}.nii.gz",
            }
            for i in range(n)
        ],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def test_merge_splits_a_4d_decathlon_image_into_one_file_per_channel(tmp_path):
    spec = DCGANSpec(image_size=32, channels=2, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)
    windows = [{"kind": "percentile", "low": -100.0, "high": 100.0}] * 2
    model = _model(tmp_path / "model", spec, class_names=["normal", "lesion"], label_names=LABELS,
                   windows=windows, channels=["FLAIR", "T1w"])  # fmt: skip
    real = _msd_4d(tmp_path / "real")
    out = tmp_path / "merged"
    sample(_cfg(n=3), model, out, merge_with_real=real)
    ds = check_nnunet_dataset(out)
    assert ds["channel_names"] == {"0": "FLAIR", "1": "T1w"} and ds["numTraining"] == 8
    src = nib.load(real / "imagesTr" / "brain_002.nii.gz")
    for c in range(2):
        part = nib.load(out / "imagesTr" / f"brain_002_{c:04d}.nii.gz")
        assert part.shape == (16, 16, 3)
        assert np.array_equal(np.asanyarray(part.dataobj), np.asanyarray(src.dataobj)[..., c])
        assert np.allclose(part.affine, src.affine)


def test_a_decathlon_set_that_is_not_whole_is_named(tmp_path):
    real = _msd_4d(tmp_path / "real")
    (real / "labelsTr" / "brain_003.nii.gz").unlink()
    with pytest.raises(InputError, match=r"brain_003\.nii\.gz: listed in dataset\.json"):
        read_real_set(real)
    real = _msd_4d(tmp_path / "three", channels=3)  # modality names two channels
    with pytest.raises(InputError, match=r"4D with 2 channels.*\(16, 16, 3, 3\)"):
        read_real_set(real)
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "dataset.json").write_text(json.dumps({"labels": {}}))
    with pytest.raises(InputError, match="Decathlon"):
        read_real_set(tmp_path / "neither")
