"""Careless task handlers: what a handler returns or raises that a worker must survive.
Load them in a worker with `SKIPLOCK_TASKS=app.tasks,tests.acceptance.careless_tasks` and
`CARELESS_LEDGER=<file>`.

`careless.do` (async) and `careless.do_sync` (a thread) do what `what` names (see `ACTS`);
`careless.neighbour` sleeps and succeeds. Each appends a line to the ledger file when it
starts and when it ends, whatever it raised: `job_id attempt worker pid phase`. A file, not a
table: the ledger must not depend on the database connection of the worker under test.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skiplock import Backoff, JobContext, task

QUICK = Backoff(base_seconds=0.1, factor=1.0, max_seconds=0.1, jitter=0)


class CarelessError(BaseException):
    """A handler's own BaseException subclass."""


def record(ctx: JobContext, phase: str) -> None:
    line = f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {os.getpid()} {phase}\n"
    with Path(os.environ["CARELESS_LEDGER"]).open("a") as f:
        f.write(line)


def _generator() -> Any:
    yield "never"


def _raise(exc: BaseException) -> Any:
    raise exc


ACTS: dict[str, Callable[[JobContext], Any]] = {
    # unstorable values
    "nan_result": lambda ctx: float("nan"),
    "nul_result": lambda ctx: {"text": "before\x00after"},
    "nul_error": lambda ctx: _raise(ValueError("a message with a NUL \x00 inside")),
    "nul_progress": lambda ctx: ctx.progress(10, "half\x00way"),
    "nan_checkpoint": lambda ctx: ctx.save_checkpoint({"at": float("nan")}),
    "set_result": lambda ctx: {1, 2, 3},
    "bytes_result": lambda ctx: b"\x00\x01",
    "object_result": lambda ctx: object(),
    "coroutine_result": lambda ctx: asyncio.sleep(0),
    "generator_result": lambda ctx: _generator(),
    "merged_keys_result": lambda ctx: {1: "int", "1": "str"},
    "large_result": lambda ctx: "x" * 5000,  # above the SKIPLOCK_MAX_RESULT_BYTES the test sets
    # exceptions that are not Exceptions
    "sys_exit": lambda ctx: sys.exit(3),
    "sys_exit_0": lambda ctx: sys.exit(0),
    "keyboard_interrupt": lambda ctx: _raise(KeyboardInterrupt()),
    "cancelled": lambda ctx: _raise(asyncio.CancelledError("the handler's own")),
    "generator_exit": lambda ctx: _raise(GeneratorExit()),
    "base_exception": lambda ctx: _raise(CarelessError("a BaseException of the handler's own")),
}


@task(name="careless.do", max_attempts=2, retry=QUICK)
async def careless(ctx: JobContext, what: str) -> Any:
    record(ctx, "start")
    try:
        return ACTS[what](ctx)
    finally:
        record(ctx, "end")


@task(name="careless.do_sync", max_attempts=2, retry=QUICK)
def careless_sync(ctx: JobContext, what: str) -> Any:
    record(ctx, "start")
    try:
        return ACTS[what](ctx)
    finally:
        record(ctx, "end")


@task(name="careless.neighbour", max_attempts=1)
async def neighbour(ctx: JobContext, seconds: float) -> dict[str, Any]:
    record(ctx, "start")
    await asyncio.sleep(seconds)
    record(ctx, "end")
    return {"slept": seconds}
