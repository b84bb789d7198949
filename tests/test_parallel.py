"""Worker pools: their workers end when the parent is killed, and worker counts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from augment import parallel
from augment.parallel import cpu_cores, idle_cores, worker_count

PARENT = """
import os, sys, time
from augment.parallel import process_pool
from augment.preprocessing.workers import worker_pool

def pid(_):
    return os.getpid()

manager = process_pool(2) if sys.argv[1] == "pool" else worker_pool(2)  # preprocess's pool
pool = manager.__enter__()
pids = sorted(set(pool.map(pid, range(16))))
futures = [pool.submit(time.sleep, 600) for _ in range(2)]  # busy workers
print(" ".join(map(str, pids)), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("which", ["pool", "preprocess"])
def test_workers_end_when_the_parent_is_killed(which: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, which], stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        assert parent.stdout is not None
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "workers outlived their killed parent"
    finally:
        parent.kill()
        for pid in workers:  # no stray sleepers when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_worker_count() -> None:
    assert worker_count(0) == cpu_cores() >= 1
    assert worker_count(0, jobs=1) == 1
    assert worker_count(8, jobs=3) == 3
    assert worker_count(2) == 2


def test_idle_cores_leave_what_others_keep_busy(monkeypatch) -> None:
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    readings = iter([1, 1, 3, 1, 1])  # this process alone, with one blip
    monkeypatch.setattr(parallel, "runnable_now", lambda: next(readings))
    assert idle_cores(interval=0) == 2
    monkeypatch.setattr(parallel, "runnable_now", lambda: 3)  # two busy processes besides
    assert idle_cores(interval=0) == 1
    monkeypatch.setattr(parallel, "runnable_now", lambda: 9)
    assert idle_cores(interval=0) == 1  # never none
    monkeypatch.setattr(parallel, "runnable_now", lambda: None)  # no /proc/loadavg
    assert idle_cores(interval=0) == 2
