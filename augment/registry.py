"""A small name -> implementation map, one per extension point.

Every extension point (GAN losses, input readers, sample formats, evaluation tasks, fidelity
metrics) declares its entries in one place with a one-line description each; the
implementation is imported only when it is used, so the configuration, the command-line help
and the docs can read the names without importing torch. Adding an entry is one new file plus
one line in its registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered implementation.

    Attributes:
        target: ``"package.module:attribute"`` of the implementation.
        help: one line for the CLI help and the docs.
    """

    target: str
    help: str


class Registry(Generic[T]):
    """Named implementations of one extension point.

    Args:
        kind: what the entries are, for messages ("GAN loss").
        entries: name -> :class:`Entry`, in the order the help lists them.
    """

    def __init__(self, kind: str, entries: dict[str, Entry]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def help(self) -> str:
        """``name: description`` lines, for the CLI help and the docs."""
        return "; ".join(f"{name}: {e.help}" for name, e in self._entries.items())

    def check(self, name: str) -> str:
        """Return ``name`` if registered.

        Raises:
            ValueError: an unknown name; the message lists the allowed ones.
        """
        if name not in self._entries:
            allowed = ", ".join(self._entries)
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of: {allowed}")
        return name

    def get(self, name: str) -> T:
        """The implementation registered under ``name`` (imported on first use).

        Raises:
            ValueError: an unknown name (see :meth:`check`).
        """
        module, _, attr = self._entries[self.check(name)].target.partition(":")
        impl: T = getattr(importlib.import_module(module), attr)
        return impl
