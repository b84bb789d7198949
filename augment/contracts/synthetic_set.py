"""A synthetic set on disk: its file names, and reading it back in any format.

``augment sample`` (:mod:`augment.sampling.stage`) writes the set; :func:`load_synthetic` reads it
through ``manifest.csv`` and ``synthetic.json``, whatever the format (nnunet, png, npz, dicom).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augment.errors import StoreError
from augment.sampling.formats import files as io
from augment.sampling.draw import Units

MANIFEST = "manifest.csv"
META = "synthetic.json"
NPZ = "samples.npz"


@dataclass
class SyntheticSet:
    """A synthetic set read back by :func:`load_synthetic`.

    Attributes:
        images: (N, 1, S, S) float32 in [-1, 1] (the model's output range).
        classes: (N,) int64 class ids (-1 when the model is unconditional).
        masks: (N, S, S) uint8 label ids, or None.
        rows: manifest rows (case, file, label_file, class, seed, noise_index, model_sha256...).
        class_names: the model's class names.
    """

    images: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    rows: list[dict[str, str]]
    class_names: list[str]


def load_synthetic(path: Path) -> SyntheticSet:
    """Read a synthetic set written by ``augment sample`` in any format, through its manifest.

    Raises:
        StoreError: ``path`` is not a synthetic set (the message names the directory).
    """
    root = Path(path)
    for name in (MANIFEST, META):
        if not (root / name).is_file():
            raise StoreError(f"{root}: not a synthetic set, {name} is missing")
    try:
        meta = json.loads((root / META).read_text())
        with open(root / MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
        units = Units(meta["window"]["center"], meta["window"]["width"], meta["window"]["units"])
        fmt = meta["format"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StoreError(f"{root}: unreadable {META} or {MANIFEST} ({exc!r})") from exc
    if fmt == "npz":
        images, masks = _read_npz(root, units)
    else:
        images, masks = _read_files(root, rows, fmt, units, int(meta.get("png_bits", 8)))
    classes = np.array([int(r["class"]) for r in rows], dtype=np.int64)
    if len(images) != len(rows):
        raise StoreError(f"{root}: {MANIFEST} has {len(rows)} rows, found {len(images)} images")
    return SyntheticSet(images, classes, masks, rows, list(meta.get("class_names", [])))


def _read_npz(root: Path, units: Units) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(root / NPZ) as data:
        images = units.to_unit_range(data["images"])
        masks = data["masks"] if "masks" in data.files else None
    return images, masks


def _read_files(
    root: Path, rows: list[dict[str, str]], fmt: str, units: Units, bits: int
) -> tuple[np.ndarray, np.ndarray | None]:
    readers = {
        "nnunet": (lambda p: units.to_unit_range(io.read_nifti_slice(p)), io.read_nifti_slice),
        "png": (lambda p: io.from_png_levels(io.read_png(p), bits), io.read_png),
        "dicom": (lambda p: _dicom_pixels(p) / np.float32(io.DICOM_SCALE), _dicom_pixels),
    }
    if fmt not in readers:
        raise StoreError(f"{root}: unknown format {fmt!r} in {META}")
    read_image, read_mask = readers[fmt]
    try:
        images = np.stack([read_image(root / r["file"]) for r in rows]).astype(np.float32)
        has_masks = bool(rows) and bool(rows[0]["label_file"])
        masks = (
            np.stack([read_mask(root / r["label_file"]) for r in rows]).astype(np.uint8)
            if has_masks
            else None
        )
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root}: unreadable synthetic file ({exc})") from exc
    return images[:, None], masks


def _dicom_pixels(path: Path) -> np.ndarray:
    return io.read_dicom(path)[0]
