"""Transactional completion (ctx.transaction()): a handler's own writes commit with its job's
success, or not at all: on success, on a raise and retry, on a rescue before the commit
(the late attempt's writes roll back), and the connection refuses the handler's own commit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from skiplock import Backoff, JobContext, TaskRegistry, Worker, enqueue, task

FAST = Backoff(base_seconds=0.01, factor=1, max_seconds=0.01, jitter=0)


@pytest.fixture
def app_table(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("CREATE TABLE app_results (job_id uuid, attempt int, note text)")
    return db_url


def rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(query, params).fetchall()


async def submit(url: str, reg: TaskRegistry, name: str, **args: Any) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return (await enqueue(conn, name, args, registry=reg)).id


async def run_until(url: str, reg: TaskRegistry, done: str, **kw: Any) -> None:
    """Run a worker until `done` (SQL returning one boolean) holds."""
    worker = Worker(url, registry=reg, poll_interval=0.02, rescue_interval=0.05, **kw)
    run = asyncio.create_task(worker.run())
    try:
        for _ in range(1000):
            if rows(url, done)[0][0]:
                return
            assert not run.done(), run
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for: {done}")
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)


async def case_the_handlers_writes_commit_with_its_success(app_table: str):
    reg = TaskRegistry()

    @task(name="store", registry=reg)
    async def store(note: str, ctx: JobContext) -> dict[str, str]:
        conn = await ctx.transaction()
        await conn.execute("INSERT INTO app_results VALUES (%s, %s, %s)", (ctx.job_id, ctx.attempt, note))
        assert await ctx.transaction() is conn  # one transaction per attempt
        async with conn.transaction():  # a savepoint inside it works as usual
            await conn.execute("INSERT INTO app_results VALUES (%s, %s, 'savepoint')", (ctx.job_id, ctx.attempt))
        return {"stored": note}

    job = await submit(app_table, reg, "store", note="hello")
    await run_until(app_table, reg, "SELECT count(*) = 1 FROM skiplock.jobs WHERE state = 'succeeded'")
    assert rows(app_table, "SELECT job_id, attempt, note FROM app_results ORDER BY note") == [
        (job, 1, "hello"), (job, 1, "savepoint")]
    assert rows(app_table, "SELECT result FROM skiplock.jobs")[0][0] == {"stored": "hello"}


async def case_a_raise_rolls_the_writes_back_and_the_retry_writes_once(app_table: str):
    reg = TaskRegistry()

    @task(name="flaky_store", max_attempts=3, retry=FAST, registry=reg)
    async def flaky_store(ctx: JobContext) -> None:
        conn = await ctx.transaction()
        await conn.execute("INSERT INTO app_results VALUES (%s, %s, 'x')", (ctx.job_id, ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError(f"after the write, attempt {ctx.attempt}")

    job = await submit(app_table, reg, "flaky_store")
    await run_until(app_table, reg, "SELECT count(*) = 1 FROM skiplock.jobs WHERE state = 'succeeded'")
    assert rows(app_table, "SELECT job_id, attempt FROM app_results") == [(job, 3)]


async def case_the_handler_cannot_commit_or_roll_back_its_jobs_transaction(app_table: str):
    reg = TaskRegistry()

    @task(name="committer", max_attempts=1, registry=reg)
    async def committer(ctx: JobContext) -> None:
        conn = await ctx.transaction()
        await conn.execute("INSERT INTO app_results VALUES (%s, %s, 'x')", (ctx.job_id, ctx.attempt))
        await conn.commit()

    await submit(app_table, reg, "committer")
    await run_until(app_table, reg, "SELECT count(*) = 1 FROM skiplock.jobs WHERE state = 'failed'")
    assert rows(app_table, "SELECT count(*) FROM app_results") == [(0,)]
    error = rows(app_table, "SELECT last_error FROM skiplock.jobs")[0][0]
    assert "commit is the job's acknowledgement" in error


async def case_an_attempt_rescued_before_its_commit_writes_nothing(app_table: str):
    """The handler has written; its job is taken back (lease expired, rescued) and claimed by
    another worker as attempt 2 before the handler returns: attempt 1's acknowledgement finds
    the fence closed and its writes roll back."""
    reg = TaskRegistry()
    written = asyncio.Event()
    go_on = asyncio.Event()

    @task(name="slow_store", max_attempts=3, registry=reg)
    async def slow_store(ctx: JobContext) -> int:
        conn = await ctx.transaction()
        await conn.execute("INSERT INTO app_results VALUES (%s, %s, 'x')", (ctx.job_id, ctx.attempt))
        written.set()
        await asyncio.shield(go_on.wait())  # the worker's cancellation does not reach this attempt
        return ctx.attempt

    job = await submit(app_table, reg, "slow_store")
    # A long lease: the test takes the job back by hand, as the rescuer and another worker would.
    worker = Worker(app_table, registry=reg, poll_interval=0.02, lease_seconds=600, rescue_interval=600)
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(written.wait(), 30)
        with psycopg.connect(app_table, autocommit=True) as c:
            c.execute("UPDATE skiplock.jobs SET state = 'queued', lease_expires_at = NULL, "
                      "last_error = 'lease expired (test)' WHERE id = %s", (job,))
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 2, worker_id = 'other', "
                      "lease_expires_at = now() + interval '10 minutes' WHERE id = %s", (job,))
        go_on.set()
        for _ in range(500):
            if worker.inflight.running == {}:
                break
            await asyncio.sleep(0.02)
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)
    assert rows(app_table, "SELECT state::text, attempt, worker_id FROM skiplock.jobs") == [("running", 2, "other")]
    assert rows(app_table, "SELECT count(*) FROM app_results") == [(0,)]


async def case_a_sync_handler_is_told_to_be_async(app_table: str):
    reg = TaskRegistry()

    @task(name="sync_store", max_attempts=1, registry=reg)
    def sync_store(ctx: JobContext) -> None:
        ctx.transaction()

    await submit(app_table, reg, "sync_store")
    await run_until(app_table, reg, "SELECT count(*) = 1 FROM skiplock.jobs WHERE state = 'failed'")
    assert "needs an async handler" in rows(app_table, "SELECT last_error FROM skiplock.jobs")[0][0]


def test_the_handlers_writes_commit_with_its_success(app_table: str):
    asyncio.run(case_the_handlers_writes_commit_with_its_success(app_table))


def test_a_raise_rolls_the_writes_back_and_the_retry_writes_once(app_table: str):
    asyncio.run(case_a_raise_rolls_the_writes_back_and_the_retry_writes_once(app_table))


def test_the_handler_cannot_commit_or_roll_back_its_jobs_transaction(app_table: str):
    asyncio.run(case_the_handler_cannot_commit_or_roll_back_its_jobs_transaction(app_table))


def test_an_attempt_rescued_before_its_commit_writes_nothing(app_table: str):
    asyncio.run(case_an_attempt_rescued_before_its_commit_writes_nothing(app_table))


def test_a_sync_handler_is_told_to_be_async(app_table: str):
    asyncio.run(case_a_sync_handler_is_told_to_be_async(app_table))
