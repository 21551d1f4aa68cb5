"""sql/schedules.sql: the scheduler's round and the schedule operations, connection first."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..db import AsyncConn
from ._run import execute, fetch_all, fetch_one


async def upsert_code_schedules(conn: AsyncConn, *, names: Sequence[str], tasks: Sequence[str],
                                crons: Sequence[str], timezones: Sequence[str], args: Sequence[Jsonb],
                                queues: Sequence[str | None], priorities: Sequence[str | None],
                                now: datetime | None = None) -> int:
    """Write the schedules defined in code (one array per column); how many rows changed."""
    return await execute(conn, "upsert_code_schedules", {
        "names": list(names), "tasks": list(tasks), "crons": list(crons), "timezones": list(timezones),
        "args": list(args), "queues": list(queues), "priorities": list(priorities), "now": now})


async def lock_due_schedules(conn: AsyncConn, *, limit: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """Due (or never computed) active schedules, locked until the transaction ends."""
    return await fetch_all(conn, "lock_due_schedules", {"limit": limit, "now": now})


async def enqueue_tick(conn: AsyncConn, *, name: str, last_tick_at: datetime | None, tick: datetime,
                       next_run_at: datetime, idempotency_key: str) -> uuid.UUID | None:
    """The job of this tick (None: the schedule moved on meanwhile, nothing was enqueued)."""
    row = await fetch_one(conn, "enqueue_tick", {"name": name, "last_tick_at": last_tick_at, "tick": tick,
                                                 "next_run_at": next_run_at, "idempotency_key": idempotency_key})
    return row["last_job_id"] if row else None


async def set_next_run_at(conn: AsyncConn, *, name: str, last_tick_at: datetime | None,
                          next_run_at: datetime) -> int:
    return await execute(conn, "set_next_run_at", {"name": name, "last_tick_at": last_tick_at,
                                                   "next_run_at": next_run_at})


async def mark_schedule_broken(conn: AsyncConn, *, name: str, error: str) -> int:
    return await execute(conn, "mark_schedule_broken", {"name": name, "error": error})


async def next_schedule_due(conn: AsyncConn, now: datetime | None = None) -> dict[str, Any]:
    """{"now", "next_run_at" (earliest, or None), "uncomputed" (an active schedule has none yet)}."""
    row = await fetch_one(conn, "next_schedule_due", {"now": now})
    assert row is not None
    return row


async def list_schedules(conn: AsyncConn) -> list[dict[str, Any]]:
    return await fetch_all(conn, "list_schedules", {})


async def get_schedule(conn: AsyncConn, name: str) -> dict[str, Any] | None:
    return await fetch_one(conn, "get_schedule", {"name": name})


async def pause_schedule(conn: AsyncConn, name: str) -> dict[str, Any] | None:
    return await fetch_one(conn, "pause_schedule", {"name": name})


async def resume_schedule(conn: AsyncConn, name: str, now: datetime | None = None) -> dict[str, Any] | None:
    return await fetch_one(conn, "resume_schedule", {"name": name, "now": now})
