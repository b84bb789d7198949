"""The ``npz`` format: one ``samples.npz`` for numpy users.

``images`` (N, C, S, S) float32 in the data's units, ``masks`` (N, S, S) uint8, ``classes``
(N,) int64, plus ``class_names``, ``windows`` (C, 2: center, width), ``channels`` (names),
``window`` (channel 0's) and ``spacing``. Batches stream to
raw files and are packed at the end, so memory stays flat whatever ``n``; the zip members carry
a fixed date, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from augment.contracts.window import Window
from augment.sampling.formats.base import SampleFormat, SampleRun, meta_windows

NPZ = "samples.npz"


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


class NpzSink:
    """npz: batches stream to raw files, packed into one uncompressed ``samples.npz`` at the end."""

    def __init__(self, run: SampleRun) -> None:
        s = run.info.spec.image_size
        self.run = run
        c = len(run.windows)
        self.images = NpyStream(run.root / "images.raw", np.float32, (c, s, s))
        self.classes = NpyStream(run.root / "classes.raw", np.int64, ())
        has_masks = bool(run.info.spec.mask_channels)
        self.masks = NpyStream(run.root / "masks.raw", np.uint8, (s, s)) if has_masks else None

    def append(self, images: np.ndarray, masks: np.ndarray | None, classes: np.ndarray) -> None:
        self.images.append(self.run.to_units(images))  # (B, C, S, S)
        self.classes.append(classes if self.run.info.class_names else np.full_like(classes, -1))
        if self.masks is not None:
            if masks is None:
                raise ValueError(
                    "expected masks in every batch of a spec with mask channels, got none"
                )
            self.masks.append(masks)

    def finish(self) -> None:
        with zipfile.ZipFile(self.run.root / NPZ, "w", allowZip64=True) as zf:
            self.images.pack(zf, "images")
            self.classes.pack(zf, "classes")
            if self.masks is not None:
                self.masks.pack(zf, "masks")
            pack_small(zf, "class_names", np.array(self.run.info.class_names, dtype=str))
            window = np.array([self.run.window.center, self.run.window.width], dtype=np.float64)
            pack_small(zf, "window", window)  # channel 0's
            windows = [[w.center, w.width] for w in self.run.windows]
            pack_small(zf, "windows", np.array(windows, dtype=np.float64))  # (C, 2)
            pack_small(zf, "channels", np.array(self.run.channels, dtype=str))
            pack_small(zf, "spacing", np.array(self.run.info.spacing, dtype=np.float64))

    def close(self) -> None:
        for stream in (self.images, self.classes, self.masks):
            if stream is not None:
                stream.close()


class NpzFormat(SampleFormat):
    """Every sample in one uncompressed ``samples.npz``."""

    max_channels = 16

    def files(self, run: SampleRun, case: str) -> tuple[str, str]:
        return NPZ, NPZ if run.has_masks else ""

    def prepare(self, run: SampleRun) -> None:
        return None  # one file at the top of the set

    def sink(self, run: SampleRun) -> NpzSink:
        return NpzSink(run)

    def read(
        self, root: Path, rows: list[dict[str, str]], meta: dict[str, Any], window: Window
    ) -> tuple[np.ndarray, np.ndarray | None]:
        windows = meta_windows(meta, window)
        with np.load(root / NPZ) as data:
            units = data["images"]  # (N, C, S, S)
            images = np.stack(
                [windows[c].to_unit_range(units[:, c], clip=False) for c in range(units.shape[1])],
                axis=1,
            )
            masks = data["masks"] if "masks" in data.files else None
        return images, masks
