"""What every sample format provides to :mod:`augment.sampling.writer` and the set reader.

A per-case format (the default) writes each case with :meth:`SampleFormat.write_case`, called
from a pool of writer threads; a streaming format returns a :class:`Sink` from
:meth:`SampleFormat.sink` instead, which receives the batches in order in the main thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from augment.config import SampleConfig
from augment.contracts.model_dir import ModelInfo
from augment.contracts.window import Window

if TYPE_CHECKING:
    from augment.sampling.merge import RealSet

PREFIX = "syn_"  # every synthetic case name starts with it


@dataclass
class SampleRun:
    """What every writer of one ``augment sample`` run shares."""

    cfg: SampleConfig
    info: ModelInfo
    window: Window  # channel 0's
    root: Path
    width: int  # digits of the case numbers
    windows: tuple[Window, ...] = ()  # per channel (default: ``window``)
    channels: tuple[str, ...] = ()  # channel names (default: CT, or image)
    # DICOM UIDs must be globally unique: every run mints new ones, even with the same seed
    # (the pixel data is what the seed reproduces).
    uid_nonce: str = field(default_factory=lambda: uuid.uuid4().hex)
    # class id -> [samples whose mask agrees with their class, samples] (models with masks)
    agreement: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.windows = self.windows or (self.window,)
        self.channels = self.channels or ("CT" if self.window.units == "HU" else "image",)

    def to_units(self, images: np.ndarray) -> np.ndarray:
        """(..., C, S, S) in [-1, 1] -> each channel in its data's units (float32)."""
        return np.stack(
            [w.to_units(images[..., c, :, :]) for c, w in enumerate(self.windows)], axis=-3
        )

    def case(self, i: int) -> str:
        """The case name of sample ``i``."""
        return f"{PREFIX}{i:0{self.width}d}"

    @property
    def has_masks(self) -> bool:
        """Whether the model makes masks (and the set has label files)."""
        return bool(self.info.spec.mask_channels)

    @property
    def thickness(self) -> float:
        """Through-plane size of a stored slice, in mm."""
        return float(self.info.config.get("slice_thickness") or max(self.info.spacing))


def meta_windows(meta: dict[str, Any], window: Window) -> list[Window]:
    """Per channel, the window of a set (``synthetic.json`` ``windows``; older sets: one)."""
    found = meta.get("windows")
    if not isinstance(found, list) or not found:
        return [window]
    return [Window.from_dict(w, "synthetic.json") for w in found]


class Sink(Protocol):
    """Receives the batches of a streaming format in order."""

    def append(self, images: np.ndarray, masks: np.ndarray | None, classes: np.ndarray) -> None:
        """One batch: images (B, C, S, S) in [-1, 1], masks (B, S, S) label ids, classes (B,)."""
        ...

    def finish(self) -> None:
        """Everything was appended: complete the files."""
        ...

    def close(self) -> None:
        """The run failed: release the files (the temporary directory is removed after)."""
        ...


class SampleFormat:
    """A per-case file format; subclasses set the names and the two per-case functions.

    Attributes:
        folders: the image and label folders.
        ending: the file name ending.
        needs_masks: the format cannot hold a set without masks.
        merges_real: ``--merge-with-real`` can merge a real data set into it.
        max_channels: the most image channels a case of the format holds.
    """

    folders: ClassVar[tuple[str, str]] = ("images", "labels")
    ending: ClassVar[str] = ""
    needs_masks: ClassVar[bool] = False
    merges_real: ClassVar[bool] = False
    max_channels: ClassVar[int] = 1

    def files(self, run: SampleRun, case: str) -> tuple[str, str]:
        """The image file and the label file ("" without masks) of a case, relative."""
        image = f"{self.folders[0]}/{case}{self.ending}"
        label = f"{self.folders[1]}/{case}{self.ending}" if run.has_masks else ""
        return image, label

    def prepare(self, run: SampleRun) -> None:
        """Create what the cases are written into."""
        (run.root / self.folders[0]).mkdir()
        if run.has_masks:
            (run.root / self.folders[1]).mkdir()

    def sink(self, run: SampleRun) -> Sink | None:
        """A streaming format's sink; None for a per-case format."""
        return None

    def write_case(
        self, run: SampleRun, i: int, image: np.ndarray, mask: np.ndarray | None, c: int
    ) -> None:
        """Write sample ``i``: image (C, S, S) in [-1, 1], mask (S, S) label ids, class id."""
        raise NotImplementedError

    def finish(self, run: SampleRun, real: RealSet | None) -> None:
        """Write what the set needs besides its cases (after every case is written)."""

    def read(
        self, root: Path, rows: list[dict[str, str]], meta: dict[str, Any], window: Window
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a set back: images (N, C, S, S) float32 in [-1, 1], masks (N, S, S) or None.

        Raises:
            OSError, ValueError: an unreadable file (the caller names the set).
        """
        images = np.stack([self.read_image(root / r["file"], meta, window) for r in rows])
        has_masks = bool(rows) and bool(rows[0]["label_file"])
        masks = (
            np.stack([self.read_mask(root / r["label_file"]) for r in rows]).astype(np.uint8)
            if has_masks
            else None
        )
        return images.astype(np.float32), masks

    def read_image(self, path: Path, meta: dict[str, Any], window: Window) -> np.ndarray:
        """One case's image as (C, S, S) float32 in [-1, 1]."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> np.ndarray:
        """One label file as (S, S) label ids."""
        raise NotImplementedError
