"""``augment sample``: synthetic data sets that segmentation and classification trainers read.

Sample ``i`` of a run is G(z_i | y_i) with ``z_i`` drawn from ``np.random.default_rng([seed, i])``
(see :func:`noise`), so it does not depend on the batch size or the number of writer threads:
the manifest row (seed, noise_index, class) regenerates exactly that sample
(:func:`generate`). Classes get exact counts (largest remainder of the requested shares) in
contiguous blocks of indices. What to draw is in :mod:`augment.sampling.draw`, the writers in
:mod:`augment.sampling.writer`, reading a set back in :mod:`augment.sampling.read`.

Batches are generated in the main thread and written by a thread pool while the next batch is
generated; at most a few batches are in flight, so memory does not grow with ``n``. Everything is
written into a temporary directory beside ``out`` that replaces it only when complete.

Output layouts (every case name starts with ``syn_``): one per registered format in
:mod:`augment.sampling.formats` (nnU-Net v2 raw by default, png, npz, dicom), plus
``manifest.csv`` (one row per sample) and ``synthetic.json`` (what
:func:`augment.sampling.read.load_synthetic` needs: format, intensity window, class and label
names, the model's checksum).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from augment.config import SampleConfig
from augment.contracts.model_dir import ModelInfo, load_generator
from augment.contracts.synthetic_set import META
from augment.contracts.window import Window
from augment.errors import ConfigError, StoreError
from augment.io.atomic import atomic_dir, refuse_existing
from augment.nets.device import resolve_device
from augment.sampling.draw import class_counts
from augment.sampling.formats import FORMATS
from augment.sampling.formats.base import PREFIX, SampleFormat, SampleRun
from augment.sampling.merge import RealSet, read_real_set
from augment.sampling.writer import write_samples


def nnunet_dataset_dir(cfg: SampleConfig, raw: Path) -> Path:
    """``raw/Dataset<id>_<name>``: where nnU-Net v2 looks for data set ``<id>`` in its
    ``nnUNet_raw`` folder (``sample.dataset_id``, ``sample.dataset_name``).

    Raises:
        ConfigError: the format is not ``nnunet``.
    """
    if cfg.format != "nnunet":
        raise ConfigError(f"--nnunet-raw: expected sample.format nnunet, got {cfg.format}")
    return Path(raw) / f"Dataset{cfg.dataset_id:03d}_{cfg.dataset_name}"


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
        A summary: out, format, n, counts per class, model checksum, real cases merged, the
        share of samples whose mask agrees with their class, and with ``accept: consistent``
        the acceptance record (per class: the share of draws kept, kept and drawn).

    Raises:
        StoreError: a missing or incompatible model directory.
        ConfigError: an unknown class, a ratio for an unconditional model, nnunet without masks,
            ``accept: consistent`` for a model without classes, masks or lesion rule.
        StoreError: (also) a class too rarely consistent to fill within 20x draws.
        InputError: a bad real data set to merge.
        FileExistsError: ``out`` exists and ``cfg.overwrite`` is off.
        OSError: writing failed (a full disk: ENOSPC); nothing partial is left.
    """
    out = Path(out)
    refuse_existing(out, cfg.overwrite)  # before loading the model: fail fast
    generator, info = load_generator(Path(model), resolve_device(cfg.device))
    fmt = FORMATS.get(cfg.format)()
    _check_model(cfg, fmt, info, merge_with_real)
    counts = class_counts(cfg.n, info.class_names, cfg.class_ratio)
    real = read_real_set(merge_with_real) if merge_with_real else None
    if real is not None:
        _check_real(real, info)
    window, windows, names = model_windows(info)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        run = SampleRun(cfg, info, window, tmp, max(6, len(str(cfg.n - 1))), windows=windows,
                        channels=names)  # fmt: skip
        accepted = write_samples(run, fmt, generator, counts)
        _write_meta(run, counts, real, accepted)
        fmt.finish(run, real)
    summary = {
        "out": str(out),
        "format": cfg.format,
        "n": cfg.n,
        "counts": _named_counts(info.class_names, counts),
        "model_sha256": info.checksum,
        "real_cases": len(real.cases) if real else 0,
        "mask_agrees_with_class": _agreement(info.class_names, run.agreement),
    }
    if accepted is not None:
        summary["acceptance"] = _acceptance(info.class_names, accepted)
    return summary


def model_windows(info: ModelInfo) -> tuple[Window, tuple[Window, ...], tuple[str, ...]]:
    """A model's first window, its window per channel and its channel names (maybe none).

    Raises:
        StoreError: not one window (and, where names are recorded, one name) per channel.
    """
    where = str(info.path / "config.json")
    window = Window.from_dict(info.config.get("window"), where)
    found = info.config.get("windows")
    windows = tuple(Window.from_dict(w, where) for w in found) if found else (window,)
    names = tuple(str(c) for c in info.config.get("channels") or ())
    if len(windows) != info.spec.channels or (names and len(names) != info.spec.channels):
        raise StoreError(
            f"{where}: expected a window and a name for each of the model's "
            f"{info.spec.channels} channel(s), got {len(windows)} and {len(names)}"
        )
    return window, windows, names


def _acceptance(class_names: list[str], tally: dict[int, list[int]]) -> dict[str, Any]:
    """The acceptance filter's record: per class, the share of draws kept, and the counts."""
    return {
        "rule": "consistent",
        "rate": {class_names[c]: round(k / d, 4) for c, (k, d) in sorted(tally.items()) if d},
        "kept": {class_names[c]: k for c, (k, _) in sorted(tally.items())},
        "drawn": {class_names[c]: d for c, (_, d) in sorted(tally.items())},
    }


def _agreement(class_names: list[str], tally: dict[int, list[int]]) -> dict[str, float]:
    return {class_names[c]: round(ok / n, 4) for c, (ok, n) in sorted(tally.items()) if n}


def _check_model(cfg: SampleConfig, fmt: SampleFormat, info: ModelInfo, merge: Path | None) -> None:
    if info.spec.channels > fmt.max_channels:
        many = [n for n in FORMATS.names() if FORMATS.get(n).max_channels >= info.spec.channels]
        raise ConfigError(
            f"sample.format: {cfg.format} holds {fmt.max_channels} image channel per case, but "
            f"the model in {info.path} makes {info.spec.channels}; use {', '.join(many)}"
        )
    if fmt.needs_masks and not info.spec.mask_channels:
        others = [n for n in FORMATS.names() if not FORMATS.get(n).needs_masks]
        raise ConfigError(
            f"sample.format: {cfg.format} needs masks, but the model in {info.path} makes none; "
            f"use {', '.join(others)}"
        )
    if merge is not None and not fmt.merges_real:
        merging = [n for n in FORMATS.names() if FORMATS.get(n).merges_real]
        raise ConfigError(
            f"--merge-with-real: expected format {' or '.join(merging)}, got {cfg.format}"
        )


def _check_real(real: RealSet, info: ModelInfo) -> None:
    channels = real.dataset.get("channel_names") or real.dataset.get("modality") or {}
    if len(channels) != info.spec.channels:
        raise ConfigError(
            f"{real.root / 'dataset.json'}: expected the model's {info.spec.channels} channel(s), "
            f"got {len(channels)} ({channels})"
        )
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


# --------------------------------------------------------------------------- metadata


def _write_meta(
    run: SampleRun,
    counts: np.ndarray,
    real: RealSet | None,
    accepted: dict[int, list[int]] | None = None,
) -> None:
    meta: dict[str, Any] = {
        "format": run.cfg.format,
        "n": run.cfg.n,
        "seed": run.cfg.seed,
        "truncation": run.cfg.truncation,
        "png_bits": run.cfg.png_bits,
        "counts": _named_counts(run.info.class_names, counts),
        "class_names": run.info.class_names,
        "label_names": run.info.label_names,
        "window": run.window.to_dict(),
        "windows": [w.to_dict() for w in run.windows],
        "channels": list(run.channels),
        "spacing": list(run.info.spacing),
        "image_size": run.info.spec.image_size,
        "model_sha256": run.info.checksum,
        "real_cases": len(real.cases) if real else 0,
        "mask_agrees_with_class": _agreement(run.info.class_names, run.agreement),
        "synthetic": True,
    }
    if accepted is not None:  # only then: a set sampled without the filter stays as it was
        meta["acceptance"] = _acceptance(run.info.class_names, accepted)
    (run.root / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def summary_table(summary: dict[str, Any]) -> Table:
    """A rich table of a run's summary, for the command line."""
    title = (
        f"augment sample: {summary['n']} synthetic slices ({summary['format']}) in {summary['out']}"
    )
    table = Table(title=title)
    table.add_column("class")
    table.add_column("slices", justify="right")
    agree = summary.get("mask_agrees_with_class") or {}
    rate = (summary.get("acceptance") or {}).get("rate") or {}
    if agree:
        table.add_column("mask agrees with class", justify="right")
    if rate:
        table.add_column("draws accepted", justify="right")
    for name, count in summary["counts"].items():
        cells = [f"{agree[name]:.1%}" if name in agree else "n/a"] if agree else []
        cells += [f"{rate[name]:.1%}" if name in rate else "n/a"] if rate else []
        table.add_row(name, str(count), *cells)
    if summary["real_cases"]:
        table.add_row("real cases merged", str(summary["real_cases"]))
    weak = [n for n, share in agree.items() if share < 0.95]
    if weak:
        table.caption = (
            f"Masks disagree with their class for more than 5% of {', '.join(weak)} samples "
            "(lesion class: no lesion of min_lesion_pixels; normal: a lesion). Downstream "
            "models learn from these labels: see the model's fidelity record in config.json."
        )
    return table
