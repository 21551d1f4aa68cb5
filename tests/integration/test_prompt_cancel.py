"""Cancelling a running job reaches its handler by NOTIFY, not at the next heartbeat: with the
default 30 s lease (a heartbeat every 10 s), a job cancelled from SQL (`skiplock.cancel`, as
from psql) is seen by its handler within a second."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from skiplock import JobContext, TaskRegistry, Worker, enqueue, task

WITHIN = 1.0


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_running_job_cancelled_from_sql_sees_it_within_a_second(db_url, kind):
    reg = TaskRegistry()
    started = threading.Event()
    seen: dict[str, Any] = {}

    @task(name="waits_async", registry=reg)
    async def waits_async(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # the worker interrupts an async handler
            seen.update(at=time.monotonic(), flag=ctx.cancelled)
            raise

    @task(name="waits_sync", registry=reg)
    def waits_sync(ctx: JobContext) -> None:
        started.set()
        deadline = time.monotonic() + 60
        while not ctx.cancelled and time.monotonic() < deadline:  # a sync handler polls the flag
            time.sleep(0.01)
        seen.update(at=time.monotonic(), flag=ctx.cancelled)

    async def go() -> tuple[uuid.UUID, float]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            job = (await enqueue(conn, f"waits_{kind}", {}, registry=reg)).id
            w = Worker(db_url, registry=reg, poll_interval=0.05)  # default lease: 30 s, heartbeat 10 s
            runner = asyncio.create_task(w.run())
            while not started.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # past the worker's start-up, so no heartbeat round is due
            t0 = time.monotonic()
            await conn.execute("SELECT skiplock.cancel(%s)", (job,))
            while "at" not in seen and time.monotonic() - t0 < 15:
                await asyncio.sleep(0.005)
            w.request_stop()
            await asyncio.wait_for(runner, 20)
            return job, seen["at"] - t0 if "at" in seen else float("inf")

    job, took = asyncio.run(go())
    print(f"\n{kind} handler saw the cancellation {took * 1000:.0f} ms after skiplock.cancel()")
    assert seen["flag"] is True
    assert took < WITHIN, f"the handler saw the cancellation only after {took:.2f}s"
    with psycopg.connect(db_url) as c:
        state, = c.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (job,)).fetchone()  # type: ignore[misc]
    assert state == "cancelled"


def test_a_cancel_notification_for_another_attempt_leaves_the_running_one_alone(db_url):
    """The notification names the attempt: one for another attempt of the same job (a stale one,
    from before a retry) or a malformed one is ignored; the real cancel still stops it."""
    reg = TaskRegistry()
    started = threading.Event()

    @task(name="waits", registry=reg)
    async def waits() -> None:
        started.set()
        await asyncio.sleep(60)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            job = (await enqueue(conn, "waits", {}, registry=reg)).id
            w = Worker(db_url, registry=reg, poll_interval=0.05)
            runner = asyncio.create_task(w.run())
            while not started.is_set():
                await asyncio.sleep(0.01)
            [running] = w.inflight.running.values()
            await conn.execute("SELECT pg_notify('skiplock_cancel', %s)", (f"{job}:{running.job.attempt + 1}",))
            await conn.execute("SELECT pg_notify('skiplock_cancel', 'not a job')")
            await asyncio.sleep(0.5)
            assert job in w.inflight.running and not running.ctx.cancelled
            await conn.execute("SELECT skiplock.cancel(%s)", (job,))
            t0 = time.monotonic()
            while job in w.inflight.running and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.01)
            assert running.ctx.cancelled
            w.request_stop()
            await asyncio.wait_for(runner, 20)

    asyncio.run(go())
