"""``augment train``: a resumable DCGAN run on the train split of a SliceStore.

The run writes the model directory (see :mod:`augment.contracts.model_dir`): the EMA generator with
recalibrated batch-norm statistics, ``config.json``, a resumable ``checkpoint.pt``, dvclive logs
under ``live/`` and sample grids. Several processes (``torchrun --nproc_per_node N -m augment
train``) train with DistributedDataParallel; ``--batch-size`` is then per process.

This module holds the entry points; the pieces live in :mod:`augment.training`: ``data``
(slices, batches), ``step`` (:class:`Trainer`), ``loop`` (logs, grids, checkpoints, the divergence
guard), ``checkpoint``, ``pictures`` and ``ddp``.
"""

from __future__ import annotations

import errno
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.table import Table

from augment.config import TrainConfig
from augment.contracts.model_dir import CHECKPOINT_FILE, CONFIG_FILE, GENERATOR_FILE
from augment.contracts.slice_store import SliceStore
from augment.errors import ConfigError, StoreError
from augment.nets.dcgan import DCGANSpec, inner_resolutions
from augment.nets.device import resolve_device
from augment.parallel import idle_cores
from augment.training.checkpoint import (
    check_resumable,
    load_checkpoint,
    run_key,
    set_rng_state,
)
from augment.training.data import DataInfo, TrainData, batches, load_train_data
from augment.training.ddp import DistInfo, dist_setup
from augment.training.loop import METRICS, TrainingRun
from augment.training.losses import LOSSES
from augment.training.step import Trainer, growth_steps

# What makes a directory a model: a fresh run refuses to replace these, and clears them.
MODEL_FILES = (CHECKPOINT_FILE, GENERATOR_FILE, CONFIG_FILE)
# What a run writes into its directory: moved from the state directory to --out when it ends.
RUN_OUTPUTS = (*MODEL_FILES, "samples.png", "live")
STATE_README = """\
Interrupted training runs of `augment train --state-dir` (one folder per run: its data and
configuration), picked up by the next run of the same configuration on the same data and removed
when that run finishes. Deleting this folder only loses unfinished work.
"""


def training_device(cfg: TrainConfig, d: DistInfo) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def _data_device(data: TrainData, device: torch.device) -> torch.device:
    """Keep the whole training set on the GPU when it takes under a quarter of free memory."""
    if device.type != "cuda":
        return device
    size = data.images.nbytes + (0 if data.masks is None else data.masks.nbytes)
    free, _ = torch.cuda.mem_get_info(device)
    return device if size < free // 4 else torch.device("cpu")


def _dry_run(cfg: TrainConfig) -> TrainConfig:
    """A handful of tiny steps through every stage of the run (the options kept).

    With progressive growing: 2 steps per resolution, and 12 in all (enough from 8 to 256 px).
    """
    grow = {"grow_steps": 2, "steps": 12} if cfg.grow_from else {"steps": min(cfg.steps, 4)}
    return cfg.model_copy(update={
        "ngf": 8, "ndf": 8, "nz": min(cfg.nz, 16), "batch_size": min(cfg.batch_size, 8),
        "log_every": 1, "sample_every": 2, "checkpoint_every": 2, **grow,
    })  # fmt: skip


def _spec(cfg: TrainConfig, store: SliceStore, data: TrainData, info: DataInfo) -> DCGANSpec:
    if store.size not in (32, 64, 128, 256):
        raise StoreError(f"{store.root}: expected slices of 32, 64, 128 or 256, got {store.size}")
    return build_spec(
        cfg, store.size, int(store.images.shape[1]), data.mask_channels, len(info.class_names)
    )


def build_spec(
    cfg: TrainConfig, size: int, channels: int, mask_channels: int, n_classes: int
) -> DCGANSpec:
    """The networks the train section asks for, on slices of this shape (train and check).

    Raises:
        ConfigError: ``d_mask`` without masks or classes.
    """
    n_classes = n_classes if cfg.conditional else 0
    if cfg.d_mask != "none" and not (mask_channels and n_classes):
        raise ConfigError(
            f"train.d_mask: {cfg.d_mask!r} needs masks and a conditional model, got "
            f"{mask_channels} mask channels and {n_classes} classes"
        )
    _check_growth(cfg, size)
    return DCGANSpec(
        image_size=size, channels=channels, mask_channels=mask_channels, n_classes=n_classes,
        nz=cfg.nz, ngf=cfg.ngf, ndf=cfg.ndf, projection=cfg.projection,
        spectral_norm=cfg.spectral_norm, d_batchnorm=cfg.d_batchnorm, dropout=cfg.dropout,
        g_conditioning=cfg.g_conditioning, mbstd_group=cfg.mbstd_group,
        attention=cfg.attention, d_mask=cfg.d_mask, progressive=cfg.grow_from,
    )  # fmt: skip


def _check_growth(cfg: TrainConfig, size: int) -> None:
    """Progressive growing must start below S, reach S within the run, and not be compiled."""
    if not cfg.grow_from:
        return
    starts = list(inner_resolutions(size))
    if cfg.grow_from not in starts:
        raise ConfigError(f"train.grow_from: expected 0 or one of {starts} at {size} px, "
                          f"got {cfg.grow_from}")  # fmt: skip
    if cfg.d_mask == "projection":
        raise ConfigError("train.grow_from: progressive growing takes d_mask none or local, "
                          "not projection")  # fmt: skip
    if cfg.compile:
        raise ConfigError("train.grow_from: progressive growing changes the networks' shapes "
                          "every grow_steps; set compile: false")  # fmt: skip
    grown = growth_steps(cfg, size)
    if grown > cfg.steps:
        raise ConfigError(f"train.grow_steps: growing from {cfg.grow_from} to {size} px takes "
                          f"{grown} steps, more than steps ({cfg.steps})")  # fmt: skip


def _clean(out: Path) -> None:
    """A fresh run must not leave a previous run's files to be mistaken for its own."""
    for name in RUN_OUTPUTS:
        if name == "live":
            shutil.rmtree(out / name, ignore_errors=True)
        else:
            (out / name).unlink(missing_ok=True)


def train(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    resume: bool = False,
    dry_run: bool = False,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the DCGAN on the train split of a SliceStore and write the model directory.

    Args:
        cfg: the run's configuration.
        data: the SliceStore directory.
        out: the model directory (created; a fresh run replaces a previous run's files).
        resume: continue from ``out/checkpoint.pt`` (same config but ``steps``, same data).
        dry_run: a few tiny steps end to end, for smoke tests.
        state_dir: train in ``state_dir/<run key>`` and move the finished model to ``out``; a
            run interrupted there (a killed ``dvc repro``) is resumed by the next run with the
            same data and configuration (see :func:`~augment.training.checkpoint.run_key`).

    Returns:
        Summary: steps, final losses, images per second, model directory.

    Raises:
        StoreError: unusable slice store, or resuming on other data / without a checkpoint.
        ConfigError: resuming with another configuration, or an unusable device.
        DivergenceError: losses non-finite for ``divergence_patience`` steps in a row; the last
            good checkpoint is kept.
    """
    cfg = _dry_run(cfg) if dry_run else cfg
    # Fewer threads than cores is faster on a shared machine: auto (0) takes the free ones.
    torch.set_num_threads(cfg.threads or idle_cores())
    dd = dist_setup(cfg.device)
    try:
        state = Path(state_dir) if state_dir is not None and not resume else None
        return _train(cfg, Path(data), Path(out), resume, dd, state)
    finally:
        if dd.owned:
            dist.destroy_process_group()


def _refuse_existing(cfg: TrainConfig, out: Path, resume: bool) -> None:
    """A fresh run does not silently replace a model (``dvc repro`` removes it first anyway)."""
    kept = [n for n in MODEL_FILES if (out / n).exists()]
    if kept and not resume and not cfg.overwrite:
        raise FileExistsError(
            errno.EEXIST,
            f"already holds a model ({', '.join(kept)}); pass --resume to continue it or "
            "--overwrite to replace it",
            str(out),
        )


def _work_dir(cfg: TrainConfig, out: Path, state: Path | None, info: DataInfo, world: int) -> Path:
    """Where the run writes: ``out``, or its own folder of the persisted state directory."""
    if state is None:
        return out
    return state / run_key(cfg, info.fingerprint, world)


def _move_outputs(work: Path, out: Path, state: Path) -> None:
    """Hand the finished run over to ``out`` and forget its state (a rename on one disk)."""
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    for name in RUN_OUTPUTS:
        if (work / name).exists():
            shutil.move(work / name, out / name)
    shutil.rmtree(work)
    (state / "README.txt").write_text(STATE_README)  # DVC wants the persisted output to exist


def _train(
    cfg: TrainConfig, data_dir: Path, out: Path, resume: bool, dd: DistInfo, keep: Path | None
) -> dict:
    _refuse_existing(cfg, out, resume)
    device = training_device(cfg, dd)
    store = SliceStore.open(data_dir)
    host_data, info = load_train_data(store, cfg)
    final_out, out = out, _work_dir(cfg, out, keep, info, dd.world)
    # an unfinished run of this configuration on this data left its checkpoint in the state folder
    interrupted = keep is not None and (out / CHECKPOINT_FILE).is_file()
    resume = resume or interrupted
    spec = _spec(cfg, store, host_data, info)
    if cfg.compile and LOSSES.get(cfg.loss).gradient_penalty:
        raise ConfigError(
            f"train.compile: not supported with loss {cfg.loss} (its gradient penalty needs a "
            "double backward)"
        )
    torch.manual_seed(cfg.seed + dd.rank)  # distinct noise per process, same init after DDP
    random.seed(cfg.seed + dd.rank)
    np.random.seed(cfg.seed + dd.rank)
    trainer = Trainer(spec, cfg, device, distributed=dd.world > 1)
    data = host_data.to(_data_device(host_data, device))
    data_rng = torch.Generator(device=data.images.device).manual_seed(cfg.seed * 1000 + dd.rank)
    ckpt_path = out / CHECKPOINT_FILE
    if resume:
        state = load_checkpoint(ckpt_path)
        if interrupted:
            step = state.get("step", "?")
            print(f"train: resuming the interrupted run in {out} from step {step}", file=sys.stderr)
        check_resumable(state, cfg, info.fingerprint, ckpt_path)
        trainer.load_state_dict(state)
        rngs = state["rng"]
        if len(rngs) == dd.world:  # same number of processes: the exact random sequence
            set_rng_state(rngs[dd.rank], data_rng)
    elif dd.main:
        out.mkdir(parents=True, exist_ok=True)
        _clean(out)
    if dd.world > 1:
        dist.barrier()
    run = TrainingRun(cfg, spec, trainer, data, info, store, out, dd, data_rng)
    summary = run.loop(batches(data, cfg, device, data_rng), resume)
    if keep is not None:
        if dd.world > 1:
            dist.barrier()  # every process is done with the state folder
        if dd.main:
            _move_outputs(out, final_out, keep)
        summary["model_dir"] = str(final_out)
    return summary


def summary_table(summary: dict[str, Any]) -> Table:
    """A rich table of a run's summary, for the command line."""
    table = Table(title=f"trained {summary['steps']} steps -> {summary['model_dir']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (*METRICS, "images_per_s", "world_size"):
        value = summary[key]
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table
