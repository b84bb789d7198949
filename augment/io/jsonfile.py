"""Reading a JSON file that a stage expects, with a named error when it is not valid JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_json(path: Path, error: type[Exception]) -> Any:
    """The parsed content of the JSON file at ``path``.

    Args:
        path: the file (the caller checks that it exists: what a missing file means differs).
        error: the exception to raise, e.g. :class:`~augment.errors.InputError` for an input,
            :class:`~augment.errors.StoreError` for a stage directory.

    Raises:
        error: the file is not valid JSON or not UTF-8; the message names the file.
    """
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
