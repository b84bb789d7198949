"""``augment sample``: synthetic data sets that segmentation and classification trainers read.

Sample ``i`` of a run is G(z_i | y_i) with ``z_i`` drawn from ``np.random.default_rng([seed, i])``
(see :func:`noise`), so it does not depend on the batch size or the number of writer threads:
the manifest row (seed, noise_index, class) regenerates exactly that sample
(:func:`generate`). Classes get exact counts (largest remainder of the requested shares) in
contiguous blocks of indices. What to draw is in :mod:`augment.sampling.draw`, the writers in
:mod:`augment.sampling.writer`, reading a set back in :mod:`augment.contracts.synthetic_set`.

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

import errno
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from augment.config import SampleConfig
from augment.errors import ConfigError, StoreError
from augment.sampling.formats import files as io
from augment.io.atomic import atomic_dir
from augment.sampling.writer import PREFIX, Run, write_samples
from augment.sampling.draw import Units, class_counts, class_of
from augment.contracts.synthetic_set import META, SyntheticSet, load_synthetic

__all__ = ["SyntheticSet", "load_synthetic", "sample"]  # the set reader is part of this API


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
    from augment.contracts.model_dir import load_generator, resolve_device

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
        run = Run(cfg, info, Units.from_config(info.config), tmp, max(6, len(str(cfg.n - 1))))
        write_samples(run, generator, counts)
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


# --------------------------------------------------------------------------- metadata


def _write_meta(run: Run, counts: np.ndarray, real: io.RealSet | None) -> None:
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


def _write_dataset_json(run: Run, real: io.RealSet | None) -> None:
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
        {**_entry(c), "class": int(class_of(cum, np.array([i]))[0]) if conditional else -1,
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


def _write_splits(run: Run, real: io.RealSet) -> None:
    folds = io.real_folds(real)
    syn = [run.case(i) for i in range(run.cfg.n)]
    with open(run.root / "splits_final.json", "w") as fh:
        json.dump([{"train": f["train"] + syn, "val": f["val"]} for f in folds], fh, indent=1)
