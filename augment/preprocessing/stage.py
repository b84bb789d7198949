"""Preprocess: DICOM series and NIfTI volumes into a patient-split SliceStore.

Layered as nnU-Net's preprocessing is: array functions free of I/O and one volume's processing
(:mod:`augment.preprocessing.arrays`), jobs that read and process one volume in a worker
(:mod:`augment.preprocessing.workers`), then the loop over the data set (:func:`preprocess`),
which streams the volumes through a spool on disk into the
:class:`~augment.contracts.slice_store.SliceStoreWriter`, so memory stays bounded by a few
volumes.

Privacy: patients are named by keyed pseudonyms (:mod:`augment.preprocessing.privacy`); the
``source`` column is ``"<pseudonym>/series-<n>"`` (n counts the patient's volumes in input
order), and skipped files are named by a keyed token of their path, never by the path, so no
folder or file name (which often carries a name or an id) reaches an output or a log line.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from augment.config import PreprocessConfig
from augment.contracts.slice_store import SPLITS, SliceStoreWriter
from augment.contracts.window import PERCENTILE, Window
from augment.errors import ConfigError, InputError
from augment.io.atomic import refuse_existing, remove_leftovers
from augment.io.jsonfile import write_json
from augment.preprocessing.arrays import Slices, resolved, split_patients
from augment.preprocessing.privacy import (
    TOKEN,
    check_public_key_use,
    file_token,
    is_public_key,
    load_key,
    pseudonym,
    reemit,
)
from augment.preprocessing.readers import READERS
from augment.preprocessing.readers.base import Found, MapFn
from augment.preprocessing.workers import Job, outcomes, pool_map, worker_pool

# ---------------------------------------------------------------- the stage


@dataclass
class _Spooled:
    """One read volume: what its slices' rows need; its pixels are in ``path`` (None: kept
    nowhere, as ``augment check`` counts without storing)."""

    patient: str
    source: str
    path: Path | None
    z: np.ndarray
    lesion_pixels: np.ndarray
    has_mask: bool
    spacing: tuple[float, float]


@dataclass
class _Run:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)  # slices of read volumes, by reason
    formats: set[str] = field(default_factory=set)
    label_names: dict[str, int] | None = None
    classes: dict[str, int] | None = None  # pseudonym -> class id, from a labels CSV


@dataclass(frozen=True)
class Layout:
    """Where the read volumes go in the store: each patient's split and class, and masks."""

    splits: dict[str, str]
    patient_class: dict[str, int]
    with_masks: bool


Keep = Callable[[Slices, Job, int], _Spooled]  # what to do with a read volume's slices


class NothingReadable(InputError):
    """No volume to store: none found, or every one skipped (``run.skipped`` says why)."""

    def __init__(self, inputs: list[Path], run: _Run) -> None:
        self.run = run
        where = ", ".join(str(p) for p in inputs) or "(no --input)"
        if not run.skipped:
            super().__init__(f"{where}: expected DICOM or NIfTI volumes, got none")
            return
        reasons = Counter(s["reason"] for s in run.skipped).most_common(3)
        listed = "; ".join(f"{n} x {r}" for r, n in reasons)
        super().__init__(
            f"{where}: expected readable volumes, got none ({len(run.skipped)} skipped: {listed})"
        )


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
            ``.augment/pseudonym.key``, see :mod:`augment.preprocessing.privacy`).

    Returns:
        The store's ``meta.json`` content.

    Raises:
        ConfigError: labels_from and labels_csv disagree.
        InputError: no input, nothing readable, a bad labels CSV, or any bad input with
            ``cfg.strict``.
    """
    check_labels_option(cfg, labels_csv)
    refuse_existing(out, cfg.overwrite)  # before any reading (dvc repro removes it first)
    key = load_key(key_file)
    out = Path(out)
    with worker_pool(cfg.workers) as pool:
        try:
            run = plan_inputs(inputs, cfg, key, labels_csv, pool_map(pool))
            out.parent.mkdir(parents=True, exist_ok=True)
            remove_leftovers(out)  # spools and partial stores of dead runs
            spool = Path(
                tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-spool-", dir=out.parent)
            )
            try:
                keep = functools.partial(_spool, spool)
                spooled, imaging = read_volumes(inputs, run, cfg, pool, keep)
                meta = _write_store(cfg, out, run, spooled, imaging)
                skipped_record(out).unlink(missing_ok=True)  # an earlier failed run's record
            finally:
                shutil.rmtree(spool, ignore_errors=True)
        except NothingReadable as exc:
            raise _nothing_readable(exc, out) from None
    return meta


def plan_inputs(
    inputs: list[Path],
    cfg: PreprocessConfig,
    key: bytes,
    labels_csv: Path | None = None,
    map_fn: MapFn = map,
) -> _Run:
    """What preprocess decides before reading a volume: the jobs in store order, with their
    pseudonymised names, the inputs skipped so far, and the classes of a labels CSV.

    Raises:
        NothingReadable: no volume found, or none with a class in the labels CSV.
        ConfigError: masks with several foreground labels and no ``lesion_labels``.
        InputError: a public key on real data, a bad labels CSV, or a bad input with strict.
    """
    run = _discover(inputs, cfg, key, map_fn)
    if not run.jobs:
        raise NothingReadable(inputs, run)
    if is_public_key(key):
        check_public_key_use(run.jobs)
    _check_lesion_labels(cfg, run.label_names)
    if labels_csv is not None:
        run.classes = _read_classes(labels_csv, cfg, key)
        run.jobs = _drop_unlabelled(run, run.classes)
        if not run.jobs:
            raise NothingReadable(inputs, run)
    return run


def read_volumes(
    inputs: list[Path],
    run: _Run,
    cfg: PreprocessConfig,
    pool: ProcessPoolExecutor | None,
    keep: Keep,
) -> tuple[list[_Spooled], dict[str, Any]]:
    """Read and process every planned volume, handing each one's slices to ``keep``.

    Returns:
        What ``keep`` returned per volume kept, and the window, modality and choice text.

    Raises:
        NothingReadable: every volume was skipped.
        InputError: CT and other modalities mixed, or a bad input with strict.
    """
    spooled, imaging = _spool_all(run, cfg, pool, keep)
    if not spooled:
        raise NothingReadable(inputs, run)
    if run.classes is not None:
        _check_csv_patients(run.classes, spooled, run, cfg)
    return spooled, imaging


def check_labels_option(cfg: PreprocessConfig, labels_csv: Path | None) -> None:
    """Refuse a labels CSV that ``labels_from`` does not ask for, or its absence where it does.

    Raises:
        ConfigError: ``labels_from`` and ``labels_csv`` disagree, or mask labels with other
            than 2 class names.
    """
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


def _check_lesion_labels(cfg: PreprocessConfig, label_names: dict[str, int] | None) -> None:
    # With organ and tumour labels (Decathlon Liver, Pancreas...), "any non-zero pixel" would
    # make every organ slice a lesion slice: ask rather than guess.
    foreground = {n: i for n, i in (label_names or {}).items() if i != 0}
    if cfg.labels_from == "mask" and cfg.lesion_labels is None and len(foreground) > 1:
        raise ConfigError(
            f"the masks declare {len(foreground)} foreground labels {foreground}: expected "
            "preprocess.lesion_labels to say which make a slice positive, e.g. "
            f"[{max(foreground.values())}]"
        )


def _skip(
    run: _Run, cfg: PreprocessConfig, name: str, reason: str, files: tuple[str, ...] = ()
) -> None:
    """Record a skipped input; a volume of several files (``files``: their tokens) gets one
    entry per file, each with the reason and without another file's token in front of it."""
    culprit, _, rest = reason.partition(": ")
    named = TOKEN.fullmatch(culprit) is not None
    reason = rest if named else reason
    if cfg.strict:
        raise InputError(
            f"{culprit if named else name}: {reason} (--strict stops at the first bad input)"
        )
    for token in files or (name,):
        why = reason
        if named and token != culprit:
            why = f"its series was skipped: {reason} (file {culprit})"
        run.skipped.append({"input": token, "reason": why})


def _discover(inputs: list[Path], cfg: PreprocessConfig, key: bytes, map_fn: MapFn = map) -> _Run:
    """Find the volumes under every input root, in a fixed order, with pseudonymised names."""
    run = _Run()
    counts: Counter[str] = Counter()
    found: list[tuple[str, str, Found, Path]] = []
    for root in map(Path, inputs):
        if not root.exists():
            raise InputError(f"{root}: expected an input folder or file, got no such path")
        fmt = cfg.format if cfg.format != "auto" else _claimant(root)
        found_here = READERS.get(fmt)().discover(
            root, cfg, functools.partial(file_token, root=root, key=key), map_fn
        )
        for name, reason in found_here.skipped:
            _skip(run, cfg, name, reason)
        run.label_names = run.label_names or found_here.label_names
        if found_here.found:
            run.formats.add(fmt)
        for item in found_here.found:
            name = file_token(item.first_file, root, key)
            if cfg.labels_from == "mask" and not item.has_mask:
                reason = "no mask, but labels_from is 'mask' (use a labels CSV)"
                _skip(run, cfg, name, reason, _tokens(item, root, key))
                continue
            found.append((pseudonym(item.raw_patient, key), fmt, item, root))
    # Order by pseudonym, not by path: folder names differ between layouts (and may carry
    # identifiers), and the same patients must give the same store whatever the layout.
    for patient, fmt, item, root in sorted(found, key=lambda f: f[0]):
        source = f"{patient}/series-{counts[patient]}"
        counts[patient] += 1
        name = file_token(item.first_file, root, key)
        tokens = _tokens(item, root, key)
        run.jobs.append(Job(fmt, item.item, root, patient, source, name, key, tokens))
    return run


def _tokens(item: Found, root: Path, key: bytes) -> tuple[str, ...]:
    """The keyed tokens of every input file of a found volume."""
    return tuple(file_token(p, root, key) for p in item.files or (item.first_file,))


def _claimant(root: Path) -> str:
    """The first registered reader that claims the files under ``root`` (``format: auto``)."""
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for name in READERS.names():
        if READERS.get(name)().claims(files):
            return name
    return READERS.names()[-1]


def skipped_record(out: Path) -> Path:
    """Where a run that found nothing readable records what it skipped: beside ``out``."""
    return out.with_name(f"{out.name}.skipped.json")


def _nothing_readable(exc: NothingReadable, out: Path) -> InputError:
    """The error of a run with nothing to store, after recording every skipped input and why
    (by keyed token) in :func:`skipped_record`, since no ``meta.json`` will hold them."""
    if not exc.run.skipped:
        return exc
    record = skipped_record(Path(out))
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, {"volumes_stored": 0, "skipped": exc.run.skipped})
    return InputError(f"{exc}; every skipped input with its reason: {record}")


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
            reason = f"patient {job.patient} has no class in the labels CSV"
            run.skipped.extend({"input": t, "reason": reason} for t in job.files or (job.name,))
    return kept


def _check_csv_patients(
    classes: dict[str, int], spooled: list[_Spooled], run: _Run, cfg: PreprocessConfig
) -> None:
    missing = sorted(set(classes) - {s.patient for s in spooled})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        _skip(run, cfg, "labels CSV", f"{len(missing)} patients have no readable input ({shown})")


def _spool_all(
    run: _Run, cfg: PreprocessConfig, pool: ProcessPoolExecutor | None, keep: Keep
) -> tuple[list[_Spooled], dict[str, Any]]:
    """Process every job, handing each volume's slices to ``keep`` (preprocess: into a spool
    until the split is known).

    Returns:
        The spooled volumes, and the window, modality and choice text for ``meta.json``.

    Raises:
        InputError: CT and other modalities mixed (their units differ).
    """
    spooled: list[_Spooled] = []
    windows: list[set[Window]] = []  # per channel
    kinds: Counter[tuple[str, ...]] = Counter()
    channels: tuple[str, ...] | None = None
    columns = (TextColumn("preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("volumes", total=len(run.jobs))
        for outcome in outcomes(run.jobs, cfg, pool):
            job = run.jobs[outcome.job_index]
            reemit(job.name, outcome.warned)
            progress.advance(task)
            slices = outcome.slices
            if slices is not None and channels and len(slices.channels) != len(channels):
                outcome.reason = (
                    f"expected {len(channels)} channel(s) ({', '.join(channels)}) like the "
                    f"volumes before it, got {len(slices.channels)}"
                )
                slices = None
            if slices is None:
                _skip(run, cfg, job.name, outcome.reason or "unreadable", job.files)
                continue
            channels = channels or slices.channels  # the first volume names them
            run.left_out.update(slices.left_out)
            spooled.append(keep(slices, job, outcome.job_index))
            windows = windows or [set() for _ in channels]
            for seen, window in zip(windows, slices.windows, strict=True):
                seen.add(window)
            kinds[slices.kinds] += 1
    if len(kinds) > 1:
        counts = ", ".join(f"{n} {'+'.join(k)}" for k, n in sorted(kinds.items()))
        raise InputError(
            f"inputs: expected one kind of image per store, got {counts} volumes (CT in "
            "Hounsfield units, MR or other modalities in arbitrary units); preprocess each into "
            "its own store"
        )
    if not spooled or channels is None:
        return spooled, {}
    per_channel = next(iter(kinds))
    chosen = [resolved(cfg, kind) for kind in per_channel]
    names = [c.window if isinstance(c.window, str) else "explicit" for c in chosen]
    body = chosen[0].body_threshold
    modality = "+".join(dict.fromkeys(per_channel))  # "CT", "MR" (or "CT+MR" across channels)
    choice = (
        f"{modality}: window {'/'.join(dict.fromkeys(names))}"
        + (" (auto)" if cfg.window == "auto" else "")
        + ", body above "
        + ("Otsu's threshold per volume (auto)" if body == "auto" else f"{body:g}")
        + (" (auto)" if cfg.body_threshold == "auto" and body != "auto" else "")
        + (f" of {channels[0]}" if len(channels) > 1 else "")
    )
    metas = [_window_meta(c, w) for c, w in zip(chosen, windows, strict=True)]
    return spooled, {
        "window": metas[0], "windows": metas, "channels": _named(channels, per_channel),
        "modality": modality, "choice": choice,
    }  # fmt: skip


def _named(channels: tuple[str, ...], kinds: tuple[str, ...]) -> list[str]:
    """The store's channel names: a channel nothing named ("OT": no DICOM Modality, no
    dataset.json) is called after its kind, "CT" or "image", as nnU-Net's channel_names say."""
    return [
        name if name.upper() not in ("", "OT") else ("CT" if kind == "CT" else "image")
        for name, kind in zip(channels, kinds, strict=True)
    ]


def described(slices: Slices, job: Job, _index: int = 0) -> _Spooled:
    """A read volume's rows without its pixels (a :data:`Keep` that stores nothing)."""
    return _Spooled(
        job.patient, job.source, None, slices.z, slices.lesion_pixels,
        slices.masks is not None, slices.spacing,
    )  # fmt: skip


def _spool(spool: Path, slices: Slices, job: Job, index: int) -> _Spooled:
    # Plain .npy files: no zip and no CRC to compute, the spool lives only for this run.
    path = spool / str(index)
    np.save(path.with_suffix(".images.npy"), slices.images.astype(np.float16))
    if slices.masks is not None:
        np.save(path.with_suffix(".masks.npy"), slices.masks)
    return dataclasses.replace(described(slices, job), path=path)


def _window_meta(cfg: PreprocessConfig, windows: set[Window]) -> dict[str, Any]:
    """The store's window (``cfg`` resolved for its modality)."""
    if cfg.window == PERCENTILE:
        return Window(PERCENTILE, percentiles=cfg.percentiles).to_dict()
    return sorted(windows, key=lambda w: (w.low, w.high))[0].to_dict()


def _slice_labels(
    entry: _Spooled, cfg: PreprocessConfig, classes: dict[str, int] | None
) -> np.ndarray:
    if classes is not None:
        return np.full(entry.z.shape, classes[entry.patient], dtype=np.int64)
    return (entry.lesion_pixels >= cfg.min_lesion_pixels).astype(np.int64)


def store_layout(
    cfg: PreprocessConfig, spooled: list[_Spooled], classes: dict[str, int] | None
) -> Layout:
    """Each patient's class (its highest slice class) and split, and whether masks are kept
    (only when every volume has one)."""
    patient_class: dict[str, int] = {}
    for entry in spooled:
        top = int(_slice_labels(entry, cfg, classes).max(initial=0))
        patient_class[entry.patient] = max(patient_class.get(entry.patient, 0), top)
    splits = split_patients(patient_class, cfg.split, cfg.seed)
    return Layout(splits, patient_class, all(e.has_mask for e in spooled))


def store_rows(
    cfg: PreprocessConfig, entry: _Spooled, layout: Layout, classes: dict[str, int] | None
) -> list[dict[str, Any]]:
    """The ``slices.csv`` rows of one read volume."""
    labels = _slice_labels(entry, cfg, classes)
    split = layout.splits[entry.patient]
    triples = zip(entry.z, labels, entry.lesion_pixels, strict=True)
    return [_row(entry, int(z), int(c), split, layout.with_masks, int(n)) for z, c, n in triples]


def _write_store(
    cfg: PreprocessConfig,
    out: Path,
    run: _Run,
    spooled: list[_Spooled],
    imaging: dict[str, Any],
) -> dict[str, Any]:
    layout = store_layout(cfg, spooled, run.classes)
    with_masks = layout.with_masks
    channels = len(imaging["channels"])
    with SliceStoreWriter(out, cfg.size, with_masks, channels, overwrite=cfg.overwrite) as writer:
        for entry in spooled:
            assert entry.path is not None  # preprocess spools every volume
            images = np.load(entry.path.with_suffix(".images.npy"))
            masks = np.load(entry.path.with_suffix(".masks.npy")) if with_masks else None
            writer.add(images, masks, store_rows(cfg, entry, layout, run.classes))
        writer.meta.update(store_meta(cfg, run, spooled, imaging, layout))
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


def store_meta(
    cfg: PreprocessConfig,
    run: _Run,
    spooled: list[_Spooled],
    imaging: dict[str, Any],
    layout: Layout,
) -> dict[str, Any]:
    """``meta.json`` but for what the writer adds (``n_slices``, ``counts``); ``imaging``
    holds the window, the modality and how they were chosen."""
    with_masks, patient_class = layout.with_masks, layout.patient_class
    spacings = sorted({e.spacing for e in spooled})
    label_ids = run.label_names or {"background": 0, "lesion": 1}
    return {
        "size": cfg.size,
        "axis": cfg.axis,
        "window": imaging["window"],
        "windows": imaging["windows"],
        "channels": imaging["channels"],
        "modality": imaging["modality"],
        "window_choice": imaging["choice"],
        "class_names": list(cfg.class_names),
        "labels_from": cfg.labels_from,
        "label_ids": label_ids if with_masks else {},
        "with_masks": with_masks,
        "spacing": list(spacings[0]) if len(spacings) == 1 else None,
        "spacing_range": [list(spacings[0]), list(spacings[-1])],
        "input_format": "+".join(sorted(run.formats)),
        "volumes_read": len(spooled),
        "files_skipped": sum(1 for s in run.skipped if s["input"] != "labels CSV"),
        "slices_left_out": dict(sorted(run.left_out.items())),
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
    table.add_row(f"  {meta['window_choice']}", "")
    for reason, n in meta.get("slices_left_out", {}).items():
        table.add_row(f"  slices left out: {reason}", str(n))
    table.add_row("input files skipped", str(meta["files_skipped"]))
    for reason, n in Counter(s["reason"] for s in meta["skipped"]).most_common():
        table.add_row(f"  {reason}", str(n))
    names = meta["class_names"]
    counts = meta["counts"]
    for split in SPLITS:
        per_class = counts["slices"].get(split, {})
        table.add_row(f"{split} patients", str(counts["patients"].get(split, 0)))
        having = counts.get("patients_with_class", {}).get(split, {})
        for cls, n in sorted(per_class.items()):
            label = names[int(cls)] if int(cls) < len(names) else cls
            who = f" (from {having[cls]} patients)" if cls in having else ""
            table.add_row(f"  {split} slices, {label}{who}", str(n))
    return table
