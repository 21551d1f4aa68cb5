"""Task handlers for the bench (`SKIPLOCK_TASKS=bench.tasks`): a no-op, and a no-op that
records how long after `t0` (the enqueuer's clock before its enqueue call) it started.
Latencies are appended to BENCH_LATENCY_FILE, one line each: a write per job costs a few
microseconds, well below the milliseconds being measured."""

from __future__ import annotations

import os
import time

from skiplock import task

_out = None


@task(name="noop")
async def noop() -> None:
    return None


@task(name="latency")
async def latency(t0: float) -> None:
    started = time.time()
    global _out
    if _out is None:
        _out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1)  # noqa: SIM115, ASYNC230 - opened once
    _out.write(f"{started - t0:.6f}\n")
