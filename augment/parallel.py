"""Worker processes: how many to start, and pools whose workers end with their parent.

Phantoms, preprocess and evaluate run their work in forked process pools. When the parent is
killed (SIGKILL, an out-of-memory kill, a closed terminal), a plain pool's workers live on and keep
the cores busy; here every worker asks the kernel to send it SIGTERM when its parent dies
(Linux ``prctl(PR_SET_PDEATHSIG)``), and gives up at once if the parent is already gone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def runnable_now() -> int | None:
    """Runnable threads on the machine now (``/proc/loadavg``'s fourth field), or None."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def idle_cores(samples: int = 5, interval: float = 0.05) -> int:
    """Cores that other processes leave free now: all of them minus the threads others keep
    runnable (the fewest over a few samples, so that a blip does not count), at least one.

    On a shared 2-core machine two torch threads fall to half the speed of one when other work
    holds the cores (docs/benchmarks.md), so a run takes only what is free when it starts.
    """
    counts = []
    for k in range(samples):
        count = runnable_now()
        if count is None:
            return cpu_cores()
        counts.append(count)
        if k + 1 < samples:
            time.sleep(interval)
    others = max(0, min(counts) - 1)  # this process's own thread is one of the runnable
    return max(1, cpu_cores() - others)


def worker_count(wanted: int, jobs: int | None = None) -> int:
    """``wanted`` processes (0: one per core), never more than ``jobs``, at least one."""
    count = wanted or cpu_cores()
    return max(1, min(count, jobs) if jobs is not None else count)


def die_with_parent(parent: int) -> None:
    """Have the kernel end this process when ``parent`` ends (Linux; elsewhere nothing).

    Raises:
        SystemExit: the parent has already gone (it died before this call).
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not allowed here (e.g. a seccomp sandbox): the pool ends the worker normally
    if os.getppid() != parent:
        raise SystemExit(1)


def _start(parent: int, initializer: Callable[..., None] | None, args: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*args)


def process_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that end with this one.

    Forked on Linux (a worker starts in milliseconds and shares the parent's arrays); elsewhere
    the platform's default start method.
    """
    fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if fork else None)
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start, initargs=(os.getpid(), initializer, initargs)
    )
