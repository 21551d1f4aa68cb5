"""sql/queues.sql: queries on skiplock.queues and the queue views, connection first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..db import AsyncConn
from ._run import fetch_all, fetch_one


async def queue_stats(conn: AsyncConn) -> list[dict[str, Any]]:
    return await fetch_all(conn, "queue_stats", {})


async def set_paused(conn: AsyncConn, name: str, paused: bool) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_paused", {"name": name, "paused": paused})


async def count_ready(conn: AsyncConn, queues: Sequence[str] | None) -> int:
    """Jobs due now in `queues` (None: every queue)."""
    row = await fetch_one(conn, "count_ready", {"queues": list(queues) if queues else None})
    return int(row["ready"]) if row else 0


async def queue_page(conn: AsyncConn, *, after: str | None = None, limit: int = 100,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """Up to `limit` queues in name order, those named after `after` (the previous page's last)."""
    return await fetch_all(conn, "queue_page", {"after": after, "limit": limit, "now": now})


async def delete_queue_if_empty(conn: AsyncConn, name: str) -> tuple[int, bool]:
    """(jobs, existed): how many jobs name the queue (its settings are deleted only when none
    does), and whether it had settings."""
    row = await fetch_one(conn, "delete_queue_if_empty", {"name": name})
    assert row is not None
    return int(row["jobs"]), bool(row["existed"])


async def limited_queues(conn: AsyncConn) -> set[str]:
    """Names of the queues that have a max_waiting."""
    return {str(r["name"]) for r in await fetch_all(conn, "limited_queues", {})}


async def reserve_queue_room(conn: AsyncConn, queues: Sequence[str], wanted: Sequence[int]) -> None:
    """Lock the limited ones of `queues` until the transaction ends (call inside the one that
    inserts); psycopg's CheckViolation (constraint queues_max_waiting) when one lacks room."""
    await fetch_all(conn, "reserve_queue_room", {"queues": list(queues), "wanted": list(wanted)})


async def flow_limited_queues(conn: AsyncConn) -> set[str]:
    """Names of the queues that have a max_running, per-key or rate limit."""
    return {str(r["name"]) for r in await fetch_all(conn, "flow_limited_queues", {})}


async def next_rate_room(conn: AsyncConn, queues: Sequence[str] | None, now: datetime | None = None) -> float | None:
    """Seconds until the first of `queues` (None: all) that its rate limit holds back has room
    again (None: none is held back)."""
    row = await fetch_one(conn, "next_rate_room", {"queues": list(queues) if queues else None, "now": now})
    return None if row is None or row["wait"] is None else float(row["wait"])
