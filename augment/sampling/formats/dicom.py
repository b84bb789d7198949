"""The ``dicom`` format: Secondary Capture images and DICOM Segmentations, all marked synthetic.

``images/<case>.dcm``: a Secondary Capture image (int16 levels with a rescale to the data's
units). ``labels/<case>.dcm``: a binary DICOM Segmentation (SEG) written with highdicom that
references its image by SOP Instance UID: one segment per foreground label of the model, in
ascending label id (segment 1 is the lowest id), named after the label and coded from DICOM's
segmentation property types (CID 7151) where the name is one of them; the algorithm is augment
(AUTOMATIC). An empty mask still gets its SEG, one all-zero frame per segment
(``omit_empty_frames=False``), so every image has its label file and "no file" never means
"empty". Both files carry the same synthetic, non-identifying patient and study (a synthetic
patient, new UIDs per run, the class, seed and model checksum in ImageComments); the images are
also ``DERIVED\\SECONDARY`` with ConversionType ``SYN``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from augment.contracts.window import Window
from augment.io.dicom import part10_dataset
from augment.sampling.formats.base import SampleFormat, SampleRun

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

DICOM_SCALE = 2000.0  # [-1, 1] -> int16 [-2000, 2000]: 4000 grey levels, far inside int16
IMAGES, SEGMENTATIONS = 1, 2  # series numbers


@dataclass(frozen=True)
class DicomSeries:
    """What the files of one synthetic DICOM series share.

    Attributes:
        key: entropy for the UIDs, new for every run (no input identity goes into it).
        series_number: 1 for images, 2 for segmentations.
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


def series_uid(series: DicomSeries) -> str:
    """SeriesInstanceUID of a run's series."""
    return dicom_uid(series.key, "series", series.series_number)


def instance_uid(series: DicomSeries, case: str) -> str:
    """SOPInstanceUID of a case's file in a run's series."""
    return dicom_uid(series.key, series.series_number, case)


def secondary_capture(
    levels: np.ndarray, series: DicomSeries, case: str, number: int, comment: str
) -> Dataset:
    """One Secondary Capture image that cannot be mistaken for a real patient's.

    Args:
        levels: (rows, columns) int16 image levels (value = level * slope + center).
        series: the shared series description.
        case: synthetic case name; it is the PatientID, derived from nothing in the input.
        number: InstanceNumber (1-based).
        comment: ImageComments (class, seed, noise index, model checksum).
    """
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = part10_dataset(SecondaryCaptureImageStorage, instance_uid(series, case))
    _synthetic_patient(ds, case)
    _synthetic_study(ds, series, number)
    _pixels(ds, levels, series)
    ds.ImageComments = comment
    return ds


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
    ds.SeriesInstanceUID = series_uid(series)
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
    ds.Laterality = ""  # Type 2C: unknown, a synthetic slice of no known body part
    ds.PatientOrientation = ""  # Type 2C: unknown, and there is no patient


def _pixels(ds: Dataset, levels: np.ndarray, series: DicomSeries) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(s) for s in levels.shape)
    ds.PixelSpacing = [_ds(series.spacing[0]), _ds(series.spacing[1])]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = _ds(series.center)
    ds.RescaleSlope = _ds(series.width / (2 * DICOM_SCALE))
    ds.RescaleType = series.units
    ds.WindowCenter = _ds(series.center)
    ds.WindowWidth = _ds(series.width)
    ds.PixelData = np.ascontiguousarray(levels, dtype=np.int16).tobytes()


def _ds(value: float) -> str:
    return f"{float(value):.10g}"  # DS holds at most 16 characters


def read_dicom(path: Path) -> tuple[np.ndarray, Dataset]:
    """Read a file written by this format: (stored pixel array, dataset)."""
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


def dicom_series(run: SampleRun, number: int) -> DicomSeries:
    """The series of a run: :data:`IMAGES` or :data:`SEGMENTATIONS`."""
    what = "images" if number == IMAGES else "segmentations"
    return DicomSeries(
        key=f"augment:{run.uid_nonce}",
        series_number=number,
        description=f"SYNTHETIC {what} - generated by augment, not a patient",
        spacing=run.info.spacing,
        center=run.window.center,
        width=run.window.width,
        units=run.window.units or "US",
    )


# --------------------------------------------------------------------------- segmentations


@dataclass(frozen=True)
class Segment:
    """One foreground label of the model as a SEG segment."""

    label_id: int
    name: str
    lesion: bool


def segments(run: SampleRun) -> list[Segment]:
    """The model's foreground labels in ascending id: segment k is the k-th of them."""
    names = {i: n for n, i in run.info.label_names.items()}
    rule = run.info.config.get("lesion_rule")
    lesion_ids = rule.get("lesion_ids") if isinstance(rule, dict) else None  # None: any non-zero
    ids = sorted({i for i in run.info.mask_label_ids if i != 0})
    return [Segment(i, names.get(i, str(i)), lesion_ids is None or i in lesion_ids) for i in ids]


@cache
def _property_types() -> dict[str, frozenset[str]]:
    from pydicom.sr.codedict import codes

    return {cid: frozenset(getattr(codes, cid).dir()) for cid in ("cid7151", "cid7159", "cid7166")}


def coded_property(segment: Segment) -> tuple[Code, Code]:
    """(category, type) of a segment, from SNOMED CT through DICOM's context groups.

    The type is the segmentation property type (CID 7151) spelled like the label's name
    ("liver" -> Liver, "lesion" -> Lesion), else Lesion for a lesion label and Tissue for
    another; the category (CID 7150) is Morphologically Abnormal Structure for a lesion label
    or an abnormal type (CID 7159), Tissue for a tissue type (CID 7166) or an unknown name, and
    Anatomical Structure otherwise.
    """
    from pydicom.sr.codedict import codes

    words = re.findall(r"[A-Za-z0-9]+", segment.name)
    keyword = "".join(w[:1].upper() + w[1:].lower() for w in words)
    types = _property_types()
    known = keyword in types["cid7151"]
    if segment.lesion or keyword in types["cid7159"]:
        category = codes.SCT.MorphologicallyAbnormalStructure
    elif not known or keyword in types["cid7166"]:
        category = codes.SCT.Tissue
    else:
        category = codes.SCT.AnatomicalStructure
    fallback = codes.SCT.Lesion if segment.lesion else codes.SCT.Tissue
    return category, getattr(codes.cid7151, keyword) if known else fallback


def segmentation(image: Dataset, mask: np.ndarray, run: SampleRun, i: int, comment: str) -> Dataset:
    """A binary DICOM Segmentation of ``image`` holding ``mask``, marked synthetic like it.

    Args:
        image: the case's Secondary Capture image (the SEG's source image).
        mask: (rows, columns) label ids, each a foreground label of the model or 0.
        run: the sampling run.
        i: the sample's index.
        comment: ImageComments, as on the image.

    Raises:
        ValueError: a label id in ``mask`` that the model does not make.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from augment import __version__

    found = segments(run)
    lut = np.zeros(256, dtype=np.uint8)  # label id -> segment number (0: background)
    lut[[s.label_id for s in found]] = np.arange(1, len(found) + 1)
    unknown = set(np.unique(mask[lut[mask] == 0]).tolist()) - {0}
    if unknown:
        raise ValueError(f"expected label ids in {[s.label_id for s in found]}, got {unknown}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="augment",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        source="augment (DCGAN sampling)",
        parameters={"model_sha256": run.info.checksum, "seed": str(run.cfg.seed),
                    "noise_index": str(i)},
    )  # fmt: skip
    descriptions = []
    for k, s in enumerate(found, start=1):
        category, kind = coded_property(s)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=s.name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,  # no one drew it
                algorithm_identification=algorithm,
            )
        )
    series = dicom_series(run, SEGMENTATIONS)
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=lut[mask][None],  # (1, rows, columns) segment numbers
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid(series),
        series_number=series.series_number,
        sop_instance_uid=instance_uid(series, run.case(i)),
        instance_number=i + 1,
        manufacturer="augment",
        manufacturer_model_name="augment sample",
        software_versions=__version__,
        device_serial_number=run.info.checksum[:16],  # Type 1: the generator is the device
        # One frame per segment, empty or not: every SEG of a set has the same frames, and an
        # absent label is a frame of zeros rather than a missing frame.
        omit_empty_frames=False,
        # highdicom cannot read back pixel measures without a slice thickness.
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=[float(s) for s in series.spacing], slice_thickness=run.thickness
        ),
        content_label="SYNTHETIC",
        content_description="SYNTHETIC mask generated by augment, not a patient's",
        series_description=series.description,
    )
    # highdicom copied the image's patient and study modules: the same synthetic patient.
    seg.BurnedInAnnotation = "NO"
    seg.PatientOrientation = ""  # Type 2C, as on the image (no frame of reference)
    seg.ImageComments = comment
    return seg


def read_segmentation(path: Path, image: Dataset, label_ids: dict[str, int]) -> np.ndarray:
    """The label ids of a SEG written by this format, checked to reference ``image``.

    Args:
        path: the SEG file.
        image: its source image, as read.
        label_ids: label name -> id (``synthetic.json`` ``label_names``); a segment whose label
            is not among them must be named by its id.

    Raises:
        ValueError: the SEG does not reference ``image``, or a segment label is unknown.
    """
    import highdicom as hd

    seg = hd.seg.segread(path)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if referenced != {image.SOPInstanceUID}:
        raise ValueError(f"{path}: expected a segmentation of {image.SOPInstanceUID} only")
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint8)  # segment number -> label id
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label
        if name in label_ids:
            lut[number] = label_ids[name]
        elif name.isdigit():
            lut[number] = int(name)
        else:
            raise ValueError(f"{path}: segment {number} is {name!r}, not one of {list(label_ids)}")
    numbers = seg.get_pixels_by_source_instance(
        [image.SOPInstanceUID], combine_segments=True, relabel=False
    )[0]  # (rows, columns) segment numbers
    return lut[numbers]


class DicomFormat(SampleFormat):
    """One Secondary Capture file per image and one DICOM Segmentation per mask."""

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
        source = secondary_capture(levels, dicom_series(run, IMAGES), case, i + 1, comment)
        source.save_as(run.root / image_file, enforce_file_format=True)
        if mask is not None:
            seg = segmentation(source, mask, run, i, comment)
            seg.save_as(run.root / label_file, enforce_file_format=True)

    def read(
        self, root: Path, rows: list[dict[str, str]], meta: dict[str, Any], window: Window
    ) -> tuple[np.ndarray, np.ndarray | None]:
        from pydicom.errors import InvalidDicomError

        label_ids = {str(k): int(v) for k, v in (meta.get("label_names") or {}).items()}
        has_masks = bool(rows) and bool(rows[0]["label_file"])
        images, masks = [], []
        for row in rows:
            path = root / row["file"]
            try:
                pixels, ds = read_dicom(path)
                images.append((pixels / np.float32(DICOM_SCALE))[None])  # (1, S, S)
                if has_masks:
                    path = root / row["label_file"]
                    masks.append(read_segmentation(path, ds, label_ids))
            except (InvalidDicomError, AttributeError, KeyError) as exc:
                raise ValueError(f"{path}: not a file of the dicom format ({exc!r})") from exc
        return np.stack(images).astype(np.float32), np.stack(masks) if has_masks else None
