"""Tests of the demo data generator (augment/phantoms/) on tiny phantoms."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from augment.cli import app
from augment.config import PhantomsConfig
from augment.phantoms import stage as phantom_stage
from augment.phantoms.generate import generate_phantom, lesion_patients
from augment.phantoms.stage import make_phantoms
from augment.phantoms.tissue import Tissue

SMALL = {"patients": 4, "size": 48, "slices": 8}


def _cfg(**kw) -> PhantomsConfig:
    return PhantomsConfig(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[PhantomsConfig, Path]:
    """One small data set written once for the read-back tests."""
    cfg = _cfg(seed=3)
    out = tmp_path_factory.mktemp("phantoms") / "out"
    make_phantoms(cfg, out)
    return cfg, out


def _series(out: Path) -> dict[str, list[pydicom.Dataset]]:
    """PatientID -> the series' datasets, sorted by position along the slice normal."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in (out / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        series.setdefault(str(ds.PatientID), []).append(ds)
    for items in series.values():
        items.sort(key=_along_normal)
    return series


def _along_normal(ds: pydicom.Dataset) -> float:
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float)))


def _hu(items: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in items]
    )  # (Z, Y, X)


def _index(patient: str) -> int:
    return int(patient.removeprefix("PHANTOM-"))


def test_cli_writes_the_layout(tmp_path: Path) -> None:
    out = tmp_path / "data"
    args = ["phantoms", "--out", str(out), "--params", os.devnull]
    args += ["--patients", "4", "--size", "48", "--slices", "8", "--seed", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    folders = sorted((out / "dicom").iterdir())
    assert len(folders) == 4
    assert all(len(list(f.glob("*.dcm"))) == 8 for f in folders)
    assert not any("PHANTOM" in p.name for p in (out / "dicom").rglob("*"))
    cases = sorted(p.name for p in (out / "nifti" / "imagesTr").iterdir())
    assert cases == [f"PHANTOM-{i:04d}.nii.gz" for i in range(4)]
    assert sorted(p.name for p in (out / "nifti" / "labelsTr").iterdir()) == cases
    assert (out / "nifti" / "imagesTs").is_dir()  # the Decathlon layout, as nnU-Net expects
    doc = json.loads((out / "nifti" / "dataset.json").read_text())
    assert doc["modality"] == {"0": "CT"} and doc["labels"] == {"0": "background", "1": "lesion"}
    assert doc["numTraining"] == 4 and doc["tensorImageSize"] == "3D"
    assert doc["training"][0] == {
        "image": "./imagesTr/PHANTOM-0000.nii.gz",
        "label": "./labelsTr/PHANTOM-0000.nii.gz",
    }
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient"] for r in rows] == [f"PHANTOM-{i:04d}" for i in range(4)]
    assert {r["class"] for r in rows} == {"lesion", "normal"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_only_the_requested_formats_are_written(tmp_path: Path) -> None:
    make_phantoms(_cfg(patients=2, formats=["nifti"]), tmp_path / "n")
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["labels.csv", "nifti"]


def test_a_failed_run_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(phantom_stage, "write_nifti_case", boom)
    with pytest.raises(OSError):
        make_phantoms(_cfg(patients=2), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_file_names_do_not_sort_in_slice_order(written) -> None:
    _, out = written
    for folder in (out / "dicom").iterdir():
        by_name = [pydicom.dcmread(p).InstanceNumber for p in sorted(folder.glob("*.dcm"))]
        assert by_name != sorted(by_name)


def test_same_seed_same_arrays_other_seed_different() -> None:
    a, b = generate_phantom(_cfg(seed=5), 1), generate_phantom(_cfg(seed=5), 1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = generate_phantom(_cfg(seed=6), 1)
    assert not np.array_equal(a.image, c.image)
    d = generate_phantom(_cfg(seed=5), 2)
    assert not np.array_equal(a.tissue, d.tissue)  # anatomy differs between patients


def test_same_seed_same_files(written, tmp_path: Path) -> None:
    cfg, out = written
    make_phantoms(cfg, tmp_path / "again")
    make_phantoms(cfg.model_copy(update={"seed": cfg.seed + 1}), tmp_path / "other")
    for name in ("PHANTOM-0000", "PHANTOM-0003"):
        rel = Path("nifti/imagesTr") / f"{name}.nii.gz"
        first = np.asarray(nib.load(out / rel).dataobj)
        np.testing.assert_array_equal(first, np.asarray(nib.load(tmp_path / "again" / rel).dataobj))
        assert not np.array_equal(first, np.asarray(nib.load(tmp_path / "other" / rel).dataobj))
    again = _series(tmp_path / "again")
    for pid, items in _series(out).items():
        assert [ds.SOPInstanceUID for ds in items] == [ds.SOPInstanceUID for ds in again[pid]]
        assert [ds.PixelData for ds in items] == [ds.PixelData for ds in again[pid]]


def test_dicom_series_reads_back_as_the_generated_volume(written) -> None:
    cfg, out = written
    series = _series(out)
    assert sorted(series) == [f"PHANTOM-{i:04d}" for i in range(cfg.patients)]
    for pid, items in series.items():
        ph = generate_phantom(cfg, _index(pid))
        np.testing.assert_allclose(_hu(items), ph.image, atol=0.5 + 1e-4)
        assert [ds.InstanceNumber for ds in items] == list(range(1, cfg.slices + 1))
        z = [float(ds.ImagePositionPatient[2]) for ds in items]
        np.testing.assert_allclose(np.diff(z), cfg.slice_thickness)


def test_dicom_tags(written) -> None:
    cfg, out = written
    series = _series(out)
    seen: set[str] = set()
    for pid, items in series.items():
        ds = items[0]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert str(ds.PatientName) == f"Phantom^Patient{_index(pid):04d}"
        assert ds.InstitutionName == "Augment Demo Hospital"
        for key in ("PatientBirthDate", "AccessionNumber", "StudyDate"):
            assert str(ds.get(key, "")), key
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [cfg.pixel_spacing] * 2
        assert float(ds.SliceThickness) == cfg.slice_thickness
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (cfg.size, cfg.size, 16)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert {d.PixelRepresentation for d in items} == {ds.PixelRepresentation}
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert len({d[key].value for d in items}) == 1, key
            assert ds[key].value not in seen
            seen.add(ds[key].value)
        assert len({d.SOPInstanceUID for d in items}) == len(items)


def test_nifti_affine_matches_dicom_geometry(written) -> None:
    cfg, out = written
    series = _series(out)
    for pid, items in series.items():
        img = nib.load(out / "nifti" / "imagesTr" / f"{pid}.nii.gz")
        lab = nib.load(out / "nifti" / "labelsTr" / f"{pid}.nii.gz")
        assert img.header.get_zooms() == pytest.approx(
            (cfg.pixel_spacing, cfg.pixel_spacing, cfg.slice_thickness)
        )
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.affine, atol=1e-4)
        np.testing.assert_allclose(lab.affine, img.affine)
        assert lab.shape == img.shape == (cfg.size, cfg.size, cfg.slices)
        assert lab.get_data_dtype() == np.uint8
        for i, j, k in [(0, 0, 0), (5, 17, 3), (cfg.size - 1, 2, cfg.slices - 1)]:
            ds = items[k]
            lps = (
                np.array(ds.ImagePositionPatient, float)
                + np.array(ds.ImageOrientationPatient[:3], float) * i * float(ds.PixelSpacing[1])
                + np.array(ds.ImageOrientationPatient[3:], float) * j * float(ds.PixelSpacing[0])
            )
            ras = lps * [-1, -1, 1]
            np.testing.assert_allclose(img.affine @ [i, j, k, 1], [*ras, 1], atol=1e-3)
        hu = _hu(items)  # (Z, Y, X) = (k, j, i)
        np.testing.assert_array_equal(np.asarray(img.dataobj), hu.transpose(2, 1, 0))


def test_monai_reads_dicom_and_nifti(written) -> None:
    from monai.transforms import LoadImage

    cfg, out = written
    spacing = (cfg.pixel_spacing, cfg.pixel_spacing, cfg.slice_thickness)
    series = _series(out)
    pid = "PHANTOM-0001"
    folder = next(
        f for f in (out / "dicom").iterdir() if pydicom.dcmread(next(f.iterdir())).PatientID == pid
    )
    dcm = LoadImage(reader="PydicomReader", image_only=True)(str(folder))
    nii = LoadImage(image_only=True)(str(out / "nifti" / "imagesTr" / f"{pid}.nii.gz"))
    lab = LoadImage(image_only=True)(str(out / "nifti" / "labelsTr" / f"{pid}.nii.gz"))
    for t in (dcm, nii, lab):
        assert tuple(t.shape) == (cfg.size, cfg.size, cfg.slices)
        np.testing.assert_allclose(np.asarray(t.pixdim), spacing, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dcm.meta["spacing"]), spacing, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dcm.affine), np.asarray(nii.affine), atol=1e-3)
    hu = _hu(series[pid]).transpose(2, 1, 0)  # (X, Y, Z)
    np.testing.assert_allclose(np.asarray(dcm), hu, atol=1e-3)
    np.testing.assert_allclose(np.asarray(nii), hu, atol=1e-3)


def test_masks_lie_on_lesions_and_agree_with_labels_csv(written) -> None:
    cfg, out = written
    with open(out / "labels.csv", newline="") as fh:
        classes = {r["patient"]: r["class"] for r in csv.DictReader(fh)}
    for pid, cls in classes.items():
        mask = np.asarray(nib.load(out / "nifti" / "labelsTr" / f"{pid}.nii.gz").dataobj)
        assert set(np.unique(mask)) <= {0, 1}
        assert bool(mask.any()) == (cls == "lesion"), pid
    assert set(classes.values()) == {"lesion", "normal"}


def test_lesion_hu_differs_from_its_organ() -> None:
    cfg = _cfg(patients=8, size=64, slices=12, seed=11)
    sick = lesion_patients(cfg)
    organs = []
    for i in sorted(sick):
        ph = generate_phantom(cfg, i)
        assert ph.mask.any() and ph.lesion
        organs += [les["organ"] for les in ph.lesions]
        parts, n = ndimage.label(ph.mask)
        for c in range(1, n + 1):
            lesion = parts == c
            organ = np.bincount(ph.tissue[lesion]).argmax()
            near = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion)
            ring = near & (ph.tissue == organ) & (ph.mask == 0)
            if ring.sum() < 5:
                continue
            assert abs(ph.image[lesion].mean() - ph.image[ring].mean()) > 15, (i, c)
    assert organs.count("liver") / len(organs) >= 0.5  # mostly in the liver
    for i in set(range(cfg.patients)) - sick:
        assert not generate_phantom(cfg, i).mask.any()


@pytest.mark.parametrize(("patients", "prevalence"), [(2, 0.0), (2, 1.0), (5, 0.5), (10, 0.3)])
def test_both_classes_always_present(patients: int, prevalence: float) -> None:
    sick = lesion_patients(_cfg(patients=patients, prevalence=prevalence))
    assert 1 <= len(sick) <= patients - 1
    if 0 < prevalence < 1:
        assert len(sick) == round(prevalence * patients)


def test_intensities_are_ct_like() -> None:
    cfg = PhantomsConfig(patients=3, size=96, slices=16, seed=2)
    for i in range(cfg.patients):
        ph = generate_phantom(cfg, i)
        mid = ph.image[cfg.slices // 2]
        border = np.concatenate([mid[:3].ravel(), mid[-3:].ravel(), mid[:, :3].ravel()])
        assert (border < -900).mean() > 0.95  # air outside
        body = mid > -500
        assert 0.3 < body.mean() < 0.9
        inside = mid[ndimage.binary_erosion(body, iterations=2)]
        assert 0.05 < ((inside > -150) & (inside < -50)).mean() < 0.6  # fat
        assert ((inside > 0) & (inside < 120)).mean() > 0.2  # soft tissue
        assert (inside > 300).mean() > 0.003  # bone
        assert ph.image.min() >= -1024 and ph.image.max() <= 3071


def test_anatomy_varies_along_z() -> None:
    cfg = _cfg(size=64, slices=16, seed=4)
    for i in range(3):
        ph = generate_phantom(cfg, i)
        assert (ph.tissue[-1] == Tissue.LUNG).any()  # lung bases in the top slice
        assert not (ph.tissue[0] == Tissue.LUNG).any()
        assert (ph.tissue[-1] == Tissue.LIVER).sum() > (ph.tissue[0] == Tissue.LIVER).sum()
        for tissue in (Tissue.AORTA, Tissue.CORTICAL, Tissue.RIB, Tissue.MUSCLE, Tissue.FAT):
            assert (ph.tissue == tissue).any(), tissue.name
        assert (ph.tissue == Tissue.GAS).any()  # bowel gas
        assert (ph.tissue == Tissue.KIDNEY_CORTEX).any()


def test_worker_processes_write_the_same_files(tmp_path):
    from augment.config import PhantomsConfig
    from augment.phantoms.stage import make_phantoms

    base = dict(patients=4, size=48, slices=6, formats=["nifti"])
    make_phantoms(PhantomsConfig(**base, workers=1), tmp_path / "one")
    make_phantoms(PhantomsConfig(**base, workers=2), tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert files
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
