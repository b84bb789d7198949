"""The writers of ``augment sample``: generate in batches, write every case, stream the manifest.

Batches are generated in the main thread and written by a thread pool while the next batch is
generated; at most a few batches are in flight, so memory does not grow with ``n``
(:func:`write_samples`). The file formats are in :mod:`augment.sampling.formats`.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from augment.contracts.synthetic_set import MANIFEST
from augment.errors import StoreError
from augment.parallel import cpu_cores
from augment.sampling.draw import class_of, generate
from augment.sampling.formats.base import SampleFormat, SampleRun
from augment.training.consistency import matches_class

COLUMNS = (
    "case", "file", "label_file", "class", "class_name", "seed", "noise_index", "truncation",
    "model_sha256",
)  # fmt: skip


def write_samples(
    run: SampleRun, fmt: SampleFormat, generator: torch.nn.Module, counts: np.ndarray
) -> None:
    """Generate in batches and hand them to the writers; manifest rows stream to disk."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    fmt.prepare(run)
    cum = np.cumsum(counts)
    n, bs = run.cfg.n, run.cfg.batch_size
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        open(run.root / MANIFEST, "w", newline="") as fh,
        Progress(*columns, transient=True, console=Console(stderr=True)) as bar,
        _Writers(run, fmt) as writers,
    ):
        task = bar.add_task(f"sampling {run.cfg.format}", total=n)
        manifest = csv.writer(fh)
        manifest.writerow(COLUMNS)
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            classes = class_of(cum, idx)
            images, masks = generate(
                generator, run.info, run.cfg.seed, idx, classes, run.cfg.truncation
            )
            if not np.isfinite(images).all():
                raise StoreError(
                    f"{run.info.path}: the generator gave non-finite pixels (samples {idx[0]}-"
                    f"{idx[-1]}); nothing was written. Retrain or use another model directory."
                )
            _tally(run, masks, classes)
            manifest.writerows(_rows(run, fmt, idx, classes))
            writers.put(idx, images, masks, classes, lambda k: bar.advance(task, k))


def _tally(run: SampleRun, masks: np.ndarray | None, classes: np.ndarray) -> None:
    """Count samples whose generated mask agrees with their class (the store's lesion rule)."""
    rule = run.info.config.get("lesion_rule")
    if masks is None or not run.info.class_names or not isinstance(rule, dict):
        return
    ok = matches_class(
        masks, classes, rule.get("lesion_ids"), int(rule.get("min_lesion_pixels", 1))
    )
    for c in np.unique(classes):
        tally = run.agreement.setdefault(int(c), [0, 0])
        tally[0] += int(ok[classes == c].sum())
        tally[1] += int((classes == c).sum())


class _Writers:
    """Write batches: per-file formats in a thread pool, npz appended in order.

    At most a few batches are in flight (memory stays flat). On leaving with an error, queued
    work is cancelled and running work finished before the temporary directory is removed.
    """

    def __init__(self, run: SampleRun, fmt: SampleFormat) -> None:
        self.run, self.fmt = run, fmt
        self.sink = fmt.sink(run)
        self.pool = ThreadPoolExecutor(max_workers=cpu_cores(), thread_name_prefix="augment-write")
        self.pending: deque[Future[None]] = deque()

    def __enter__(self) -> _Writers:
        return self

    def put(
        self,
        idx: np.ndarray,
        images: np.ndarray,
        masks: np.ndarray | None,
        classes: np.ndarray,
        done: Callable[[int], object],
    ) -> None:
        """Queue one batch; ``done(k)`` is called as each k samples are on disk."""
        if self.sink is not None:
            self.sink.append(images, masks, classes)
            done(len(idx))
            return
        for part in np.array_split(np.arange(len(idx)), cpu_cores()):
            if len(part):
                part_masks = None if masks is None else masks[part]
                args = (self.run, self.fmt, idx[part], images[part], part_masks, classes[part])
                fut = self.pool.submit(_write_cases, *args)
                fut.add_done_callback(_reporting(done, len(part)))
                self.pending.append(fut)
        while len(self.pending) > 4 * cpu_cores():  # bound the batches held in memory
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


def _rows(
    run: SampleRun, fmt: SampleFormat, idx: np.ndarray, classes: np.ndarray
) -> list[list[Any]]:
    rows = []
    for i, c in zip(idx.tolist(), classes.tolist(), strict=True):
        case = run.case(i)
        image, label = fmt.files(run, case)
        cls = c if run.info.class_names else -1
        name = run.info.class_names[c] if run.info.class_names else ""
        trunc = "" if run.cfg.truncation is None else run.cfg.truncation
        rows.append([case, image, label, cls, name, run.cfg.seed, i, trunc, run.info.checksum])
    return rows


def _reporting(done: Callable[[int], object], k: int) -> Callable[[Future[Any]], object]:
    """A done-callback that reports ``k`` samples written (k bound now, not when it runs)."""
    return lambda _fut: done(k)


def _write_cases(
    run: SampleRun,
    fmt: SampleFormat,
    idx: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray | None,
    classes: np.ndarray,
) -> None:
    """Write a chunk of cases (runs in a writer thread)."""
    for k, i in enumerate(idx.tolist()):
        fmt.write_case(run, i, images[k], None if masks is None else masks[k], int(classes[k]))
