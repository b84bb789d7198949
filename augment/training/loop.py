"""The loop around :meth:`Trainer.step`: logs, grids, checkpoints and the divergence guard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from augment.config import TrainConfig
from augment.contracts.model_dir import CHECKPOINT_FILE, load_generator, save_generator
from augment.contracts.slice_store import SliceStore
from augment.errors import AugmentError, StoreError
from augment.nets.dcgan import DCGANSpec, Generator
from augment.training.checkpoint import rng_state, save_checkpoint
from augment.training.data import DataInfo, TrainData
from augment.training.ddp import DistInfo, check_replicas
from augment.training.pictures import fixed_grid, fixed_inputs, samples_figure
from augment.training.snapshots import SnapshotJudge, lesion_rule
from augment.training.step import Trainer

METRICS = ("loss_d", "loss_g", "d_real", "d_fake")


class DivergenceError(AugmentError):
    """Losses stayed non-finite for ``divergence_patience`` steps in a row."""


class TrainingRun:
    """The loop around :meth:`Trainer.step`: logs, grids, checkpoints, the divergence guard."""

    def __init__(self, cfg: TrainConfig, spec: DCGANSpec, trainer: Trainer, data: TrainData,
                 info: DataInfo, store: SliceStore, out: Path, dd: DistInfo,
                 data_rng: torch.Generator) -> None:  # fmt: skip
        self.cfg, self.spec, self.trainer, self.data, self.info = cfg, spec, trainer, data, info
        self.store, self.out, self.dd, self.data_rng = store, out, dd, data_rng
        lesion_ids, _ = lesion_rule(store, info)
        trainer.lesion_channels = [
            k for k, label in enumerate(info.mask_label_ids) if label in (lesion_ids or [])
        ] or trainer.lesion_channels
        self.device = trainer.device
        self.fixed = fixed_inputs(spec, cfg.seed, self.device)
        self.class_probs = _class_mix(cfg, spec, data.labels)
        self.last_good = -1  # step of the last checkpoint written
        self._sampler_cache: tuple[int, Generator] | None = None
        # Host syncs cost GPU throughput: check finiteness every few steps there, every step
        # on the CPU where it is free.
        self.check_every = 1 if self.device.type == "cpu" else min(10, cfg.divergence_patience)
        self.judge: SnapshotJudge | None = None
        self.best_g: Generator | None = None  # the snapshot of the lowest FID so far
        if cfg.fidelity_every and dd.main:
            self.judge = SnapshotJudge.build(
                data, info, store, spec, cfg.fidelity_samples, cfg.seed, cfg.select_min_match
            )

    def loop(self, next_batch: Callable[[], tuple[Tensor, Tensor]], resumed: bool) -> dict:
        cfg, trainer = self.cfg, self.trainer
        start = trainer.step_count
        live = self._live(resumed)
        if resumed and self.judge is not None:
            self._restore_best()
        bad = torch.zeros((), device=self.device)  # consecutive non-finite steps
        acc = torch.zeros(len(METRICS), device=self.device)
        n_acc, t0, last = 0, time.perf_counter(), None
        images_per_s = 0.0
        with self._progress() as (progress, task):
            progress.update(task, completed=start)
            while trainer.step_count < cfg.steps:
                m = trainer.step(next_batch)
                finite = torch.isfinite(m).all()
                bad = torch.where(finite, torch.zeros_like(bad), bad + 1)
                acc += torch.where(finite, m, torch.zeros_like(m))
                n_acc += 1
                step = trainer.step_count
                if step % self.check_every == 0 or step == cfg.steps:
                    self._guard(int(bad.item()), m, step)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    last = (acc / max(1, n_acc)).tolist()  # the one host sync of a log window
                    dt = time.perf_counter() - t0
                    images_per_s = n_acc * cfg.batch_size * cfg.n_critic * self.dd.world / dt
                    self._log(live, step, last, images_per_s)
                    progress.update(task, losses=self._describe(last))
                    acc.zero_()
                    n_acc, t0 = 0, time.perf_counter()
                if self.dd.main and (step % cfg.sample_every == 0 or step == cfg.steps):
                    self._grid(live, step)
                # While progressive growing is under way the full-resolution G is unfinished.
                if (
                    self.judge
                    and trainer.grown
                    and (step % cfg.fidelity_every == 0 or step == cfg.steps)
                ):
                    self._judge_snapshot(live, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self._checkpoint(step)
                progress.update(task, completed=step)
        final = trainer.step_count
        if self.dd.world > 1:
            check_replicas(trainer.g)
        if self.dd.main:
            self._finish(final)
            if live is not None:
                live.end()
        values = dict(zip(METRICS, last or [float("nan")] * len(METRICS), strict=True))
        return {"steps": final, "started_at": start, **values, "images_per_s": images_per_s,
                "model_dir": str(self.out), "world_size": self.dd.world,
                "threads": torch.get_num_threads()}  # fmt: skip

    # -- pieces of the loop

    def _guard(self, bad: int, m: Tensor, step: int) -> None:
        if bad < self.cfg.divergence_patience:
            return
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(METRICS, m.tolist(), strict=True))
        kept = (
            f"the last good checkpoint (step {self.last_good}) is kept in "
            f"{self.out / CHECKPOINT_FILE}"
            if self.last_good >= 0
            else "no checkpoint had been written yet"
        )
        raise DivergenceError(
            f"training diverged at step {step}: losses not finite for {bad} steps in a row "
            f"({values}); {kept}. Lower lr_g/lr_d, or try loss: hinge"
        )

    def _checkpoint(self, step: int) -> None:
        # A state with non-finite weights is never saved over a good one.
        ok = all(torch.isfinite(p).all() for p in self.trainer.g.parameters())
        ok = ok and all(torch.isfinite(p).all() for p in self.trainer.d.parameters())
        rng = rng_state(self.data_rng)
        rngs = [rng]
        if self.dd.world > 1:
            rngs = [rng] * self.dd.world  # placeholders: the gather overwrites every entry
            dist.all_gather_object(rngs, rng)
        if not ok or not self.dd.main:
            return
        meta = {"config": self.cfg.model_dump(), "spec": self.spec.to_dict(),
                "fingerprint": self.info.fingerprint, "world_size": self.dd.world}  # fmt: skip
        save_checkpoint(self.out / CHECKPOINT_FILE, self.trainer, rngs, meta)
        if self.judge is None or self.best_g is None:
            # With fidelity tracking the generator is the best scored snapshot, saved when
            # found; until the first score the last good step stands in, so a run that stops
            # early still leaves a model that loads.
            self._save_generator(step)
        self.last_good = step

    def _restore_best(self) -> None:
        """A resumed run keeps competing with the best snapshot saved before it stopped."""
        assert self.judge is not None
        try:
            # Building the network draws its initial weights from torch's global generator:
            # fork it, so that resuming does not change the batches that follow.
            with torch.random.fork_rng(devices=[]):
                g, info = load_generator(self.out, self.device)
        except StoreError:
            return  # nothing saved yet, or the directory is another run's: start afresh
        record = info.config.get("fidelity") or {}
        if isinstance(record.get("best_fid"), (int, float)):
            self.judge.best_fid, self.judge.best_step = record["best_fid"], record["best_step"]
            self.judge.best_met_floor = bool(record.get("met_floor", True))
            self.judge.history = [h for h in record.get("curve", []) if isinstance(h, dict)]
            self.best_g = g

    def _judge_snapshot(self, live: Any, step: int) -> None:
        assert self.judge is not None  # called only when fidelity tracking is on
        g = self._sampler()
        entry, better = self.judge.score(g, step)
        if live is not None:
            live.step = step
            for name in ("fid", "kid", "precision", "recall"):
                if name in entry:
                    live.log_metric(f"fidelity/{name}", entry[name])
            found = entry.get("consistency") or {}
            for name, share in (found.get("match") or {}).items():
                live.log_metric(f"fidelity/match_{name}", share)
            if found.get("contrast_ratio") is not None:
                live.log_metric("fidelity/contrast_ratio", found["contrast_ratio"])
        if better:
            self.best_g = g
            self._save_generator(step, g)

    def _sampler(self) -> Generator:
        """The recalibrated EMA generator of the current step (grid and save share it)."""
        step = self.trainer.step_count
        if self._sampler_cache is None or self._sampler_cache[0] != step:
            self._sampler_cache = (step, self.trainer.sampling_generator(self.class_probs))
        return self._sampler_cache[1]

    def _save_generator(self, step: int, g: Generator | None = None) -> None:
        g = g or self._sampler()
        extra = {
            "class_names": self.info.class_names if self.spec.n_classes else [],
            "label_names": self.info.label_names,
            "mask_label_ids": self.info.mask_label_ids,
            "spacing": slice_spacing(self.store),
            "window": self.store.meta.get("window"),
            "windows": self.store.meta.get("windows") or [self.store.meta.get("window")],
            "channels": self.store.channels,
            "slice_store": {"fingerprint": self.info.fingerprint,
                            "n_slices": len(self.data), "size": self.spec.image_size},
            "train_patients": self.info.patients,
            "steps": step,
            "train_config": self.cfg.model_dump(),
            "world_size": self.dd.world,
        }  # fmt: skip
        lesion_ids, min_pixels = lesion_rule(self.store, self.info)
        extra["lesion_rule"] = {"lesion_ids": lesion_ids, "min_lesion_pixels": min_pixels}
        if self.judge is not None:
            extra["fidelity"] = self.judge.record()
        save_generator(self.out, g, self.spec, extra)

    def _grid(self, live: Any, step: int) -> None:
        from PIL import Image

        g = self._sampler()
        res, alpha = self.trainer.level()  # progressive growing: what G makes at this step
        image = Image.fromarray(fixed_grid(g, *self.fixed, res=res, alpha=alpha))
        if live is not None:
            live.log_image(f"grid/{step:06d}.png", image)

    def _finish(self, step: int) -> None:
        g = self._sampler()
        if self.judge is not None and self.best_g is not None:
            g = self.best_g  # the model is the best snapshot; rewrite it with the whole curve
            self._save_generator(self.judge.best_step, g)
        samples_figure(self.out / "samples.png", g, self.data, self.info, self.cfg.seed)

    def _live(self, resumed: bool) -> Any:
        if not self.dd.main:
            return None
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        # dvcyaml=None: the pipeline's own dvc.yaml declares the plots (live/plots/metrics).
        kwargs: dict[str, Any] = {
            "dir": str(self.out / "live"),
            "resume": resumed,
            "save_dvc_exp": False,
        }
        try:
            return Live(**kwargs, dvcyaml=None)
        except SCMError:
            # dvclive asks git for HEAD before checking that the repository has a commit, so a
            # new user's `git init; dvc repro` would crash here; the log files need no git.
            return _files_only_live(**kwargs, dvcyaml=None)

    def _log(self, live: Any, step: int, values: list[float], images_per_s: float) -> None:
        if live is None:
            return
        live.step = step
        for k, v in zip(METRICS, values, strict=True):
            live.log_metric(f"train/{k}", v)
        live.log_metric("train/lr_g", self.trainer.opt_g.param_groups[0]["lr"])
        live.log_metric("train/lr_d", self.trainer.opt_d.param_groups[0]["lr"])
        live.log_metric("train/images_per_s", images_per_s)
        live.make_summary()

    @staticmethod
    def _describe(values: list[float]) -> str:
        return "  ".join(f"{k} {v:.3f}" for k, v in zip(METRICS, values, strict=True))

    @contextlib.contextmanager
    def _progress(self) -> Iterator[tuple[Any, Any]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"), transient=True, disable=not self.dd.main,
        )  # fmt: skip
        with progress:
            yield progress, progress.add_task("train", total=self.cfg.steps, losses="")


def slice_spacing(store: SliceStore) -> list[float]:
    """(y, x) mm of the store's slices: one spacing, or the median when inputs differed.

    Preprocess records no single spacing when volumes came with different ones (and no
    resampling was asked for); the synthetic files still need a spacing, and the median of
    the real slices is the honest one, where a fixed 1 mm would be made up.
    """
    spacing = store.meta.get("spacing")
    if spacing:
        return [float(v) for v in spacing]
    rows = [r for r in store.rows if r.get("spacing_y") and r.get("spacing_x")]
    if not rows:
        raise StoreError(f"{store.root}: expected a slice spacing in meta.json or slices.csv")
    return [float(np.median([float(r[k]) for r in rows])) for k in ("spacing_y", "spacing_x")]


def _class_mix(cfg: TrainConfig, spec: DCGANSpec, labels: torch.Tensor) -> torch.Tensor | None:
    """Class frequencies of the batches G trained on, for its batch-norm recalibration.

    Recalibrating with another mix than training saw gives eval-mode statistics that differ
    from what training showed: balanced batches when ``balance_classes``, else the data's mix.
    """
    if not spec.n_classes:
        return None
    if cfg.balance_classes:
        return torch.ones(spec.n_classes)
    return torch.bincount(labels.cpu(), minlength=spec.n_classes).float()


def _files_only_live(**kwargs: Any) -> Any:
    """A dvclive ``Live`` without its DVC and git integration: only the log files."""
    from dvclive import Live

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:
            return None

    return FilesOnlyLive(**kwargs)
