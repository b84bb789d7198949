"""The ``dicom`` format: Secondary Capture files that cannot be mistaken for a patient's.

``images/<case>.dcm`` (int16 levels with a rescale to the data's units) and ``labels/<case>.dcm``
(uint8 label maps), each series marked synthetic in its tags: a synthetic patient, new UIDs
per run, ``DERIVED\\SECONDARY``, and the class, seed and model checksum in ImageComments.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from augment.contracts.window import Window
from augment.io.dicom import part10_dataset
from augment.sampling.formats.base import SampleFormat, SampleRun

DICOM_SCALE = 2000.0  # [-1, 1] -> int16 [-2000, 2000]: 4000 grey levels, far inside int16


@dataclass(frozen=True)
class DicomSeries:
    """What the files of one synthetic DICOM series share.

    Attributes:
        key: entropy for the UIDs, new for every run (no input identity goes into it).
        series_number: 1 for images, 2 for label maps.
        description: SeriesDescription; it says the series is synthetic.
        spacing: (y, x) pixel spacing in mm.
        center: intensity that [-1, 1]'s 0 maps to (RescaleIntercept).
        width: span of [-1, 1] in the data's units.
        units: RescaleType, "HU" for CT, "US" (unspecified) otherwise.
    """

    key: str
    series_number: int
    description: str
    spacing: tuple[float, float]
    center: float = 0.0
    width: float = 2.0
    units: str = "US"


_UID_NAMESPACE = uuid.UUID("6a1f3c52-8e0b-5d4e-9a57-3b2c1d0e9f84")  # augment's own namespace


def dicom_uid(*parts: object) -> str:
    """A UUID-derived UID (2.25.<uuid>) made from ``parts``: a name-based UUID (version 5).

    Unique for distinct parts; callers pass a per-run random nonce among them.
    """
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def write_dicom(
    path: Path, pixels: np.ndarray, series: DicomSeries, case: str, number: int, comment: str
) -> None:
    """Write one Secondary Capture file that cannot be mistaken for a real patient's.

    Args:
        path: target ``.dcm`` file.
        pixels: (rows, columns) int16 image levels (value = level * slope + center) or uint8
            label ids.
        series: the shared series description.
        case: synthetic case name; it is the PatientID, derived from nothing in the input.
        number: InstanceNumber (1-based).
        comment: ImageComments (class, seed, noise index, model checksum).
    """
    from pydicom.uid import SecondaryCaptureImageStorage

    sop_uid = dicom_uid(series.key, series.series_number, case)
    ds = part10_dataset(SecondaryCaptureImageStorage, sop_uid)
    _synthetic_patient(ds, case)
    _synthetic_study(ds, series, number)
    _pixels(ds, pixels, series)
    ds.ImageComments = comment
    ds.save_as(path, enforce_file_format=True)


def _synthetic_patient(ds: Dataset, case: str) -> None:
    ds.PatientName = "SYNTHETIC^AUGMENT"
    ds.PatientID = case
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic image sampled from a generative model; no patient data"


def _synthetic_study(ds: Dataset, series: DicomSeries, number: int) -> None:
    # Type 2 dates and numbers stay empty: a date would break byte-identical reruns.
    ds.StudyInstanceUID = dicom_uid(series.key, "study")
    ds.SeriesInstanceUID = dicom_uid(series.key, "series", series.series_number)
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = "SYNTHETIC data set (augment)"
    ds.Modality = "OT"
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.InstanceNumber = number
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"


def _pixels(ds: Dataset, pixels: np.ndarray, series: DicomSeries) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.PixelSpacing = [_ds(series.spacing[0]), _ds(series.spacing[1])]
    if pixels.dtype == np.uint8:  # a label map
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept = _ds(series.center)
        ds.RescaleSlope = _ds(series.width / (2 * DICOM_SCALE))
        ds.RescaleType = series.units
        ds.WindowCenter = _ds(series.center)
        ds.WindowWidth = _ds(series.width)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _ds(value: float) -> str:
    return f"{float(value):.10g}"  # DS holds at most 16 characters


def read_dicom(path: Path) -> tuple[np.ndarray, Dataset]:
    """Read a file written by :func:`write_dicom`: (stored pixel array, dataset)."""
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


def dicom_series(run: SampleRun, number: int) -> DicomSeries:
    """The series of a run: 1 holds the images, 2 the label maps."""
    what = "images" if number == 1 else "label maps"
    return DicomSeries(
        key=f"augment:{run.uid_nonce}",
        series_number=number,
        description=f"SYNTHETIC {what} - generated by augment, not a patient",
        spacing=run.info.spacing,
        center=run.window.center,
        width=run.window.width,
        units=run.window.units or "US",
    )


class DicomFormat(SampleFormat):
    """One Secondary Capture file per image and per label map."""

    ending = ".dcm"

    def write_case(
        self, run: SampleRun, i: int, image: np.ndarray, mask: np.ndarray | None, c: int
    ) -> None:
        case = run.case(i)
        image_file, label_file = self.files(run, case)
        cls = run.info.class_names[c] if run.info.class_names else "none"
        comment = (
            f"SYNTHETIC; class {cls}; seed {run.cfg.seed}; noise index {i}; "
            f"model sha256 {run.info.checksum[:16]}"
        )
        levels = np.rint(np.clip(image[0], -1, 1) * DICOM_SCALE).astype(np.int16)
        write_dicom(run.root / image_file, levels, dicom_series(run, 1), case, i + 1, comment)
        if mask is not None:
            write_dicom(run.root / label_file, mask, dicom_series(run, 2), case, i + 1, comment)

    def read_image(self, path: Path, meta: dict[str, Any], window: Window) -> np.ndarray:
        return (read_dicom(path)[0] / np.float32(DICOM_SCALE))[None]

    def read_mask(self, path: Path) -> np.ndarray:
        return read_dicom(path)[0]
