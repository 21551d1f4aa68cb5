"""Task handlers for the chaos scenarios (tests/acceptance/chaos/). Load them in a worker with
`SKIPLOCK_TASKS=app.tasks,tests.acceptance.chaos_tasks`.

`chaos.work` writes one row to the ledger table `chaos.ledger` when it starts (job id, attempt,
worker, pid) and another when it finishes, so a scenario can count every execution of every
job, whatever the workers' own bookkeeping says. The ledger lives in its own schema, created
by the test (`LEDGER_DDL`), and is written on a separate connection pool: an execution is
recorded even if the worker later dies before acknowledging it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from psycopg_pool import AsyncConnectionPool

from skiplock import Backoff, BatchOutcome, JobContext, task

LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.ledger (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    uuid        NOT NULL,
    attempt   integer     NOT NULL,
    worker_id text        NOT NULL,
    pid       integer     NOT NULL,
    phase     text        NOT NULL CHECK (phase IN ('start', 'end')),
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ledger_job_idx ON chaos.ledger (job_id, id);
"""

_pool: AsyncConnectionPool | None = None
_pool_lock = asyncio.Lock()


async def _ledger_pool() -> AsyncConnectionPool:
    """One small pool per worker process, opened on first use (inside the worker's loop)."""
    global _pool
    async with _pool_lock:
        if _pool is None:
            pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=4, open=False,
                                       kwargs={"autocommit": True}, check=AsyncConnectionPool.check_connection,
                                       name="chaos-ledger")
            await pool.open()
            _pool = pool
        return _pool


async def record(ctx: JobContext, phase: str) -> None:
    """One ledger row; raises (so the attempt fails and is retried) if the database is away."""
    pool = await _ledger_pool()
    async with pool.connection(timeout=5) as conn:
        await conn.execute(
            "INSERT INTO chaos.ledger (job_id, attempt, worker_id, pid, phase) VALUES (%s, %s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, ctx.worker_id, os.getpid(), phase))


@task(name="chaos.work", max_attempts=25, retry=Backoff(base_seconds=0.2, factor=2.0, max_seconds=2.0, jitter=0.2))
async def work(ctx: JobContext, seconds: float = 0.0, retry_seconds: float | None = None, fail_attempts: int = 0,
               record_end: bool = True) -> dict[str, Any]:
    """Record the start, sleep `seconds` (`retry_seconds` from the second attempt on), fail the
    first `fail_attempts` attempts, record the end. The result names the attempt and worker
    that produced it, so a late acknowledgement that overwrote a newer attempt would show.

    `record_end=False` leaves nothing to await after the sleep: a worker resumed by SIGCONT
    finishes the handler before its heartbeat can notice the lost lease, so its stale
    acknowledgement really reaches the database (the fencing scenario needs exactly that)."""
    await record(ctx, "start")
    delay = seconds if ctx.attempt <= 1 or retry_seconds is None else retry_seconds
    if delay > 0:
        await asyncio.sleep(delay)
    if ctx.attempt <= fail_attempts:
        raise RuntimeError(f"chaos: failing attempt {ctx.attempt} of the first {fail_attempts} on purpose")
    if record_end:
        await record(ctx, "end")
    return {"attempt": ctx.attempt, "worker": ctx.worker_id, "pid": os.getpid()}


@task(name="chaos.flaky", max_attempts=25, retry=Backoff(base_seconds=0.1, factor=2.0, max_seconds=1.0, jitter=0.2))
async def flaky(ctx: JobContext, seconds: float = 0.0, fail_first: bool = False) -> None:
    """Sleep `seconds`; fail the first attempt when `fail_first`. No ledger: for many jobs."""
    if seconds > 0:
        await asyncio.sleep(seconds)
    if fail_first and ctx.attempt == 1:
        raise RuntimeError("chaos: failing the first attempt on purpose")


@task(name="chaos.batch_done", max_attempts=25, retry=Backoff(base_seconds=0.2, factor=2.0, max_seconds=2.0))
async def batch_done(ctx: JobContext, batch: BatchOutcome) -> dict[str, Any]:
    """A batch's completion job: records its start in the ledger (so a scenario counts its
    executions) and returns the outcome it was given."""
    await record(ctx, "start")
    return batch.model_dump(mode="json")
