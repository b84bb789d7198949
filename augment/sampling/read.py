"""Reading a synthetic set back, in any registered format, through its manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from augment.contracts.synthetic_set import MANIFEST, META, SyntheticSet
from augment.contracts.window import Window
from augment.errors import StoreError
from augment.sampling.formats import FORMATS


def load_synthetic(path: Path) -> SyntheticSet:
    """Read a synthetic set written by ``augment sample`` in any format, through its manifest.

    Raises:
        StoreError: ``path`` is not a readable synthetic set (the message names the directory).
    """
    root = Path(path)
    for name in (MANIFEST, META):
        if not (root / name).is_file():
            raise StoreError(f"{root}: not a synthetic set, {name} is missing")
    try:
        meta = json.loads((root / META).read_text())
        with open(root / MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
        fmt_name = str(meta["format"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StoreError(f"{root}: unreadable {META} or {MANIFEST} ({exc!r})") from exc
    if fmt_name not in FORMATS.names():
        raise StoreError(f"{root}: unknown format {fmt_name!r} in {META}")
    window = Window.from_dict(meta.get("window"), str(root / META))
    try:
        images, masks = FORMATS.get(fmt_name)().read(root, rows, meta, window)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root}: unreadable synthetic file ({exc})") from exc
    classes = np.array([int(r["class"]) for r in rows], dtype=np.int64)
    if len(images) != len(rows):
        raise StoreError(f"{root}: {MANIFEST} has {len(rows)} rows, found {len(images)} images")
    return SyntheticSet(images, classes, masks, rows, list(meta.get("class_names", [])))
