"""Careless handlers for tests/acceptance/test_careless_runtime.py: each does something a
handler must not do. Load them with `SKIPLOCK_TASKS=app.tasks,tests.acceptance.chaos_tasks,
tests.acceptance.careless_runtime_tasks`. Every one records its start (and its end, if it
gets there) in the chaos ledger (`chaos.ledger`); `chaos.work` is the innocent neighbour.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psycopg

from skiplock import JobContext, task
from tests.acceptance.chaos_tasks import record


def record_sync(ctx: JobContext, phase: str) -> None:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO chaos.ledger (job_id, attempt, worker_id, pid, phase) VALUES (%s, %s, %s, %s, %s)",
                     (ctx.job_id, ctx.attempt, ctx.worker_id, os.getpid(), phase))


@task(name="careless.block_loop", timeout=2, max_attempts=1)
async def block_loop(ctx: JobContext, seconds: float = 14) -> None:
    """A blocking call in an async handler: the event loop stops for `seconds`."""
    await record(ctx, "start")
    time.sleep(seconds)  # noqa: ASYNC251 - the careless part
    await record(ctx, "end")


@task(name="careless.cpu_loop", timeout=2, max_attempts=1)
async def cpu_loop(ctx: JobContext, seconds: float = 20) -> None:
    """Computation without an await: the event loop stops for `seconds`."""
    await record(ctx, "start")
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    await record(ctx, "end")


@task(name="careless.swallow", timeout=1, max_attempts=1)
async def swallow(ctx: JobContext, seconds: float = 3600) -> None:
    """Swallows every cancellation (`except BaseException: pass` in a loop)."""
    await record(ctx, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.1)
        except BaseException:  # noqa: BLE001, S110 - the careless part
            pass
    await record(ctx, "end")


@task(name="careless.leak_thread", max_attempts=1)
async def leak_thread(ctx: JobContext) -> None:
    """Starts a non-daemon thread that never ends, and returns."""
    await record(ctx, "start")
    threading.Thread(target=threading.Event().wait, name="careless-forever", daemon=False).start()
    await record(ctx, "end")


@task(name="careless.sync_forever", timeout=1, max_attempts=1)
def sync_forever(ctx: JobContext, seconds: float = 3600) -> None:
    """A sync handler that does not return (nor look at ctx.cancelled)."""
    record_sync(ctx, "start")
    time.sleep(seconds)
    record_sync(ctx, "end")


@task(name="careless.sync_quick", timeout=5, max_attempts=1)
def sync_quick(ctx: JobContext) -> None:
    record_sync(ctx, "start")
    record_sync(ctx, "end")


@task(name="careless.sync_long", max_attempts=3)
def sync_long(ctx: JobContext, seconds: float = 25) -> None:
    """A long sync handler that ignores ctx.cancelled."""
    record_sync(ctx, "start")
    time.sleep(seconds)
    record_sync(ctx, "end")


@task(name="careless.lock_own_row", timeout=60, max_attempts=1)
async def lock_own_row(ctx: JobContext, seconds: float = 8) -> None:
    """Updates its own job row and keeps the transaction open for `seconds`."""
    await record(ctx, "start")
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"]) as conn:
        await conn.execute("UPDATE skiplock.jobs SET progress = '{\"percent\": 1}' WHERE id = %s", (ctx.job_id,))
        await asyncio.sleep(seconds)
        await conn.commit()
    await record(ctx, "end")


LEAKED: list[psycopg.Connection[Any]] = []
"""Connections a handler left in an open transaction (kept referenced, so they stay open)."""


@task(name="careless.leak_row_lock", timeout=60, max_attempts=1)
def leak_row_lock(ctx: JobContext) -> None:
    """Updates its own job row in a transaction it never ends, and returns: its row stays
    locked after the handler is done (until the test terminates that session)."""
    record_sync(ctx, "start")
    conn = psycopg.connect(os.environ["DATABASE_URL"], application_name="careless-leak")
    conn.execute("UPDATE skiplock.jobs SET progress = '{\"percent\": 1}' WHERE id = %s", (ctx.job_id,))
    LEAKED.append(conn)
    record_sync(ctx, "end")
