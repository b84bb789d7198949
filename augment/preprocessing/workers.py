"""Preprocessing jobs: read one volume and process it, in worker processes.

One :class:`Job` per DICOM series or NIfTI case, with its pseudonymised names; a worker reads
the volume (:mod:`augment.preprocessing.readers.dicom`,
:mod:`augment.preprocessing.readers.nifti`) and runs
:func:`augment.preprocessing.arrays.process_volume` on it, returning an :class:`Outcome`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from augment.config import PreprocessConfig
from augment.contracts.volume import Volume
from augment.errors import InputError
from augment.parallel import process_pool
from augment.preprocessing.arrays import Slices, process_volume
from augment.preprocessing.privacy import captured_warnings, file_token
from augment.preprocessing.readers import READERS
from augment.preprocessing.readers.base import MapFn
from augment.preprocessing.readers.dicom import MALFORMED, malformed


@dataclass(frozen=True)
class Job:
    """One volume to read, by the reader that found it, with its pseudonymised names."""

    reader: str  # a name in the READERS registry
    item: object  # the reader's handle of the volume
    root: Path  # the input root it was found under (file tokens are relative to it)
    patient: str
    source: str
    name: str
    key: bytes = field(repr=False)
    files: tuple[str, ...] = ()  # tokens of every input file of the volume (empty: name's only)


@dataclass
class Outcome:
    """What a worker returns: the slices, or the reason the volume was skipped."""

    job_index: int
    slices: Slices | None = None
    reason: str | None = None
    warned: list[str] = field(default_factory=list)  # library warnings, kinds only


def _run_job(index: int, job: Job, cfg: PreprocessConfig) -> Outcome:
    with captured_warnings() as warned:
        outcome = _outcome(index, job, cfg)
    outcome.warned = warned
    return outcome


def _outcome(index: int, job: Job, cfg: PreprocessConfig) -> Outcome:
    try:
        volume = _read(job, cfg)
        return Outcome(index, slices=process_volume(volume, cfg))
    except InputError as exc:
        text = str(exc)
        for prefix in (job.name, job.source):
            text = text.removeprefix(f"{prefix}: ")
        return Outcome(index, reason=text)
    except MALFORMED as exc:
        return Outcome(index, reason=malformed(exc))


def _read(job: Job, cfg: PreprocessConfig) -> Volume:
    reader = READERS.get(job.reader)()
    return reader.read(
        job.item, job.patient, job.source, lambda p: file_token(p, job.root, job.key), cfg
    )


def outcomes(
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
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool, all workers started now, before the progress bar's thread exists."""
    if workers == 1:
        yield None
        return
    # Forked where possible: spawn (macOS, Windows) makes every worker import the package again
    # first, which costs seconds. The workers end with this process, even when it is killed.
    with process_pool(workers) as pool:
        list(pool.map(_noop, range(workers)))
        yield pool


def _noop(_: int) -> None:
    return None


def pool_map(pool: ProcessPoolExecutor | None) -> MapFn:
    """A ``map`` over ``pool`` (the builtin ``map`` without one), for scanning DICOM files."""
    if pool is None:
        return map
    return partial(pool.map, chunksize=32)
