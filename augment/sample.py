"""``augment sample``: synthetic data sets that segmentation and classification trainers read.

Sample ``i`` of a run is G(z_i | y_i) with ``z_i`` drawn from ``np.random.default_rng([seed, i])``
(see :func:`noise`), so it does not depend on the batch size or the number of writer threads:
the manifest row (seed, noise_index, class) regenerates exactly that sample
(:func:`generate`). Classes get exact counts (largest remainder of the requested shares) in
contiguous blocks of indices.

Batches are generated in the main thread and written by a thread pool while the next batch is
generated; at most a few batches are in flight, so memory does not grow with ``n``. Everything is
written into a temporary directory beside ``out`` that replaces it only when complete.

Output layouts (every case name starts with ``syn_``):

- ``nnunet``: ``imagesTr/<case>_0000.nii.gz`` (float32, the training data's units, e.g. HU),
  ``labelsTr/<case>.nii.gz`` (uint8), ``dataset.json`` (nnU-Net v2 keys + a Decathlon
  ``training`` list);
- ``png``: ``images/<case>.png`` (8/16-bit, [-1, 1] over the full grey range),
  ``labels/<case>.png`` (uint8 label ids);
- ``npz``: ``samples.npz`` with ``images`` (N, 1, S, S) float32 in the data's units, ``masks``
  (N, S, S) uint8, ``classes`` (N,) int64;
- ``dicom``: ``images/<case>.dcm`` and ``labels/<case>.dcm``, Secondary Capture;

plus ``manifest.csv`` (one row per sample) and ``synthetic.json`` (what :func:`load_synthetic`
needs: format, intensity window, class and label names, the model's checksum).
"""

from __future__ import annotations

import csv
import errno
import itertools
import json
import os
import uuid
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augment.config import SampleConfig
from augment.errors import ConfigError, StoreError
from augment.io import synthetic as io
from augment.io.atomic import atomic_dir

PREFIX = "syn_"
MANIFEST = "manifest.csv"
META = "synthetic.json"
NPZ = "samples.npz"
COLUMNS = (
    "case", "file", "label_file", "class", "class_name", "seed", "noise_index", "truncation",
    "model_sha256",
)  # fmt: skip
_DIRS = {"nnunet": ("imagesTr", "labelsTr"), "png": ("images", "labels"),
         "dicom": ("images", "labels")}  # fmt: skip
_CT_PRESETS = ("abdomen", "lung", "brain", "bone")
_EXT = {"nnunet": io.NIFTI_ENDING, "png": ".png", "dicom": ".dcm"}


@dataclass(frozen=True)
class Units:
    """The training data's intensity window: [-1, 1] <-> center -/+ width / 2.

    Attributes:
        center: value of 0 in the model's range.
        width: span of [-1, 1] in the data's units.
        name: "HU" for CT, "" when the units are unknown or arbitrary.
    """

    center: float = 0.0
    width: float = 2.0
    name: str = ""

    def to_units(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] -> the data's units, float32."""
        return (x * np.float32(self.width / 2) + np.float32(self.center)).astype(np.float32)

    def to_unit_range(self, v: np.ndarray) -> np.ndarray:
        """The data's units -> [-1, 1], float32."""
        return ((v - np.float32(self.center)) / np.float32(self.width / 2)).astype(np.float32)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Units:
        """Read the window of a model's ``config.json`` (center/width or lower/upper bounds).

        The units are HU when the modality is CT, the window is a CT preset, or it reaches
        below -100 (only CT has such values); a percentile window has no units: [-1, 1] stays.
        """
        window = config.get("window")
        lo_hi = _window_bounds(window)
        if lo_hi is None:
            return cls()
        lo, hi = lo_hi
        kind = window.get("kind") if isinstance(window, dict) else None
        ct = str(config.get("modality", "")).upper() == "CT" or kind in _CT_PRESETS or lo < -100
        return cls(center=(lo + hi) / 2, width=hi - lo, name="HU" if ct else "")


def _window_bounds(window: Any) -> tuple[float, float] | None:
    if isinstance(window, dict):
        lower = {k.lower(): v for k, v in window.items()}
        if "width" in lower and ("center" in lower or "centre" in lower):
            c, w = float(lower.get("center", lower.get("centre"))), float(lower["width"])
            return c - w / 2, c + w / 2
        for lo_key, hi_key in (("lower", "upper"), ("low", "high"), ("lo", "hi"), ("min", "max")):
            if lo_key in lower and hi_key in lower:
                return float(lower[lo_key]), float(lower[hi_key])
    if isinstance(window, (list, tuple)) and len(window) == 2:
        return float(window[0]), float(window[1])
    return None


# --------------------------------------------------------------------------- what to draw


def class_counts(n: int, class_names: list[str], ratio: dict[str, float] | None) -> np.ndarray:
    """Exact per-class counts summing to ``n`` by the largest-remainder method.

    Shares may be proportions or counts ('normal=300,lesion=700' with n=1000 gives exactly
    those). Without a ratio the classes get equal shares; ties go to the lower class id.

    Raises:
        ConfigError: an unknown class name (the known ones are listed), a ratio for an
            unconditional model, or shares that are negative or sum to 0.
    """
    if not class_names:
        if ratio:
            raise ConfigError("sample.class_ratio: the model is unconditional, it has no classes")
        return np.array([n], dtype=np.int64)
    ratio = ratio or dict.fromkeys(class_names, 1.0)
    unknown = sorted(set(ratio) - set(class_names))
    if unknown:
        raise ConfigError(
            f"sample.class_ratio: unknown class {', '.join(map(repr, unknown))}; "
            f"the model's classes are {class_names}"
        )
    shares = np.array([float(ratio.get(c, 0.0)) for c in class_names])
    if (shares < 0).any() or shares.sum() <= 0:
        raise ConfigError(
            f"sample.class_ratio: expected shares >= 0 with a positive sum, got {ratio}"
        )
    quota = shares / shares.sum() * n
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")  # largest remainders first
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def noise(seed: int, indices: np.ndarray, nz: int, truncation: float | None = None) -> np.ndarray:
    """The noise of samples ``indices``: row k from ``np.random.default_rng([seed, indices[k]])``.

    Args:
        seed: the run's seed.
        indices: (B,) sample indices (the manifest's noise_index).
        nz: noise dimension.
        truncation: if set, entries with |z| > truncation are redrawn from the same stream
            (the truncation trick: a truncated normal, fidelity over diversity).

    Returns:
        (B, nz) float32.
    """
    out = np.empty((len(indices), nz), dtype=np.float32)
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, int(i)])
        z = rng.standard_normal(nz, dtype=np.float32)
        while truncation is not None and (bad := np.abs(z) > truncation).any():
            z[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        out[row] = z
    return out


@torch.inference_mode()
def generate(
    generator: torch.nn.Module,
    info: Any,
    seed: int,
    indices: np.ndarray,
    classes: np.ndarray,
    truncation: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Generate samples ``indices`` of a run (also used to regenerate one manifest row).

    Args:
        generator: from :func:`augment.modeldir.load_generator` (eval mode).
        info: its :class:`augment.modeldir.ModelInfo`.
        seed: the run's seed.
        indices: (B,) noise indices.
        classes: (B,) class ids (ignored by unconditional models).
        truncation: as in :func:`noise`.

    Returns:
        images (B, S, S) float32 in [-1, 1]; masks (B, S, S) uint8 label ids or None.
    """
    device = next(generator.parameters()).device
    z = torch.from_numpy(noise(seed, indices, info.spec.nz, truncation)).to(device)  # (B, nz)
    y = (
        torch.from_numpy(np.asarray(classes, dtype=np.int64)).to(device)
        if info.class_names
        else None
    )
    images, masks = info.split(generator(z, y))  # (B, 1, S, S), (B, S, S)
    return images[:, 0], masks


def _class_of(cum: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.searchsorted(cum, indices, side="right").astype(np.int64)  # block of each index


# --------------------------------------------------------------------------- the stage


@dataclass
class _Run:
    """What every writer of one run shares."""

    cfg: SampleConfig
    info: Any
    units: Units
    root: Path
    width: int  # digits of the case numbers
    # DICOM UIDs must be globally unique: every run mints new ones, even with the same seed
    # (the pixel data is what the seed reproduces).
    uid_nonce: str = field(default_factory=lambda: uuid.uuid4().hex)

    def case(self, i: int) -> str:
        return f"{PREFIX}{i:0{self.width}d}"

    def files(self, case: str) -> tuple[str, str]:
        fmt = self.cfg.format
        if fmt == "npz":
            return NPZ, NPZ if self.info.spec.mask_channels else ""
        img_dir, lab_dir = _DIRS[fmt]
        image = (
            f"{img_dir}/{case}_0000{_EXT[fmt]}"
            if fmt == "nnunet"
            else f"{img_dir}/{case}{_EXT[fmt]}"
        )
        label = f"{lab_dir}/{case}{_EXT[fmt]}" if self.info.spec.mask_channels else ""
        return image, label

    @property
    def thickness(self) -> float:
        return float(self.info.config.get("slice_thickness") or max(self.info.spacing))

    def dicom_series(self, number: int) -> io.DicomSeries:
        what = "images" if number == 1 else "label maps"
        return io.DicomSeries(
            key=f"augment:{self.uid_nonce}",
            series_number=number,
            description=f"SYNTHETIC {what} - generated by augment, not a patient",
            spacing=self.info.spacing,
            center=self.units.center,
            width=self.units.width,
            units=self.units.name or "US",
        )


def sample(
    cfg: SampleConfig, model: Path, out: Path, merge_with_real: Path | None = None
) -> dict[str, Any]:
    """Sample ``cfg.n`` synthetic slices from a model directory into a data set at ``out``.

    Args:
        cfg: the sample section.
        model: the model directory written by ``augment train``.
        out: the output directory; it appears whole or not at all.
        merge_with_real: an nnU-Net raw data set whose cases are linked into ``out`` beside the
            synthetic ones, with a ``splits_final.json`` that keeps synthetic cases out of
            every validation fold (format nnunet only).

    Returns:
        A summary: out, format, n, counts per class, model checksum, real cases merged.

    Raises:
        StoreError: a missing or incompatible model directory.
        ConfigError: an unknown class, a ratio for an unconditional model, nnunet without masks.
        InputError: a bad real data set to merge.
        FileExistsError: ``out`` exists and ``cfg.overwrite`` is off.
        OSError: writing failed (a full disk: ENOSPC); nothing partial is left.
    """
    from augment.modeldir import load_generator, resolve_device

    out = Path(out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(
            errno.EEXIST, "already exists (pass --overwrite to replace it)", str(out)
        )
    generator, info = load_generator(Path(model), resolve_device(cfg.device))
    _check_model(cfg, info, merge_with_real)
    counts = class_counts(cfg.n, info.class_names, cfg.class_ratio)
    real = io.read_real_set(merge_with_real) if merge_with_real else None
    if real is not None:
        _check_real(real, info)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        run = _Run(cfg, info, Units.from_config(info.config), tmp, max(6, len(str(cfg.n - 1))))
        _write_samples(run, generator, counts)
        _write_meta(run, counts, real)
        if cfg.format == "nnunet":
            _write_dataset_json(run, real)
    return {
        "out": str(out),
        "format": cfg.format,
        "n": cfg.n,
        "counts": _named_counts(info.class_names, counts),
        "model_sha256": info.checksum,
        "real_cases": len(real.cases) if real else 0,
    }


def _check_model(cfg: SampleConfig, info: Any, merge: Path | None) -> None:
    if info.spec.channels != 1:
        raise StoreError(f"{info.path}: expected a 1-channel generator, got {info.spec.channels}")
    if cfg.format == "nnunet" and not info.spec.mask_channels:
        raise ConfigError(
            f"sample.format: nnunet needs masks, but the model in {info.path} makes none; "
            "use png, npz or dicom"
        )
    if merge is not None and cfg.format != "nnunet":
        raise ConfigError(f"--merge-with-real: expected format nnunet, got {cfg.format}")


def _check_real(real: io.RealSet, info: Any) -> None:
    labels = real.dataset.get("labels")
    if labels != info.label_names:
        raise ConfigError(
            f"{real.root / 'dataset.json'}: expected the model's labels {info.label_names}, "
            f"got {labels}"
        )
    clash = [c for c in real.cases if c.startswith(PREFIX)]
    if clash:
        raise ConfigError(
            f"{real.root}: case names starting with {PREFIX!r} are reserved: {clash[:3]}"
        )


def _named_counts(class_names: list[str], counts: np.ndarray) -> dict[str, int]:
    names = class_names or ["all"]
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _write_samples(run: _Run, generator: torch.nn.Module, counts: np.ndarray) -> None:
    """Generate in batches and hand them to the writers; manifest rows stream to disk."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    img_dir, lab_dir = _DIRS.get(run.cfg.format, (None, None))
    for sub in (img_dir, lab_dir if run.info.spec.mask_channels else None):
        if sub:
            (run.root / sub).mkdir()
    cum = np.cumsum(counts)
    n, bs = run.cfg.n, run.cfg.batch_size
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        open(run.root / MANIFEST, "w", newline="") as fh,
        Progress(*columns, transient=True, console=Console(stderr=True)) as bar,
        _Writers(run) as writers,
    ):
        task = bar.add_task(f"sampling {run.cfg.format}", total=n)
        manifest = csv.writer(fh)
        manifest.writerow(COLUMNS)
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            classes = _class_of(cum, idx)
            images, masks = generate(
                generator, run.info, run.cfg.seed, idx, classes, run.cfg.truncation
            )
            manifest.writerows(_rows(run, idx, classes))
            writers.put(idx, images, masks, classes, lambda k: bar.advance(task, k))


class _Writers:
    """Write batches: per-file formats in a thread pool, npz appended in order.

    At most a few batches are in flight (memory stays flat). On leaving with an error, queued
    work is cancelled and running work finished before the temporary directory is removed.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.sink = _NpzSink(run) if run.cfg.format == "npz" else None
        self.pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="augment-write")
        self.pending: deque[Future] = deque()

    def __enter__(self) -> _Writers:
        return self

    def put(
        self,
        idx: np.ndarray,
        images: np.ndarray,
        masks: np.ndarray | None,
        classes: np.ndarray,
        done: Any,
    ) -> None:
        """Queue one batch; ``done(k)`` is called as each k samples are on disk."""
        if self.sink is not None:
            self.sink.append(images, masks, classes)
            done(len(idx))
            return
        for part in np.array_split(np.arange(len(idx)), _workers()):
            if len(part):
                part_masks = None if masks is None else masks[part]
                args = (self.run, idx[part], images[part], part_masks, classes[part])
                fut = self.pool.submit(_write_cases, *args)
                fut.add_done_callback(lambda _, k=len(part): done(k))
                self.pending.append(fut)
        while len(self.pending) > 4 * _workers():  # bound the batches held in memory
            self.pending.popleft().result()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                while self.pending:
                    self.pending.popleft().result()
                if self.sink is not None:
                    self.sink.finish()
        except BaseException:
            exc_type = BaseException
            raise
        finally:
            if exc_type is not None and self.sink is not None:
                self.sink.close()
            self.pool.shutdown(wait=True, cancel_futures=True)  # nothing writes after this


def _rows(run: _Run, idx: np.ndarray, classes: np.ndarray) -> list[list[Any]]:
    rows = []
    for i, c in zip(idx.tolist(), classes.tolist(), strict=True):
        case = run.case(i)
        image, label = run.files(case)
        cls = c if run.info.class_names else -1
        name = run.info.class_names[c] if run.info.class_names else ""
        trunc = "" if run.cfg.truncation is None else run.cfg.truncation
        rows.append([case, image, label, cls, name, run.cfg.seed, i, trunc, run.info.checksum])
    return rows


def _write_cases(
    run: _Run, idx: np.ndarray, images: np.ndarray, masks: np.ndarray | None, classes: np.ndarray
) -> None:
    """Write a chunk of cases (runs in a writer thread)."""
    writer = _CASE_WRITERS[run.cfg.format]
    for k, i in enumerate(idx.tolist()):
        writer(run, i, images[k], None if masks is None else masks[k], int(classes[k]))


def _write_nnunet(run: _Run, i: int, image: np.ndarray, mask: np.ndarray | None, c: int) -> None:
    image_file, label_file = run.files(run.case(i))
    sp, th = run.info.spacing, run.thickness
    io.write_nifti(run.root / image_file, run.units.to_units(image), sp, th, np.float32)
    if mask is not None:
        io.write_nifti(run.root / label_file, mask, sp, th, np.uint8)


def _write_png(run: _Run, i: int, image: np.ndarray, mask: np.ndarray | None, c: int) -> None:
    image_file, label_file = run.files(run.case(i))
    io.write_png(run.root / image_file, io.to_png_levels(image, run.cfg.png_bits))
    if mask is not None:
        io.write_png(run.root / label_file, mask)


def _write_dicom(run: _Run, i: int, image: np.ndarray, mask: np.ndarray | None, c: int) -> None:
    case = run.case(i)
    image_file, label_file = run.files(case)
    cls = run.info.class_names[c] if run.info.class_names else "none"
    comment = (
        f"SYNTHETIC; class {cls}; seed {run.cfg.seed}; noise index {i}; "
        f"model sha256 {run.info.checksum[:16]}"
    )
    levels = np.rint(np.clip(image, -1, 1) * io.DICOM_SCALE).astype(np.int16)
    io.write_dicom(run.root / image_file, levels, run.dicom_series(1), case, i + 1, comment)
    if mask is not None:
        io.write_dicom(run.root / label_file, mask, run.dicom_series(2), case, i + 1, comment)


_CASE_WRITERS = {"nnunet": _write_nnunet, "png": _write_png, "dicom": _write_dicom}


class _NpzSink:
    """npz: batches stream to raw files, packed into one uncompressed ``samples.npz`` at the end."""

    def __init__(self, run: _Run) -> None:
        s = run.info.spec.image_size
        self.run = run
        self.images = io.NpyStream(run.root / "images.raw", np.float32, (1, s, s))
        self.classes = io.NpyStream(run.root / "classes.raw", np.int64, ())
        has_masks = bool(run.info.spec.mask_channels)
        self.masks = io.NpyStream(run.root / "masks.raw", np.uint8, (s, s)) if has_masks else None

    def append(self, images: np.ndarray, masks: np.ndarray | None, classes: np.ndarray) -> None:
        self.images.append(self.run.units.to_units(images)[:, None])  # (B, 1, S, S)
        self.classes.append(classes if self.run.info.class_names else np.full_like(classes, -1))
        if self.masks is not None:
            self.masks.append(masks)

    def finish(self) -> None:
        with zipfile.ZipFile(self.run.root / NPZ, "w", allowZip64=True) as zf:
            self.images.pack(zf, "images")
            self.classes.pack(zf, "classes")
            if self.masks is not None:
                self.masks.pack(zf, "masks")
            io.pack_small(zf, "class_names", np.array(self.run.info.class_names, dtype=str))
            window = np.array([self.run.units.center, self.run.units.width], dtype=np.float64)
            io.pack_small(zf, "window", window)
            io.pack_small(zf, "spacing", np.array(self.run.info.spacing, dtype=np.float64))

    def close(self) -> None:
        for stream in (self.images, self.classes, self.masks):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- metadata


def _write_meta(run: _Run, counts: np.ndarray, real: io.RealSet | None) -> None:
    meta = {
        "format": run.cfg.format,
        "n": run.cfg.n,
        "seed": run.cfg.seed,
        "truncation": run.cfg.truncation,
        "png_bits": run.cfg.png_bits,
        "counts": _named_counts(run.info.class_names, counts),
        "class_names": run.info.class_names,
        "label_names": run.info.label_names,
        "window": {"center": run.units.center, "width": run.units.width, "units": run.units.name},
        "spacing": list(run.info.spacing),
        "image_size": run.info.spec.image_size,
        "model_sha256": run.info.checksum,
        "real_cases": len(real.cases) if real else 0,
        "synthetic": True,
    }
    (run.root / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _write_dataset_json(run: _Run, real: io.RealSet | None) -> None:
    """dataset.json (nnU-Net v2 keys + a Decathlon ``training`` list), and splits when merging."""
    n = run.cfg.n
    syn_cases = (run.case(i) for i in range(n))
    head: dict[str, Any] = {
        "channel_names": {"0": "CT" if run.units.name == "HU" else "image"},
        "labels": dict(sorted(run.info.label_names.items(), key=lambda kv: kv[1])),
        "numTraining": n,
        "file_ending": io.NIFTI_ENDING,
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
        entries = [_entry(c) for c in real.cases]
        _write_splits(run, real)
    head.pop("training", None)
    cum = np.cumsum(class_counts(n, run.info.class_names, run.cfg.class_ratio))
    conditional = bool(run.info.class_names)
    syn_entries = (
        {**_entry(c), "class": int(_class_of(cum, np.array([i]))[0]) if conditional else -1,
         "synthetic": True}
        for i, c in enumerate(syn_cases)
    )  # fmt: skip
    io.write_json_with_list(
        run.root / "dataset.json", head, "training", itertools.chain(entries, syn_entries)
    )


def _entry(case: str) -> dict[str, str]:
    return {
        "image": f"./imagesTr/{case}_0000{io.NIFTI_ENDING}",
        "label": f"./labelsTr/{case}{io.NIFTI_ENDING}",
    }


def _link_real(real: io.RealSet, root: Path) -> None:
    for case in real.cases:
        for sub, name in (("imagesTr", f"{case}_0000"), ("labelsTr", case)):
            file = f"{name}{io.NIFTI_ENDING}"
            io.link_or_copy(real.root / sub / file, root / sub / file)


def _write_splits(run: _Run, real: io.RealSet) -> None:
    folds = io.real_folds(real)
    syn = [run.case(i) for i in range(run.cfg.n)]
    with open(run.root / "splits_final.json", "w") as fh:
        json.dump([{"train": f["train"] + syn, "val": f["val"]} for f in folds], fh, indent=1)


# --------------------------------------------------------------------------- reading back


@dataclass
class SyntheticSet:
    """A synthetic set read back by :func:`load_synthetic`.

    Attributes:
        images: (N, 1, S, S) float32 in [-1, 1] (the model's output range).
        classes: (N,) int64 class ids (-1 when the model is unconditional).
        masks: (N, S, S) uint8 label ids, or None.
        rows: manifest rows (case, file, label_file, class, seed, noise_index, model_sha256...).
        class_names: the model's class names.
    """

    images: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    rows: list[dict[str, str]]
    class_names: list[str]


def load_synthetic(path: Path) -> SyntheticSet:
    """Read a synthetic set written by :func:`sample` in any format, through its manifest.

    Raises:
        StoreError: ``path`` is not a synthetic set (the message names the directory).
    """
    root = Path(path)
    for name in (MANIFEST, META):
        if not (root / name).is_file():
            raise StoreError(f"{root}: not a synthetic set, {name} is missing")
    try:
        meta = json.loads((root / META).read_text())
        with open(root / MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
        units = Units(meta["window"]["center"], meta["window"]["width"], meta["window"]["units"])
        fmt = meta["format"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StoreError(f"{root}: unreadable {META} or {MANIFEST} ({exc!r})") from exc
    if fmt == "npz":
        images, masks = _read_npz(root, units)
    else:
        images, masks = _read_files(root, rows, fmt, units, int(meta.get("png_bits", 8)))
    classes = np.array([int(r["class"]) for r in rows], dtype=np.int64)
    if len(images) != len(rows):
        raise StoreError(f"{root}: {MANIFEST} has {len(rows)} rows, found {len(images)} images")
    return SyntheticSet(images, classes, masks, rows, list(meta.get("class_names", [])))


def _read_npz(root: Path, units: Units) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(root / NPZ) as data:
        images = units.to_unit_range(data["images"])
        masks = data["masks"] if "masks" in data.files else None
    return images, masks


def _read_files(
    root: Path, rows: list[dict[str, str]], fmt: str, units: Units, bits: int
) -> tuple[np.ndarray, np.ndarray | None]:
    readers = {
        "nnunet": (lambda p: units.to_unit_range(io.read_nifti_slice(p)), io.read_nifti_slice),
        "png": (lambda p: io.from_png_levels(io.read_png(p), bits), io.read_png),
        "dicom": (lambda p: _dicom_pixels(p) / np.float32(io.DICOM_SCALE), _dicom_pixels),
    }
    if fmt not in readers:
        raise StoreError(f"{root}: unknown format {fmt!r} in {META}")
    read_image, read_mask = readers[fmt]
    try:
        images = np.stack([read_image(root / r["file"]) for r in rows]).astype(np.float32)
        has_masks = bool(rows) and bool(rows[0]["label_file"])
        masks = (
            np.stack([read_mask(root / r["label_file"]) for r in rows]).astype(np.uint8)
            if has_masks
            else None
        )
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root}: unreadable synthetic file ({exc})") from exc
    return images[:, None], masks


def _dicom_pixels(path: Path) -> np.ndarray:
    return io.read_dicom(path)[0]
