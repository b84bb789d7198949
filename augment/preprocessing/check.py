"""``augment check``: what ``preprocess`` would read, skip and store, and how long ``train`` would
take, writing nothing (as nnU-Net's ``verify_dataset_integrity`` runs before a long job).

It runs preprocess's own steps (:mod:`augment.preprocessing.stage`: :func:`plan_inputs`,
:func:`read_volumes`, :func:`store_layout`, :func:`store_rows`, :func:`store_meta`), keeping each
volume's row facts instead of spooling its pixels, so its report is the ``meta.json`` the store
would get and the two cannot disagree. The training estimate times a few steps of the
:class:`~augment.training.step.Trainer` that ``train`` builds, on random slices of the store's
shape, on the ``train`` section's device.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Group
from rich.table import Table

from augment.config import PreprocessConfig, TrainConfig
from augment.contracts.slice_store import slice_counts
from augment.errors import InputError
from augment.io.atomic import atomic_file
from augment.io.jsonfile import write_json
from augment.nets.dcgan import DCGANSpec
from augment.parallel import idle_cores
from augment.preprocessing.privacy import DEFAULT_KEY_FILE, ENV_VAR, load_key
from augment.preprocessing.stage import (
    NothingReadable,
    check_labels_option,
    described,
    plan_inputs,
    read_volumes,
    store_layout,
    store_meta,
    store_rows,
    summary_table,
)
from augment.preprocessing.workers import pool_map, worker_pool
from augment.training.data import TrainData, batches
from augment.training.ddp import DistInfo
from augment.training.stage import build_spec, training_device
from augment.training.step import Trainer, growth_steps

WARMUP_STEPS = 2  # the first steps allocate memory and pick kernels: not timed
MIN_STEPS, MAX_STEPS = 5, 64  # timed steps: at least MIN_STEPS, then until TIMED_SECONDS
TIMED_SECONDS = 3.0  # a shared machine's speed wanders: a second's timing was 20% off


class NothingToStore(InputError):
    """No input is readable; ``report`` still lists every skipped file and why."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def check(
    cfg: PreprocessConfig,
    inputs: list[Path],
    labels_csv: Path | None = None,
    key_file: Path | None = None,
    train_cfg: TrainConfig | None = None,
    json_out: Path | None = None,
) -> dict[str, Any]:
    """Report what ``preprocess(cfg, inputs, ...)`` would store, without writing anything.

    Every input is read and processed as preprocess does; every bad one is listed (``strict``
    is reported, not obeyed). The pseudonym key is the one preprocess would use; where there is
    none yet a temporary key names the files (preprocess would create ``.augment/pseudonym.key``).

    Args:
        cfg: the validated ``preprocess`` section.
        inputs: input roots (folders searched recursively, or files).
        labels_csv: ``patient,class`` rows; required when ``cfg.labels_from`` is ``"csv"``.
        key_file: the pseudonym key (as preprocess's ``--key-file``).
        train_cfg: the ``train`` section; None skips the training-time estimate.
        json_out: also write the report here as JSON (the only file written).

    Returns:
        The ``meta.json`` the store would get (``volumes_read``, ``skipped``, ``modality``,
        ``channels``, ``counts``, ...), plus ``patients``, ``splits`` (pseudonym -> split),
        ``strict``, ``temporary_key`` (the file tokens are not those preprocess will use) and
        ``training`` (the estimate, or None).

    Raises:
        NothingToStore: no input is readable (its ``report`` lists the skipped files).
        ConfigError: labels_from and labels_csv disagree, or ambiguous lesion labels.
        InputError: a public key on real data, a bad labels CSV, CT mixed with MR.
    """
    check_labels_option(cfg, labels_csv)
    key, temporary = _key(key_file)
    lenient = cfg.model_copy(update={"strict": False})  # list every bad input, not the first
    notes = {"strict": cfg.strict, "temporary_key": temporary}
    with worker_pool(cfg.workers) as pool:
        try:
            run = plan_inputs(inputs, lenient, key, labels_csv, pool_map(pool))
            spooled, imaging = read_volumes(inputs, run, lenient, pool, described)
        except NothingReadable as exc:
            report = _empty_report(cfg, exc, notes)
            _write(json_out, report)
            raise NothingToStore(str(exc), report) from None
    layout = store_layout(lenient, spooled, run.classes)
    rows = [r for entry in spooled for r in store_rows(lenient, entry, layout, run.classes)]
    report = store_meta(cfg, run, spooled, imaging, layout)
    report.update(
        n_slices=len(rows), counts=slice_counts(rows), patients=len(layout.splits), **notes
    )
    report["splits"] = dict(sorted(layout.splits.items()))  # pseudonym -> split
    mask_channels = _mask_channels(report["label_ids"]) if layout.with_masks else 0
    report["training"] = (
        None if train_cfg is None else estimate_training(
            train_cfg, cfg.size, len(report["channels"]), len(cfg.class_names), mask_channels
        )
    )  # fmt: skip
    _write(json_out, report)
    return report


def _key(key_file: Path | None) -> tuple[bytes, bool]:
    """The key preprocess would use, without creating one (which :func:`load_key` would), or
    a temporary one (True)."""
    if key_file is not None or os.environ.get(ENV_VAR) or DEFAULT_KEY_FILE.exists():
        return load_key(key_file), False
    return os.urandom(32), True


def _empty_report(
    cfg: PreprocessConfig, exc: NothingReadable, notes: dict[str, Any]
) -> dict[str, Any]:
    skipped = exc.run.skipped
    return {
        "volumes_read": 0, "patients": 0, "splits": {}, "n_slices": 0,
        "window_choice": "nothing readable",
        "slices_left_out": {}, "files_skipped": sum(s["input"] != "labels CSV" for s in skipped),
        "skipped": skipped, "class_names": list(cfg.class_names),
        "counts": {"slices": {}, "patients": {}}, "training": None,
        "params": cfg.model_dump(mode="json"), **notes,
    }  # fmt: skip


def _mask_channels(label_ids: dict[str, int]) -> int:
    """The generator's mask channels, as ``train`` makes them: one per label id, background
    included, at least two."""
    return max(2, len(set(label_ids.values()) | {0}))


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        with atomic_file(path) as tmp:
            write_json(tmp, report)


def estimate_training(
    cfg: TrainConfig, size: int, channels: int, n_classes: int, mask_channels: int
) -> dict[str, Any]:
    """Time DCGAN training steps of ``cfg`` on random slices of the store's shape.

    The networks, the step and the batches are ``train``'s own (same device, threads and
    options); only the slices are random. Steps are timed after :data:`WARMUP_STEPS`, at least
    :data:`MIN_STEPS` of them and until :data:`TIMED_SECONDS` have passed (at most
    :data:`MAX_STEPS`).

    Args:
        cfg: the ``train`` section.
        size: the slice size S.
        channels: image channels.
        n_classes: classes (the generator is conditional on them when ``cfg.conditional``).
        mask_channels: one-hot mask channels (0: no masks).

    Returns:
        ``seconds`` for ``cfg.steps`` steps, ``steps_per_s``, ``steps``, ``timed_steps``,
        ``device``, ``threads``, ``batch_size`` and the network ``spec``.

    Raises:
        ConfigError: an unusable device.
    """
    torch.set_num_threads(cfg.threads or idle_cores())  # as train sets them
    device = training_device(cfg, DistInfo())
    masks = mask_channels if cfg.with_masks != "no" else 0
    spec = build_spec(cfg, size, channels, masks, n_classes)  # the networks train would build
    torch.manual_seed(cfg.seed)
    trainer = Trainer(spec, cfg, device)
    # Progressive growing: time the full-resolution steps (the earlier phases are cheaper, so
    # the estimate is an upper bound).
    trainer.step_count = growth_steps(cfg, size)
    next_batch = batches(_random_data(spec, cfg.batch_size, n_classes, device), cfg, device,
                         torch.Generator(device=device).manual_seed(cfg.seed))  # fmt: skip
    for _ in range(WARMUP_STEPS):
        trainer.step(next_batch)
    timed, elapsed, chunk = 0, 0.0, 1
    while timed < MIN_STEPS or (elapsed < TIMED_SECONDS and timed < MAX_STEPS):
        n = min(chunk, MAX_STEPS - timed)
        start = time.perf_counter()
        for _ in range(n):
            losses = trainer.step(next_batch)
        losses.cpu()  # waits for the device
        elapsed += time.perf_counter() - start
        timed += n
        chunk *= 2  # fewer host syncs than steps, as the training loop has
    per_step = elapsed / timed
    return {
        "seconds": cfg.steps * per_step, "steps_per_s": 1.0 / per_step, "steps": cfg.steps,
        "timed_steps": timed, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size, "spec": spec.to_dict(),
    }  # fmt: skip


def _random_data(
    spec: DCGANSpec, batch_size: int, n_classes: int, device: torch.device
) -> TrainData:
    """Slices in [-1, 1], masks and labels of every class: the shapes and dtypes of a store's."""
    n, s = 4 * batch_size, spec.image_size
    images = (torch.rand(n, spec.channels, s, s) * 2 - 1).half()  # (N, C, S, S) float16
    masks = (
        torch.randint(spec.mask_channels, (n, s, s), dtype=torch.uint8)
        if spec.mask_channels
        else None
    )
    labels = torch.arange(n) % max(1, n_classes)  # (N,) every class drawn
    return TrainData(images, masks, labels, spec.mask_channels).to(device)


def summary(report: dict[str, Any]) -> Table | Group:
    """Rich tables of a check: preprocess's summary of the store it would write, the training
    estimate, and one line per skipped file (by token) with its reason."""
    table = summary_table(report)
    table.title = "augment check: what preprocess would store (nothing written)"
    if report["volumes_read"]:
        channels = ", ".join(report["channels"])
        table.add_row(f"modality {report['modality']}, channels: {channels}", "")
        table.add_row("patients", str(report["patients"]))
        table.add_row("slices the store would hold", str(report["n_slices"]))
    if report["strict"] and report["skipped"]:
        table.add_row("  with --strict, preprocess stops at the first skipped input", "")
    if report["temporary_key"]:
        table.add_row(f"  file tokens from a temporary key: no {DEFAULT_KEY_FILE} yet", "")
    t = report.get("training")
    if t:
        table.add_row(f"train: {t['steps']} steps, estimated seconds", f"{t['seconds']:.0f}")
        table.add_row(
            f"  {t['steps_per_s']:.3g} steps/s on {t['device']} ({t['threads']} threads, batch "
            f"{t['batch_size']}); steps only: fidelity snapshots, grids and checkpoints add to it",
            "",
        )
    if not report["skipped"]:
        return table
    return Group(table, skipped_table(report["skipped"]))


def skipped_table(skipped: list[dict[str, str]]) -> Table:
    """One row per skipped input file: its token and the reason."""
    table = Table(title=f"skipped input files ({len(skipped)})", show_header=True)
    table.add_column("file")
    table.add_column("reason")
    for entry in skipped:
        table.add_row(entry["input"], entry["reason"])
    return table
