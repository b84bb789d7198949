"""Tiny DICOM / NIfTI writers and the bad-input corpus used by the preprocess tests.

Everything is generated into a folder (``tmp_path``) in well under a second; nothing is
committed. The DICOM files carry a name, birth date, accession number and institution, so the
tests can check that none of them reaches an output.

Geometry: a canonical volume is (Z, Y, X) with Z inferior to superior, Y anterior to posterior
and X right to left (see augment.preprocessing.readers.nifti). An axial DICOM slice with
ImageOrientationPatient [1, 0, 0, 0, 1, 0] shows exactly ``volume[z]``; NIfTI files are written
in LPS voxel order with a RAS affine diag(-sx, -sy, sz), as ITK writes them.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC98765",
    "InstitutionName": "Saint Example Hospital",
    "StudyDate": "20240229",
}


def phantom(
    shape: tuple[int, int, int] = (8, 24, 20), seed: int = 0, lesion: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (Z, Y, X) volume in HU (air outside an ellipse of soft tissue) and its mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 5, shape)
    image[body & (x > 0.3)] += 300  # asymmetric, so that flips show
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion:
        blob = ((y - 0.1) / 0.3) ** 2 + ((x + 0.3) / 0.3) ** 2 + (z / 0.6) ** 2 < 1
        mask[blob & body] = 1
        image[mask == 1] = 120.0
    return image.astype(np.float32), mask


def dicom_slice(
    pixels: np.ndarray,
    position: tuple[float, float, float],
    spacing_yx: tuple[float, float],
    patient_id: str,
    series_uid: str,
    slope: float = 1.0,
    intercept: float = -1024.0,
    monochrome1: bool = False,
    invert_about: float = 0.0,
) -> Dataset:
    """One axial CT slice; ``pixels`` (Y, X) are HU, stored as (HU - intercept) / slope int16.

    MONOCHROME1 stores ``invert_about - value``; the reader inverts about the series' range, so
    pass the series' (min + max) stored value.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = patient_id
    for k, v in IDENTIFIERS.items():
        setattr(ds, k, v)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing_yx[0], spacing_yx[1]]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    stored = np.round((pixels - intercept) / slope)
    if monochrome1:
        stored = invert_about - stored
    ds.PixelData = stored.astype(np.int16).tobytes()
    return ds


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    patient_id: str,
    shuffle_seed: int | None = 0,
    **kwargs: object,
) -> list[Path]:
    """Write a (Z, Y, X) HU volume as an axial series; file names do not follow slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    order = np.arange(volume.shape[0])
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(order)
    if kwargs.get("monochrome1"):
        stored = np.round((volume - kwargs.get("intercept", -1024.0)) / kwargs.get("slope", 1.0))
        kwargs["invert_about"] = float(stored.min() + stored.max())
    paths = []
    for name_index, z in enumerate(order):
        position = (-50.0, -40.0, -100.0 + z * spacing[0])
        ds = dicom_slice(volume[z], position, spacing[1:], patient_id, uid, **kwargs)  # type: ignore[arg-type]
        ds.InstanceNumber = int(volume.shape[0] - z)  # reversed: ordering must not use it
        path = folder / f"IM{name_index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(
    path: Path, volume: np.ndarray, spacing: tuple[float, float, float], dtype: type = np.float32
) -> Path:
    """Write a (Z, Y, X) volume as NIfTI in LPS voxel order (affine diag(-sx, -sy, sz))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    affine[:3, 3] = (50.0, 40.0, -100.0)
    data = np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(dtype)  # (X, Y, Z)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_ras_nifti(path: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """The same volume in RAS voxel order (affine diag(sx, sy, sz)): must read the same."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(volume.transpose(2, 1, 0)[::-1, ::-1, :])
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def write_decathlon(
    root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], spacing=(5.0, 2.0, 2.0)
) -> Path:
    """imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz + dataset.json under ``root``."""
    for case, (image, mask) in cases.items():
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image, spacing)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", mask, spacing, dtype=np.uint8)
    (root / "dataset.json").write_text('{"labels": {"background": 0, "lesion": 1}}')
    return root


# ---------------------------------------------------------------- the bad-input corpus

SPACING = (5.0, 2.0, 2.0)


def make_dicom_corpus(root: Path) -> dict[str, str]:
    """Bad DICOM inputs beside one good series; returns folder -> expected reason fragment."""
    image, _ = phantom()
    good = write_dicom_series(root / "good", image, SPACING, "GOOD-1")
    expected: dict[str, str] = {}

    (root / "notdicom").mkdir()
    (root / "notdicom" / "notes.dcm").write_text("this is not a DICOM file\n" * 20)
    expected["notdicom"] = "not DICOM"

    (root / "truncated").mkdir()
    ds = _read(good[0])
    ds.SeriesInstanceUID, ds.PatientID = generate_uid(), "CUT-1"  # a series of its own
    ds.save_as(root / "truncated" / "cut.dcm", enforce_file_format=True)
    data = (root / "truncated" / "cut.dcm").read_bytes()
    (root / "truncated" / "cut.dcm").write_bytes(data[: len(data) - 300])
    expected["truncated"] = "truncated"

    big = np.resize(image[0], (64, 64))  # the encoder needs tiles above its resolution levels
    ds = dicom_slice(big, (0, 0, 0), SPACING[1:], "J2K-1", generate_uid())
    ds.compress(JPEG2000Lossless)  # encapsulated: pydicom drops a frame the file ends inside
    (root / "j2k_truncated").mkdir()
    ds.save_as(root / "j2k_truncated" / "a.dcm", enforce_file_format=True)
    data = (root / "j2k_truncated" / "a.dcm").read_bytes()
    (root / "j2k_truncated" / "a.dcm").write_bytes(data[: len(data) // 2])
    expected["j2k_truncated"] = "truncated pixel data (the file ends inside it)"

    ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], "NOPIX-1", generate_uid())
    del ds.PixelData
    (root / "nopixels").mkdir()
    ds.save_as(root / "nopixels" / "a.dcm", enforce_file_format=True)
    expected["nopixels"] = "no pixel data"

    ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], "LOC-1", generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    (root / "localizer").mkdir()
    ds.save_as(root / "localizer" / "a.dcm", enforce_file_format=True)
    expected["localizer"] = "localizer"

    dup = write_dicom_series(root / "duplicate", image[:4], SPACING, "DUP-1")
    extra = root / "duplicate" / "copy.dcm"
    _copy_with_new_uid(dup[0], extra)
    expected["duplicate"] = "duplicates"

    gap = write_dicom_series(root / "gap", image, SPACING, "GAP-1", shuffle_seed=None)
    gap[3].unlink()
    expected["gap"] = "gap"

    mixed = write_dicom_series(root / "mixed", image[:3], SPACING, "MIX-1")
    uid = _read(mixed[0]).SeriesInstanceUID
    ds = dicom_slice(image[3, :10, :10], (-50.0, -40.0, -100.0 + 3 * SPACING[0]), SPACING[1:],
                     "MIX-1", uid)  # fmt: skip
    ds.save_as(root / "mixed" / "small.dcm", enforce_file_format=True)
    expected["mixed"] = "one slice shape"

    iop = write_dicom_series(root / "badiop", image[:3], SPACING, "IOP-1")
    for path in iop:
        ds = _read(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1]  # five numbers, not six
        ds.save_as(path, enforce_file_format=True)
    expected["badiop"] = "malformed or inconsistent DICOM header values"

    for kind in ("PROJECTION", "MOSAIC"):
        ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], f"{kind}-1", generate_uid())
        ds.ImageType = ["DERIVED", "SECONDARY", kind]
        (root / kind.lower()).mkdir()
        ds.save_as(root / kind.lower() / "a.dcm", enforce_file_format=True)
        expected[kind.lower()] = "projection" if kind == "PROJECTION" else "mosaic"

    for folder, iop in (("sagittal", [0, 1, 0, 0, 0, -1]), ("oblique", [1, 0, 0, 0, 0.8, -0.6])):
        ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], f"{folder}-1", generate_uid())
        ds.ImageOrientationPatient = iop
        (root / folder).mkdir()
        ds.save_as(root / folder / "a.dcm", enforce_file_format=True)
        expected[folder] = f"single {folder} image"

    zero = write_dicom_series(root / "zerospacing", image[:3], SPACING, "ZERO-1")
    for path in zero:
        ds = _read(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path, enforce_file_format=True)
    expected["zerospacing"] = "positive pixel spacing"

    ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], "SLOPE-1", generate_uid())
    ds.RescaleSlope = "7.123456"
    (root / "badslope").mkdir()
    ds.save_as(root / "badslope" / "a.dcm", enforce_file_format=True)
    raw = (root / "badslope" / "a.dcm").read_bytes()  # what a broken exporter writes:
    (root / "badslope" / "a.dcm").write_bytes(raw.replace(b"7.123456", b"abc.defg"))
    expected["badslope"] = "malformed or inconsistent DICOM header values"
    return expected


def _read(path: Path) -> Dataset:
    import pydicom

    return pydicom.dcmread(path)


def _copy_with_new_uid(src: Path, dst: Path) -> None:
    ds = _read(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)


def make_nifti_corpus(root: Path) -> dict[str, str]:
    """Bad NIfTI cases in one Decathlon layout beside good ones; case -> expected reason."""
    cases = {f"good{i}": phantom(seed=i, lesion=i % 2 == 0) for i in range(2)}
    write_decathlon(root, cases, SPACING)
    image, mask = phantom(seed=5)
    expected: dict[str, str] = {}

    nan = image.copy()
    nan[2, 3, 4] = np.nan
    nan[3, 3, 4] = np.inf
    write_nifti(root / "imagesTr" / "nan_0000.nii.gz", nan, SPACING)
    write_nifti(root / "labelsTr" / "nan.nii.gz", mask, SPACING, dtype=np.uint8)
    expected["nan"] = "NaN or inf"

    path = write_nifti(root / "imagesTr" / "cut_0000.nii.gz", image, SPACING)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    write_nifti(root / "labelsTr" / "cut.nii.gz", mask, SPACING, dtype=np.uint8)
    expected["cut"] = "truncated"

    garbage = root / "imagesTr" / "garbage_0000.nii.gz"
    garbage.write_bytes(gzip.compress(b"definitely not a nifti header" * 20))
    write_nifti(root / "labelsTr" / "garbage.nii.gz", mask, SPACING, dtype=np.uint8)
    expected["garbage"] = "NIfTI"

    write_nifti(root / "imagesTr" / "shape_0000.nii.gz", image, SPACING)
    write_nifti(root / "labelsTr" / "shape.nii.gz", mask[:, :-2], SPACING, dtype=np.uint8)
    expected["shape"] = "mask of shape"

    write_nifti(root / "imagesTr" / "geom_0000.nii.gz", image, SPACING)
    write_nifti(root / "labelsTr" / "geom.nii.gz", mask, (5.0, 2.5, 2.0), dtype=np.uint8)
    expected["geom"] = "geometry"

    for case in ("zeroaffine", "nanaffine"):  # what broken converters write into the header
        path = root / "imagesTr" / f"{case}_0000.nii"
        write_nifti(path, image, SPACING)
        raw = bytearray(path.read_bytes())
        raw[252:256] = struct.pack("<hh", 0, 0 if case == "zeroaffine" else 2)  # q/sform codes
        if case == "zeroaffine":  # no orientation and zero voxel sizes
            raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)
        else:  # srow_x, srow_y, srow_z all NaN
            raw[280:328] = struct.pack("<12f", *[float("nan")] * 12)
        path.write_bytes(bytes(raw))
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", mask, SPACING, dtype=np.uint8)
        expected[case] = "affine"

    # A 1 KB header that declares 30000^3 voxels: refused before a byte of data is read.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((1.0, 1.0, 1.0))
    with open(root / "imagesTr" / "huge_0000.nii", "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 64)
    write_nifti(root / "labelsTr" / "huge.nii.gz", mask, SPACING, dtype=np.uint8)
    expected["huge"] = "voxels"
    return expected


def write_demo(root: Path, n_patients: int) -> Path:
    """The same patients as a DICOM tree and a Decathlon NIfTI set, with labels.csv.

    Even patients have a lesion; DICOM folders carry a name (Doe_Jane_...) that must never leak.
    """
    lines = ["patient,class"]
    for i in range(n_patients):
        pid = f"PHANTOM-{i:04d}"
        image, mask = phantom(seed=i, lesion=i % 2 == 0)
        write_dicom_series(root / "dicom" / f"Doe_Jane_{pid}" / "CT", image, SPACING, pid)
        write_decathlon(root / "nifti", {pid: (image, mask)}, SPACING)
        lines.append(f"{pid},{'lesion' if i % 2 == 0 else 'normal'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
