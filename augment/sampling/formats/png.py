"""The ``png`` format: 8- or 16-bit greyscale PNG, [-1, 1] over the full grey range.

``images/<case>.png`` and ``labels/<case>.png`` (uint8 label ids); no metadata chunks, so the
same seed gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from augment.contracts.window import Window
from augment.sampling.formats.base import SampleFormat, SampleRun


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


class PngFormat(SampleFormat):
    """One PNG per image and per label map."""

    ending = ".png"

    def write_case(
        self, run: SampleRun, i: int, image: np.ndarray, mask: np.ndarray | None, c: int
    ) -> None:
        image_file, label_file = self.files(run, run.case(i))
        write_png(run.root / image_file, to_png_levels(image[0], run.cfg.png_bits))
        if mask is not None:
            write_png(run.root / label_file, mask)

    def read_image(self, path: Path, meta: dict[str, Any], window: Window) -> np.ndarray:
        return from_png_levels(read_png(path), int(meta.get("png_bits", 8)))[None]

    def read_mask(self, path: Path) -> np.ndarray:
        return read_png(path)
