"""Preprocess: DICOM series and NIfTI volumes into a patient-split SliceStore.

Layered as nnU-Net's preprocessing is: array functions free of I/O (:func:`window_range`,
:func:`reslice`, :func:`body_fraction`, :func:`resize_slices`, :func:`split_patients`), one
volume's processing (:func:`process_volume`), then the loop over the data set
(:func:`preprocess`), which reads volumes in parallel and streams them through a spool on disk
into the :class:`~augment.io.store.SliceStoreWriter`, so memory stays bounded by a few volumes.

Privacy: patients are named by keyed pseudonyms (:mod:`augment.privacy`); the ``source`` column
is ``"<pseudonym>/series-<n>"`` (n counts the patient's volumes in input order), and skipped files
are named by a keyed token of their path, never by the path, so no folder or file name (which
often carries a name or an id) reaches an output or a log line.
"""

from __future__ import annotations

import csv
import multiprocessing
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from skimage.transform import resize

from augment.config import PreprocessConfig, SplitConfig, WindowConfig
from augment.errors import ConfigError, InputError
from augment.io.dicom import MapFn, Series, read_series, scan_dicom
from augment.io.nifti import NiftiCase, find_cases, is_nifti, read_label_names, read_nifti
from augment.io.store import SPLITS, SliceStoreWriter
from augment.io.volume import Volume
from augment.privacy import file_token, load_key, pseudonym

# CT windows (centre, width) in HU, as radiology viewers preset them.
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}


# ---------------------------------------------------------------- array functions (no I/O)


def window_range(image: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float]:
    """The intensity range mapped to [-1, 1]: a CT preset, an explicit window or percentiles.

    Args:
        image: the volume in physical units (percentiles are taken over all of it).
        cfg: ``cfg.window`` and ``cfg.percentiles``.

    Returns:
        (low, high), with high > low.
    """
    if isinstance(cfg.window, WindowConfig):
        center, width = cfg.window.center, cfg.window.width
    elif cfg.window in WINDOWS:
        center, width = WINDOWS[cfg.window]
    else:
        lo, hi = np.percentile(image, cfg.percentiles)
        return float(lo), float(max(hi, lo + 1e-6))
    return center - width / 2, center + width / 2


def to_unit_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly to [-1, 1] (float32)."""
    out = np.clip(image, low, high).astype(np.float32)
    out -= low
    out *= 2.0 / (high - low)
    out -= 1.0
    return np.clip(out, -1.0, 1.0, out=out)


def reslice(
    volume: np.ndarray, spacing: tuple[float, float, float], axis: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """View a canonical (Z, Y, X) volume as a stack of 2D slices along ``axis``.

    Slices are laid out as viewers show them: axial with anterior up and the patient's right on
    the left; coronal and sagittal with superior up.

    Returns:
        (N, H, W) slices (a view, no copy) and their in-plane spacing (h, w) in mm.
    """
    sz, sy, sx = spacing
    if axis == "axial":
        return volume, (sy, sx)
    if axis == "coronal":  # (Y, Z reversed, X)
        return volume.transpose(1, 0, 2)[:, ::-1, :], (sz, sx)
    if axis == "sagittal":  # (X, Z reversed, Y)
        return volume.transpose(2, 0, 1)[:, ::-1, :], (sz, sy)
    raise ValueError(f"expected axis axial, coronal or sagittal, got {axis!r}")


def body_fraction(slices: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) share of each slice's pixels above ``threshold`` (physical units)."""
    return (slices > threshold).mean(axis=(1, 2))


def output_geometry(
    shape_hw: tuple[int, int], spacing_hw: tuple[float, float], size: int, spacing: float | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Where a slice lands in the S x S output: its resized shape and the output pixel size.

    Pixels become square. Without a target ``spacing`` the whole field of view fits in S x S
    (the short side is padded); with one, the slice is resampled to it and centre-padded or
    cropped to S x S.

    Returns:
        The resized (h, w) before padding/cropping, and the output spacing (y, x) in mm.
    """
    fov = (shape_hw[0] * spacing_hw[0], shape_hw[1] * spacing_hw[1])
    pixel = spacing if spacing is not None else max(fov) / size
    new = (max(1, round(fov[0] / pixel)), max(1, round(fov[1] / pixel)))
    if spacing is None:
        new = (min(new[0], size), min(new[1], size))
    return new, (round(fov[0] / new[0], 4), round(fov[1] / new[1], 4))


def resize_slices(slices: np.ndarray, shape_hw: tuple[int, int], is_mask: bool) -> np.ndarray:
    """Resize (N, H, W) slices in-plane: anti-aliased linear for images, nearest for masks."""
    target = (slices.shape[0], *shape_hw)
    if slices.shape == target:
        return np.array(slices)
    if is_mask:
        out = resize(slices, target, order=0, anti_aliasing=False, preserve_range=True)
        return out.astype(np.uint8)
    # The first axis keeps its size, so the anti-aliasing Gaussian has sigma 0 along it.
    return resize(slices, target, order=1, anti_aliasing=True, preserve_range=True).astype(
        np.float32
    )


def fit_square(slices: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre-pad or centre-crop (N, H, W) slices to (N, size, size)."""
    n, h, w = slices.shape
    out = np.full((n, size, size), fill, dtype=slices.dtype)
    ch, cw = min(h, size), min(w, size)
    sy, sx = (h - ch) // 2, (w - cw) // 2  # crop offsets
    dy, dx = (size - ch) // 2, (size - cw) // 2  # pad offsets
    out[:, dy : dy + ch, dx : dx + cw] = slices[:, sy : sy + ch, sx : sx + cw]
    return out


def split_patients(classes: dict[str, int], fractions: SplitConfig, seed: int) -> dict[str, str]:
    """Assign each patient to exactly one split, stratified by patient class.

    Within each class the patients are shuffled with ``seed`` and cut by the fractions
    (largest remainders); then every split with a non-zero fraction that got no patient takes
    one from the largest split, while that split keeps at least one.

    Args:
        classes: patient -> class id.
        fractions: the train/val/test fractions.
        seed: the shuffle's seed; the same inputs and seed give the same split.

    Returns:
        patient -> "train" | "val" | "test".
    """
    rng = np.random.default_rng(seed)
    frac = {"train": fractions.train, "val": fractions.val, "test": fractions.test}
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for cls in sorted(set(classes.values())):
        patients = sorted(p for p, c in classes.items() if c == cls)
        patients = [patients[i] for i in rng.permutation(len(patients))]
        quotas = _quotas(len(patients), frac, {s: len(m) for s, m in members.items()})
        start = 0
        for s in SPLITS:
            members[s].extend(patients[start : start + quotas[s]])
            start += quotas[s]
    for s in SPLITS:
        donor = max(SPLITS, key=lambda d: len(members[d]))
        if frac[s] > 0 and not members[s] and len(members[donor]) > 1:
            members[s].append(members[donor].pop())
    return {p: s for s in SPLITS for p in members[s]}


def _quotas(n: int, frac: dict[str, float], so_far: dict[str, int]) -> dict[str, int]:
    exact = {s: n * frac[s] for s in SPLITS}
    quotas = {s: int(exact[s]) for s in SPLITS}
    # Remainders go to the largest fractional parts; ties to the split furthest below its share.
    total = sum(so_far.values()) + n
    order = sorted(
        (s for s in SPLITS if frac[s] > 0),
        key=lambda s: (-(exact[s] - quotas[s]), so_far[s] - total * frac[s]),
    )
    for s in order[: n - sum(quotas.values())]:
        quotas[s] += 1
    return quotas


# ---------------------------------------------------------------- one volume


@dataclass
class Slices:
    """One volume's output slices (before the split is known).

    Attributes:
        images: (n, S, S) float32 in [-1, 1].
        masks: (n, S, S) uint8 label ids, or None.
        z: (n,) index of each slice along the slicing axis of the canonical volume.
        lesion_pixels: (n,) foreground mask pixels at the output size (0 without a mask).
        spacing: output pixel size (y, x) in mm.
        window: the (low, high) intensity range that was mapped to [-1, 1].
    """

    images: np.ndarray
    masks: np.ndarray | None
    z: np.ndarray
    lesion_pixels: np.ndarray
    spacing: tuple[float, float]
    window: tuple[float, float]


def process_volume(volume: Volume, cfg: PreprocessConfig) -> Slices:
    """Slice, filter, window and resize one volume.

    Raises:
        InputError: NaN or inf voxels, or no slice with enough body.
    """
    bad = int(np.size(volume.image) - np.count_nonzero(np.isfinite(volume.image)))
    if bad:
        raise InputError(f"{volume.source}: expected finite voxels, got {bad} NaN or inf")
    slices, spacing_hw = reslice(volume.image, volume.spacing, cfg.axis)
    keep = np.flatnonzero(body_fraction(slices, cfg.body_threshold) >= cfg.min_body_fraction)
    if keep.size == 0:
        raise InputError(
            f"{volume.source}: expected slices with at least {cfg.min_body_fraction:.0%} body "
            f"(voxels above {cfg.body_threshold:g}), got none"
        )
    low, high = window_range(volume.image, cfg)
    shape, spacing = output_geometry(slices.shape[1:], spacing_hw, cfg.size, cfg.spacing)
    images = resize_slices(to_unit_range(slices[keep], low, high), shape, is_mask=False)
    images = np.clip(fit_square(images, cfg.size, -1.0), -1.0, 1.0)  # (n, S, S)
    masks, lesion = None, np.zeros(keep.size, dtype=np.int64)
    if volume.mask is not None:
        mask_slices, _ = reslice(volume.mask, volume.spacing, cfg.axis)
        masks = fit_square(resize_slices(mask_slices[keep], shape, is_mask=True), cfg.size, 0)
        lesion = np.count_nonzero(masks, axis=(1, 2))
    return Slices(images, masks, keep, lesion, spacing, (low, high))


# ---------------------------------------------------------------- jobs (run in workers)


@dataclass(frozen=True)
class Job:
    """One volume to read: a DICOM series or a NIfTI case, with its pseudonymised names."""

    item: Series | NiftiCase
    patient: str
    source: str
    name: str
    key: bytes = field(repr=False)


@dataclass
class Outcome:
    """What a worker returns: the slices, or the reason the volume was skipped."""

    job_index: int
    slices: Slices | None = None
    reason: str | None = None


def _run_job(index: int, job: Job, cfg: PreprocessConfig) -> Outcome:
    try:
        volume = _read(job, cfg)
        return Outcome(index, slices=process_volume(volume, cfg))
    except InputError as exc:
        text = str(exc)
        for prefix in (job.name, job.source):
            text = text.removeprefix(f"{prefix}: ")
        return Outcome(index, reason=text)


def _read(job: Job, cfg: PreprocessConfig) -> Volume:
    item = job.item
    if isinstance(item, Series):
        return read_series(
            item, job.patient, job.source, lambda p: file_token(p, item.root, job.key)
        )
    return read_nifti(item.image, job.patient, job.source, item.mask, cfg.channel, name=job.name)


def _outcomes(
    jobs: list[Job], cfg: PreprocessConfig, pool: ProcessPoolExecutor | None
) -> Iterator[Outcome]:
    """Run the jobs, yielding outcomes in job order; at most 2 x workers are in flight."""
    if pool is None:
        for i, job in enumerate(jobs):
            yield _run_job(i, job, cfg)
        return
    pending: dict[int, Future[Outcome]] = {}
    submitted = 0
    for i in range(len(jobs)):
        while submitted < len(jobs) and submitted < i + 2 * cfg.workers:
            pending[submitted] = pool.submit(_run_job, submitted, jobs[submitted], cfg)
            submitted += 1
        yield pending.pop(i).result()


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool, all workers started now, before the progress bar's thread exists."""
    if workers == 1:
        yield None
        return
    # fork starts a worker in milliseconds; spawn (macOS, Windows, or a spawned parent) makes
    # every worker import the package again first, which costs seconds.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context(
        "fork" if sys.platform == "linux" and "fork" in methods else None
    )
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        list(pool.map(_noop, range(workers)))
        yield pool


def _noop(_: int) -> None:
    return None


def _map_fn(pool: ProcessPoolExecutor | None) -> MapFn:
    if pool is None:
        return map
    return partial(pool.map, chunksize=32)


# ---------------------------------------------------------------- the stage


@dataclass
class _Spooled:
    patient: str
    source: str
    path: Path
    z: np.ndarray
    lesion_pixels: np.ndarray
    has_mask: bool
    spacing: tuple[float, float]


@dataclass
class _Run:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    formats: set[str] = field(default_factory=set)
    label_names: dict[str, int] | None = None


def preprocess(
    cfg: PreprocessConfig,
    inputs: list[Path],
    out: Path,
    labels_csv: Path | None = None,
    key_file: Path | None = None,
) -> dict[str, Any]:
    """Turn DICOM series and NIfTI volumes into a patient-split SliceStore at ``out``.

    Args:
        cfg: the validated ``preprocess`` section.
        inputs: input roots (folders searched recursively, or files).
        out: the SliceStore directory; it appears whole or not at all, replacing an old one.
        labels_csv: ``patient,class`` rows; required when ``cfg.labels_from`` is ``"csv"``.
        key_file: the pseudonym key (default: ``AUGMENT_PSEUDONYM_KEY`` or
            ``.augment/pseudonym.key``, see :mod:`augment.privacy`).

    Returns:
        The store's ``meta.json`` content.

    Raises:
        ConfigError: labels_from and labels_csv disagree.
        InputError: no input, nothing readable, a bad labels CSV, or any bad input with
            ``cfg.strict``.
    """
    _check_labels_option(cfg, labels_csv)
    key = load_key(key_file)
    with _pool(cfg.workers) as pool:
        run = _discover(inputs, cfg, key, _map_fn(pool))
        if not run.jobs:
            raise InputError(_nothing_readable(inputs, run))
        classes = _read_classes(labels_csv, cfg, key) if labels_csv is not None else None
        if classes is not None:
            run.jobs = _drop_unlabelled(run, classes)
            if not run.jobs:
                raise InputError(_nothing_readable(inputs, run))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        spool = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-spool-", dir=out.parent))
        try:
            spooled, window = _spool_all(run, cfg, spool, pool)
            if classes is not None:
                _check_csv_patients(classes, spooled, run, cfg)
            meta = _write_store(cfg, out, run, spooled, classes, window)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
    Console().print(summary_table(meta))
    return meta


def _check_labels_option(cfg: PreprocessConfig, labels_csv: Path | None) -> None:
    if cfg.labels_from == "csv" and labels_csv is None:
        raise ConfigError("preprocess.labels_from is 'csv': expected --labels FILE, got none")
    if cfg.labels_from == "mask" and labels_csv is not None:
        raise ConfigError(
            "--labels given but preprocess.labels_from is 'mask': set labels_from to csv"
        )
    if cfg.labels_from == "mask" and len(cfg.class_names) != 2:
        raise ConfigError(
            f"labels_from 'mask' makes 2 classes: expected 2 class_names, got {cfg.class_names}"
        )


def _skip(run: _Run, cfg: PreprocessConfig, name: str, reason: str) -> None:
    if cfg.strict:
        raise InputError(f"{name}: {reason} (--strict stops at the first bad input)")
    run.skipped.append({"input": name, "reason": reason})


def _discover(inputs: list[Path], cfg: PreprocessConfig, key: bytes, map_fn: MapFn = map) -> _Run:
    """Find the volumes under every input root, in a fixed order, with pseudonymised names."""
    run = _Run()
    counts: Counter[str] = Counter()
    found: list[tuple[str, Series | NiftiCase, str]] = []
    for root in map(Path, inputs):
        if not root.exists():
            raise InputError(f"{root}: expected an input folder or file, got no such path")
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        fmt = cfg.format
        if fmt == "auto":
            fmt = "nifti" if any(is_nifti(p) for p in files) else "dicom"
        items: list[tuple[Series | NiftiCase, str]] = []
        if fmt == "nifti":
            cases = find_cases(root, cfg.channel, cfg.mask_pattern)
            items = [(c, c.case) for c in cases]
            run.label_names = run.label_names or read_label_names(root)
        else:
            series, bad = scan_dicom(root, lambda p, r=root: file_token(p, r, key), map_fn)
            for name, reason in bad:
                _skip(run, cfg, name, reason)
            items = [(s, s.raw_patient) for s in series]
        if items:
            run.formats.add(fmt)
        for item, raw in items:
            first = item.files[0] if isinstance(item, Series) else item.image
            name = file_token(first, root, key)
            if cfg.labels_from == "mask" and (isinstance(item, Series) or item.mask is None):
                _skip(run, cfg, name, "no mask, but labels_from is 'mask' (use a labels CSV)")
                continue
            found.append((pseudonym(raw, key), item, name))
    # Order by pseudonym, not by path: folder names differ between layouts (and may carry
    # identifiers), and the same patients must give the same store whatever the layout.
    for patient, item, name in sorted(found, key=lambda f: f[0]):
        source = f"{patient}/series-{counts[patient]}"
        counts[patient] += 1
        run.jobs.append(Job(item, patient, source, name, key))
    return run


def _nothing_readable(inputs: list[Path], run: _Run) -> str:
    where = ", ".join(str(p) for p in inputs) or "(no --input)"
    if not run.skipped:
        return f"{where}: expected DICOM or NIfTI volumes, got none"
    reasons = Counter(s["reason"] for s in run.skipped).most_common(3)
    listed = "; ".join(f"{n} x {r}" for r, n in reasons)
    return f"{where}: expected readable volumes, got none ({len(run.skipped)} skipped: {listed})"


def _read_classes(path: Path, cfg: PreprocessConfig, key: bytes) -> dict[str, int]:
    """Pseudonymised patient -> class id from a ``patient,class`` CSV."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable labels CSV ({type(exc).__name__})") from exc
    if not rows or not {"patient", "class"} <= set(rows[0]):
        raise InputError(
            f"{path}: expected columns patient,class, got {list(rows[0]) if rows else []}"
        )
    classes: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        cls = _class_id((row["class"] or "").strip(), cfg.class_names)
        if cls is None:
            raise InputError(
                f"{path}: line {line}: expected a class in {cfg.class_names} or an id below "
                f"{len(cfg.class_names)}, got {row['class']!r}"
            )
        patient = pseudonym(row["patient"] or "", key)
        if classes.setdefault(patient, cls) != cls:
            raise InputError(
                f"{path}: line {line}: a second, different class for patient {patient}"
            )
    return classes


def _class_id(text: str, names: list[str]) -> int | None:
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    return None


def _drop_unlabelled(run: _Run, classes: dict[str, int]) -> list[Job]:
    kept = []
    for job in run.jobs:
        if job.patient in classes:
            kept.append(job)
        else:
            run.skipped.append(
                {
                    "input": job.name,
                    "reason": f"patient {job.patient} has no class in the labels CSV",
                }
            )
    return kept


def _check_csv_patients(
    classes: dict[str, int], spooled: list[_Spooled], run: _Run, cfg: PreprocessConfig
) -> None:
    missing = sorted(set(classes) - {s.patient for s in spooled})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        _skip(run, cfg, "labels CSV", f"{len(missing)} patients have no readable input ({shown})")


def _spool_all(
    run: _Run, cfg: PreprocessConfig, spool: Path, pool: ProcessPoolExecutor | None
) -> tuple[list[_Spooled], dict[str, Any]]:
    """Process every job, keeping each volume's slices in ``spool`` until the split is known."""
    spooled: list[_Spooled] = []
    windows: set[tuple[float, float]] = set()
    columns = (TextColumn("preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("volumes", total=len(run.jobs))
        for outcome in _outcomes(run.jobs, cfg, pool):
            job = run.jobs[outcome.job_index]
            progress.advance(task)
            if outcome.slices is None:
                _skip(run, cfg, job.name, outcome.reason or "unreadable")
                continue
            spooled.append(_spool(outcome.slices, job, spool / str(outcome.job_index)))
            windows.add(outcome.slices.window)
    if not spooled:
        raise InputError(_nothing_readable([], run).replace("(no --input)", "inputs"))
    return spooled, _window_meta(cfg, windows)


def _spool(slices: Slices, job: Job, path: Path) -> _Spooled:
    # Plain .npy files: no zip and no CRC to compute, the spool lives only for this run.
    np.save(path.with_suffix(".images.npy"), slices.images.astype(np.float16))
    if slices.masks is not None:
        np.save(path.with_suffix(".masks.npy"), slices.masks)
    return _Spooled(
        job.patient, job.source, path, slices.z, slices.lesion_pixels,
        slices.masks is not None, slices.spacing,
    )  # fmt: skip


def _window_meta(cfg: PreprocessConfig, windows: set[tuple[float, float]]) -> dict[str, Any]:
    if cfg.window == "percentile":
        return {"kind": "percentile", "percentiles": list(cfg.percentiles)}
    (low, high), name = sorted(windows)[0], cfg.window
    kind = "explicit" if isinstance(name, WindowConfig) else name
    return {"kind": kind, "center": (low + high) / 2, "width": high - low, "low": low, "high": high}


def _slice_labels(
    entry: _Spooled, cfg: PreprocessConfig, classes: dict[str, int] | None
) -> np.ndarray:
    if classes is not None:
        return np.full(entry.z.shape, classes[entry.patient], dtype=np.int64)
    return (entry.lesion_pixels >= cfg.min_lesion_pixels).astype(np.int64)


def _write_store(
    cfg: PreprocessConfig,
    out: Path,
    run: _Run,
    spooled: list[_Spooled],
    classes: dict[str, int] | None,
    window: dict[str, Any],
) -> dict[str, Any]:
    patient_class: dict[str, int] = {}
    for entry in spooled:
        top = int(_slice_labels(entry, cfg, classes).max(initial=0))
        patient_class[entry.patient] = max(patient_class.get(entry.patient, 0), top)
    splits = split_patients(patient_class, cfg.split, cfg.seed)
    with_masks = all(e.has_mask for e in spooled)
    with SliceStoreWriter(out, size=cfg.size, with_masks=with_masks) as writer:
        for entry in spooled:
            images = np.load(entry.path.with_suffix(".images.npy"))
            masks = np.load(entry.path.with_suffix(".masks.npy")) if with_masks else None
            labels = _slice_labels(entry, cfg, classes)
            split = splits[entry.patient]
            triples = zip(entry.z, labels, entry.lesion_pixels, strict=True)
            rows = [_row(entry, int(z), int(c), split, with_masks, int(n)) for z, c, n in triples]
            writer.add(images, masks, rows)
        writer.meta.update(_meta(cfg, run, spooled, window, with_masks, patient_class))
    return dict(writer.meta)


def _row(
    entry: _Spooled, z: int, label: int, split: str, with_masks: bool, lesion: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "patient": entry.patient, "source": entry.source, "z": z, "label": label, "split": split,
        "spacing_y": entry.spacing[0], "spacing_x": entry.spacing[1],
    }  # fmt: skip
    if with_masks:
        row["lesion_pixels"] = lesion
    return row


def _meta(
    cfg: PreprocessConfig,
    run: _Run,
    spooled: list[_Spooled],
    window: dict[str, Any],
    with_masks: bool,
    patient_class: dict[str, int],
) -> dict[str, Any]:
    spacings = sorted({e.spacing for e in spooled})
    label_ids = run.label_names or {"background": 0, "lesion": 1}
    return {
        "size": cfg.size,
        "axis": cfg.axis,
        "window": window,
        "class_names": list(cfg.class_names),
        "labels_from": cfg.labels_from,
        "label_ids": label_ids if with_masks else {},
        "with_masks": with_masks,
        "spacing": list(spacings[0]) if len(spacings) == 1 else None,
        "spacing_range": [list(spacings[0]), list(spacings[-1])],
        "input_format": "+".join(sorted(run.formats)),
        "volumes_read": len(spooled),
        "volumes_skipped": sum(1 for s in run.skipped if s["input"] != "labels CSV"),
        "patient_classes": dict(Counter(str(c) for c in patient_class.values())),
        "skipped": run.skipped,
        "params": cfg.model_dump(mode="json"),
    }


def summary_table(meta: dict[str, Any]) -> Table:
    """A rich table of a run: volumes read, skipped with reasons, slices per split and class."""
    table = Table(title="augment preprocess", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("volumes read", str(meta["volumes_read"]))
    table.add_row("inputs skipped", str(len(meta["skipped"])))
    for reason, n in Counter(s["reason"] for s in meta["skipped"]).most_common():
        table.add_row(f"  {reason}", str(n))
    names = meta["class_names"]
    for split in SPLITS:
        per_class = meta["counts"]["slices"].get(split, {})
        patients = meta["counts"]["patients"].get(split, 0)
        for cls, n in sorted(per_class.items()):
            label = names[int(cls)] if int(cls) < len(names) else cls
            table.add_row(f"{split} slices, {label} ({patients} patients)", str(n))
    return table
