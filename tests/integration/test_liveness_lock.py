"""The worker's liveness lock (a session advisory lock held by its listener's connection): taken
again after the connection breaks, forgotten when the worker stops on purpose, and read by the
fast rescue only for sessions of the running server."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import psycopg

from skiplock import TaskRegistry, Worker, enqueue, task
from skiplock.queries import workers as worker_queries


def holder(url: str, worker_id: str) -> int | None:
    """The backend pid holding the worker's lock, if any."""
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
                        " AND (l.classid::bigint << 32 | l.objid::bigint) = hashtextextended(%s, 0)",
                        (worker_id,)).fetchone()
    return None if row is None else int(row[0])


def one(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
    return None if row is None else row[0]


def test_the_lock_is_taken_again_after_the_connection_breaks_and_forgotten_on_a_graceful_stop(db_url):
    reg = TaskRegistry()
    started = threading.Event()

    @task(name="waits", registry=reg)
    async def waits() -> None:
        started.set()
        await asyncio.sleep(60)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await enqueue(conn, "waits", {}, registry=reg)
        w = Worker(db_url, registry=reg, poll_interval=0.05, grace_seconds=0.1)
        runner = asyncio.create_task(w.run())
        while not started.is_set() or holder(db_url, w.id) is None:
            await asyncio.sleep(0.02)
        first = holder(db_url, w.id)
        assert one(db_url, "SELECT pg_terminate_backend(%s)", first) is True  # the connection breaks
        deadline = time.monotonic() + 10
        while holder(db_url, w.id) in (None, first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert holder(db_url, w.id) not in (None, first), "the listener did not take its lock again"
        assert one(db_url, "SELECT lock_taken_at IS NOT NULL FROM skiplock.workers WHERE id = %s", w.id)
        w.request_stop()
        await asyncio.wait_for(runner, 20)
        # gone on purpose: the lock is free and forgotten, and the released job was not rescued
        assert holder(db_url, w.id) is None
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            assert await worker_queries.rescue_jobs_of_dead_workers(conn) == []

    asyncio.run(go())
    # released at the stop (if a rescuer took it while the lock was free, fencing kept that harmless)
    assert one(db_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'queued'") == 1


def test_only_workers_whose_lock_is_free_and_was_taken_since_the_server_started_are_rescued(db_url, make_job):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO skiplock.workers (id, hostname, pid, concurrency, lock_taken_at) VALUES"
                  " ('dead', 'h', 1, 1, now()), ('alive', 'h', 2, 1, now()),"
                  " ('before_restart', 'h', 3, 1, pg_postmaster_start_time() - interval '1 second'),"
                  " ('never_locked', 'h', 4, 1, NULL)")
    jobs = {w: make_job(state="running", attempt=1, worker_id=w) for w in ("dead", "alive", "before_restart",
                                                                          "never_locked")}
    with psycopg.connect(db_url, autocommit=True) as alive:
        alive.execute("SELECT pg_advisory_lock(hashtextextended('alive', 0))")

        async def rescue() -> list[dict[str, Any]]:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                return await worker_queries.rescue_jobs_of_dead_workers(conn)

        assert [(r["id"], r["state"]) for r in asyncio.run(rescue())] == [(jobs["dead"], "queued")]
        assert asyncio.run(rescue()) == []  # once: the dead worker is forgotten, and no longer listed
        assert one(db_url, "SELECT string_agg(id, ',' ORDER BY id) FROM skiplock.workers") == \
            "alive,before_restart,never_locked"
    assert one(db_url, "SELECT last_error FROM skiplock.jobs WHERE id = %s", jobs["dead"]) == \
        "lease ended: worker dead stopped: its database session closed during attempt 1"
    assert one(db_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running'") == 3


def test_a_live_worker_whose_row_was_removed_registers_again_with_its_lock(db_url):
    """The fast rescue removes the row of a worker whose lock it found free; if that worker
    only lost its connection, it takes its lock back on a row registered again, and its
    heartbeat restores a row removed by hand or by the stale-worker sweep."""
    reg = TaskRegistry()

    async def go() -> None:
        w = Worker(db_url, registry=reg, poll_interval=0.05, grace_seconds=0.1, heartbeat_seconds=0.2)
        runner = asyncio.create_task(w.run())
        while holder(db_url, w.id) is None:
            await asyncio.sleep(0.02)
        first = holder(db_url, w.id)
        with psycopg.connect(db_url, autocommit=True) as c:  # its listener's session ends, its row goes
            c.execute("SELECT pg_terminate_backend(%s)", (first,))
            c.execute("DELETE FROM skiplock.workers WHERE id = %s", (w.id,))
        deadline = time.monotonic() + 10
        while holder(db_url, w.id) in (None, first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert holder(db_url, w.id) not in (None, first), "the listener did not take its lock again"
        assert one(db_url, "SELECT (pid, concurrency, lock_taken_at IS NOT NULL) FROM skiplock.workers "
                           "WHERE id = %s", w.id) == (str(os.getpid()), str(w.concurrency), "t")
        one(db_url, "DELETE FROM skiplock.workers WHERE id = %s RETURNING id", w.id)  # the heartbeat alone
        deadline = time.monotonic() + 10
        while not one(db_url, "SELECT count(*) FROM skiplock.workers WHERE id = %s", w.id) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert one(db_url, "SELECT hostname FROM skiplock.workers WHERE id = %s", w.id) == socket.gethostname()
        w.request_stop()
        await asyncio.wait_for(runner, 20)
        assert one(db_url, "SELECT count(*) FROM skiplock.workers") == 0  # gone on purpose: not registered again

    asyncio.run(go())
