"""Pseudonymisation: patient ids and input paths become keyed hashes.

A pseudonym is ``"P"`` + the first 10 hex digits of HMAC-SHA256(key, raw id). The key is secret:
whoever holds it can check a guess of a raw id, nobody else can. It comes from, in this order:

1. the ``--key-file`` given on the command line (it must exist);
2. the environment variable ``AUGMENT_PSEUDONYM_KEY`` (its UTF-8 bytes);
3. ``.augment/pseudonym.key`` under the current directory, created with 32 random bytes on first
   use (git-ignored). Keep it: a new key gives every patient a new pseudonym.

Input paths are hashed the same way (``"F"`` + 10 hex digits) so that messages about bad files
can name a file without copying a folder name that carries a patient's name or id;
:func:`locate` finds the file again for someone who has the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from augment.errors import InputError

ENV_VAR = "AUGMENT_PSEUDONYM_KEY"
DEFAULT_KEY_FILE = Path(".augment") / "pseudonym.key"
_DIGITS = 10


def load_key(
    key_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> bytes:
    """Return the pseudonymisation key (see the module docstring for where it comes from).

    Args:
        key_file: an explicit key file; it must exist and not be empty.
        env: the environment to read ``AUGMENT_PSEUDONYM_KEY`` from (default ``os.environ``).
        cwd: the directory holding ``.augment/pseudonym.key`` (default the current one).

    Returns:
        The key bytes (a hex key file is decoded, anything else is used as it is).

    Raises:
        InputError: the key file is missing or empty.
    """
    env = os.environ if env is None else env
    if key_file is not None:
        return _read_key(Path(key_file))
    if env.get(ENV_VAR):
        return env[ENV_VAR].encode("utf-8")
    path = (Path.cwd() if cwd is None else Path(cwd)) / DEFAULT_KEY_FILE
    if not path.exists():
        _create_key(path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: expected a pseudonym key file, got no such file") from exc
    if not raw:
        raise InputError(f"{path}: expected a pseudonym key, got an empty file")
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two runs starting together must not write two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex() + "\n")


TOKEN = re.compile(rf"F[0-9a-f]{{{_DIGITS}}}")  # what file_token returns


def _digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:_DIGITS]


def pseudonym(raw_id: str, key: bytes) -> str:
    """The pseudonym of a raw patient id: ``"P"`` + 10 hex digits of its keyed hash.

    Leading and trailing spaces are ignored (DICOM pads values to an even length).
    """
    return "P" + _digest(key, raw_id.strip())


def file_token(path: Path, root: Path, key: bytes) -> str:
    """A name for an input file that does not copy its path: ``"F"`` + 10 hex digits."""
    return "F" + _digest(key, _relative(path, root))


def locate(token: str, roots: Iterable[Path], key: bytes) -> Path | None:
    """Find the input file that :func:`file_token` named ``token`` (for the key's holder).

    Args:
        token: a token from ``meta.json``'s ``skipped`` list or the summary.
        roots: the input roots of the run.
        key: the run's key (:func:`load_key`).

    Returns:
        The file, or None when no file under ``roots`` has that token.
    """
    for root in roots:
        root = Path(root)
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if path.is_file() and file_token(path, root, key) == token:
                return path
    return None


def _relative(path: Path, root: Path) -> str:
    root = Path(root)
    if root.is_file() or path == root:
        return path.name
    return Path(path).relative_to(root).as_posix()


class InputWarning(UserWarning):
    """A library warned while reading an input; the text names the file by its token only."""


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Catch library warnings (pydicom, nibabel, numpy) raised while reading one input.

    Their messages may quote header values (an invalid UI prints the UID, an invalid PN or DA a
    name or a date) or the file's path, so only where they came from is kept: the list yields
    one ``"<Category> from <library>"`` entry per distinct warning, for :func:`reemit`.
    """
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    for w in caught:
        library = next((lib for lib in _LIBRARIES if f"{os.sep}{lib}{os.sep}" in w.filename), "")
        entry = f"{w.category.__name__} from {library or 'a library'}"
        if entry not in found:
            found.append(entry)


_LIBRARIES = ("pydicom", "nibabel", "numpy", "scipy", "pylibjpeg", "openjpeg")


def reemit(token: str, entries: list[str]) -> None:
    """Warn once per captured entry, naming the input by its keyed token, with no values."""
    for entry in entries:
        warnings.warn(
            f"{token}: {entry} while reading it (message withheld: it may quote header values)",
            InputWarning,
            stacklevel=2,
        )


# Keys published in this repository (the demo's dvc.yaml): pseudonyms made with them can be
# reversed by anyone who tries candidate IDs, so they may only ever touch the phantoms.
PUBLIC_KEYS = frozenset({b"augment-demo-phantoms"})
PHANTOM_MARK = "Augment phantom generator"  # DICOM Manufacturer of every phantom series
PHANTOM_DATASET_MARK = "generated by `augment phantoms`"  # dataset.json "reference"


def is_public_key(key: bytes) -> bool:
    """Whether ``key`` is one of the keys published with the project."""
    return key in PUBLIC_KEYS


class _Input(Protocol):
    """One discovered input (``preprocessing.workers.Job``): what it is, its root, its token."""

    @property
    def item(self) -> object: ...

    @property
    def root(self) -> Path: ...

    @property
    def name(self) -> str: ...


def check_public_key_use(jobs: Iterable[_Input]) -> None:
    """Refuse a public key unless every input is one of the project's own phantoms.

    Raises:
        InputError: an input the phantom generator did not write (named by its token).
    """
    for job in jobs:
        if not _is_phantom(job.item, job.root):
            raise InputError(
                f"{job.name}: the pseudonym key is the public demo key, which may "
                "only pseudonymise the built-in phantoms (anyone can reverse it); set a secret "
                "AUGMENT_PSEUDONYM_KEY or let augment create .augment/pseudonym.key"
            )


def _is_phantom(item: object, root: Path) -> bool:
    import json

    files = getattr(item, "files", None)
    if files:  # a DICOM series
        import pydicom

        try:
            head = pydicom.dcmread(
                files[0], stop_before_pixels=True, specific_tags=["Manufacturer"]
            )
        except Exception:  # an unreadable header is not a phantom's
            return False
        return str(head.get("Manufacturer", "")) == PHANTOM_MARK
    doc = Path(root) / "dataset.json"  # a NIfTI case: the phantoms' Decathlon dataset.json
    try:
        return PHANTOM_DATASET_MARK in str(json.loads(doc.read_text()).get("reference", ""))
    except (OSError, ValueError, AttributeError):
        return False
