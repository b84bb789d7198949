"""Fuzzing preprocess with damaged DICOM and NIfTI files.

Valid seeds (a small DICOM series, and a Decathlon set as ``.nii.gz`` and as ``.nii``, with
masks) are damaged by a seeded mutator: bit flips (mostly in the header), truncation, bytes
overwritten, inserted or deleted, header fields set to zero, negative, huge, NaN or text values,
wrong VRs, wrong value lengths, deleted or swapped header fields, and files deleted, duplicated,
emptied or swapped. ``preprocess`` then runs on each case, in process, and every case must end
in one of two ways:

- ingested: a SliceStore whose images are finite and within [-1, 1], with no degenerate volume
  or slice (see :func:`_store_problems`), every input file accounted for;
- skipped with a reason: each skipped file has a non-empty, one-line reason, and an error, if
  any, is an :class:`~augment.errors.AugmentError` with a one-line message (``InputError``
  "got none" when every input was skipped is fine).

Never a traceback (any other exception), never a NaN, out-of-range or degenerate slice.

A case is ``<format>-<index>`` (format dicom, niigz or nii); its mutations depend on that
name only, and every failure message names the case and its mutations. To rerun some cases::

    AUGMENT_FUZZ_CASES=dicom-0123,nii-0007 pytest tests/preprocessing/test_fuzz.py -k named

The default run has a few dozen cases; ``-m slow`` runs 2,400 (the default ones among them).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
import time
import traceback
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from augment.config import PreprocessConfig
from augment.contracts.slice_store import SliceStore
from augment.errors import AugmentError
from augment.preprocessing.privacy import ENV_VAR, file_token, load_key, pseudonym
from augment.preprocessing.stage import preprocess, skipped_record
from tests.preprocessing.badinputs import SPACING, dicom_slice, phantom, write_nifti

FORMATS = ("dicom", "niigz", "nii")
SHAPE = (6, 24, 20)  # tiny volumes: a case costs a few ms of preprocess
PATIENTS = ("FUZZ-1", "FUZZ-2")  # FUZZ-1 is damaged; FUZZ-2, when present, is a clean sibling
# What must never reach a skip reason, an error message or the store (see badinputs).
IDENTIFIERS = ("FUZZ-", "Doe^Jane", "ACC98765", "Saint Example Hospital", "19700101")
DEFAULT_CASES = [f"dicom-{i:04d}" for i in range(18)] + [
    f"{fmt}-{i:04d}" for fmt in ("niigz", "nii") for i in range(9)
]
SLOW_PER_FORMAT = {"dicom": 1200, "niigz": 600, "nii": 600}
SLOW_CHUNK = 100
CASE_SECONDS = 30.0  # a case slower than this is a finding too (a header that costs minutes)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "test-key")


def _cfg(fmt: str) -> PreprocessConfig:
    return PreprocessConfig(
        size=32,
        min_body_fraction=0.0,  # every slice is kept: a damaged slice cannot hide in the filter
        workers=1,
        strict=False,
        labels_from="csv" if fmt == "dicom" else "mask",
        max_voxels=2**22,  # a header may declare up to 4M voxels: bounds each case's memory
    )


# ---------------------------------------------------------------- the seeds


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["augment-fuzz", *map(str, parts)])  # deterministic


def _seed_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """badinputs' phantom with a body that narrows from slice to slice, as a real one does: no
    two slices alike, even where a wrong rescale saturates every pixel to -1 or 1."""
    image, mask = phantom(SHAPE, seed=seed)
    _, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    scale = 1.0 - 0.06 * np.arange(SHAPE[0])[:, None, None]
    outside = (y / (0.8 * scale)) ** 2 + (x / (0.9 * scale)) ** 2 >= 1
    air = -1000.0 + np.random.default_rng(seed + 100).normal(0, 5, SHAPE)
    image[outside] = air[outside]
    mask[outside] = 0
    return image.astype(np.float32), mask


def _write_dicom_seed(folder: Path, patient: str, seed: int) -> None:
    image, _ = _seed_volume(seed)
    folder.mkdir(parents=True)
    series, study = _uid("series", patient), _uid("study", patient)
    for z in range(SHAPE[0]):
        position = (-50.0, -40.0, -100.0 + z * SPACING[0])
        ds = dicom_slice(image[z], position, SPACING[1:], patient, series)
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid("sop", patient, z)
        ds.InstanceNumber = z + 1
        ds.save_as(folder / f"IM{z:04d}.dcm", enforce_file_format=True)


def _write_nifti_seed(root: Path, suffix: str) -> None:
    for seed, patient in enumerate(PATIENTS):
        image, mask = _seed_volume(seed)
        for path, data, dtype in (
            (root / "imagesTr" / f"{patient}_0000{suffix}", image, np.float32),
            (root / "labelsTr" / f"{patient}{suffix}", mask, np.uint8),
        ):
            plain = write_nifti(path.with_name(path.name.removesuffix(".gz")), data, SPACING, dtype)
            if suffix == ".nii.gz":  # gzip without a time stamp: the same bytes every run
                path.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
                plain.unlink()
    (root / "dataset.json").write_text('{"labels": {"background": 0, "lesion": 1}}')


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-seeds")
    for seed, patient in enumerate(PATIENTS):
        _write_dicom_seed(root / "dicom" / f"P{seed + 1}", patient, seed)
    _write_nifti_seed(root / "niigz", ".nii.gz")
    _write_nifti_seed(root / "nii", ".nii")
    return root


def _copy_seed(seeds: Path, fmt: str, dest: Path, companion: bool) -> None:
    shutil.copytree(seeds / fmt, dest)
    if companion:
        return
    if fmt == "dicom":
        shutil.rmtree(dest / "P2")
    else:
        for p in dest.rglob(f"{PATIENTS[1]}*"):
            p.unlink()


def _target_files(fmt: str, inp: Path) -> list[Path]:
    """The damaged patient's files (FUZZ-1)."""
    if fmt == "dicom":
        return sorted((inp / "P1").rglob("*.dcm"))
    return sorted(p for p in inp.rglob(f"{PATIENTS[0]}*") if p.is_file())


# ---------------------------------------------------------------- byte-level mutations


def _pick_offset(rng: np.random.Generator, size: int, header: int) -> int:
    """An offset in [0, size): in the first ``header`` bytes three times out of four."""
    if size <= 0:
        return 0
    if rng.random() < 0.75:
        return int(rng.integers(0, max(1, min(header, size))))
    return int(rng.integers(0, size))


def _bytes_mutation(data: bytes, rng: np.random.Generator, header: int) -> tuple[bytes, str]:
    """Flip bits, truncate, overwrite, insert, delete or append bytes."""
    kind = rng.choice(["flip", "flip", "flip", "truncate", "overwrite", "insert", "delete",
                       "append"])  # fmt: skip
    buf = bytearray(data)
    if kind == "flip" or not buf:
        n = int(rng.integers(1, 9))
        offsets = sorted(_pick_offset(rng, len(buf), header) for _ in range(n))
        for off in offsets:
            if buf:
                buf[off] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf), f"flip {n} bit(s) at {offsets}"
    if kind == "truncate":
        cut = (
            _pick_offset(rng, len(buf), header)
            if rng.random() < 0.5
            else int(rng.integers(0, len(buf)))
        )
        return bytes(buf[:cut]), f"truncate to {cut} of {len(buf)} bytes"
    off = _pick_offset(rng, len(buf), header)
    n = int(rng.integers(1, 17))
    if kind == "overwrite":
        fill = rng.choice(["zeros", "ones", "random"])
        new = {"zeros": b"\0" * n, "ones": b"\xff" * n}.get(str(fill)) or rng.bytes(n)
        buf[off : off + n] = new[: len(buf[off : off + n])]
        return bytes(buf), f"overwrite {n} bytes at {off} with {fill}"
    if kind == "insert":
        return bytes(buf[:off] + rng.bytes(n) + buf[off:]), f"insert {n} random bytes at {off}"
    if kind == "delete":
        return bytes(buf[:off] + buf[off + n :]), f"delete {n} bytes at {off}"
    n = int(rng.choice([1, 7, 128, 4096]))
    return bytes(buf) + rng.bytes(n), f"append {n} random bytes"


# ---------------------------------------------------------------- DICOM elements (raw)

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


@dataclass
class _Element:
    tag: int  # group << 16 | element
    vr: bytes
    value: bytes
    length: int | None = None  # the declared length, when it is to lie about the value's

    def encode(self) -> bytes:
        group, elem = self.tag >> 16, self.tag & 0xFFFF
        length = len(self.value) if self.length is None else self.length
        head = struct.pack("<HH", group, elem) + self.vr
        if self.vr in _LONG_VRS:
            head += b"\0\0" + struct.pack("<I", length & 0xFFFFFFFF)
        else:
            head += struct.pack("<H", length & 0xFFFF)
        return head + self.value


def _parse_dicom(data: bytes) -> list[_Element] | None:
    """The elements of an explicit VR little endian file without sequences (the seeds), or
    None when the bytes do not parse so (an earlier mutation broke them)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    out, pos = [], 132
    while pos < len(data):
        if pos + 8 > len(data):
            return None
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if not vr.isalpha() or not vr.isupper():
            return None
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > len(data):
            return None
        out.append(_Element(group << 16 | elem, vr, data[start : start + length]))
        pos = start + length
    return out


def _build_dicom(elements: list[_Element]) -> bytes:
    """The file of ``elements`` in tag order (stable: a duplicated element stays beside its
    original), with the file meta group length that matches them."""
    elements = sorted(elements, key=lambda e: e.tag)
    meta = sum(len(e.encode()) for e in elements if e.tag >> 16 == 2 and e.tag != 0x00020000)
    for e in elements:
        if e.tag == 0x00020000 and e.vr == b"UL":
            e.value = struct.pack("<I", meta)
    return b"\0" * 128 + b"DICM" + b"".join(e.encode() for e in elements)


def _text(*values: str, pad: bytes = b" ") -> bytes:
    raw = "\\".join(values).encode("latin-1")
    return raw + pad if len(raw) % 2 else raw


def _us(*values: int) -> bytes:
    return b"".join(struct.pack("<H", v & 0xFFFF) for v in values)


_TAGS = {
    "TransferSyntaxUID": 0x00020010, "ImageType": 0x00080008, "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018, "Modality": 0x00080060, "PatientID": 0x00100020,
    "SliceThickness": 0x00180050, "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E, "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037, "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004, "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010, "Columns": 0x00280011, "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100, "BitsStored": 0x00280101, "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103, "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053, "PixelData": 0x7FE00010,
}  # fmt: skip
_US_BAD = (0, 1, 2, 3, 7, 8, 12, 16, 17, 23, 25, 32, 48, 64, 255, 4096, 32768, 65535)
_NUM_BAD = ("0", "-0", "-1", "1e30", "-1e30", "1e-30", "1e308", "nan", "inf", "-inf", "abc",
            "", "1.5e", "5000", "-5000", " ")  # fmt: skip
# fmt: off
_BAD_VALUES: dict[str, tuple[bytes, list[bytes]]] = {
    "Rows": (b"US", [_us(v) for v in _US_BAD] + [b"", b"\x18", _us(24, 24)]),
    "Columns": (b"US", [_us(v) for v in _US_BAD] + [b"", _us(20, 1)]),
    "BitsAllocated": (b"US", [_us(v) for v in _US_BAD]),
    "BitsStored": (b"US", [_us(v) for v in _US_BAD]),
    "HighBit": (b"US", [_us(v) for v in _US_BAD]),
    "PixelRepresentation": (b"US", [_us(v) for v in (0, 2, 255, 65535)]),
    "SamplesPerPixel": (b"US", [_us(v) for v in (0, 2, 3, 4, 65535)]),
    "PhotometricInterpretation": (b"CS", [_text(v) for v in (
        "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "", "XYZ", "MONOCHROME2\\RGB")]),
    "PixelSpacing": (b"DS", [_text(*v) for v in (
        ("0", "0"), ("-1", "2"), ("1e30", "1e30"), ("nan", "nan"), ("inf", "1"), ("2",),
        ("1e-30", "1e-30"), ("2", "2", "2"), ("abc", "def"), ("2000", "0.002"), ("",),
        ("1e6", "2"), ("2", "1e-6"))]),
    "ImagePositionPatient": (b"DS", [_text(*v) for v in (
        ("nan", "0", "0"), ("0", "0", "inf"), ("1e30", "1e30", "1e30"), ("0", "0"),
        ("0", "0", "0", "0"), ("abc", "0", "0"), ("-50", "-40", "-100"), ("-50", "-40", "-97.5"),
        ("-50", "-40", "1e30"), ("",), ("-50", "-40", "-90.0001"))]),
    "ImageOrientationPatient": (b"DS", [_text(*v) for v in (
        ("0",) * 6, ("1", "0", "0", "0", "1"), ("1", "0", "0", "1", "0", "0"),
        ("nan", "0", "0", "0", "1", "0"), ("2", "0", "0", "0", "2", "0"),
        ("0", "1", "0", "0", "0", "-1"), ("1", "0", "0", "0", "-1", "0"),
        ("0", "1", "0", "1", "0", "0"), ("1", "0", "0", "0", "0.8", "-0.6"), ("abc",) * 6,
        ("1e30", "0", "0", "0", "1", "0"), ("1", "0", "0", "0", "1", "0", "0"))]),
    "RescaleSlope": (b"DS", [_text(v) for v in _NUM_BAD]),
    "RescaleIntercept": (b"DS", [_text(v) for v in _NUM_BAD]),
    "SliceThickness": (b"DS", [_text(v) for v in _NUM_BAD]),
    "NumberOfFrames": (b"IS", [_text(v) for v in (
        "0", "1", "2", "-1", "1000", "2147483648", "abc", "1.5", "")]),
    "Modality": (b"CS", [_text(v) for v in (
        "MR", "SEG", "RTSTRUCT", "", "OT", "PT", "XX", "ct", "CT\\MR")]),
    "TransferSyntaxUID": (b"UI", [_text(v, pad=b"\0") for v in (
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.201", "1.2.3.4", "")]),
    "SOPClassUID": (b"UI", [_text(v, pad=b"\0") for v in (
        "1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3", "")]),
    "ImageType": (b"CS", [_text(*v) for v in (
        ("ORIGINAL", "PRIMARY", "LOCALIZER"), ("DERIVED", "SECONDARY", "MOSAIC"), ("",))]),
    "SeriesInstanceUID": (b"UI", [_text(v, pad=b"\0") for v in ("1.2.3.4.5", "")]),
    "PatientID": (b"LO", [_text(v) for v in ("", "  ", "FUZZ-9")]),
    "PixelData": (b"OW", []),  # values made from the element's own (see _set_value)
}
# fmt: on


def _set_value(el: _Element, keyword: str, rng: np.random.Generator) -> str:
    vr, pool = _BAD_VALUES[keyword]
    if keyword == "PixelData":
        choice = str(rng.choice(["half", "odd", "empty", "double", "two bytes more"]))
        n = len(el.value)
        el.value = {
            "half": el.value[: n // 2],
            "odd": el.value[:-1],
            "empty": b"",
            "double": el.value * 2,
            "two bytes more": el.value + b"\0\0",
        }[choice]
        return f"PixelData {choice} ({len(el.value)} bytes)"
    value = pool[int(rng.integers(len(pool)))]
    el.vr, el.value = vr, value
    return f"{keyword} = {value!r}"


def _element_mutation(elements: list[_Element], rng: np.random.Generator, plan: dict) -> str:
    """Set, retype, mis-length, delete, swap or duplicate elements; ``plan`` carries the
    choices, so that the same mutation can be applied to every file of a series."""
    kind = plan.setdefault(
        "kind", str(rng.choice(["set"] * 5 + ["vr", "length", "delete", "swap", "duplicate"]))
    )
    by_tag = {e.tag: e for e in elements}
    if kind == "set":
        keyword = plan.setdefault("keyword", str(rng.choice(sorted(_BAD_VALUES))))
        el = by_tag.get(_TAGS[keyword])
        if el is None:
            el = _Element(_TAGS[keyword], _BAD_VALUES[keyword][0], b"")
            elements.append(el)
        state = plan.setdefault("state", int(rng.integers(2**31)))
        return "set " + _set_value(el, keyword, np.random.default_rng(state))
    tags = [e.tag for e in elements]
    tag = plan.setdefault("tag", int(rng.choice(tags)) if rng.random() < 0.5 else
                          _TAGS[str(rng.choice(sorted(_TAGS)))])  # fmt: skip
    el = by_tag.get(tag)
    if el is None:
        return f"({kind}: no element {tag:08X})"
    if kind == "vr":
        new = plan.setdefault("vr", bytes(rng.choice(
            [b"US", b"SS", b"UL", b"FL", b"FD", b"DS", b"IS", b"CS", b"UI", b"OB", b"OW",
             b"SQ", b"UN", b"AT", b"DA", b"PN", b"ZZ"])))  # fmt: skip
        old, el.vr = el.vr, new
        return f"element {tag:08X} VR {old.decode()} -> {new.decode(errors='replace')}"
    if kind == "length":
        n = len(el.value)
        el.length = plan.setdefault("length", int(rng.choice(
            [0, 1, n + 1, n + 2, n * 2 + 2, 0xFFFE, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, max(n - 2, 0)]
        )))  # fmt: skip
        return f"element {tag:08X} declared length {n} -> {el.length}"
    if kind == "delete":
        elements.remove(el)
        return f"delete element {tag:08X}"
    if kind == "duplicate":
        elements.insert(elements.index(el) + 1, _Element(el.tag, el.vr, el.value[::-1]))
        return f"duplicate element {tag:08X} (value reversed)"
    other_tag = plan.setdefault("other", int(rng.choice(tags)))
    other = by_tag.get(other_tag, el)
    el.vr, el.value, other.vr, other.value = other.vr, other.value, el.vr, el.value
    return f"swap elements {tag:08X} and {other_tag:08X}"


# ---------------------------------------------------------------- NIfTI header fields

_NII_FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"), "dim_info": (39, "<b"), "intent_code": (68, "<h"),
    "datatype": (70, "<h"), "bitpix": (72, "<h"), "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "slice_code": (122, "<b"),
    "xyzt_units": (123, "<B"), "cal_max": (124, "<f"), "cal_min": (128, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "quatern_b": (256, "<f"),
    "quatern_c": (260, "<f"), "quatern_d": (264, "<f"), "qoffset_x": (268, "<f"),
    "qoffset_z": (276, "<f"), "magic": (344, "4s"),
    **{f"dim[{k}]": (40 + 2 * k, "<h") for k in range(8)},
    **{f"pixdim[{k}]": (76 + 4 * k, "<f") for k in range(8)},
    **{f"srow_{a}[{k}]": (280 + 16 * i + 4 * k, "<f") for i, a in enumerate("xyz")
       for k in range(4)},
}  # fmt: skip
_NII_WEIGHTS = {"dim": 4.0, "pixdim": 3.0, "datatype": 6.0, "bitpix": 3.0, "vox_offset": 6.0,
                "scl_slope": 5.0, "scl_inter": 5.0, "srow": 1.0, "qform_code": 3.0,
                "sform_code": 3.0, "sizeof_hdr": 3.0, "magic": 3.0}  # fmt: skip
_DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048,
              2304, 9999, -1)  # fmt: skip
_FLOATS = (0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30, 3.4e38, 0.5,
           1e9, 352.0, 348.0, 353.0, 351.0, 356.0, 5000.0, -5000.0)  # fmt: skip
_SHORTS = (0, 1, -1, 2, 3, 4, 5, 7, 8, 255, 256, 4096, 32767, -32768)


def _nii_weight(name: str) -> float:
    return next((w for k, w in _NII_WEIGHTS.items() if name.startswith(k)), 0.5)


def _nii_field_mutation(hdr: bytearray, rng: np.random.Generator) -> str:
    names = sorted(_NII_FIELDS)
    weights = np.array([_nii_weight(n) for n in names])
    kind = str(rng.choice(["set"] * 4 + ["swap", "byteswap"]))
    name = str(rng.choice(names, p=weights / weights.sum()))
    off, fmt = _NII_FIELDS[name]
    size = struct.calcsize(fmt)
    if kind == "swap":
        same = [n for n in names if struct.calcsize(_NII_FIELDS[n][1]) == size and n != name]
        other = str(rng.choice(same))
        o2 = _NII_FIELDS[other][0]
        hdr[off : off + size], hdr[o2 : o2 + size] = hdr[o2 : o2 + size], hdr[off : off + size]
        return f"swap header fields {name} and {other}"
    if kind == "byteswap" and size > 1:
        hdr[off : off + size] = hdr[off : off + size][::-1]
        return f"byte-swap header field {name}"
    (old,) = struct.unpack_from(fmt, hdr, off)
    if fmt == "4s":
        value: object = bytes(rng.choice([b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+1 ", b"abcd"]))
    elif name == "datatype":
        value = int(rng.choice(_DATATYPES))
    elif name == "sizeof_hdr":
        value = int(rng.choice([0, 540, 347, 349, -348, 0x5C010000, 1 << 30]))
    elif fmt.endswith("f"):
        pool = [*_FLOATS, old * 1e6, old * 1e-6, -old, old + 1.0]
        value = float(pool[int(rng.integers(len(pool)))])
        if math.isfinite(value) and abs(value) > 3.4e38:  # what a float32 holds
            value = math.copysign(3.4e38, value)
    else:
        pool = [*_SHORTS, old + 1, old - 1, old * 2]
        lo, hi = {"<b": (-128, 127), "<B": (0, 255)}.get(fmt, (-32768, 32767))
        value = int(np.clip(pool[int(rng.integers(len(pool)))], lo, hi))
    struct.pack_into(fmt, hdr, off, value)
    return f"set header field {name} {old!r} -> {value!r}"


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    """One fuzz case: its name, input folder and what was done to it."""

    name: str
    fmt: str
    root: Path
    inp: Path
    companion: bool
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        sibling = " (+ clean sibling)" if self.companion else ""
        return f"{self.name}{sibling}: " + "; ".join(self.mutations)


def _rng(name: str) -> np.random.Generator:
    fmt, index = name.rsplit("-", 1)
    return np.random.default_rng([FORMATS.index(fmt), int(index), 20240229])


def _dicom_mutation(files: list[Path], rng: np.random.Generator, inp: Path) -> str:
    roll = rng.random()
    if roll < 0.12:  # files of the series
        return _dicom_file_mutation(files, rng, inp)
    if roll < 0.50:  # bytes of one file
        path = files[int(rng.integers(len(files)))]
        data = path.read_bytes()
        pixels = data.find(b"\xe0\x7f\x10\x00")
        new, what = _bytes_mutation(data, rng, pixels + 12 if pixels > 0 else 2048)
        path.write_bytes(new)
        return f"{path.relative_to(inp)}: {what}"
    # elements of one file, or the same change in every file of the series
    every = rng.random() < 0.4
    chosen = files if every else [files[int(rng.integers(len(files)))]]
    plan: dict = {}
    done: dict[str, list[str]] = {}  # what was done -> to which files
    for path in chosen:
        elements = _parse_dicom(path.read_bytes())
        if elements is None:  # an earlier mutation broke its structure: bytes, then
            data, what = _bytes_mutation(path.read_bytes(), rng, 1024)
            path.write_bytes(data)
            what = f"(unparsable) {what}"
        else:
            what = _element_mutation(elements, rng, plan)
            path.write_bytes(_build_dicom(elements))
        done.setdefault(what, []).append(path.name)
    if every and len(done) == 1:
        return f"every file: {next(iter(done))}"
    prefix = str(chosen[0].parent.relative_to(inp))
    return "; ".join(f"{prefix}/{','.join(names)}: {what}" for what, names in done.items())


def _dicom_file_mutation(files: list[Path], rng: np.random.Generator, inp: Path) -> str:
    kind = str(rng.choice(["delete", "duplicate", "copy as new slice", "empty", "nest",
                           "not dicom", "other series"]))  # fmt: skip
    path = files[int(rng.integers(len(files)))]
    rel = path.relative_to(inp)
    if kind == "delete":
        path.unlink()
    elif kind == "duplicate":
        shutil.copy(path, path.with_name("copy.dcm"))
    elif kind == "copy as new slice":  # a new SOP instance at a position given by the rng
        elements = _parse_dicom(path.read_bytes()) or []
        z = float(rng.choice([-100.0 + 2.5, -100.0 + 6 * SPACING[0], -100.0 + 9 * SPACING[0],
                              -100.0 - SPACING[0]]))  # fmt: skip
        for e in elements:
            if e.tag in (_TAGS["SOPInstanceUID"], 0x00020003):
                e.value = _text(_uid("extra", z), pad=b"\0")
            if e.tag == _TAGS["ImagePositionPatient"]:
                e.value = _text("-50.0000", "-40.0000", f"{z:.4f}")
        path.with_name("extra.dcm").write_bytes(_build_dicom(elements))
        kind += f" at z={z}"
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "nest":
        (path.parent / "deeper").mkdir(exist_ok=True)
        path.rename(path.parent / "deeper" / path.name)
    elif kind == "not dicom":
        path.write_bytes(gzip.compress(b"\0" * 352, mtime=0))
    else:  # a copy of the slice in a series of its own (another SeriesInstanceUID)
        elements = _parse_dicom(path.read_bytes()) or []
        for e in elements:
            if e.tag in (_TAGS["SOPInstanceUID"], 0x00020003):
                e.value = _text(_uid("foreign", rel), pad=b"\0")
            if e.tag == _TAGS["SeriesInstanceUID"]:
                e.value = _text(_uid("foreign series", rel), pad=b"\0")
        path.with_name("foreign.dcm").write_bytes(_build_dicom(elements))
    return f"{rel}: {kind} file"


def _nifti_mutation(files: list[Path], rng: np.random.Generator, inp: Path) -> str:
    roll = rng.random()
    if roll < 0.10:
        return _nifti_file_mutation(files, rng, inp)
    if roll < 0.13:
        path = inp / "dataset.json"
        data, what = _bytes_mutation(path.read_bytes(), rng, 64)
        path.write_bytes(data)
        return f"dataset.json: {what}"
    images = [p for p in files if p.parent.name == "imagesTr"]
    masks = [p for p in files if p.parent.name == "labelsTr"]
    path = images[0] if rng.random() < 0.8 or not masks else masks[0]
    raw = path.read_bytes()
    gz = path.name.endswith(".gz")
    if gz and rng.random() < 0.2:  # the compressed stream itself
        new, what = _bytes_mutation(raw, rng, 64)
        path.write_bytes(new)
        return f"{path.relative_to(inp)} (compressed bytes): {what}"
    try:
        data = gzip.decompress(raw) if gz else raw
    except (OSError, EOFError, zlib.error):
        new, what = _bytes_mutation(raw, rng, 64)
        path.write_bytes(new)
        return f"{path.relative_to(inp)} (not gzip any more): {what}"
    if len(data) >= 352 and rng.random() < 0.55:
        buf = bytearray(data)
        what = _nii_field_mutation(buf, rng)
        data = bytes(buf)
    else:
        data, what = _bytes_mutation(data, rng, 352)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return f"{path.relative_to(inp)}: {what}"


def _nifti_file_mutation(files: list[Path], rng: np.random.Generator, inp: Path) -> str:
    image = next(p for p in files if p.parent.name == "imagesTr")
    mask = next((p for p in files if p.parent.name == "labelsTr"), None)
    kind = str(rng.choice(["delete mask", "swap image and mask", "empty image", "empty mask",
                           "gzip mismatch", "mask one plane short"]))  # fmt: skip
    if mask is None:
        kind = "empty image"
    if kind == "delete mask" and mask:
        mask.unlink()
    elif kind == "swap image and mask" and mask:
        a, b = image.read_bytes(), mask.read_bytes()
        image.write_bytes(b)
        mask.write_bytes(a)
    elif kind == "empty image":
        image.write_bytes(b"")
    elif kind == "empty mask" and mask:
        mask.write_bytes(b"")
    elif kind == "gzip mismatch":  # gzip bytes in a .nii, plain bytes in a .nii.gz
        raw = image.read_bytes()
        image.write_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else
                          gzip.compress(raw, mtime=0))  # fmt: skip
    elif mask:  # a mask of another shape
        import nibabel as nib

        try:  # an earlier mutation may have damaged the mask already
            img = nib.load(mask)
            cut = np.asarray(img.dataobj)[:-1]
        except Exception:
            return f"{image.relative_to(inp)}: {kind} (mask already unreadable: left as it is)"
        nib.save(nib.Nifti1Image(cut, img.affine), mask)
        if mask.name.endswith(".gz"):
            mask.write_bytes(gzip.compress(gzip.decompress(mask.read_bytes()), mtime=0))
    return f"{image.relative_to(inp)}: {kind}"


def make_case(name: str, seeds: Path, root: Path) -> Case:
    """Copy the seed of the case's format into ``root`` and damage it (one to three times)."""
    rng = _rng(name)
    fmt = name.rsplit("-", 1)[0]
    companion = bool(rng.random() < 0.35)
    inp = root / "in"
    _copy_seed(seeds, fmt, inp, companion)
    case = Case(name, fmt, root, inp, companion)
    mutate: Callable = _dicom_mutation if fmt == "dicom" else _nifti_mutation
    for _ in range(int(rng.choice([1, 1, 1, 1, 1, 1, 2, 2, 2, 3]))):
        files = _target_files(fmt, inp)
        if not files:
            break
        case.mutations.append(mutate(files, rng, inp))
    if fmt == "dicom":
        present = [p for p, d in zip(PATIENTS, ("P1", "P2"), strict=True) if (inp / d).exists()]
        lines = ["patient,class", *(f"{p},{i % 2}" for i, p in enumerate(present))]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return case


# ---------------------------------------------------------------- the checks


def run_case(case: Case) -> list[str]:
    """Run preprocess on a case; every way it broke the contract (empty: it passed)."""
    out = case.root / "out"
    labels = case.root / "labels.csv" if case.fmt == "dicom" else None
    start = time.perf_counter()
    meta = None
    problems: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = preprocess(_cfg(case.fmt), [case.inp], out, labels_csv=labels)
    except AugmentError as exc:
        problems += _error_problems(exc)
    except Exception as exc:  # a traceback: the failure this test exists to find
        problems.append(f"{_where(exc)} {type(exc).__name__}: {_first_line(exc)}")
        return problems
    seconds = time.perf_counter() - start
    if seconds > CASE_SECONDS:
        problems.append(f"took {seconds:.0f} s")
    record = skipped_record(out)
    if meta is not None:
        skipped = meta.get("skipped", [])
        problems += _store_problems(out, meta)
    elif record.is_file():
        skipped = json.loads(record.read_text())["skipped"]
    else:
        return problems  # an error before anything was found (mixed CT and MR, say)
    problems += _skipped_problems(skipped)
    problems += _accounting_problems(case, out if meta is not None else None, skipped)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [""])[0][:200]


def _where(exc: BaseException) -> str:
    """The innermost frame in augment/ (where to fix it) and the innermost frame overall."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}augment{os.sep}" in f.filename]
    spots = [ours[-1]] if ours else []
    if frames and (not ours or frames[-1] is not ours[-1]):
        spots.append(frames[-1])
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} ({f.name})" for f in spots[::-1])


def _error_problems(exc: AugmentError) -> list[str]:
    text = str(exc)
    problems = []
    if not text.strip():
        problems.append(f"{type(exc).__name__} with an empty message")
    if "\n" in text.strip():
        problems.append(f"{type(exc).__name__} message of several lines: {text[:300]!r}")
    problems += [f"{type(exc).__name__} message names {s!r}" for s in IDENTIFIERS if s in text]
    return problems


def _skipped_problems(skipped: list) -> list[str]:
    problems = []
    for entry in skipped:
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not entry.get("input"):
            problems.append(f"skipped entry without an input: {entry!r}")
        elif not isinstance(reason, str) or not reason.strip():
            problems.append(f"skipped {entry['input']} without a reason")
        elif "\n" in reason or "\r" in reason:
            problems.append(f"reason of several lines: {reason[:300]!r}")
        else:
            problems += [f"reason names {s!r}: {reason[:200]!r}" for s in IDENTIFIERS
                         if s in reason]  # fmt: skip
    return problems


def _store_problems(out: Path, meta: dict) -> list[str]:
    """A written store: finite images in [-1, 1], and nothing degenerate.

    Degenerate, robust to real scans (whose slices beyond the body may well be flat -1 air):
    - a volume whose every slice is flat (one value): it carries no image at all;
    - a volume of several slices that are all identical;
    - a flat slice at a value other than -1 (air and the padding are -1, so such a slice is
      one value over the whole square, the padding included);
    - a volume whose content (pixels above -1) collapses to a line: under 2 rows or columns;
    - a row whose pixel spacing is not a positive finite number.
    """
    try:
        store = SliceStore.open(out)
    except AugmentError as exc:
        return [f"the written store does not open: {_first_line(exc)}"]
    images = np.asarray(store.images, dtype=np.float32)
    problems = []
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[2:] != (32, 32):
        return [f"images of shape {images.shape}, expected (N>0, C, 32, 32)"]
    n_bad = int(np.count_nonzero(~np.isfinite(images)))
    if n_bad:
        problems.append(f"{n_bad} NaN or inf pixels in the store")
    finite = images[np.isfinite(images)]
    if finite.size and (finite.min() < -1 or finite.max() > 1):
        problems.append(f"pixels outside [-1, 1]: {finite.min()}..{finite.max()}")
    if meta.get("volumes_read") != len({r["source"] for r in store.rows}):
        problems.append(f"volumes_read {meta.get('volumes_read')} != sources in slices.csv")
    for r in store.rows:
        for key in ("spacing_y", "spacing_x"):
            try:
                ok = math.isfinite(float(r[key])) and float(r[key]) > 0
            except (KeyError, ValueError):
                ok = False
            if not ok:
                problems.append(f"row {r['source']} z={r['z']}: {key} {r.get(key)!r}")
                break
    sources: dict[str, list[int]] = {}
    for i, r in enumerate(store.rows):
        sources.setdefault(r["source"], []).append(i)
    for source, idx in sources.items():
        vol = np.nan_to_num(images[idx], nan=0.0)  # (n, C, S, S)
        flat = vol.max(axis=(2, 3)) == vol.min(axis=(2, 3))  # (n, C)
        level = vol[:, :, 0, 0]
        what = f"volume {source} ({len(idx)} slices)"
        if flat.all():
            values = sorted({float(v) for v in level.ravel()})[:3]
            problems.append(f"{what}: every slice is flat (values {values})")
            continue
        if len(idx) > 1 and (vol == vol[:1]).all():
            problems.append(f"{what}: all slices identical")
        odd = flat & (level != -1.0)
        if odd.any():
            n, c = np.argwhere(odd)[0]
            problems.append(
                f"{what}: {int(odd.sum())} flat slice(s) at a value other than -1 "
                f"(z={store.rows[idx[n]]['z']}, value {float(level[n, c]):.3f})"
            )
        content = (vol > -1.0).any(axis=(0, 1))  # (S, S)
        rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
        if rows.size and (np.ptp(rows) < 1 or np.ptp(cols) < 1):
            problems.append(f"{what}: its content is a line ({np.ptp(rows) + 1} rows x "
                            f"{np.ptp(cols) + 1} columns of 32)")  # fmt: skip
    text = (out / "slices.csv").read_text() + (out / "meta.json").read_text()
    problems += [f"the store names {s!r}" for s in IDENTIFIERS if s in text]
    return problems


def _accounting_problems(case: Case, out: Path | None, skipped: list) -> list[str]:
    """Every input file is part of a stored volume or has a skipped entry: none vanishes."""
    key = load_key(None)
    tokens = {e.get("input") for e in skipped if isinstance(e, dict)}
    rows = SliceStore.open(out).rows if out is not None else []
    problems = []
    if case.fmt == "dicom":
        files = [p for p in case.inp.rglob("*") if p.is_file() and not p.name.startswith(".")]
        kept = [p for p in files if file_token(p, case.inp, key) not in tokens]
        meta = json.loads((out / "meta.json").read_text()) if out is not None else {}
        left = sum(meta.get("slices_left_out", {}).values())
        if len(rows) + left != len(kept):  # single-frame files: one slice each
            problems.append(
                f"{len(kept)} DICOM files were neither skipped nor left out, but the store has "
                f"{left} slices left out and "
                f"{len(rows)} slices"
            )
        return problems
    stored = {r["patient"] for r in rows}
    for patient in PATIENTS:
        files = sorted(p for p in case.inp.rglob(f"{patient}*") if p.is_file())
        images = [p for p in files if p.parent.name == "imagesTr"]
        if not images:
            continue
        is_stored = pseudonym(patient, key) in stored
        for p in files:
            listed = file_token(p, case.inp, key) in tokens
            if is_stored == listed:
                state = "both stored and skipped" if listed else "neither stored nor skipped"
                problems.append(f"{p.relative_to(case.inp)}: {state}")
    return problems


def _run(name: str, seeds: Path, root: Path) -> list[str]:
    case_root = root / name
    case = make_case(name, seeds, case_root)
    try:
        problems = run_case(case)
    except Exception as exc:  # a failure of the checks themselves: still report the case
        problems = [f"checking failed: {_where(exc)} {type(exc).__name__}: {_first_line(exc)}"]
    shutil.rmtree(case_root, ignore_errors=True)
    return [f"{case.describe()}\n    -> " + "\n    -> ".join(problems)] if problems else []


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_seeds_ingest_cleanly(seeds, tmp_path, fmt):
    case = Case(f"{fmt}-seed", fmt, tmp_path, tmp_path / "in", companion=True)
    _copy_seed(seeds, fmt, case.inp, companion=True)
    (tmp_path / "labels.csv").write_text(f"patient,class\n{PATIENTS[0]},1\n{PATIENTS[1]},0\n")
    assert run_case(case) == []
    store = SliceStore.open(tmp_path / "out")
    assert store.meta["volumes_read"] == 2 and not store.meta["skipped"]
    assert len(store.rows) == 2 * SHAPE[0]


def test_the_mutator_is_deterministic(seeds, tmp_path):
    for name in ("dicom-0003", "niigz-0005", "nii-0001"):
        a, b = (make_case(name, seeds, tmp_path / f"{name}-{i}") for i in range(2))
        assert a.mutations == b.mutations
        files_a = sorted(p.relative_to(a.inp) for p in a.inp.rglob("*") if p.is_file())
        assert files_a == sorted(p.relative_to(b.inp) for p in b.inp.rglob("*") if p.is_file())
        for rel in files_a:
            assert (a.inp / rel).read_bytes() == (b.inp / rel).read_bytes(), (name, rel)


def _named_cases() -> list[str]:
    wanted = os.environ.get("AUGMENT_FUZZ_CASES", "")
    return [c.strip() for c in wanted.split(",") if c.strip()] or DEFAULT_CASES


@pytest.mark.parametrize("name", _named_cases())
def test_named_fuzz_case_is_ingested_or_skipped_with_a_reason(seeds, tmp_path, name):
    failures = _run(name, seeds, tmp_path)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "start"),
    [(fmt, s) for fmt, n in SLOW_PER_FORMAT.items() for s in range(0, n, SLOW_CHUNK)],
)
def test_many_fuzz_cases_are_ingested_or_skipped_with_a_reason(seeds, tmp_path, fmt, start):
    stop = min(start + SLOW_CHUNK, SLOW_PER_FORMAT[fmt])
    failures = []
    for i in range(start, stop):
        failures += _run(f"{fmt}-{i:04d}", seeds, tmp_path)
    assert not failures, f"{len(failures)} of {stop - start} cases failed:\n" + "\n".join(failures)
