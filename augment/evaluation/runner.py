"""Training the arms of the gain experiment, in parallel worker processes on the CPU.

Every (arm, seed) model is independent, and the downstream models are small: on a CPU, two
one-thread processes train two models in about the time one two-thread process trains one.
Workers are forked, so the slices are shared with them rather than copied; each model seeds
itself, so the results do not depend on which worker trained it or in which order. On a GPU
(or with ``evaluate.workers: 1``) the jobs run one after another in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from augment.config import EvaluateConfig
from augment.evaluation.tasks import TASKS
from augment.evaluation.tasks.base import Decision, Task
from augment.parallel import process_pool
from augment.parallel import worker_count as parallel_workers


@dataclass(frozen=True)
class Job:
    """One model to train: an arm (its training Split) and a seed."""

    arm: str
    seed: int
    classic: bool


@dataclass
class Outcome:
    """What the experiment keeps of a trained model."""

    job: Job
    decision: Decision
    test_pred: np.ndarray
    curve: list[float]


# The worker's copy of the experiment (set by _init; inherited from the parent when forked).
_STATE: dict[str, Any] = {}


def _init(task_name: str, splits: dict[str, Any], cfg: EvaluateConfig, n_classes: int,
          device: torch.device, threads: int | None) -> None:  # fmt: skip
    if threads:
        torch.set_num_threads(threads)
    _STATE.update(task=TASKS.get(task_name)(), splits=splits, cfg=cfg, n_classes=n_classes,
                  device=device)  # fmt: skip


def _train(job: Job) -> Outcome:
    task: Task = _STATE["task"]
    splits, device = _STATE["splits"], _STATE["device"]
    model, curve = task.train(
        splits[job.arm], splits["val"], _STATE["n_classes"], _STATE["cfg"], job.seed,
        job.classic, device,
    )  # fmt: skip
    val_pred = task.predict(model, splits["val"].images, device)
    decision = task.calibrate(splits["val"], val_pred)
    return Outcome(job, decision, task.predict(model, splits["test"].images, device), curve)


def worker_count(cfg: EvaluateConfig, device: torch.device, jobs: int) -> int:
    """Processes to use: ``evaluate.workers`` (0: one per CPU core), 1 on an accelerator."""
    return 1 if device.type != "cpu" else parallel_workers(cfg.workers, jobs)


def run_jobs(
    jobs: list[Job],
    task_name: str,
    splits: dict[str, Any],
    cfg: EvaluateConfig,
    n_classes: int,
    device: torch.device,
    done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Train every job; ``done`` is called as each finishes. Outcomes come back in job order.

    Args:
        jobs: the models to train.
        task_name: the evaluation task.
        splits: arm name -> its training Split, plus ``val`` and ``test``.
        cfg: the stage's configuration (``workers`` among it).
        n_classes: number of classes.
        device: where to train.
        done: progress callback.
    """
    workers = worker_count(cfg, device, len(jobs))
    if workers == 1:
        _init(task_name, splits, cfg, n_classes, device, None)
        outcomes = []
        for job in jobs:
            outcomes.append(_train(job))
            done(outcomes[-1])
        return outcomes
    if any(job.classic for job in jobs):
        # Imported once here and inherited by the forked workers (about 3 s in each otherwise).
        import monai.transforms  # noqa: F401

    # Forked: the slices are shared, not pickled; the workers end with this process.
    initargs = (task_name, splits, cfg, n_classes, device, 1)
    by_job: dict[Job, Outcome] = {}
    with process_pool(workers, _init, initargs) as pool:
        futures = [pool.submit(_train, job) for job in jobs]
        for future in as_completed(futures):
            outcome = future.result()
            by_job[outcome.job] = outcome
            done(outcome)
    return [by_job[job] for job in jobs]
