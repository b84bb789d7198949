"""Writers and readers of synthetic slices: NIfTI (nnU-Net), PNG, DICOM and the npz stream.

Every function here works on one 2D slice (or one stream of them) and knows nothing about
models; :mod:`augment.sampling.stage` decides what goes where. All writers are deterministic: the same
array gives the same bytes (gzip without a timestamp, PNG without metadata, DICOM UIDs derived
from a key), so the same seed gives byte-identical files.

NIfTI axis convention: a slice ``img`` of shape (rows y, columns x) is stored as the volume
``img.T[:, :, None]`` of shape (x, y, 1) with the affine ``diag(-sx, -sy, sz, 1)``. In RAS+
world terms voxel axis i runs to the patient's left and j to posterior: the standard axial DICOM
(LPS) orientation, so ITK-based readers (SimpleITK, nnU-Net's default reader) see an identity
direction and an array (1, y, x) equal to the slice.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from augment.errors import InputError
from augment.io.jsonfile import load_json

NIFTI_ENDING = ".nii.gz"
DICOM_SCALE = 2000.0  # [-1, 1] -> int16 [-2000, 2000]: 4000 grey levels, far inside int16


# --------------------------------------------------------------------------- NIfTI


def slice_affine(spacing: tuple[float, float], thickness: float) -> np.ndarray:
    """The affine of a stored slice: voxel (i=x, j=y, k) -> RAS+ mm (see the module docstring).

    Args:
        spacing: (y, x) in-plane pixel size in mm.
        thickness: through-plane voxel size in mm.
    """
    sy, sx = spacing
    return np.diag([-float(sx), -float(sy), float(thickness), 1.0])


def nifti_bytes(
    slice2d: np.ndarray, spacing: tuple[float, float], thickness: float, dtype: type
) -> bytes:
    """Encode a (y, x) slice as a gzip-compressed single-file NIfTI-1 volume (x, y, 1).

    The gzip header carries no time stamp and no file name, so equal arrays give equal bytes.
    """
    arr = np.ascontiguousarray(slice2d, dtype=dtype)
    head = _nifti_header(arr.shape, arr.dtype.str, tuple(map(float, spacing)), float(thickness))
    # NIfTI stores voxels in Fortran order: volume (x, y, 1) = slice.T, whose Fortran-order
    # bytes are the slice's C-order bytes.
    return gzip.compress(head + arr.tobytes(), compresslevel=1, mtime=0)


@functools.lru_cache(maxsize=32)
def _nifti_header(
    shape_yx: tuple[int, int], dtype: str, spacing: tuple[float, float], thickness: float
) -> bytes:
    """nibabel's header (and extension flag) for every slice of one shape, dtype and geometry.

    Built once per run and reused: nibabel's per-image overhead would otherwise cost more than
    the compression.
    """
    data = np.zeros((shape_yx[1], shape_yx[0], 1), dtype=np.dtype(dtype))  # (x, y, 1)
    img = nib.Nifti1Image(data, slice_affine(spacing, thickness))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return raw[: len(raw) - data.nbytes]


def write_nifti(
    path: Path, slice2d: np.ndarray, spacing: tuple[float, float], thickness: float, dtype: type
) -> None:
    """Write a (y, x) slice to ``path`` (``.nii.gz``); see :func:`nifti_bytes`."""
    Path(path).write_bytes(nifti_bytes(slice2d, spacing, thickness, dtype))


def read_nifti_slice(path: Path) -> np.ndarray:
    """Read a slice written by :func:`write_nifti` back as its (y, x) array."""
    data = np.asanyarray(nib.load(str(path)).dataobj)  # (x, y, 1)
    return np.ascontiguousarray(data[:, :, 0].T)


# --------------------------------------------------------------------------- PNG


def to_png_levels(x: np.ndarray, bits: int) -> np.ndarray:
    """Map [-1, 1] linearly onto the full 8- or 16-bit grey range."""
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.rint((np.clip(x, -1, 1) + 1) * (top / 2)).astype(dtype)


def from_png_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`to_png_levels`, as float32 in [-1, 1]."""
    top = (1 << bits) - 1
    return (levels.astype(np.float32) * (2 / top) - 1).astype(np.float32)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a 2D uint8 or uint16 array as a greyscale PNG with no metadata chunks."""
    from PIL import Image  # only the png format pays for the import

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)


def read_png(path: Path) -> np.ndarray:
    """Read a greyscale PNG as its integer array."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


# --------------------------------------------------------------------------- DICOM


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

    from augment.preprocessing.readers.dicom import part10_dataset

    sop_uid = dicom_uid(series.key, series.series_number, case)
    ds = part10_dataset(SecondaryCaptureImageStorage, sop_uid)
    _synthetic_patient(ds, case)
    _synthetic_study(ds, series, number)
    _pixels(ds, pixels, series)
    ds.ImageComments = comment
    ds.save_as(path, enforce_file_format=True)


def _synthetic_patient(ds: object, case: str) -> None:
    ds.PatientName = "SYNTHETIC^AUGMENT"
    ds.PatientID = case
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic image sampled from a generative model; no patient data"


def _synthetic_study(ds: object, series: DicomSeries, number: int) -> None:
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


def _pixels(ds: object, pixels: np.ndarray, series: DicomSeries) -> None:
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


def read_dicom(path: Path) -> tuple[np.ndarray, object]:
    """Read a file written by :func:`write_dicom`: (stored pixel array, dataset)."""
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


# --------------------------------------------------------------------------- npz stream


class NpyStream:
    """Append batches to a raw file, then pack it as one ``.npy`` member of a zip (``.npz``).

    Memory stays flat: batches go to disk as they come and the packing copies in chunks.
    """

    def __init__(self, raw: Path, dtype: type, item_shape: tuple[int, ...]) -> None:
        self.raw = Path(raw)
        self.dtype = np.dtype(dtype)
        self.item_shape = item_shape
        self.count = 0
        self._fh = open(self.raw, "wb")  # noqa: SIM115 (closed in pack)

    def append(self, batch: np.ndarray) -> None:
        """Append a batch of shape (B, *item_shape)."""
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.item_shape:
            raise ValueError(f"expected items of shape {self.item_shape}, got {batch.shape[1:]}")
        self._fh.write(batch.tobytes())
        self.count += batch.shape[0]

    def pack(self, zf: zipfile.ZipFile, name: str, chunk: int = 1 << 24) -> None:
        """Write the stream as ``name.npy`` into ``zf`` and delete the raw file."""
        self._fh.close()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.item_shape),
        }
        with zf.open(_entry(name), "w", force_zip64=True) as dst, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_2_0(dst, header)
            while block := src.read(chunk):
                dst.write(block)
        self.raw.unlink()

    def close(self) -> None:
        """Close the raw file without packing (on failure)."""
        self._fh.close()


def pack_small(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Write a small in-memory array as ``name.npy`` into ``zf``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    zf.writestr(_entry(name), buf.getvalue())


def _entry(name: str) -> zipfile.ZipInfo:
    # A fixed date: zipfile would stamp the current time and break byte-identical reruns.
    return zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))


# --------------------------------------------------------------------------- nnU-Net layout


def write_json_with_list(path: Path, head: dict, key: str, items: Iterable[object]) -> None:
    """Write ``head`` as a JSON object with one more key whose list is streamed from ``items``.

    The list may be long (one entry per case): it is never held in memory as a whole.
    """
    body = json.dumps(head, indent=2, sort_keys=True)
    with open(path, "w") as fh:
        fh.write(body[:-2] + ",\n" if head else "{\n")
        fh.write(f"  {json.dumps(key)}: [")
        for i, item in enumerate(items):
            fh.write(("," if i else "") + "\n    " + json.dumps(item, sort_keys=True))
        fh.write("\n  ]\n}\n")


@dataclass
class RealSet:
    """An nnU-Net v2 raw data set to merge synthetic cases into.

    Attributes:
        root: its directory.
        dataset: its ``dataset.json``.
        cases: sorted case identifiers (each has ``imagesTr/<case>_0000`` and a label).
        splits: its ``splits_final.json`` when it has one, else None.
    """

    root: Path
    dataset: dict
    cases: list[str]
    splits: list[dict] | None


def read_real_set(root: Path) -> RealSet:
    """Open a single-channel ``.nii.gz`` nnU-Net raw data set and check its layout.

    Raises:
        InputError: a missing file, another file ending, more than one channel, an image
            without its label, or a numTraining that disagrees with the files; named.
    """
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root}: not an nnU-Net raw data set, dataset.json is missing")
    dataset = load_json(path, InputError)
    ending = dataset.get("file_ending")
    if ending != NIFTI_ENDING:
        raise InputError(f"{path}: expected file_ending {NIFTI_ENDING!r}, got {ending!r}")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise InputError(f"{path}: expected one channel in channel_names, got {channels!r}")
    cases = sorted(
        p.name[: -len("_0000" + NIFTI_ENDING)]
        for p in (root / "imagesTr").glob("*_0000" + NIFTI_ENDING)
    )
    if not cases:
        raise InputError(f"{root / 'imagesTr'}: expected <case>_0000{NIFTI_ENDING} files, got none")
    for case in cases:
        if not (root / "labelsTr" / f"{case}{NIFTI_ENDING}").is_file():
            raise InputError(f"{root / 'imagesTr' / case}_0000{NIFTI_ENDING}: no label in labelsTr")
    if dataset.get("numTraining") != len(cases):
        got = dataset.get("numTraining")
        raise InputError(f"{path}: numTraining is {got!r}, but imagesTr holds {len(cases)} cases")
    return RealSet(root, dataset, cases, _read_splits(root, set(cases)))


def _read_splits(root: Path, cases: set[str]) -> list[dict] | None:
    path = root / "splits_final.json"
    if not path.is_file():
        return None
    splits = load_json(path, InputError)
    ok = isinstance(splits, list) and all(
        isinstance(f, dict)
        and set(f) >= {"train", "val"}
        and set(f["train"]) | set(f["val"]) <= cases
        for f in splits
    )
    if not ok or not splits:
        expected = "a list of {'train': [...], 'val': [...]} over the cases of imagesTr"
        raise InputError(f"{path}: expected {expected}")
    return splits


def real_folds(real: RealSet, n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """The real cases' folds: the data set's own ``splits_final.json`` or a shuffled k-fold.

    The k-fold follows nnU-Net's default (sorted cases, KFold(5, shuffle, random_state 12345)).

    Raises:
        InputError: fewer real cases than folds.
    """
    if real.splits is not None:
        return [{"train": list(f["train"]), "val": list(f["val"])} for f in real.splits]
    if len(real.cases) < n_folds:
        raise InputError(
            f"{real.root}: expected at least {n_folds} cases for {n_folds} folds, "
            f"got {len(real.cases)}"
        )
    from sklearn.model_selection import KFold

    cases = np.array(real.cases)
    kfold = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        {"train": cases[tr].tolist(), "val": cases[va].tolist()} for tr, va in kfold.split(cases)
    ]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst``, copying where links are impossible (another device)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
