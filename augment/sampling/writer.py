"""The writers of ``augment sample``: generate in batches, write every case, stream the manifest.

Batches are generated in the main thread and written by a thread pool while the next batch is
generated; at most a few batches are in flight, so memory does not grow with ``n``
(:func:`write_samples`). The file formats are in :mod:`augment.sampling.formats`. With
``sample.accept: consistent`` the batches come from the acceptance filter
(:func:`_accepted_batches`), which keeps only samples whose mask agrees with their class.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from augment.contracts.synthetic_set import MANIFEST
from augment.errors import ConfigError, StoreError
from augment.parallel import cpu_cores
from augment.sampling.draw import ACCEPT_CAP, candidate_indices, class_of, generate
from augment.sampling.formats.base import SampleFormat, SampleRun
from augment.training.consistency import matches_class

COLUMNS = (
    "case", "file", "label_file", "class", "class_name", "seed", "noise_index", "truncation",
    "model_sha256",
)  # fmt: skip


# (case indices, noise indices, classes, images, masks) of one batch to write
Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def write_samples(
    run: SampleRun, fmt: SampleFormat, generator: torch.nn.Module, counts: np.ndarray
) -> dict[int, list[int]] | None:
    """Generate in batches and hand them to the writers; manifest rows stream to disk.

    Returns:
        With ``sample.accept: consistent``: class id -> [kept, drawn] candidates; else None.

    Raises:
        StoreError: non-finite pixels, or (acceptance filter) a class whose candidates agree
            with it too rarely to reach its count within ``ACCEPT_CAP`` times as many draws.
    """
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
        accepted: dict[int, list[int]] | None = None
        if run.cfg.accept == "consistent":
            accepted = {}
            batches = _accepted_batches(run, generator, counts, accepted)
        else:
            batches = _plain_batches(run, generator, cum, n, bs)
        for idx, noise_idx, classes, images, masks in batches:
            _tally(run, masks, classes)
            manifest.writerows(_rows(run, fmt, idx, classes, noise_idx))
            writers.put(idx, images, masks, classes, lambda k: bar.advance(task, k))
    return accepted


def _generate(
    run: SampleRun, generator: torch.nn.Module, noise_idx: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    images, masks = generate(
        generator, run.info, run.cfg.seed, noise_idx, classes, run.cfg.truncation
    )
    if not np.isfinite(images).all():
        raise StoreError(
            f"{run.info.path}: the generator gave non-finite pixels (samples {noise_idx[0]}-"
            f"{noise_idx[-1]}); nothing was written. Retrain or use another model directory."
        )
    return images, masks


def _plain_batches(
    run: SampleRun, generator: torch.nn.Module, cum: np.ndarray, n: int, bs: int
) -> Iterator[Batch]:
    """Every draw is kept: case i is noise index i, of the class whose block holds i."""
    for start in range(0, n, bs):
        idx = np.arange(start, min(start + bs, n))
        classes = class_of(cum, idx)
        yield (idx, idx, classes, *_generate(run, generator, idx, classes))


def _accepted_batches(
    run: SampleRun, generator: torch.nn.Module, counts: np.ndarray, tally: dict[int, list[int]]
) -> Iterator[Batch]:
    """Draw each class's candidates in turn and keep those whose mask agrees with the class.

    ``tally`` fills with class id -> [kept, drawn] as candidates are drawn.

    Raises:
        StoreError: a class reaches ``ACCEPT_CAP`` x its count of draws before its count.
    """
    lesion_ids, min_pixels = _lesion_rule(run)
    k, bs = len(counts), run.cfg.batch_size
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c, need in enumerate(counts.tolist()):
        kept, drawn, cap = 0, 0, ACCEPT_CAP * need
        tally[c] = [0, 0]
        while kept < need:
            if drawn >= cap:
                raise StoreError(_give_up(run, c, kept, need, drawn))
            take = min(bs, cap - drawn)
            noise_idx = candidate_indices(c, k, drawn, take)
            classes = np.full(take, c, dtype=np.int64)
            images, masks = _generate(run, generator, noise_idx, classes)
            assert masks is not None  # _lesion_rule refused a model without masks
            ok = np.flatnonzero(matches_class(masks, classes, lesion_ids, min_pixels))
            drawn += take
            if kept + len(ok) >= need:  # the draws after the last kept one do not count
                ok = ok[: need - kept]
                drawn -= take - 1 - int(ok[-1])
            tally[c] = [kept + len(ok), drawn]
            if len(ok):
                idx = starts[c] + kept + np.arange(len(ok))
                yield idx, noise_idx[ok], classes[ok], images[ok], masks[ok]
            kept += len(ok)


def _class_rule(run: SampleRun) -> tuple[list[int] | None, int] | None:
    """(lesion ids, min lesion pixels) a conditional model with masks records, else None."""
    rule = run.info.config.get("lesion_rule")
    if not run.info.spec.mask_channels or not run.info.class_names or not isinstance(rule, dict):
        return None
    return rule.get("lesion_ids"), int(rule.get("min_lesion_pixels", 1))


def _lesion_rule(run: SampleRun) -> tuple[list[int] | None, int]:
    found = _class_rule(run)
    if found is None:
        raise ConfigError(
            f"sample.accept: consistent needs a conditional model with masks and a lesion rule; "
            f"the model in {run.info.path} has {run.info.spec.mask_channels} mask channels, "
            f"classes {run.info.class_names} and lesion rule {run.info.config.get('lesion_rule')}"
        )
    return found


def _give_up(run: SampleRun, c: int, kept: int, need: int, drawn: int) -> str:
    name = run.info.class_names[c]
    return (
        f"{run.info.path}: sample.accept consistent: only {kept} of {drawn} {name!r} samples "
        f"({kept / max(1, drawn):.1%}) had a mask that agrees with the class, short of {need} "
        f"within {ACCEPT_CAP}x draws; nothing was written. Retrain the model (see its "
        "fidelity record in config.json) or sample with accept: all"
    )


def _tally(run: SampleRun, masks: np.ndarray | None, classes: np.ndarray) -> None:
    """Count samples whose generated mask agrees with their class (the store's lesion rule)."""
    rule = _class_rule(run)
    if masks is None or rule is None:
        return
    ok = matches_class(masks, classes, *rule)
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
    run: SampleRun, fmt: SampleFormat, idx: np.ndarray, classes: np.ndarray, noise_idx: np.ndarray
) -> list[list[Any]]:
    rows = []
    for i, c, z in zip(idx.tolist(), classes.tolist(), noise_idx.tolist(), strict=True):
        case = run.case(i)
        image, label = fmt.files(run, case)
        cls = c if run.info.class_names else -1
        name = run.info.class_names[c] if run.info.class_names else ""
        trunc = "" if run.cfg.truncation is None else run.cfg.truncation
        rows.append([case, image, label, cls, name, run.cfg.seed, z, trunc, run.info.checksum])
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
