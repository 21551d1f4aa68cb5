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
