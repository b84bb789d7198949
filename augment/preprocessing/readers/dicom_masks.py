"""Masks of DICOM series from DICOM Segmentation (SEG) and RT structure set (RTSTRUCT) files.

While scanning, :func:`mask_ref` reads what a SEG or RTSTRUCT refers to: a SEG's
ReferencedSeriesSequence (with its referenced instances), an RTSTRUCT's
ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence -> RTReferencedSeriesSequence
(with its ContourImageSequence); and the names of its segments (SegmentLabel) or regions of
interest (ROIName). :func:`match_masks` pairs them with the scanned series by those UIDs and
numbers the names: every distinct name (case and spacing ignored) over an input root is one
label id, 1, 2, ... in name order, so the store's ``label_ids`` map names to ids and
``preprocess.lesion_labels`` picks the lesion ids (with one name, its slices are the lesion
slices). Several masks of one series are merged (their union).

While reading, :func:`read_masks` lays the masks on the series' grid, in the series' slice
order: a SEG through highdicom, by its frames' source images when each frame names one in the
series (``get_pixels_by_source_instance``), else by geometry (``get_volume`` matched onto the
series' grid without resampling); an RTSTRUCT's closed planar contours rasterised per slice
(``skimage.draw.polygon2mask``, pixel centres inside the polygon; several contours of one region
on one slice combine by even-odd, so an inner contour is a hole). Where regions overlap, the
higher id wins, and ``lesion_labels`` ids win over the others.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from skimage.draw import polygon2mask

from augment.errors import InputError
from augment.preprocessing.readers.base import Namer

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

KINDS = {"SEG": "segmentation object (SEG)", "RTSTRUCT": "RT structure set (RTSTRUCT)"}
MAX_LABELS = 255  # the store's masks are uint8 label ids
_PLANE_TOLERANCE = 0.1  # a contour's distance from its slice, in slice steps
_GRID_TOLERANCE = 1e-2  # highdicom's match_geometry: voxels off an integer offset
_ERRORS = (
    OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
    OverflowError, RuntimeError, BytesLengthException, NotImplementedError, zlib.error,
    InvalidDicomError, struct.error,
)  # fmt: skip  # pydicom parses a sequence when it is first used: damage shows up then


@dataclass(frozen=True)
class MaskRef:
    """A SEG or RTSTRUCT file and what it refers to, from its header.

    Attributes:
        path: the file.
        kind: ``"SEG"`` or ``"RTSTRUCT"``.
        series: each SeriesInstanceUID it refers to, with the SOPInstanceUIDs of the images it
            refers to in that series (may be empty).
        labels: (segment number or ROI number, normalised name) of each segment or region
            with something to draw.
    """

    path: Path
    kind: str
    series: tuple[tuple[str, tuple[str, ...]], ...]
    labels: tuple[tuple[int, str], ...]

    @property
    def what(self) -> str:
        return KINDS[self.kind]

    def refers_to(self, series_uid: str, instances: frozenset[str]) -> bool:
        """Whether it refers to this series (to some of these images, when it names images)."""
        return any(uid == series_uid and (not sops or not instances.isdisjoint(sops))
                   for uid, sops in self.series)  # fmt: skip

    def images(self, series_uid: str) -> set[str]:
        """The images it refers to in a series."""
        return {sop for uid, sops in self.series if uid == series_uid for sop in sops}


@dataclass(frozen=True)
class Grid:
    """A series' slices as :func:`augment.preprocessing.readers.dicom.read_series` orders them.

    Attributes:
        positions: (K, 3) ImagePositionPatient (LPS mm) of each slice, in slice order.
        sops: the SOPInstanceUID of each slice ('' within a multi-frame file).
        instances: every SOPInstanceUID of the series' files.
        row_dir: the direction along a row (of increasing column index).
        col_dir: the direction down a column (of increasing row index).
        spacing: (between rows, between columns) mm.
        shape: (rows, columns).
        step: the distance between slices (mm), along ``row_dir x col_dir``.
    """

    positions: np.ndarray
    sops: tuple[str, ...]
    instances: frozenset[str]
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int]
    step: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


def error_name(exc: BaseException) -> str:
    """An exception's class name for a message (``struct.error`` is called ``error``)."""
    return "struct.error" if isinstance(exc, struct.error) else type(exc).__name__


def label_name(value: object, number: int, what: str) -> str:
    """A segment's or region's name, compared without case or repeated spaces."""
    text = " ".join(str(value or "").split()).lower()
    return text or f"{what} {number}"


def mask_ref(ds: Dataset, path: Path, name: str) -> MaskRef:
    """What a SEG or RTSTRUCT header refers to (its Modality is SEG or RTSTRUCT).

    Raises:
        InputError: it refers to no series, has nothing to draw, or its header is damaged.
    """
    kind = str(ds.get("Modality", "")).upper()
    try:
        return _mask_ref(ds, path, name, kind)
    except InputError:
        raise
    except _ERRORS as exc:
        raise InputError(
            f"{name}: {KINDS[kind]} with a malformed or truncated header ({error_name(exc)})"
        ) from exc


def _mask_ref(ds: Dataset, path: Path, name: str, kind: str) -> MaskRef:
    if kind == "SEG":
        series = _seg_references(ds)
        labels = tuple(
            (int(s.SegmentNumber), label_name(s.get("SegmentLabel"), int(s.SegmentNumber),
                                              "segment"))
            for s in ds.get("SegmentSequence") or []
        )  # fmt: skip
        where = "ReferencedSeriesSequence"
    else:
        series = _rtstruct_references(ds)
        labels = _roi_labels(ds)
        where = "ReferencedFrameOfReferenceSequence"
    what = KINDS[kind]
    if not series:
        raise InputError(f"{name}: {what} refers to no image series (no {where}), skipped")
    if not labels:
        raise InputError(f"{name}: {what} holds no segment or closed contour, skipped")
    return MaskRef(path, kind, series, labels)


def _series_ref(item: Dataset, images: str) -> tuple[str, tuple[str, ...]]:
    refs = item.get(images) or []
    return str(item.SeriesInstanceUID), tuple(str(r.ReferencedSOPInstanceUID) for r in refs)


def _seg_references(ds: Dataset) -> tuple[tuple[str, tuple[str, ...]], ...]:
    items = ds.get("ReferencedSeriesSequence") or []
    return tuple(_series_ref(item, "ReferencedInstanceSequence") for item in items)


def _rtstruct_references(ds: Dataset) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(
        _series_ref(item, "ContourImageSequence")
        for frame in ds.get("ReferencedFrameOfReferenceSequence") or []
        for study in frame.get("RTReferencedStudySequence") or []
        for item in study.get("RTReferencedSeriesSequence") or []
    )


def _roi_labels(ds: Dataset) -> tuple[tuple[int, str], ...]:
    """(ROI number, name) of each region with a closed planar contour."""
    names = {
        int(roi.ROINumber): roi.get("ROIName") for roi in ds.get("StructureSetROISequence") or []
    }
    labels = []
    for roi in ds.get("ROIContourSequence") or []:
        number = int(roi.ReferencedROINumber)
        if any(_closed(c) for c in roi.get("ContourSequence") or []):
            labels.append((number, label_name(names.get(number), number, "roi")))
    return tuple(labels)


def _closed(contour: Dataset) -> bool:
    return str(contour.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"


def match_masks(
    series: list[tuple[str, frozenset[str]]], masks: list[MaskRef]
) -> tuple[list[tuple[MaskRef, ...]], list[tuple[MaskRef, str]], dict[str, int]]:
    """Pair masks with series by the UIDs they refer to, and number the masks' names.

    Args:
        series: (SeriesInstanceUID, SOPInstanceUIDs) of each scanned series.
        masks: the scanned SEG and RTSTRUCT files.

    Returns:
        The masks of each series (in ``series`` order), the masks that fit no series with why,
        and the label ids by name (1, 2, ... in name order; empty without masks).

    Raises:
        InputError: more distinct names than a uint8 mask can hold.
    """
    found: list[list[MaskRef]] = [[] for _ in series]
    unmatched: list[tuple[MaskRef, str]] = []
    for mask in masks:
        hits = [i for i, (uid, sops) in enumerate(series) if mask.refers_to(uid, sops)]
        for i in hits:
            found[i].append(mask)
        if not hits:
            unmatched.append((mask, f"{mask.what} refers to a series that is not in the input"))
    used = sorted({n for group in found for m in group for _, n in m.labels})
    if len(used) > MAX_LABELS:
        raise InputError(
            f"expected at most {MAX_LABELS} distinct segment or ROI names, got {len(used)}"
        )
    return [tuple(g) for g in found], unmatched, {n: i + 1 for i, n in enumerate(used)}


def read_masks(
    masks: tuple[MaskRef, ...],
    series_uid: str,
    grid: Grid,
    label_ids: dict[str, int],
    lesion_labels: list[int] | None,
    name_of: Namer,
) -> np.ndarray:
    """The union of a series' masks as label ids, (K, R, C) uint8 in the grid's slice order.

    Args:
        masks: the series' masks (``Series.masks``).
        series_uid: the series' SeriesInstanceUID.
        grid: the series' slices.
        label_ids: label id of each segment or ROI name.
        lesion_labels: ids that win where regions overlap (then the higher id wins).
        name_of: how messages name a file.

    Raises:
        InputError: a mask refers to an image not in the series, or does not fit its grid.
    """
    out = np.zeros((len(grid.positions), *grid.shape), dtype=np.uint8)
    # Where regions overlap the higher rank wins: lesion ids above the others, then by id.
    rank = np.arange(MAX_LABELS + 1) + (MAX_LABELS + 1) * np.isin(
        np.arange(MAX_LABELS + 1), lesion_labels or []
    )
    rank[0] = -1
    for mask in masks:
        name = name_of(mask.path)
        missing = mask.images(series_uid) - grid.instances
        if missing:
            raise InputError(
                f"{name}: {mask.what} refers to {len(missing)} image(s) not in its series"
            )
        names = dict(mask.labels)
        try:
            ds = pydicom.dcmread(mask.path, force=True)  # the scan found it a SEG or RTSTRUCT
            read = _seg if mask.kind == "SEG" else _rtstruct
            for number, part in read(ds, mask, grid, name):  # one at a time: bounded memory
                label = label_ids[names[number]]
                out[part & (rank[out] <= rank[label])] = label
        except InputError:
            raise
        except _ERRORS as exc:
            raise InputError(f"{name}: unreadable {mask.what} ({error_name(exc)})") from exc
    return out


# ------------------------------------------------------------------ SEG


def _seg(ds: Dataset, mask: MaskRef, grid: Grid, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """(segment number, (K, R, C) bool on the grid) of each segment."""
    from highdicom.seg import Segmentation  # heavy: loaded only when a SEG is read

    seg = Segmentation.from_dataset(ds, copy=False)
    by_source = _by_source(ds, grid)
    # Stored values, not rescaled: a fractional segment counts where it is at least half.
    top = int(ds.get("MaximumFractionalValue", 1) or 1)
    top = top if str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL" else 1
    for number, _ in mask.labels:
        if by_source:
            pixels = seg.get_pixels_by_source_instance(
                list(grid.sops), segment_numbers=[number], assert_missing_frames_are_empty=True,
                rescale_fractional=False, dtype=np.uint8,
            )[..., 0]  # fmt: skip
        else:
            pixels = _by_geometry(seg, number, grid, name)
        if pixels.shape[1:] != grid.shape:
            raise InputError(
                f"{name}: expected SEG frames of {grid.shape[0]}x{grid.shape[1]} pixels like "
                f"its series, got {pixels.shape[1]}x{pixels.shape[2]}"
            )
        yield number, 2 * pixels.astype(np.uint16) >= top


def _by_source(ds: Dataset, grid: Grid) -> bool:
    """Whether every SEG frame names its source image among the series' single-frame files
    (and says its pixels lie where the source's do), so frames map to slices by UID."""
    if "" in grid.sops or len(set(grid.sops)) != len(grid.sops):
        return False
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        sources = [
            src
            for der in frame.get("DerivationImageSequence") or []
            for src in der.get("SourceImageSequence") or []
        ]
        if not any(
            str(s.get("ReferencedSOPInstanceUID", "")) in grid.instances
            and str(s.get("SpatialLocationsPreserved", "")).upper() == "YES"
            for s in sources
        ):
            return False
    return True


def _by_geometry(seg: Segmentation, number: int, grid: Grid, name: str) -> np.ndarray:
    """The SEG's volume matched onto the grid (permuted, flipped, padded, never resampled)."""
    from highdicom import VolumeGeometry

    affine = np.eye(4)  # highdicom's (slice, row, column) -> LPS
    affine[:3, 0] = grid.normal * grid.step
    affine[:3, 1] = grid.col_dir * grid.spacing[0]
    affine[:3, 2] = grid.row_dir * grid.spacing[1]
    affine[:3, 3] = grid.positions[0]
    target = VolumeGeometry(affine, (len(grid.positions), *grid.shape), "PATIENT")
    off_grid = InputError(
        f"{name}: expected a SEG on its series' grid (same orientation, pixel spacing and "
        "slice positions), got a different one"
    )
    try:
        volume = seg.get_volume(segment_numbers=[number], rescale_fractional=False, dtype=np.uint8)
        # match_geometry would take every n-th pixel of a finer SEG: a resampling, refused
        same = np.allclose(volume.pixel_spacing, grid.spacing, rtol=1e-3)
        matched = volume.match_geometry(target, tol=_GRID_TOLERANCE) if same else None
    except (RuntimeError, ValueError) as exc:  # highdicom: no regular volume, or not matchable
        raise off_grid from exc
    if matched is None:
        raise off_grid
    return np.asarray(matched.array).reshape(target.spatial_shape)


# ------------------------------------------------------------------ RTSTRUCT


def _rtstruct(
    ds: Dataset, mask: MaskRef, grid: Grid, name: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(ROI number, (K, R, C) bool on the grid) of each ROI, from its closed planar contours."""
    wanted = dict(mask.labels)
    for roi in ds.get("ROIContourSequence") or []:
        if int(roi.ReferencedROINumber) not in wanted:
            continue
        planes = np.zeros((len(grid.positions), *grid.shape), bool)
        for contour in roi.get("ContourSequence") or []:
            if _closed(contour):
                k, drawn = _contour(contour, grid, name)
                planes[k] ^= drawn  # even-odd: a contour inside another is a hole
        yield int(roi.ReferencedROINumber), planes


def _contour(contour: Dataset, grid: Grid, name: str) -> tuple[int, np.ndarray]:
    """The slice a closed contour lies on and the pixels whose centres it encloses."""
    for ref in contour.get("ContourImageSequence") or []:
        if str(ref.get("ReferencedSOPInstanceUID", "")) not in grid.instances:
            raise InputError(f"{name}: a contour refers to an image not in its series")
    points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise InputError(f"{name}: expected finite contour coordinates, got NaN or infinity")
    depth = points @ grid.normal
    along = grid.positions @ grid.normal
    k = int(np.argmin(np.abs(along - depth.mean())))
    tolerance = _PLANE_TOLERANCE * grid.step
    if np.ptp(depth) > 2 * tolerance or abs(along[k] - depth.mean()) > tolerance:
        raise InputError(
            f"{name}: expected contours on the planes of its series' slices, got one "
            f"{float(np.min(np.abs(along - depth.mean()))):.2f} mm off the nearest slice"
        )
    offset = points - grid.positions[k]
    rows = offset @ grid.col_dir / grid.spacing[0]
    cols = offset @ grid.row_dir / grid.spacing[1]
    return k, polygon2mask(grid.shape, np.column_stack([rows, cols]))
