"""JSON files of the stages: reading with a named error, writing with NaN as null."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


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


def write_json(path: Path, value: Any) -> None:
    """JSON with NaN written as null (dvc and browsers reject NaN)."""
    path.write_text(json.dumps(_clean(value), indent=2) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
