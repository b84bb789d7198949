"""DICOM reader: files in any order and nesting into canonical Volumes, one per series.

:func:`scan_dicom` reads the headers under a root, skips what is not an image volume (with a
reason) and groups the rest into series by SeriesInstanceUID and orientation; an enhanced
multi-frame file is a series of its own. DICOM SEG and RTSTRUCT files are paired with the series
they refer to (see :mod:`augment.preprocessing.readers.dicom_masks`). :func:`read_series` reads
one series: slices are ordered by ImagePositionPatient projected on the slice normal (never by
InstanceNumber or file name), the modality LUT / rescale is applied, MONOCHROME1 is inverted, and
the volume, with its mask, is laid out in the package's canonical (Z, Y, X) orientation (see
:mod:`augment.preprocessing.readers.nifti`).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from augment.config import PreprocessConfig
from augment.contracts.volume import Volume
from augment.errors import InputError
from augment.preprocessing.privacy import captured_warnings, reemit
from augment.preprocessing.readers.base import Discovery, Found, MapFn, Namer
from augment.preprocessing.readers.dicom_masks import (
    KINDS,
    Grid,
    MaskRef,
    error_name,
    mask_ref,
    match_masks,
    read_masks,
)
from augment.preprocessing.readers.nifti import canonical_zyx

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
NON_IMAGE = {
    "SR": "structured report (SR)",
    "RTPLAN": "RT plan (RTPLAN)",
    "RTDOSE": "RT dose grid (RTDOSE)",
    "PR": "presentation state (PR)",
    "KO": "key object selection (KO)",
    "REG": "registration object (REG)",
}
# Transfer syntax prefix -> the package whose pydicom plugin decodes it.
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg",  # JPEG baseline / extended
    "1.2.840.10008.1.2.4.7": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE
}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# pydicom raises these on damaged files besides its own InvalidDicomError: a value of the wrong
# length, an unknown VR (NotImplementedError), a damaged deflated stream (zlib.error), a file
# that ends inside an element's length (struct.error).
_READ_ERRORS = (
    OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
    OverflowError, BytesLengthException, NotImplementedError, zlib.error, struct.error,
)  # fmt: skip
_PLAIN_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR LE
_DEFER = 256  # bytes: values above this are not read while scanning
_GAP_TOLERANCE = 0.1  # relative deviation of a slice step from the median step


@dataclass(frozen=True)
class FileInfo:
    """What the scan learnt about one single-frame file.

    When ``offset`` is set the pixels are plain little-endian integers at that byte offset, and
    :func:`read_series` reads them with one ``numpy`` call instead of parsing the file again
    (the scan has parsed it once already); otherwise pydicom decodes the file.
    """

    path: Path
    offset: int | None = None
    dtype: str = ""
    shape: tuple[int, int] = (0, 0)
    slope: float = 1.0
    intercept: float = 0.0
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    geometry: tuple[float, ...] = ()
    modality: str = "OT"
    monochrome1: bool = False
    sop_uid: str = ""
    series_uid: str = ""


@dataclass(frozen=True)
class Series:
    """The files of one DICOM series (or one enhanced multi-frame file).

    Attributes:
        files: the series' files, sorted by path (the read order does not matter).
        raw_patient: PatientID (fallback StudyInstanceUID): an identifier, never to be written.
        root: the input root the files were found under.
        key: what grouped the files (series UID and orientation): an identifier too.
        infos: per file, what the scan learnt (same order as ``files``).
        masks: the SEG and RTSTRUCT files that refer to the series (merged when several).
        label_ids: mask label id of each segment or ROI name (over the input root).
    """

    files: tuple[Path, ...]
    raw_patient: str
    root: Path
    key: tuple[str, ...]
    infos: tuple[FileInfo, ...] = ()
    masks: tuple[MaskRef, ...] = ()
    label_ids: tuple[tuple[str, int], ...] = ()

    @property
    def series_uid(self) -> str:
        return self.infos[0].series_uid if self.infos else ""

    @property
    def instances(self) -> frozenset[str]:
        """The SOPInstanceUIDs of the series' files."""
        return frozenset(i.sop_uid for i in self.infos if i.sop_uid)


@dataclass
class _Frame:
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    pixels: np.ndarray  # (R, C) physical units
    sop: str = ""  # SOPInstanceUID of a single-frame file ('' in a multi-frame one)


# ImageType values whose pixels are not one plane of a volume: a localizer, a projection (MIP)
# or a Siemens mosaic (many slices tiled in one image).
_NOT_A_PLANE = {"LOCALIZER": "localizer (scout)", "PROJECTION": "projection (MIP)",
                "MOSAIC": "Siemens mosaic"}  # fmt: skip


def scan_dicom(
    root: Path, name_of: Callable[[Path], str] = str, map_fn: MapFn = map
) -> tuple[list[Series], list[tuple[str, str]]]:
    """Group the DICOM files under ``root`` into series, skipping what is not an image volume,
    and pair SEG and RTSTRUCT files with the series they refer to.

    Args:
        root: a folder (searched recursively) or a single file.
        name_of: how messages name a file (the pipeline passes a pseudonymising one).
        map_fn: ``map`` or a process pool's ``map``, to read the headers in parallel.

    Returns:
        The series, in a fixed order (by their first file), and ``(name, reason)`` for each
        skipped file (a mask whose series is not in the input among them).

    Raises:
        InputError: the masks name more segments or ROIs than a uint8 mask can number.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if not p.name.startswith(".")]
    groups: dict[tuple[str, ...], list[FileInfo]] = {}
    patients: dict[tuple[str, ...], str] = {}
    masks: list[MaskRef] = []
    skipped: list[tuple[str, str]] = []
    for path, (result, warned) in zip(files, map_fn(scan_file, files), strict=True):
        reemit(name_of(path), warned)
        if isinstance(result, str):
            skipped.append((name_of(path), result))
            continue
        key, patient, info = result
        if isinstance(info, MaskRef):
            masks.append(info)
            continue
        groups.setdefault(key, []).append(info)
        patients.setdefault(key, patient)
    series = [
        Series(tuple(i.path for i in infos), patients[k], root, k, tuple(infos))
        for k, infos in groups.items()
    ]
    series = sorted(series, key=lambda s: s.files[0])
    paired, unmatched, ids = match_masks([(s.series_uid, s.instances) for s in series], masks)
    skipped.extend((name_of(m.path), reason) for m, reason in unmatched)
    labels = tuple(ids.items())
    series = [replace(s, masks=m, label_ids=labels) for s, m in zip(series, paired, strict=True)]
    return series, skipped


_Scanned = tuple[tuple[str, ...], str, FileInfo | MaskRef]


def scan_file(path: Path) -> tuple[_Scanned | str, list[str]]:
    """Series key, raw patient id and file info (or mask reference) of one file, or why it is
    skipped (a string); with the library warnings its header raised (kinds only: see
    ``captured_warnings``).

    A module-level function so that a process pool can run it.
    """
    with captured_warnings() as warned:
        try:
            result: _Scanned | str = _classify(path)
        except InputError as exc:
            result = str(exc).removeprefix(f"{path}: ")
        except MALFORMED as exc:
            result = malformed(exc)
    return result, warned


# What pydicom and numpy raise on header values of the wrong count or type (an IOP of five
# numbers, a non-numeric slope, ...): a reason to skip the file, never a crash of the run.
MALFORMED = (
    ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
    BytesLengthException, NotImplementedError,
)  # fmt: skip


def library_text(exc: BaseException) -> str:
    """A library's message, safe to record: its first sentence, with every quoted value
    replaced (pydicom quotes header values, which may be a name or a birth date)."""
    first = str(exc).split(" - ")[0].strip().splitlines()
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first[0]) if first else ""
    return text[:120] or type(exc).__name__


def malformed(exc: BaseException) -> str:
    """A skip reason for a malformed header; the value itself may identify, so it is not shown."""
    return f"malformed or inconsistent DICOM header values ({type(exc).__name__})"


def _classify(path: Path) -> _Scanned:
    name = str(path)
    ds = _read_header(path, name)
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_CLASS or path.name.upper() == "DICOMDIR":
        raise InputError(f"{name}: DICOMDIR (an index of files, not an image)")
    modality = str(ds.get("Modality", "")).upper()
    if modality in KINDS:
        return ("mask", str(path)), "", mask_ref(ds, path, name)
    if modality in NON_IMAGE:
        raise InputError(f"{name}: {NON_IMAGE[modality]}, not an image")
    if not any(tag in ds for tag in _PIXEL_TAGS):
        if _has_pixel_tag(path):  # the element is there, but the file ends inside it
            raise InputError(f"{name}: truncated pixel data (the file ends inside it)")
        raise InputError(f"{name}: no pixel data")
    kinds = {str(v).upper() for v in (ds.get("ImageType") or [])}
    for value, what in _NOT_A_PLANE.items():
        if value in kinds:
            raise InputError(f"{name}: {what} image, not part of a volume")
    patient = str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", "")).strip()
    if not patient:
        raise InputError(f"{name}: expected a PatientID or StudyInstanceUID, got neither")
    sop, series = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        info = FileInfo(path, sop_uid=sop, series_uid=series)
        return ("frames", str(ds.get("SOPInstanceUID", path))), patient, info
    iop = ds.get("ImageOrientationPatient")
    if iop is None or ds.get("ImagePositionPatient") is None:
        raise InputError(
            f"{name}: expected ImagePositionPatient and ImageOrientationPatient, got none "
            "(cannot place the image in a volume)"
        )
    orientation = ",".join(f"{float(v):.3f}" for v in iop)
    key = ("series", str(ds.get("SeriesInstanceUID", "")), orientation)
    return key, patient, replace(_file_info(path, ds), sop_uid=sop, series_uid=series)


def _file_info(path: Path, ds: Dataset) -> FileInfo:
    """The fast-path description of a plain single-frame file (offset None when not plain)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
        offset = getattr(raw, "value_tell", None) if getattr(raw, "value", 0) is None else None
        plain = (
            ds.file_meta.get("TransferSyntaxUID") in _PLAIN_SYNTAXES
            and bits in (8, 16)
            and (stored == bits or not signed)  # signed, fewer bits stored: pydicom extends sign
            and int(ds.get("SamplesPerPixel", 1) or 1) == 1
            and "ModalityLUTSequence" not in ds
            and getattr(raw, "length", -1) == rows * cols * bits // 8
            and str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME1", "MONOCHROME2")
        )
        return FileInfo(
            path=path,
            offset=offset if plain else None,
            dtype=("<i" if signed else "<u") + str(bits // 8),
            shape=(rows, cols),
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            position=(x, y, z),
            geometry=_geometry(ds.ImageOrientationPatient, ds.get("PixelSpacing"), ds),
            modality=str(ds.get("Modality", "OT") or "OT"),
            monochrome1=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        )
    except (*_READ_ERRORS, RuntimeError):
        return FileInfo(path)  # let pydicom's full read report what is wrong


def _read_header(path: Path, name: str) -> Dataset:
    try:
        # defer_size: big values (the pixels) are skipped, not read, while scanning.
        return pydicom.dcmread(path, force=False, defer_size=_DEFER)
    except InvalidDicomError:
        return _read_without_preamble(path, name, defer_size=_DEFER)
    except _READ_ERRORS as exc:
        raise InputError(f"{name}: unreadable DICOM header ({error_name(exc)})") from exc


def _read_without_preamble(path: Path, name: str, defer_size: int | None = None) -> Dataset:
    """Old files lack the 128-byte preamble; accept them only if they parse as a SOP instance."""
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=defer_size)
        if "SOPClassUID" in ds and ("Modality" in ds or any(t in ds for t in _PIXEL_TAGS)):
            return ds
    except (*_READ_ERRORS, InvalidDicomError, NotImplementedError):
        pass
    raise InputError(f"{name}: not DICOM (no DICM preamble, no DICOM data set)")


def read_series(
    series: Series,
    patient: str,
    source: str,
    name_of: Callable[[Path], str] = str,
    lesion_labels: list[int] | None = None,
) -> Volume:
    """Read one series, with the union of its masks, into a canonical Volume.

    Args:
        series: from :func:`scan_dicom`.
        patient: the pseudonymised patient id to store in the Volume.
        source: the (pseudonymised) source to store in the Volume.
        name_of: how messages name a file.
        lesion_labels: label ids drawn over the others where masks overlap.

    Raises:
        InputError: undecodable or truncated pixel data, mixed shapes, duplicate slice
            positions or gaps, several orientations; a mask that refers to an image not in the
            series or does not fit its grid.
    """
    name = name_of(series.files[0])
    frames: list[_Frame] = []
    geometry: set[tuple[float, ...]] = set()
    modality, monochrome1 = "OT", False
    infos = series.infos or tuple(FileInfo(p) for p in series.files)
    for info in infos:
        if info.offset is not None:
            pixels = _plain_pixels(info, name_of(info.path))
            frames.append(_Frame(np.array(info.position), pixels, info.sop_uid))
            geometry.add(info.geometry)
            modality, monochrome1 = info.modality, info.monochrome1
            continue
        ds = _read_full(info.path, name_of(info.path))
        pixels = _pixels(ds, name_of(info.path))
        file_frames, iop_ps = _frames(ds, pixels, name_of(info.path))
        frames.extend(file_frames)
        geometry.add(iop_ps)
        modality = str(ds.get("Modality", "OT") or "OT")
        monochrome1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if len(geometry) > 1:
        raise InputError(f"{name}: expected one orientation and pixel spacing, got {len(geometry)}")
    data, grid, affine = _assemble(frames, next(iter(geometry)), name, series.instances)
    image, spacing = canonical_zyx(data.transpose(2, 1, 0), affine)
    if monochrome1:  # higher values mean darker: turn them so that higher means brighter
        image = image.min() + image.max() - image
    mask = None
    if series.masks:  # drawn in the series' slice order, then turned like the image
        labels = dict(series.label_ids)
        stack = read_masks(series.masks, series.series_uid, grid, labels, lesion_labels, name_of)
        mask, _ = canonical_zyx(stack.transpose(2, 1, 0), affine)
    return Volume(image=image.astype(np.float32, copy=False), spacing=spacing, patient=patient,
                  source=source, modality=modality, mask=mask)  # fmt: skip


def _has_pixel_tag(path: Path) -> bool:
    """Whether the bytes of the (7FE0,0010) Pixel Data tag occur in the file: pydicom drops an
    element the file ends inside of (a truncated encapsulated JPEG 2000 frame, say), so a
    header without pixel data may still be a truncated image."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _read_full(path: Path, name: str) -> Dataset:
    try:
        return pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        return _read_without_preamble(path, name)
    except _READ_ERRORS as exc:
        raise InputError(f"{name}: truncated or unreadable DICOM file ({error_name(exc)})") from exc


def _plain_pixels(info: FileInfo, name: str) -> np.ndarray:
    """Little-endian integer pixels read straight from the file, rescaled (float32)."""
    count = info.shape[0] * info.shape[1]
    dtype = np.dtype(info.dtype)
    try:
        with open(info.path, "rb") as fh:
            fh.seek(int(info.offset or 0))
            buf = fh.read(count * dtype.itemsize)
    except OSError as exc:
        raise InputError(f"{name}: unreadable file ({type(exc).__name__})") from exc
    if len(buf) < count * dtype.itemsize:
        raise InputError(
            f"{name}: truncated pixel data: expected {count * dtype.itemsize} bytes, got {len(buf)}"
        )
    values = np.frombuffer(buf, dtype=dtype).reshape(info.shape).astype(np.float32)
    if info.slope != 1.0 or info.intercept != 0.0:
        values = values * np.float32(info.slope) + np.float32(info.intercept)
    return values


def decoder_package(transfer_syntax: str) -> str:
    """The package to install to decode a compressed transfer syntax."""
    for prefix, package in _DECODER_PACKAGES.items():
        if transfer_syntax.startswith(prefix):
            return package
    return "pylibjpeg"


def _pixels(ds: Dataset, name: str) -> np.ndarray:
    """The stored pixel values: (R, C) or (frames, R, C)."""
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if ts and ts.is_compressed:
        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise InputError(
                f"{name}: cannot decode {ts.name} pixel data: no decoder installed "
                f"(pip install {decoder_package(ts)})"
            )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(
            f"{name}: expected grayscale pixels (SamplesPerPixel 1), got colour or malformed ones"
        )
    try:
        return ds.pixel_array
    except (*_READ_ERRORS, RuntimeError) as exc:
        # pydicom's first sentence says what is wrong; the rest is advice.
        why = library_text(exc)
        raise InputError(f"{name}: truncated or undecodable pixel data ({why})") from exc


def _frames(ds: Dataset, pixels: np.ndarray, name: str) -> tuple[list[_Frame], tuple[float, ...]]:
    """Per-frame positions and physical values, plus (orientation + pixel spacing)."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, pixels, name)
    if pixels.ndim != 2:
        raise InputError(f"{name}: expected per-frame positions in a multi-frame file, got none")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    return [_Frame(position, values, str(ds.get("SOPInstanceUID", "")))], _geometry(
        ds.ImageOrientationPatient, ds.get("PixelSpacing"), ds
    )


def _geometry(iop: Any, ps: Any, ds: Dataset) -> tuple[float, ...]:
    if ps is None:
        ps = ds.get("ImagerPixelSpacing") or [1.0, 1.0]
    return tuple(round(float(v), 4) for v in [*iop, *ps])


def _enhanced_frames(
    ds: Dataset, pixels: np.ndarray, name: str
) -> tuple[list[_Frame], tuple[float, ...]]:
    pixels = pixels[None] if pixels.ndim == 2 else pixels  # (F, R, C)
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else Dataset()
    frames, geometry = [], set()
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = _group(group, shared, "PlanePositionSequence", name)
        ori = _group(group, shared, "PlaneOrientationSequence", name)
        measures = _group(group, shared, "PixelMeasuresSequence", name)
        rescale = _optional_group(group, shared, "PixelValueTransformationSequence")
        slope = float(rescale.get("RescaleSlope", 1.0)) if rescale is not None else 1.0
        intercept = float(rescale.get("RescaleIntercept", 0.0)) if rescale is not None else 0.0
        values = pixels[f].astype(np.float32) * slope + intercept
        position = np.array([float(v) for v in pos.ImagePositionPatient])
        frames.append(_Frame(position, values))
        geometry.add(_geometry(ori.ImageOrientationPatient, measures.get("PixelSpacing"), ds))
    if len(geometry) != 1:
        raise InputError(
            f"{name}: expected one orientation in a multi-frame file, got {len(geometry)}"
        )
    return frames, geometry.pop()


def _group(group: Dataset, shared: Dataset, keyword: str, name: str) -> Dataset:
    found = _optional_group(group, shared, keyword)
    if found is None:
        raise InputError(f"{name}: expected {keyword} in a multi-frame file, got none")
    return found


def _check_geometry(geometry: tuple[float, ...], name: str) -> None:
    row, col, spacing = np.array(geometry[:3]), np.array(geometry[3:6]), np.array(geometry[6:8])
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{name}: expected a positive pixel spacing, got {spacing.tolist()}")
    unit = np.isclose(np.linalg.norm(row), 1, atol=1e-2) and np.isclose(
        np.linalg.norm(col), 1, atol=1e-2
    )
    if not (np.isfinite(geometry[:6]).all() and unit and abs(row @ col) < 1e-2):
        raise InputError(
            f"{name}: expected ImageOrientationPatient of two orthogonal unit vectors, got "
            f"{[round(v, 3) for v in geometry[:6]]}"
        )


def _optional_group(group: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    """The frame's functional group ``keyword``, else the shared one, else None."""
    for source in (group, shared):
        seq = source.get(keyword)
        if seq:
            return seq[0]
    return None


def _assemble(
    frames: list[_Frame], geometry: tuple[float, ...], name: str, instances: frozenset[str]
) -> tuple[np.ndarray, Grid, np.ndarray]:
    """The slices stacked in position order (K, R, C), their grid, and the affine from the
    stack's (column, row, slice) indices to RAS (what :func:`canonical_zyx` takes)."""
    shapes = sorted({f.pixels.shape for f in frames})
    if len(shapes) > 1:
        got = " and ".join("x".join(map(str, s)) for s in shapes)
        raise InputError(f"{name}: expected one slice shape in a series, got {got}")
    _check_geometry(geometry, name)
    row_dir, col_dir = np.array(geometry[:3]), np.array(geometry[3:6])
    normal = np.cross(row_dir, col_dir)
    if len(frames) == 1 and abs(normal[2]) < 0.9:
        # One sagittal, coronal or oblique image: resliced to axial it is one line of pixels.
        plane = (
            "sagittal"
            if abs(normal[0]) >= 0.9
            else "coronal"
            if abs(normal[1]) >= 0.9
            else "oblique"
        )
        raise InputError(f"{name}: a single {plane} image, not a volume to slice; skipped")
    proj = np.array([f.position @ normal for f in frames])
    order = np.argsort(proj, kind="stable")
    step = _slice_step(proj[order], name)
    data = np.stack([frames[i].pixels for i in order])  # (K, R, C)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * geometry[7]  # along a row: column index, column spacing
    affine[:3, 1] = col_dir * geometry[6]  # down a column: row index, row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = frames[order[0]].position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS -> RAS
    grid = Grid(
        positions=np.stack([frames[i].position for i in order]),
        sops=tuple(frames[i].sop for i in order),
        instances=instances,
        row_dir=row_dir,
        col_dir=col_dir,
        spacing=(geometry[6], geometry[7]),
        shape=(data.shape[1], data.shape[2]),
        step=step,
    )
    return data, grid, affine


def _slice_step(proj: np.ndarray, name: str) -> float:
    """The distance between slices; duplicates and gaps are errors."""
    if len(proj) < 2:
        return 1.0
    steps = np.diff(proj)
    if (steps < 1e-3).any():
        at = float(proj[1:][steps < 1e-3][0])
        raise InputError(
            f"{name}: expected distinct slice positions, got duplicates at {at:.2f} mm"
        )
    step = float(np.median(steps))
    off = np.abs(steps - step) > _GAP_TOLERANCE * step
    if off.any():
        raise InputError(
            f"{name}: expected slices every {step:.2f} mm, got a gap of "
            f"{float(steps[off].max()):.2f} mm (missing slices?)"
        )
    return step


class DicomReader:
    """The ``dicom`` input reader: one Volume per series (see the module docstring)."""

    def claims(self, files: list[Path]) -> bool:
        return bool(files)  # the fallback: whatever no other reader claims is tried as DICOM

    def discover(
        self, root: Path, cfg: PreprocessConfig, name_of: Namer, map_fn: MapFn
    ) -> Discovery:
        series, skipped = scan_dicom(root, name_of, map_fn)
        found = [
            Found(s, s.raw_patient, s.files[0], bool(s.masks),
                  (*s.files, *(m.path for m in s.masks)))
            for s in series
        ]  # fmt: skip
        ids = dict(series[0].label_ids) if series else {}
        return Discovery(found, skipped, {"background": 0, **ids} if ids else None)

    def read(
        self, item: object, patient: str, source: str, name_of: Namer, cfg: PreprocessConfig
    ) -> Volume:
        if not isinstance(item, Series):
            raise TypeError(f"expected a DICOM Series, got {type(item).__name__}")
        return read_series(item, patient, source, name_of, cfg.lesion_labels)
