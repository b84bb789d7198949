"""The ``nnunet`` format: an nnU-Net v2 raw data set that MONAI reads as a Decathlon list too.

``imagesTr/<case>_0000.nii.gz`` (float32, the training data's units, e.g. HU; ``_0001``... for
further channels, e.g. MR sequences),
``labelsTr/<case>.nii.gz`` (uint8 label ids) and ``dataset.json`` (nnU-Net v2's keys plus a
Decathlon-style ``training`` list for ``monai.data.load_decathlon_datalist``). With
``--merge-with-real`` the real data set's cases are linked in beside the synthetic ones, with
a ``splits_final.json`` that keeps synthetic cases out of every validation fold.

NIfTI axis convention: a slice ``img`` of shape (rows y, columns x) is stored as the volume
``img.T[:, :, None]`` of shape (x, y, 1) with the affine ``diag(-sx, -sy, sz, 1)``. In RAS+
world terms voxel axis i runs to the patient's left and j to posterior: the standard axial DICOM
(LPS) orientation, so ITK-based readers (SimpleITK, nnU-Net's default reader) see an identity
direction and an array (1, y, x) equal to the slice. The gzip stream carries no time stamp, so
the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from augment.contracts.window import Window
from augment.errors import StoreError
from augment.sampling.draw import class_counts, class_of
from augment.sampling.formats.base import SampleFormat, SampleRun, meta_windows
from augment.sampling.merge import (
    NIFTI_ENDING,
    RealSet,
    place_case_files,
    real_folds,
    write_json_with_list,
)

CHANNEL_SUFFIX = "_0000"


def slice_affine(spacing: tuple[float, float], thickness: float) -> np.ndarray:
    """The affine of a stored slice: voxel (i=x, j=y, k) -> RAS+ mm (see the module docstring).

    Args:
        spacing: (y, x) in-plane pixel size in mm.
        thickness: through-plane voxel size in mm.
    """
    sy, sx = spacing
    return np.diag([-float(sx), -float(sy), float(thickness), 1.0])


def nifti_bytes(
    slice2d: np.ndarray, spacing: tuple[float, float], thickness: float, dtype: type
) -> bytes:
    """Encode a (y, x) slice as a gzip-compressed single-file NIfTI-1 volume (x, y, 1).

    The gzip header carries no time stamp and no file name, so equal arrays give equal bytes.
    """
    arr: np.ndarray = np.ascontiguousarray(slice2d, dtype=dtype)
    head = _nifti_header(arr.shape, arr.dtype.str, tuple(map(float, spacing)), float(thickness))
    # NIfTI stores voxels in Fortran order: volume (x, y, 1) = slice.T, whose Fortran-order
    # bytes are the slice's C-order bytes.
    return gzip.compress(head + arr.tobytes(), compresslevel=1, mtime=0)


@functools.lru_cache(maxsize=32)
def _nifti_header(
    shape_yx: tuple[int, int], dtype: str, spacing: tuple[float, float], thickness: float
) -> bytes:
    """nibabel's header (and extension flag) for every slice of one shape, dtype and geometry.

    Built once per run and reused: nibabel's per-image overhead would otherwise cost more than
    the compression.
    """
    data = np.zeros((shape_yx[1], shape_yx[0], 1), dtype=np.dtype(dtype))  # (x, y, 1)
    img = nib.Nifti1Image(data, slice_affine(spacing, thickness))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return raw[: len(raw) - data.nbytes]


def write_nifti_slice(
    path: Path, slice2d: np.ndarray, spacing: tuple[float, float], thickness: float, dtype: type
) -> None:
    """Write a (y, x) slice to ``path`` (``.nii.gz``); see :func:`nifti_bytes`."""
    Path(path).write_bytes(nifti_bytes(slice2d, spacing, thickness, dtype))


def read_nifti_slice(path: Path) -> np.ndarray:
    """Read a slice written by :func:`write_nifti_slice` back as its (y, x) array."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):
        raise StoreError(f"{Path(path).name}: expected a NIfTI-1 slice, got a {type(img).__name__}")
    data = np.asanyarray(img.dataobj)  # (x, y, 1)
    return np.ascontiguousarray(data[:, :, 0].T)


class NnunetFormat(SampleFormat):
    """nnU-Net v2 raw: one NIfTI slice per case and channel, ``dataset.json`` at the end."""

    folders = ("imagesTr", "labelsTr")
    ending = NIFTI_ENDING
    needs_masks = True  # nnU-Net trains segmentation: a case without a label is no case
    merges_real = True
    max_channels = 16

    def files(self, run: SampleRun, case: str) -> tuple[str, str]:
        image = f"{self.folders[0]}/{case}{CHANNEL_SUFFIX}{NIFTI_ENDING}"
        label = f"{self.folders[1]}/{case}{NIFTI_ENDING}" if run.has_masks else ""
        return image, label

    def write_case(
        self, run: SampleRun, i: int, image: np.ndarray, mask: np.ndarray | None, c: int
    ) -> None:
        image_file, label_file = self.files(run, run.case(i))
        sp, th = run.info.spacing, run.thickness
        for c, units in enumerate(run.to_units(image)):  # one file per channel
            path = run.root / _channel_file(image_file, c)
            write_nifti_slice(path, units, sp, th, np.float32)
        if mask is not None:
            write_nifti_slice(run.root / label_file, mask, sp, th, np.uint8)

    def finish(self, run: SampleRun, real: RealSet | None) -> None:
        _write_dataset_json(run, real)

    def read_image(self, path: Path, meta: dict[str, Any], window: Window) -> np.ndarray:
        windows = meta_windows(meta, window)
        return np.stack([
            w.to_unit_range(read_nifti_slice(_channel_file(path, c)), clip=False)
            for c, w in enumerate(windows)
        ])  # fmt: skip

    def read_mask(self, path: Path) -> np.ndarray:
        return read_nifti_slice(path)


def _channel_file(path: str | Path, channel: int) -> Path:
    """The ``_000c`` sibling of a case's ``_0000`` image file."""
    path = Path(path)
    return path.with_name(path.name.replace(f"{CHANNEL_SUFFIX}{NIFTI_ENDING}",
                                            f"_{channel:04d}{NIFTI_ENDING}"))  # fmt: skip


def _write_dataset_json(run: SampleRun, real: RealSet | None) -> None:
    """dataset.json (nnU-Net v2 keys + a Decathlon ``training`` list), and splits when merging."""
    n = run.cfg.n
    syn_cases = (run.case(i) for i in range(n))
    head: dict[str, Any] = {
        "channel_names": {str(c): name for c, name in enumerate(run.channels)},
        "labels": dict(sorted(run.info.label_names.items(), key=lambda kv: kv[1])),
        "numTraining": n,
        "file_ending": NIFTI_ENDING,
        "name": f"Dataset{run.cfg.dataset_id:03d}_{run.cfg.dataset_name}",
        "description": "SYNTHETIC slices sampled by augment from a DCGAN; not patient data",
        "synthetic_model_sha256": run.info.checksum,
    }
    entries: list[Any] = []
    if real is not None:
        channels = real.dataset.get("channel_names", real.dataset.get("modality"))
        head = {**real.dataset, **{k: head[k] for k in ("file_ending", "synthetic_model_sha256")}}
        head.pop("modality", None)
        head["channel_names"] = channels
        head["numTraining"] = len(real.cases) + n
        head["numSynthetic"] = n
        _link_real(real, run.root)
        entries = [_entry(c, len(run.channels)) for c in real.cases]
        _write_splits(run, real)
    head.pop("training", None)
    cum = np.cumsum(class_counts(n, run.info.class_names, run.cfg.class_ratio))
    conditional = bool(run.info.class_names)
    syn_entries = (
        {**_entry(c, len(run.channels)),
         "class": int(class_of(cum, np.array([i]))[0]) if conditional else -1,
         "synthetic": True}
        for i, c in enumerate(syn_cases)
    )  # fmt: skip
    write_json_with_list(
        run.root / "dataset.json", head, "training", itertools.chain(entries, syn_entries)
    )


def _entry(case: str, channels: int) -> dict[str, Any]:
    """A Decathlon ``training`` entry: MONAI takes a list of files as the channels of one image."""
    files = [f"./imagesTr/{case}_{c:04d}{NIFTI_ENDING}" for c in range(channels)]
    return {
        "image": files[0] if channels == 1 else files,
        "label": f"./labelsTr/{case}{NIFTI_ENDING}",
    }


def _link_real(real: RealSet, root: Path) -> None:
    for case in real.cases:
        place_case_files(real, case, root / "imagesTr", root / "labelsTr")


def _write_splits(run: SampleRun, real: RealSet) -> None:
    folds = real_folds(real)
    syn = [run.case(i) for i in range(run.cfg.n)]
    with open(run.root / "splits_final.json", "w") as fh:
        json.dump([{"train": f["train"] + syn, "val": f["val"]} for f in folds], fh, indent=1)
