"""Connections and the thin query functions: one per named query, connection first, so each
runs on a pool connection or inside the caller's own transaction."""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .job import ClaimedJob
from .queries.loader import q

AsyncConn = psycopg.AsyncConnection[Any]


def make_pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "skiplock",
              timeout: float = 30.0, check: bool | Literal["passive"] = True) -> AsyncConnectionPool:
    """An unopened pool (open it with `await pool.open()`). `timeout` bounds the wait for a
    connection (PoolTimeout after it). reconnect_timeout=0: no background retry loop while the
    database is away; the next caller's request makes a new attempt.

    `check` decides what a checkout verifies:
    - True: a round trip on every checkout, so a restarted database costs failed checks, not
      failed queries (each failed check makes the pool back off, 1 s then 2 s...).
    - "passive" (the API): no round trip. A connection whose server has sent something while
      idle (a restart or a terminated backend ends each session with a message and EOF) is
      checked then, and a dead one is replaced at once, without back-off: a restart costs no
      request that arrives after the database is back, and the hot path only a poll().
    - False: nothing, for callers that retry every query anyway (the worker).
    """
    if check == "passive":
        return PassivePool(url, min_size=min_size, max_size=max_size, open=False, name=name, check=None,
                           timeout=timeout, kwargs={"autocommit": True, "connect_timeout": max(2, int(timeout))},
                           reconnect_timeout=0)
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, name=name,
                               check=AsyncConnectionPool.check_connection if check else None, timeout=timeout,
                               kwargs={"autocommit": True, "connect_timeout": max(2, int(timeout))},
                               reconnect_timeout=0)


class PassivePool(AsyncConnectionPool):
    """A pool that hands out only connections the server has not closed, at the cost of a
    poll() per checkout (see make_pool's check="passive")."""

    async def getconn(self, timeout: float | None = None) -> AsyncConn:  # noqa: ASYNC109 - the pool's signature
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = await super().getconn(max(0.0, deadline - time.monotonic()))
            if not conn.closed and not _has_input(conn):
                return conn
            try:
                await self.check_connection(conn)  # a notice leaves it usable; an EOF fails at once
            except psycopg.Error:
                await self.putconn(conn)  # closed now: the pool discards it and opens another
                continue
            return conn


def _has_input(conn: AsyncConn) -> bool:
    """Whether the server has sent anything on this idle connection (no wait, no round trip).
    A pool connection runs no LISTEN, so that is a notice or the end of the session."""
    fd = conn.pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # Windows: no poll(), and no FD_SETSIZE bound on sockets
    return bool(readable)


async def set_correlation_id(conn: AsyncConn, correlation_id: str | None) -> None:
    """Tag the history rows this transaction writes (transaction-local)."""
    if correlation_id:
        await conn.execute("SELECT set_config('skiplock.correlation_id', %s, true)", (correlation_id[:200],))


async def fetch_all(conn: AsyncConn, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q(name), params)
        return await cur.fetchall()


async def fetch_one(conn: AsyncConn, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q(name), params)
        return await cur.fetchone()


async def execute(conn: AsyncConn, name: str, params: dict[str, Any]) -> int:
    async with conn.cursor() as cur:
        await cur.execute(q(name), params)
        return cur.rowcount


def jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# -- jobs -------------------------------------------------------------------------------

async def get_job(conn: AsyncConn, job_id: uuid.UUID) -> dict[str, Any] | None:
    return await fetch_one(conn, "get_job", {"id": job_id})


async def get_history(conn: AsyncConn, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch_all(conn, "get_history", {"id": job_id})


def _claimed_job_row(cursor: Any) -> Any:
    return lambda values: ClaimedJob(*values)


async def claim_jobs(conn: AsyncConn, *, worker_id: str, queues: Sequence[str] | None, limit: int,
                     lease_seconds: float, now: datetime | None = None) -> list[ClaimedJob]:
    """The claim_batch query: rows straight into ClaimedJob (columns in field order),
    without a dict per row."""
    async with conn.cursor(row_factory=_claimed_job_row) as cur:
        await cur.execute(q("claim_batch"), {
            "worker_id": worker_id, "queues": list(queues) if queues else None, "limit": limit,
            "lease_seconds": lease_seconds, "now": now})
        rows: list[ClaimedJob] = await cur.fetchall()
        return rows


async def finish_many_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                              states: list[str], results: list[Jsonb | None] | None, errors: list[str | None] | None,
                              run_ats: list[datetime | None] | None, checkpoints: list[Jsonb | None] | None,
                              progresses: list[Jsonb | None] | None, now: datetime | None = None) -> set[uuid.UUID]:
    """Acknowledge outcomes (see the query). A column given as None is NULL for every row."""
    rows = await fetch_all(conn, "finish_many_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "states": states, "results": results,
        "errors": errors, "run_ats": run_ats, "checkpoints": checkpoints, "progresses": progresses, "now": now})
    return {r["id"] for r in rows}


async def update_many_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                              checkpoints: list[Jsonb | None], progresses: list[Jsonb | None]) -> set[uuid.UUID]:
    rows = await fetch_all(conn, "update_many_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "checkpoints": checkpoints,
        "progresses": progresses})
    return {r["id"] for r in rows}


async def release_many_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                               checkpoints: list[Jsonb | None], progresses: list[Jsonb | None],
                               now: datetime | None = None) -> set[uuid.UUID]:
    rows = await fetch_all(conn, "release_many_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "checkpoints": checkpoints,
        "progresses": progresses, "now": now})
    return {r["id"] for r in rows}


async def release_unknown_holds(conn: AsyncConn, *, worker_id: str, known: list[uuid.UUID],
                                now: datetime | None = None) -> list[dict[str, Any]]:
    """Release the rows running under this worker that it does not know of (see the query)."""
    return await fetch_all(conn, "release_unknown_holds", {"worker_id": worker_id, "known": known, "now": now})


async def extend_leases_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                                lease_seconds: float, now: datetime | None = None) -> set[uuid.UUID]:
    rows = await fetch_all(conn, "extend_leases_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "lease_seconds": lease_seconds, "now": now})
    return {r["id"] for r in rows}


async def rescue_expired(conn: AsyncConn, *, limit: int = 1000, now: datetime | None = None) -> list[dict[str, Any]]:
    return await fetch_all(conn, "rescue_expired", {"limit": limit, "now": now})


async def prune_finished(conn: AsyncConn, *, older_than_seconds: float, limit: int = 1000,
                         now: datetime | None = None) -> int:
    row = await fetch_one(conn, "prune_finished", {"older_than_seconds": older_than_seconds, "limit": limit,
                                                   "now": now})
    return int(row["deleted"]) if row else 0


async def cancel_job(conn: AsyncConn, job_id: uuid.UUID) -> str:
    row = await fetch_one(conn, "cancel_job", {"id": job_id})
    assert row is not None
    return str(row["state"])


async def retry_job(conn: AsyncConn, job_id: uuid.UUID) -> str:
    row = await fetch_one(conn, "retry_job", {"id": job_id})
    assert row is not None
    return str(row["state"])


# -- queues and workers -------------------------------------------------------------------

async def queue_stats(conn: AsyncConn) -> list[dict[str, Any]]:
    return await fetch_all(conn, "queue_stats", {})


async def set_paused(conn: AsyncConn, name: str, paused: bool) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_paused", {"name": name, "paused": paused})


async def register_worker(conn: AsyncConn, *, worker_id: str, hostname: str, pid: int,
                          queues: Sequence[str] | None, concurrency: int) -> None:
    await execute(conn, "register_worker", {"id": worker_id, "hostname": hostname, "pid": pid,
                                            "queues": list(queues) if queues else None, "concurrency": concurrency})


async def touch_worker(conn: AsyncConn, worker_id: str, now: datetime | None = None) -> None:
    await execute(conn, "touch_worker", {"id": worker_id, "now": now})


async def unregister_worker(conn: AsyncConn, worker_id: str) -> None:
    await execute(conn, "unregister_worker", {"id": worker_id})


async def delete_stale_workers(conn: AsyncConn, older_than_seconds: float, now: datetime | None = None) -> int:
    return await execute(conn, "delete_stale_workers", {"older_than_seconds": older_than_seconds, "now": now})
