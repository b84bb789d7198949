"""NIfTI reader: ``.nii``/``.nii.gz`` volumes (and label volumes) into canonical Volumes.

Every reader of this package returns the same canonical orientation, so that a scan read from
DICOM and from NIfTI gives the same array: the volume is first turned to the closest RAS+ voxel
order (what ``nibabel.as_closest_canonical`` does) and then laid out as (Z, Y, X) with Z running
from inferior to superior, Y from anterior to posterior and X from the patient's right to left,
which is how a radiologist views an axial slice (the DICOM display convention).

Data sets are found in three layouts: Decathlon / nnU-Net (``imagesTr`` + ``labelsTr``), a
folder of volumes with masks named by a pattern (``{case}_seg.nii.gz``), or a folder of volumes
without masks.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    OrientationError,
    apply_orientation,
    inv_ornt_aff,
    io_orientation,
)
from nibabel.spatialimages import HeaderDataError

from augment.config import PreprocessConfig
from augment.contracts.volume import Volume
from augment.errors import InputError
from augment.preprocessing.readers.base import Discovery, Found, MapFn, Namer

SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_LABEL_DIRS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}
# Errors nibabel, gzip and numpy raise on damaged files.
_READ_ERRORS = (
    OSError, EOFError, zlib.error, ValueError, OverflowError, ImageFileError, HeaderDataError
)  # fmt: skip


@dataclass(frozen=True)
class NiftiCase:
    """One case of a NIfTI data set: its image file(s), with its mask file when there is one.

    Attributes:
        images: the image files, one per channel file found (nnU-Net ``_0000``, ``_0001``...
            under ``imagesTr``/``imagesTs``; elsewhere one file, which may hold 4D channels).
        mask: the label file, or None.
        case: the case name (file name without extension and nnU-Net channel suffix); it is
            the raw patient id, so it must never be written out as it is.
        root: the input root the files were found under.
        modality: from ``dataset.json`` (:func:`_modality`), channel 0's.
        channel_ids: the nnU-Net channel number of each of ``images``.
        declared: the channel names ``dataset.json`` declares (empty: it does not say).
    """

    images: tuple[Path, ...]
    mask: Path | None
    case: str
    root: Path
    modality: str = "OT"  # "CT" or "MR" when the data set's dataset.json says; "OT": unknown
    channel_ids: tuple[int, ...] = (0,)
    declared: tuple[str, ...] = ()

    @property
    def image(self) -> Path:
        """The first channel's file (what messages name)."""
        return self.images[0]


def is_nifti(path: Path) -> bool:
    """Whether a file name has a NIfTI extension."""
    return path.name.endswith(SUFFIXES)


def strip_suffix(name: str) -> str:
    """The file name without ``.nii.gz`` or ``.nii``."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_cases(root: Path, mask_pattern: str | None = None) -> list[NiftiCase]:
    """Find the image volumes under ``root``, group a case's channel files, pair them with
    their masks.

    Args:
        root: a data set folder (holding ``imagesTr``), an ``imagesTr`` folder, a folder of
            volumes, or a single file.
        mask_pattern: masks named after their image, ``{case}`` standing for the case name,
            relative to the image's folder (e.g. ``"{case}_seg.nii.gz"``); files matching it are
            masks, not images.

    Returns:
        The cases in sorted path order (of their first file).
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if is_nifti(p) and not p.name.startswith(".")]
    masks = _pattern_masks(files, mask_pattern)
    groups: dict[tuple[Path, str], dict[int, Path]] = {}
    for path in files:
        if path in masks or path.parent.name in _LABEL_DIRS.values():
            continue
        case, channel = _case_name(path)
        groups.setdefault((path.parent, case), {})[channel] = path
    cases = []
    for (_, case), by_channel in groups.items():
        ids = tuple(sorted(by_channel))
        images = tuple(by_channel[c] for c in ids)
        cases.append(NiftiCase(images, _mask_for(images[0], case, mask_pattern), case, root,
                               channel_ids=ids))  # fmt: skip
    return _distinct(sorted(cases, key=lambda c: c.images[0]))


def _distinct(cases: list[NiftiCase]) -> list[NiftiCase]:
    """Cases whose names repeat (``sub-01/ct.nii.gz``, ``sub-02/ct.nii.gz``) get the folder.

    The case name is the raw patient id: two patients sharing a file name must not become one.
    """
    names = Counter(c.case for c in cases)
    out = []
    for c in cases:
        if names[c.case] > 1:
            folder = c.image.parent.relative_to(c.root) if c.root.is_dir() else Path()
            c = replace(c, case=(folder / c.case).as_posix())
        out.append(c)
    return out


def _case_name(path: Path) -> tuple[str, int]:
    """(case, nnU-Net channel): ``_0001`` is a channel only in ``imagesTr``/``imagesTs``, so
    ``pat_0001.nii.gz`` in a plain folder stays a case of its own."""
    stem = strip_suffix(path.name)
    match = _CHANNEL.match(stem) if path.parent.name in _LABEL_DIRS else None
    if match is None:
        return stem, 0
    return match["case"], int(match["channel"])


def _pattern_masks(files: list[Path], pattern: str | None) -> set[Path]:
    if not pattern:
        return set()
    regex = re.compile("^" + re.escape(pattern).replace(r"\{case\}", "(.+)") + "$")
    return {p for p in files if regex.match(p.name)}


def _mask_for(image: Path, case: str, pattern: str | None) -> Path | None:
    if pattern:
        candidate = image.parent / pattern.format(case=case)
        return candidate if candidate.is_file() else None
    label_dir = _LABEL_DIRS.get(image.parent.name)
    if label_dir is None:
        return None
    for suffix in SUFFIXES:
        candidate = image.parent.parent / label_dir / f"{case}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _dataset_json(root: Path) -> dict | None:
    """The ``dataset.json`` at or above ``root`` (Decathlon or nnU-Net v2), or None."""
    root = Path(root)
    for folder in (root, root.parent) if root.is_dir() else (root.parent, root.parent.parent):
        path = folder / "dataset.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except (ValueError, OSError):
                return None
            return value if isinstance(value, dict) else None
    return None


def _channel_names(meta: dict | None) -> tuple[str, ...]:
    """The channel names a ``dataset.json`` declares (Decathlon ``modality``, nnU-Net v2
    ``channel_names``: ``{"0": "T1", "1": "FLAIR"}``), in channel order; () when it does not."""
    meta = meta or {}
    names = meta.get("channel_names") or meta.get("modality") or {}
    if not isinstance(names, dict):
        return ()
    try:
        ordered = sorted((int(k), str(v).strip()) for k, v in names.items())
    except (TypeError, ValueError):
        return ()
    if [k for k, _ in ordered] != list(range(len(ordered))) or not all(v for _, v in ordered):
        return ()
    return tuple(v for _, v in ordered)


def _modality(names: tuple[str, ...]) -> str:
    """Channel 0's modality from the declared channel names: ``"CT"``, ``"MR"`` for any other
    name (T1, FLAIR, ... are in arbitrary units, like MR), or ``"OT"`` when none is declared."""
    if not names:
        return "OT"
    return "CT" if names[0].upper() == "CT" else "MR"


def read_label_names(root: Path) -> dict[str, int] | None:
    """Mask label names to ids from a ``dataset.json`` at or above ``root`` (Decathlon or v2).

    Returns:
        ``{"background": 0, "lesion": 1, ...}``, or None when there is no readable file.
    """
    return _labels(_dataset_json(root))


def _labels(meta: dict | None) -> dict[str, int] | None:
    if meta is None:
        return None
    try:
        return _label_ids(meta.get("labels") or {})
    except (ValueError, TypeError, AttributeError):
        return None


def _label_ids(labels: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in labels.items():
        if str(k).isdigit():  # Decathlon: {"0": "background"}
            out[str(v)] = int(k)
        elif isinstance(v, int):  # nnU-Net v2: {"background": 0}
            out[str(k)] = v
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def canonical_zyx(
    data: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient voxel data to the package's canonical (Z, Y, X) layout.

    Args:
        data: voxels in file order (i, j, k).
        affine: voxel (i, j, k) to RAS+ world (mm).

    Returns:
        The (Z, Y, X) array (Z inferior to superior, Y anterior to posterior, X right to left)
        and its spacing (z, y, x) in mm.
    """
    try:
        ornt = io_orientation(affine)
        ras = apply_orientation(data, ornt)  # (R, A, S) axes, each increasing toward R, A, S
        ras_affine = affine @ inv_ornt_aff(ornt, data.shape)
    except (OrientationError, ValueError, np.linalg.LinAlgError) as exc:
        raise InputError(f"expected an affine with one axis per world direction ({exc})") from exc
    sx, sy, sz = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    zyx = ras.transpose(2, 1, 0)[:, ::-1, ::-1]  # (S, P, L)
    return np.ascontiguousarray(zyx), (float(sz), float(sy), float(sx))


def read_nifti(
    path: Path | tuple[Path, ...],
    patient: str,
    source: str,
    mask: Path | None = None,
    channels: list[int] | None = None,
    name: str | None = None,
    max_voxels: int = 2**28,
    modality: str = "OT",
    declared: tuple[str, ...] = (),
) -> Volume:
    """Read a NIfTI case (its channel files, and its mask) fully into a canonical Volume.

    The whole file is decompressed here, so that a truncated ``.nii.gz`` fails now and not
    halfway through training.

    Args:
        path: the image file, or one file per channel (nnU-Net ``_0000``, ``_0001``...); a 4D
            file holds its channels along the fourth axis.
        patient: the pseudonymised patient id to store in the Volume.
        source: the (pseudonymised) source to store in the Volume.
        mask: the label file, which must match the image in shape and geometry.
        channels: which channels to keep (None: all of them).
        name: how messages name the file (default: its path).
        max_voxels: the most voxels a header may declare; checked before any data is read,
            so a 1 KB header claiming 30000^3 voxels (or a gzip bomb) costs nothing.
        modality: "CT", "MR" or "OT" (from ``dataset.json``).
        declared: the channel names ``dataset.json`` declares; a case with another number of
            channels is refused rather than read with one missing.

    Raises:
        InputError: an unreadable file, an unsupported shape, a declared size above
            ``max_voxels``, an affine that is not a finite invertible matrix, channel files
            that disagree or are missing, or a mask that does not match.
    """
    paths = (path,) if isinstance(path, Path | str) else tuple(path)
    name = name or str(paths[0])
    volumes: list[np.ndarray] = []  # (x, y, z) each
    first: nib.Nifti1Image | None = None
    for k, file in enumerate(paths):
        where = name if k == 0 else f"{name} (channel file {k})"
        img = _load(Path(file), where)
        _check_header(img, where, max_voxels)
        data = _channels(_voxels(img, Path(file), where, scaled=True), where)
        if first is None:
            first = img
        elif data.shape[:3] != first.shape[:3] or not np.allclose(
            img.affine, first.affine, atol=1e-3
        ):
            raise InputError(
                f"{where}: expected the grid (shape, affine) of channel 0, got another"
            )
        volumes.extend(data[..., c] for c in range(data.shape[3]))
    assert first is not None
    if declared and len(volumes) != len(declared):
        raise InputError(
            f"{name}: expected {len(declared)} channels ({', '.join(declared)}) as dataset.json "
            f"declares, got {len(volumes)}"
        )
    names = declared or ((modality,) if len(volumes) == 1 else tuple(map(str, range(len(volumes)))))
    keep = list(range(len(volumes))) if channels is None else channels
    if any(c >= len(volumes) for c in keep):
        raise InputError(f"{name}: expected channels {keep}, got {len(volumes)} channel(s)")
    zyx = [canonical_zyx(volumes[c], first.affine) for c in keep]
    vol_mask = None
    if mask is not None:
        vol_mask = _read_mask(mask, first, volumes[0].shape, name)
    return Volume(
        image=np.stack([z for z, _ in zyx]).astype(np.float32, copy=False),  # (C, Z, Y, X)
        spacing=zyx[0][1],
        patient=patient,
        source=source,
        modality=modality,  # NIfTI headers have none; a data set's dataset.json may
        mask=vol_mask,
        channels=tuple(names[c] for c in keep),
    )


def _load(path: Path, name: str) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(f"{name}: not a readable NIfTI file ({_scrub(exc, path, name)})") from exc
    if not isinstance(img, nib.Nifti1Image):  # NIfTI-2 images are Nifti1Image subclasses
        raise InputError(f"{name}: expected a NIfTI-1/2 image, got a {type(img).__name__}")
    return img


def _check_header(img: nib.Nifti1Image, name: str, max_voxels: int) -> None:
    declared = int(np.prod([int(n) for n in img.shape], dtype=np.float64))
    if declared > max_voxels:
        raise InputError(
            f"{name}: expected at most {max_voxels} voxels (preprocess.max_voxels), the header "
            f"declares {declared}"
        )
    affine = np.asarray(img.affine, np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            f"{name}: expected a finite, invertible affine, got {affine[:3, :3].tolist()}"
        )
    if (zooms <= 0).any():
        raise InputError(f"{name}: expected positive voxel sizes, got {zooms.tolist()}")


def _voxels(img: nib.Nifti1Image, path: Path, name: str, scaled: bool) -> np.ndarray:
    try:
        if scaled:  # get_fdata applies the header's scl_slope / scl_inter
            return img.get_fdata(dtype=np.float32)
        return np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        why = _scrub(exc, path, name)
        raise InputError(f"{name}: corrupt or truncated NIfTI data ({why})") from exc


def _channels(data: np.ndarray, name: str) -> np.ndarray:
    """(x, y, z, C): NIfTI keeps (x, y, z, t, c); singleton extra dimensions are dropped."""
    if data.ndim < 3:
        raise InputError(f"{name}: expected a 3D volume, got shape {data.shape}")
    extra = [d for d in data.shape[3:] if d > 1]
    if len(extra) > 1:
        raise InputError(f"{name}: expected a 3D or 4D volume, got shape {data.shape}")
    return data.reshape(*data.shape[:3], extra[0] if extra else 1)


def _read_mask(mask: Path, img: nib.Nifti1Image, shape: tuple[int, ...], name: str) -> np.ndarray:
    label = _load(mask, f"mask of {name}")
    data = _voxels(label, mask, f"mask of {name}", scaled=False)
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and data.size == np.prod(shape) else data
    if data.shape != shape:
        raise InputError(f"{name}: expected a mask of shape {shape}, got {data.shape}")
    if not np.allclose(label.affine, img.affine, atol=1e-3):
        raise InputError(
            f"{name}: expected a mask with the image's geometry (affine), got a different one"
        )
    if not np.issubdtype(data.dtype, np.integer):
        data = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError(f"{name}: expected integer mask labels, got fractional values")
    if data.min() < 0 or data.max() > 255:
        raise InputError(f"{name}: expected mask labels in 0..255, got {data.min()}..{data.max()}")
    zyx, _ = canonical_zyx(np.asarray(data), img.affine)
    return zyx.astype(np.uint8)


def _scrub(exc: BaseException, path: Path, name: str) -> str:
    """The exception's first line without the file's path or name (they may carry patient
    ids); nibabel adds advice on further lines."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    for part in sorted({str(path), path.name, strip_suffix(path.name)}, key=len, reverse=True):
        if part:
            text = text.replace(part, name)
    return text


class NiftiReader:
    """The ``nifti`` input reader: one Volume per image file, with its mask when found."""

    def claims(self, files: list[Path]) -> bool:
        return any(is_nifti(p) for p in files)

    def discover(
        self, root: Path, cfg: PreprocessConfig, name_of: Namer, map_fn: MapFn
    ) -> Discovery:
        meta = _dataset_json(root)  # read once: channel names, modality, label names
        declared = _channel_names(meta)
        modality = _modality(declared)
        cases = [
            replace(c, modality=modality, declared=declared)
            for c in find_cases(root, cfg.mask_pattern)
        ]
        found = [
            Found(
                c, c.case, c.image, c.mask is not None, (*c.images, *([c.mask] if c.mask else []))
            )
            for c in cases
        ]
        return Discovery(found, label_names=_labels(meta))

    def read(
        self, item: object, patient: str, source: str, name_of: Namer, cfg: PreprocessConfig
    ) -> Volume:
        if not isinstance(item, NiftiCase):
            raise TypeError(f"expected a NiftiCase, got {type(item).__name__}")
        if item.channel_ids != tuple(range(len(item.channel_ids))):
            got = ", ".join(f"_{c:04d}" for c in item.channel_ids)
            raise InputError(f"{name_of(item.image)}: a channel file is missing (found {got})")
        return read_nifti(
            item.images, patient, source, item.mask, cfg.channels, name_of(item.image),
            cfg.max_voxels, item.modality, item.declared,
        )  # fmt: skip
