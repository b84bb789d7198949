"""``--merge-with-real``: an nnU-Net v2 raw data set whose cases join the synthetic ones.

The real set's cases are linked (or copied) in beside the synthetic cases, and its folds
(its own ``splits_final.json``, or nnU-Net's default 5-fold split) get every synthetic case in
their training part only, so nnU-Net never validates on a synthetic case.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import InputError
from augment.io.jsonfile import load_json

NIFTI_ENDING = ".nii.gz"


def write_json_with_list(
    path: Path, head: dict[str, Any], key: str, items: Iterable[object]
) -> None:
    """Write ``head`` as a JSON object with one more key whose list is streamed from ``items``.

    The list may be long (one entry per case): it is never held in memory as a whole.
    """
    body = json.dumps(head, indent=2, sort_keys=True)
    with open(path, "w") as fh:
        fh.write(body[:-2] + ",\n" if head else "{\n")
        fh.write(f"  {json.dumps(key)}: [")
        for i, item in enumerate(items):
            fh.write(("," if i else "") + "\n    " + json.dumps(item, sort_keys=True))
        fh.write("\n  ]\n}\n")


@dataclass
class RealSet:
    """An nnU-Net v2 raw data set to merge synthetic cases into.

    Attributes:
        root: its directory.
        dataset: its ``dataset.json``.
        cases: sorted case identifiers (each has ``imagesTr/<case>_0000`` and a label).
        splits: its ``splits_final.json`` when it has one, else None.
    """

    root: Path
    dataset: dict[str, Any]
    cases: list[str]
    splits: list[dict[str, Any]] | None


def read_real_set(root: Path) -> RealSet:
    """Open a ``.nii.gz`` nnU-Net raw data set and check its layout (every channel's file).

    Raises:
        InputError: a missing file, another file ending, no channel names, an image without
            its label or another channel's file, or a numTraining that disagrees; named.
    """
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root}: not an nnU-Net raw data set, dataset.json is missing")
    dataset = load_json(path, InputError)
    ending = dataset.get("file_ending")
    if ending != NIFTI_ENDING:
        raise InputError(f"{path}: expected file_ending {NIFTI_ENDING!r}, got {ending!r}")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: expected channel names (channel_names), got {channels!r}")
    cases = sorted(
        p.name[: -len("_0000" + NIFTI_ENDING)]
        for p in (root / "imagesTr").glob("*_0000" + NIFTI_ENDING)
    )
    if not cases:
        raise InputError(f"{root / 'imagesTr'}: expected <case>_0000{NIFTI_ENDING} files, got none")
    for case in cases:
        if not (root / "labelsTr" / f"{case}{NIFTI_ENDING}").is_file():
            raise InputError(f"{root / 'imagesTr' / case}_0000{NIFTI_ENDING}: no label in labelsTr")
        for c in range(1, len(channels)):
            if not (root / "imagesTr" / f"{case}_{c:04d}{NIFTI_ENDING}").is_file():
                raise InputError(f"{root / 'imagesTr' / case}_{c:04d}{NIFTI_ENDING} is missing")
    if dataset.get("numTraining") != len(cases):
        got = dataset.get("numTraining")
        raise InputError(f"{path}: numTraining is {got!r}, but imagesTr holds {len(cases)} cases")
    return RealSet(root, dataset, cases, _read_splits(root, set(cases)))


def _read_splits(root: Path, cases: set[str]) -> list[dict[str, Any]] | None:
    path = root / "splits_final.json"
    if not path.is_file():
        return None
    splits = load_json(path, InputError)
    ok = isinstance(splits, list) and all(
        isinstance(f, dict)
        and set(f) >= {"train", "val"}
        and set(f["train"]) | set(f["val"]) <= cases
        for f in splits
    )
    if not ok or not splits:
        expected = "a list of {'train': [...], 'val': [...]} over the cases of imagesTr"
        raise InputError(f"{path}: expected {expected}")
    return splits


def real_folds(real: RealSet, n_folds: int = 5, seed: int = 12345) -> list[dict[str, Any]]:
    """The real cases' folds: the data set's own ``splits_final.json`` or a shuffled k-fold.

    The k-fold follows nnU-Net's default (sorted cases, KFold(5, shuffle, random_state 12345)).

    Raises:
        InputError: fewer real cases than folds.
    """
    if real.splits is not None:
        return [{"train": list(f["train"]), "val": list(f["val"])} for f in real.splits]
    if len(real.cases) < n_folds:
        raise InputError(
            f"{real.root}: expected at least {n_folds} cases for {n_folds} folds, "
            f"got {len(real.cases)}"
        )
    from sklearn.model_selection import KFold

    cases = np.array(real.cases)
    kfold = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        {"train": cases[tr].tolist(), "val": cases[va].tolist()} for tr, va in kfold.split(cases)
    ]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst``, copying where links are impossible (another device)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
