"""``--merge-with-real``: a real data set whose cases join the synthetic ones.

Two layouts are read: nnU-Net v2 raw (``imagesTr/<case>_000c.nii.gz``, ``dataset.json`` with
``channel_names`` and ``file_ending``) and the Medical Segmentation Decathlon's (MSD:
``dataset.json`` with ``modality`` and a ``training`` list of ``imagesTr/<case>.nii.gz``, one
file per case, 4D when it has several channels). The merged set is nnU-Net raw either way: the
real set's cases are linked (or copied) in beside the synthetic cases, an MSD case's 4D image is
split into one file per channel as nnU-Net's own MSD converter does, and the folds (the set's own
``splits_final.json``, or nnU-Net's default 5-fold split) get every synthetic case in their
training part only, so nnU-Net never validates on a synthetic case.
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


LAYOUTS = (
    "nnU-Net v2 raw (dataset.json with file_ending '.nii.gz') or Decathlon/MSD (with modality)"
)
NNUNET, MSD = "nnU-Net v2 raw", "Decathlon (MSD)"


@dataclass(frozen=True)
class CaseFiles:
    """Where one real case's files are: an image file per channel, and its label.

    Attributes:
        images: per channel, (file, index in its 4th axis) or (file, None) for a 3D file.
        label: the label map.
    """

    images: tuple[tuple[Path, int | None], ...]
    label: Path


@dataclass
class RealSet:
    """A real data set to merge synthetic cases into, read as nnU-Net raw.

    Attributes:
        root: its directory.
        dataset: its ``dataset.json`` in nnU-Net v2's keys (``channel_names``, ``labels`` as
            name -> id, ``file_ending``), converted from the Decathlon's where it was one.
        cases: sorted case identifiers.
        splits: its ``splits_final.json`` when it has one, else None.
        layout: NNUNET or MSD.
        files: each case's files.
    """

    root: Path
    dataset: dict[str, Any]
    cases: list[str]
    splits: list[dict[str, Any]] | None
    layout: str = NNUNET
    files: dict[str, CaseFiles] | None = None

    def case_files(self, case: str) -> CaseFiles:
        if self.files is not None:
            return self.files[case]
        channels = len(self.dataset["channel_names"])
        images = self.root / "imagesTr"
        return CaseFiles(
            tuple((images / f"{case}_{c:04d}{NIFTI_ENDING}", None) for c in range(channels)),
            self.root / "labelsTr" / f"{case}{NIFTI_ENDING}",
        )


def read_real_set(root: Path) -> RealSet:
    """Open a ``.nii.gz`` nnU-Net raw or Decathlon (MSD) data set and check every case's files.

    Raises:
        InputError: a missing file, another file ending, no channel names, an image without
            its label or another channel's file, or a numTraining that disagrees; named.
    """
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root}: dataset.json is missing; expected a data set in {LAYOUTS}")
    dataset = load_json(path, InputError)
    if not isinstance(dataset, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(dataset).__name__}")
    if "file_ending" not in dataset and "modality" in dataset and "training" in dataset:
        return _read_msd(root, dataset)
    ending = dataset.get("file_ending")
    if ending != NIFTI_ENDING:
        raise InputError(
            f"{path}: expected file_ending {NIFTI_ENDING!r} (nnU-Net v2 raw) or a Decathlon "
            f"dataset.json (modality and training), got file_ending {ending!r}"
        )
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


def _read_msd(root: Path, dataset: dict[str, Any]) -> RealSet:
    """A Decathlon set as nnU-Net raw: its ``training`` list, labels as name -> id."""
    path = root / "dataset.json"
    modality, labels = dataset.get("modality"), dataset.get("labels")
    if not isinstance(modality, dict) or not modality:
        raise InputError(f"{path}: expected channel names (modality), got {modality!r}")
    try:
        names = {str(v): int(k) for k, v in labels.items()} if isinstance(labels, dict) else None
    except (TypeError, ValueError):
        names = None
    if not names or sorted(names.values()) != list(range(len(names))):
        raise InputError(f"{path}: expected labels as {{'0': 'background', ...}}, got {labels!r}")
    channels = {str(c): str(modality[k]) for c, k in enumerate(sorted(modality, key=int))}
    entries = dataset.get("training")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: expected a training list of image and label files")
    files: dict[str, CaseFiles] = {}
    for entry in entries:
        image, label = _msd_entry(root, path, entry)
        case = image.name[: -len(NIFTI_ENDING)]
        if case in files:
            raise InputError(f"{path}: case {case} is listed twice in training")
        files[case] = CaseFiles(_msd_channels(image, len(channels)), label)
    if dataset.get("numTraining", len(files)) != len(files):
        got = dataset.get("numTraining")
        raise InputError(f"{path}: numTraining is {got!r}, but training lists {len(files)} cases")
    converted = {
        "name": dataset.get("name", root.name),
        "description": dataset.get("description", ""),
        "channel_names": channels,
        "labels": dict(sorted(names.items(), key=lambda kv: kv[1])),
        "numTraining": len(files),
        "file_ending": NIFTI_ENDING,
        "converted_from": MSD,
    }
    cases = sorted(files)
    return RealSet(root, converted, cases, _read_splits(root, set(cases)), MSD, files)


def _msd_entry(root: Path, path: Path, entry: object) -> tuple[Path, Path]:
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), str) for k in ("image", "label")
    ):
        raise InputError(f"{path}: expected training entries with image and label files")
    image, label = (root / str(entry[k]) for k in ("image", "label"))
    for file in (image, label):
        if not file.name.endswith(NIFTI_ENDING):
            raise InputError(f"{path}: expected {NIFTI_ENDING} files, got {file.name}")
        if not file.is_file():
            raise InputError(f"{file}: listed in {path.name}, but missing")
    return image, label


def _load_nifti(path: Path) -> Any:
    """A NIfTI image (nibabel's Nifti1Image or Nifti2Image), or one clear line."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for damaged headers
        raise InputError(f"{path}: unreadable NIfTI header ({type(exc).__name__})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: expected a NIfTI image, got {type(img).__name__}")
    return img


def _msd_channels(image: Path, channels: int) -> tuple[tuple[Path, int | None], ...]:
    """One source per channel: the file itself (3D), or each index of its 4th axis (4D)."""
    shape = _load_nifti(image).shape
    if len(shape) == 3 and channels == 1:
        return ((image, None),)
    if len(shape) == 4 and shape[3] == channels:
        return tuple((image, c) for c in range(channels))
    raise InputError(
        f"{image}: expected a 3D image, or 4D with {channels} channels (dataset.json modality), "
        f"got shape {tuple(shape)}"
    )


def place_case_files(real: RealSet, case: str, images: Path, labels: Path) -> None:
    """Put one real case into an nnU-Net raw set: ``<case>_000c`` images and ``<case>`` label.

    A 3D file is linked (or copied); a channel of a 4D Decathlon image is written as its own
    3D file with the image's affine and header (nnU-Net's MSD converter splits them the same).
    """
    import nibabel as nib

    found = real.case_files(case)
    read: dict[Path, tuple[Any, np.ndarray]] = {}  # a 4D file is read (decompressed) once
    for c, (src, index) in enumerate(found.images):
        dst = images / f"{case}_{c:04d}{NIFTI_ENDING}"
        if index is None:
            link_or_copy(src, dst)
            continue
        if src not in read:
            img = _load_nifti(src)
            read[src] = (img, np.asanyarray(img.dataobj))
        img, voxels = read[src]
        header = img.header.copy()
        header.set_data_shape(img.shape[:3])
        nib.save(nib.Nifti1Image(voxels[..., index], img.affine, header), dst)
    link_or_copy(found.label, labels / f"{case}{NIFTI_ENDING}")


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
