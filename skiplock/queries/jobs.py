"""sql/jobs.sql: one function per named query on skiplock.jobs, connection first, so each runs
on a pool connection or inside the caller's own transaction. Time-dependent queries take
`now` (None: the database's now())."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..db import AsyncConn
from ..job import ClaimedJob
from ._run import execute, fetch_all, fetch_all_sync, fetch_one
from .loader import q

NOTIFY_CHANNEL = "skiplock_jobs"
"""The channel the insert trigger notifies with the job's queue (sql/schema.sql); workers
LISTEN on it and wake_queues notifies on it."""

CANCEL_CHANNEL = "skiplock_cancel"
"""The channel skiplock.cancel notifies with "job id:attempt" when it cancels a running job
(sql/schema.sql); workers LISTEN on it to stop the handler at once."""


async def insert_job(conn: AsyncConn, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """One job (the query's parameters); None when its idempotency key is already used."""
    return await fetch_one(conn, "insert_job", dict(row))


async def insert_jobs(conn: AsyncConn, columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Many jobs, one array per column; the jobs actually inserted (id, state, run_at, created_at)."""
    return await fetch_all(conn, "insert_jobs", dict(columns))


async def wake_queues(conn: AsyncConn, queues: Sequence[str]) -> None:
    await execute(conn, "wake_queues", {"channel": NOTIFY_CHANNEL, "queues": list(queues)})


async def find_by_idempotency_key(conn: AsyncConn, queue: str, idempotency_key: str) -> dict[str, Any] | None:
    """The job submitted to `queue` with this idempotency key, if any."""
    return await fetch_one(conn, "find_by_idempotency_key", {"queue": queue, "idempotency_key": idempotency_key})


async def find_by_idempotency_keys(conn: AsyncConn, queues: Sequence[str],
                                   idempotency_keys: Sequence[str]) -> list[dict[str, Any]]:
    """The jobs holding these (queue, key) pairs, in one statement."""
    return await fetch_all(conn, "find_by_idempotency_keys", {"queues": list(queues),
                                                               "idempotency_keys": list(idempotency_keys)})


async def get_job(conn: AsyncConn, job_id: uuid.UUID) -> dict[str, Any] | None:
    return await fetch_one(conn, "get_job", {"id": job_id})


async def job_states(conn: AsyncConn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """{id: state} of these jobs now."""
    return {r["id"]: str(r["state"]) for r in await fetch_all(conn, "job_states", {"ids": list(ids)})}


async def get_history(conn: AsyncConn, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch_all(conn, "get_history", {"id": job_id})


def _claimed_job_row(cursor: Any) -> Any:
    return lambda values: ClaimedJob(*values)


async def claim_batch(conn: AsyncConn, *, worker_id: str, queues: Sequence[str] | None, limit: int,
                      lease_seconds: float, now: datetime | None = None, turn: int = 0) -> list[ClaimedJob]:
    """Rows straight into ClaimedJob (columns in field order), without a dict per row. `turn`
    says which of several queues goes first among equals (fair queues: count the claims). Takes
    nothing while one of `queues` (None: all) has a flow limit: use claim_batch_limited then."""
    return await _claim(conn, "claim_batch", worker_id, queues, limit, lease_seconds, now, turn)


async def claim_batch_limited(conn: AsyncConn, *, worker_id: str, queues: Sequence[str] | None, limit: int,
                              lease_seconds: float, now: datetime | None = None, turn: int = 0) -> list[ClaimedJob]:
    """claim_batch within the queues' flow limits (max_running, per key, rate)."""
    return await _claim(conn, "claim_batch_limited", worker_id, queues, limit, lease_seconds, now, turn)


async def _claim(conn: AsyncConn, name: str, worker_id: str, queues: Sequence[str] | None, limit: int,
                 lease_seconds: float, now: datetime | None, turn: int) -> list[ClaimedJob]:
    async with conn.cursor(row_factory=_claimed_job_row) as cur:
        await cur.execute(q(name), {
            "worker_id": worker_id, "queues": list(queues) if queues else None, "limit": limit,
            "lease_seconds": lease_seconds, "now": now, "turn": turn})
        rows: list[ClaimedJob] = await cur.fetchall()
        return rows


async def finish_many_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                              states: list[str], results: list[Jsonb | None] | None, errors: list[str | None] | None,
                              run_ats: list[datetime | None] | None, checkpoints: list[Jsonb | None] | None,
                              progresses: list[Jsonb | None] | None,
                              now: datetime | None = None) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """Acknowledge outcomes (see the query). A column given as None is NULL for every row.
    Returns (done, locked): the ids whose outcome was written, and those still held whose row
    another transaction has locked (not written: send them again). Any other id was fenced."""
    rows = await fetch_all(conn, "finish_many_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "states": states, "results": results,
        "errors": errors, "run_ats": run_ats, "checkpoints": checkpoints, "progresses": progresses, "now": now})
    return {r["id"] for r in rows if r["done"]}, {r["id"] for r in rows if not r["done"]}


async def held_in_transaction(conn: AsyncConn, *, job_id: uuid.UUID, attempt: int, worker_id: str) -> bool:
    return await fetch_one(conn, "held_in_transaction",
                           {"id": job_id, "attempt": attempt, "worker_id": worker_id}) is not None


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


def extend_leases_if_held(conn: psycopg.Connection[Any], *, worker_id: str, holds: Mapping[uuid.UUID, int],
                          lease_seconds: float, now: datetime | None = None) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """(held, renewed): the ids of `holds` ({id: attempt}) still held under their attempt, and
    those whose lease was extended (held minus the rows another transaction had locked).
    Blocking: the heartbeat runs it on its own thread."""
    rows = fetch_all_sync(conn, "extend_leases_if_held", {
        "worker_id": worker_id, "ids": list(holds), "attempts": list(holds.values()),
        "lease_seconds": lease_seconds, "now": now})
    return {r[0] for r in rows}, {r[0] for r in rows if r[1]}


def extend_leases_waiting(conn: psycopg.Connection[Any], *, worker_id: str, holds: Mapping[uuid.UUID, int],
                          lease_seconds: float, now: datetime | None = None) -> set[uuid.UUID]:
    """The same renewal, waiting for the rows' locks. Blocking."""
    rows = fetch_all_sync(conn, "extend_leases_waiting", {
        "worker_id": worker_id, "ids": list(holds), "attempts": list(holds.values()),
        "lease_seconds": lease_seconds, "now": now})
    return {r[0] for r in rows}


async def rescue_expired(conn: AsyncConn, *, limit: int = 1000, now: datetime | None = None) -> list[dict[str, Any]]:
    return await fetch_all(conn, "rescue_expired", {"limit": limit, "now": now})


async def cancel_job(conn: AsyncConn, job_id: uuid.UUID) -> str:
    row = await fetch_one(conn, "cancel_job", {"id": job_id})
    assert row is not None
    return str(row["state"])


async def retry_job(conn: AsyncConn, job_id: uuid.UUID) -> str:
    row = await fetch_one(conn, "retry_job", {"id": job_id})
    assert row is not None
    return str(row["state"])


async def resume_job(conn: AsyncConn, job_id: uuid.UUID, data: Jsonb | None) -> str:
    row = await fetch_one(conn, "resume_job", {"id": job_id, "data": data})
    assert row is not None
    return str(row["state"])


async def fail_job(conn: AsyncConn, job_id: uuid.UUID, reason: str | None) -> str:
    row = await fetch_one(conn, "fail_job", {"id": job_id, "reason": reason})
    assert row is not None
    return str(row["state"])


async def park_many_if_held(conn: AsyncConn, *, worker_id: str, ids: list[uuid.UUID], attempts: list[int],
                            reasons: list[str], datas: list[Jsonb | None], checkpoints: list[Jsonb | None],
                            progresses: list[Jsonb | None], now: datetime | None = None) -> set[uuid.UUID]:
    """Park these jobs (see the query); the ids parked (any other was no longer held)."""
    rows = await fetch_all(conn, "park_many_if_held", {
        "worker_id": worker_id, "ids": ids, "attempts": attempts, "reasons": reasons, "datas": datas,
        "checkpoints": checkpoints, "progresses": progresses, "now": now})
    return {r["id"] for r in rows}


async def list_jobs(conn: AsyncConn, *, queue: str | None = None, state: str | None = None,
                    task: str | None = None, batch_id: uuid.UUID | None = None, before: uuid.UUID | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    return await fetch_all(conn, "list_jobs", {"queue": queue, "state": state, "task": task, "batch_id": batch_id,
                                               "before": before, "limit": limit})


async def prune_finished(conn: AsyncConn, *, older_than_seconds: float, limit: int = 1000,
                         now: datetime | None = None) -> int:
    row = await fetch_one(conn, "prune_finished", {"older_than_seconds": older_than_seconds, "limit": limit,
                                                   "now": now})
    return int(row["deleted"]) if row else 0
