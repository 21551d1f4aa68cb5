"""Queue size limits (`max_waiting`) on every submission path: Python's enqueue and
enqueue_many inside the caller's transaction, and skiplock.enqueue in SQL, exact under
concurrency; queues without a limit take no lock."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg
import psycopg.errors
import pytest

from skiplock import DatabaseUnavailable, JobSpec, QueueFull, TaskRegistry, enqueue, enqueue_many, task
from skiplock.limits import QueueLimits

CALLERS = 50
LIMIT = 10


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="echo", registry=r)
    async def echo(message: str) -> None: ...

    return r


def set_limit(pg_conn: psycopg.Connection[Any], queue: str, n: int | None) -> None:
    pg_conn.execute("INSERT INTO skiplock.queues (name, max_waiting) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET max_waiting = excluded.max_waiting", (queue, n))
    pg_conn.commit()


def stored(pg_conn: psycopg.Connection[Any], queue: str) -> int:
    n = pg_conn.execute("SELECT count(*) FROM skiplock.jobs WHERE queue = %s", (queue,)).fetchone()[0]  # type: ignore[index]
    pg_conn.commit()
    return int(n)


def test_50_concurrent_python_enqueues_against_max_waiting_10_store_exactly_10(db_url, pg_conn, reg):
    set_limit(pg_conn, "lim", LIMIT)

    async def go() -> Counter[str]:
        conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(CALLERS)]
        start = asyncio.Event()

        async def one(i: int, conn: psycopg.AsyncConnection[Any]) -> str:
            await start.wait()
            try:
                await enqueue(conn, "echo", {"message": str(i)}, queue="lim", registry=reg, limits=QueueLimits())
                return "stored"
            except QueueFull as full:
                assert full.details["max_waiting"] == LIMIT and full.details["queue"] == "lim"
                return "full"

        calls = [asyncio.create_task(one(i, c)) for i, c in enumerate(conns)]
        start.set()
        try:
            return Counter(await asyncio.gather(*calls))
        finally:
            for c in conns:
                await c.close()

    assert asyncio.run(go()) == {"stored": LIMIT, "full": CALLERS - LIMIT}
    assert stored(pg_conn, "lim") == LIMIT


def test_50_concurrent_sql_enqueues_against_max_waiting_10_store_exactly_10(db_url, pg_conn):
    set_limit(pg_conn, "lim", LIMIT)
    barrier = threading.Barrier(CALLERS)
    outcomes: list[str] = []

    def one(i: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            barrier.wait()
            try:
                c.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text), queue => 'lim')",
                          (str(i),))
                outcomes.append("stored")
            except psycopg.errors.CheckViolation as exc:
                assert exc.diag.constraint_name == "queues_max_waiting"
                assert "its limit is 10" in str(exc)
                outcomes.append("full")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(outcomes) == {"stored": LIMIT, "full": CALLERS - LIMIT}
    assert stored(pg_conn, "lim") == LIMIT


def test_sql_enqueue_gives_a_repeat_its_job_even_when_the_queue_is_full(pg_conn):
    set_limit(pg_conn, "lim", 1)
    first = pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'lim', idempotency_key => 'k')").fetchone()
    pg_conn.commit()
    again = pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'lim', idempotency_key => 'k')").fetchone()
    pg_conn.commit()
    assert again == first
    with pytest.raises(psycopg.errors.CheckViolation, match="queue 'lim' holds 1 or more waiting jobs; its limit is 1"):
        pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'lim', idempotency_key => 'other')")
    pg_conn.rollback()


def test_the_limit_holds_inside_the_callers_transaction_until_it_ends(db_url, pg_conn, reg):
    """A bulk inside the caller's transaction reserves its room until that transaction ends:
    a second submitter waits for it, then finds the queue full; a rollback frees the room."""
    set_limit(pg_conn, "lim", 3)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as mine, \
                await psycopg.AsyncConnection.connect(db_url, autocommit=True) as other:
            specs = [JobSpec("echo", {"message": str(i)}, queue="lim") for i in range(2)]
            await enqueue_many(mine, specs, registry=reg, limits=QueueLimits())  # opens mine's transaction
            late = asyncio.create_task(enqueue_many(other, specs, registry=reg, limits=QueueLimits()))
            await asyncio.sleep(0.3)
            assert not late.done(), "the second submitter did not wait for the first one's transaction"
            await mine.commit()
            with pytest.raises(QueueFull, match="queue 'lim' holds 2 waiting jobs; its limit is 3"):
                await late
            await enqueue_many(mine, specs[:1], registry=reg, limits=QueueLimits())
            await mine.rollback()
            await enqueue(other, "echo", {"message": "fits"}, queue="lim", registry=reg, limits=QueueLimits())

    asyncio.run(go())
    assert stored(pg_conn, "lim") == 3


@pytest.mark.parametrize("path", ["python", "sql"])
def test_a_queue_without_a_limit_takes_no_lock(db_url, pg_conn, reg, path):
    """Someone holds the row of an unlimited queue (and of a limited one beside it): submitting
    to the unlimited queue does not wait for it."""
    set_limit(pg_conn, "free", None)
    set_limit(pg_conn, "lim", 5)
    pg_conn.execute("SELECT 1 FROM skiplock.queues WHERE name IN ('free', 'lim') FOR UPDATE")  # held open

    async def go() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            await c.execute("SET lock_timeout = '200ms'")
            if path == "sql":
                row = await (await c.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'free')")).fetchone()
                assert row is not None
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    await c.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'lim')")
                return uuid.UUID(str(row[0]))
            job = await enqueue(c, "echo", {"message": "x"}, queue="free", registry=reg, limits=QueueLimits())
            with pytest.raises(DatabaseUnavailable, match="lock timeout"):  # it waited for the row
                await enqueue(c, "echo", {"message": "x"}, queue="lim", registry=reg, limits=QueueLimits())
            return job.id

    asyncio.run(go())
    pg_conn.rollback()
    assert stored(pg_conn, "free") == 1 and stored(pg_conn, "lim") == 0
