"""The SliceStore: preprocess's output, train's and evaluate's input.

Layout of a store directory (see docs/architecture.md):

- ``images.npy``: (N, C, S, S) float16 in [-1, 1], memory-mapped on read; C channels (MR
  sequences, named in ``meta.json`` ``channels``; one for CT);
- ``masks.npy``: (N, 1, S, S) uint8 label ids, only when the input had masks;
- ``slices.csv``: row i describes images[i]: patient, source, z, label, split (+ extra columns);
- ``meta.json``: slice size, window, class names, counts, parameters, skipped inputs.

The writer streams: slices are appended to raw files and copied into the ``.npy`` files at
the end, so memory stays bounded whatever the number of slices.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import StoreError
from augment.io.atomic import atomic_dir
from augment.io.jsonfile import load_json

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("patient", "source", "z", "label", "split")
_CHUNK = 4096


@dataclass
class SliceStore:
    """A SliceStore opened for reading.

    Attributes:
        root: the store directory.
        images: (N, C, S, S) float16, memory-mapped (C channels, ``meta["channels"]``).
        masks: (N, 1, S, S) uint8 or None.
        rows: one dict per slice (values as strings, ``z`` and ``label`` as int).
        meta: the parsed ``meta.json``.
    """

    root: Path
    images: np.ndarray
    masks: np.ndarray | None
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> SliceStore:
        """Open a store written by :class:`SliceStoreWriter`.

        Raises:
            StoreError: a file is missing or the files disagree.
        """
        root = Path(root)
        for name in ("images.npy", "slices.csv", "meta.json"):
            if not (root / name).is_file():
                raise StoreError(f"{root}: not a slice store, {name} is missing")
        images = _load_npy(root / "images.npy")
        masks = _load_npy(root / "masks.npy") if (root / "masks.npy").exists() else None
        try:
            with open(root / "slices.csv", newline="") as fh:
                rows = [_typed(r) for r in csv.DictReader(fh)]
        except (ValueError, KeyError, TypeError) as exc:
            where = root / "slices.csv"
            raise StoreError(f"{where}: expected integer z and label columns") from exc
        meta = load_json(root / "meta.json", StoreError)
        if images.ndim != 4 or images.shape[1] < 1 or len(rows) != images.shape[0]:
            raise StoreError(
                f"{root}: expected images (N, C, S, S) with N = {len(rows)} rows, "
                f"got {images.shape}"
            )
        n, _, s, _ = images.shape
        if masks is not None and masks.shape != (n, 1, s, s):
            raise StoreError(f"{root}: masks {masks.shape} do not fit images {images.shape}")
        return cls(root, images, masks, rows, meta)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> list[str]:
        """A name per image channel (stores from before channels were named: one, "image")."""
        names = self.meta.get("channels")
        return [str(c) for c in names] if isinstance(names, list) else ["image"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", ["normal", "lesion"]))

    def indices(self, split: str, patients: set[str] | None = None) -> np.ndarray:
        """Row indices of one split, optionally restricted to some patients."""
        if split not in SPLITS:
            raise ValueError(f"expected a split in {SPLITS}, got {split!r}")
        return np.array(
            [
                i
                for i, r in enumerate(self.rows)
                if r["split"] == split and (patients is None or r["patient"] in patients)
            ],
            dtype=np.int64,
        )

    def labels(self, idx: np.ndarray | None = None) -> np.ndarray:
        lab = np.array([r["label"] for r in self.rows], dtype=np.int64)
        return lab if idx is None else lab[idx]

    def patients(self, split: str) -> list[str]:
        """The sorted distinct patients of one split."""
        return sorted({r["patient"] for r in self.rows if r["split"] == split})


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:  # truncated, not an .npy file, unreadable
        raise StoreError(f"{path}: not a readable .npy array ({type(exc).__name__})") from exc


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    out["z"] = int(row["z"])
    out["label"] = int(row["label"])
    return out


@dataclass
class SliceStoreWriter:
    """Stream slices into a new store that appears at ``target`` only when closed cleanly.

    Use as a context manager::

        with SliceStoreWriter(out, size=64, with_masks=True) as w:
            w.add(images, masks, rows)   # images (n, C, S, S) float in [-1, 1]
            w.meta.update(...)
    """

    target: Path
    size: int
    with_masks: bool
    channels: int = 1
    overwrite: bool = True  # False: a store that appeared at ``target`` meanwhile is an error
    meta: dict[str, Any] = field(default_factory=dict)
    _n: int = 0
    _rows: list[dict[str, Any]] = field(default_factory=list)

    def __enter__(self) -> SliceStoreWriter:
        self._ctx = atomic_dir(Path(self.target), overwrite=self.overwrite)
        self._dir = self._ctx.__enter__()
        self._img_raw = open(self._dir / "images.raw", "wb")  # noqa: SIM115
        self._msk_raw = open(self._dir / "masks.raw", "wb") if self.with_masks else None  # noqa: SIM115
        return self

    def add(self, images: np.ndarray, masks: np.ndarray | None, rows: list[dict[str, Any]]) -> None:
        """Append slices: ``images`` (n, C, S, S) in [-1, 1] ((n, S, S) when C is 1),
        ``masks`` (n, S, S) uint8, n rows."""
        images = np.asarray(images)
        n, s, c = images.shape[0], self.size, self.channels
        if images.ndim == 3 and c == 1:
            images = images[:, None]
        if images.shape != (n, c, s, s) or len(rows) != n:
            raise ValueError(f"expected ({len(rows)}, {c}, {s}, {s}) images, got {images.shape}")
        if not np.isfinite(images).all() or images.min() < -1 or images.max() > 1:
            raise ValueError("slice intensities must be finite and within [-1, 1]")
        missing = [c for c in REQUIRED_COLUMNS if any(c not in r for r in rows)]
        if missing:
            raise ValueError(f"slice rows lack columns {missing}")
        if any(r["split"] not in SPLITS for r in rows):
            raise ValueError(f"split must be one of {SPLITS}")
        self._img_raw.write(images.astype(np.float16).tobytes())
        if self._msk_raw is not None:
            if masks is None or masks.shape != (n, s, s):
                raise ValueError(f"expected masks of shape {(n, s, s)}")
            self._msk_raw.write(np.asarray(masks, dtype=np.uint8).tobytes())
        self._rows.extend(rows)
        self._n += n

    def __exit__(self, exc_type, exc, tb) -> None:
        self._img_raw.close()
        if self._msk_raw is not None:
            self._msk_raw.close()
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
        self._ctx.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self._n == 0:
            raise ValueError("no slices were written")
        shape = (self._n, self.channels, self.size, self.size)
        _raw_to_npy(self._dir / "images.raw", self._dir / "images.npy", np.float16, shape)
        if self.with_masks:
            mask_shape = (self._n, 1, self.size, self.size)
            _raw_to_npy(self._dir / "masks.raw", self._dir / "masks.npy", np.uint8, mask_shape)
        columns = list(REQUIRED_COLUMNS) + sorted(
            {k for r in self._rows for k in r} - set(REQUIRED_COLUMNS)
        )
        with open(self._dir / "slices.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self._rows)
        self.meta.setdefault("size", self.size)
        self.meta["n_slices"] = self._n
        self.meta["counts"] = slice_counts(self._rows)
        (self._dir / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))


def _raw_to_npy(raw: Path, npy: Path, dtype: type, shape: tuple[int, ...]) -> None:
    # Plain buffered copy behind an .npy header: a memory map here would count the whole
    # output towards the process's resident memory, which must not grow with the data set.
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}  # fmt: skip
    with open(npy, "wb") as dst, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(dst, header)
        shutil.copyfileobj(src, dst, length=_CHUNK * 1024)
    raw.unlink()


def slice_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Slices per split and class, patients per split, and patients with slices of each class."""
    slices = Counter((r["split"], int(r["label"])) for r in rows)
    patients = {s: len({r["patient"] for r in rows if r["split"] == s}) for s in SPLITS}
    per_split = {s: {str(c): n for (sp, c), n in sorted(slices.items()) if sp == s} for s in SPLITS}
    having: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        having.setdefault((r["split"], int(r["label"])), set()).add(r["patient"])
    with_class = {
        s: {str(c): len(p) for (sp, c), p in sorted(having.items()) if sp == s} for s in SPLITS
    }
    return {
        "slices": per_split,
        "patients": patients,
        "patients_with_class": with_class,
    }


def train_patients(store: SliceStore, fraction: float, seed: int) -> list[str]:
    """The train patients a run uses: all of them, or a seeded subset of ``fraction``.

    Training and evaluation both call it, so the real-only baseline gets exactly the GAN's
    patients.

    Args:
        store: the opened SliceStore.
        fraction: share of the train patients, in (0, 1].
        seed: seed of the subset.

    Returns:
        Sorted patient pseudonyms (at least one).

    Raises:
        StoreError: the store has no train patients.
    """
    patients = store.patients("train")
    if not patients:
        raise StoreError(f"{store.root}: expected train slices, got none in slices.csv")
    if fraction >= 1.0:
        return patients
    k = max(1, round(fraction * len(patients)))
    chosen = np.random.default_rng(seed).choice(len(patients), size=k, replace=False)
    return sorted(patients[i] for i in chosen)
