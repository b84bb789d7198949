"""What every input reader provides to :mod:`augment.preprocessing.stage`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from augment.config import PreprocessConfig
from augment.contracts.volume import Volume

MapFn = Callable[[Callable[[Path], Any], list[Path]], Iterable[Any]]
"""``map`` or a process pool's ``map``: how a reader may scan many files in parallel."""

Namer = Callable[[Path], str]
"""How messages name a file: a keyed token, never the path (folders carry names)."""


@dataclass(frozen=True)
class Found:
    """One volume a reader found, before it is read.

    Attributes:
        item: the reader's own handle (picklable: it travels to a worker process).
        raw_patient: the patient identifier as found; pseudonymised before use, never written.
        first_file: the volume's first file (what skip messages name, by token).
        has_mask: whether a segmentation mask comes with it.
        files: every input file of the volume (its mask's among them): a volume skipped as a
            whole is recorded once per file. Empty: ``first_file`` only.
    """

    item: object
    raw_patient: str
    first_file: Path
    has_mask: bool
    files: tuple[Path, ...] = ()


@dataclass
class Discovery:
    """What a reader found under one input root."""

    found: list[Found] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file token, reason)
    label_names: dict[str, int] | None = None  # mask label name -> id, when declared


class Reader(Protocol):
    """Finds volumes under an input root and reads one of them."""

    def claims(self, files: list[Path]) -> bool:
        """Whether this reader should read a root holding ``files`` (``format: auto``)."""
        ...

    def discover(
        self, root: Path, cfg: PreprocessConfig, name_of: Namer, map_fn: MapFn
    ) -> Discovery:
        """Find the volumes under ``root`` (a folder searched recursively, or a file)."""
        ...

    def read(
        self, item: object, patient: str, source: str, name_of: Namer, cfg: PreprocessConfig
    ) -> Volume:
        """Read one found volume (``Found.item``) with its pseudonymised names.

        Raises:
            InputError: the volume cannot be used; the message says why.
        """
        ...
