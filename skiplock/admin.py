"""Operator queries (listing, queue limits, schema revision): thin functions over the named
queries, connection first, like skiplock.db."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from .db import AsyncConn, fetch_all, fetch_one


async def list_jobs(conn: AsyncConn, *, queue: str | None = None, state: str | None = None,
                    task: str | None = None, batch_id: uuid.UUID | None = None, before: uuid.UUID | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    return await fetch_all(conn, "list_jobs", {"queue": queue, "state": state, "task": task, "batch_id": batch_id,
                                               "before": before, "limit": limit})


async def queue_overview(conn: AsyncConn, now: datetime | None = None) -> list[dict[str, Any]]:
    return await fetch_all(conn, "queue_overview", {"now": now})


async def set_max_waiting(conn: AsyncConn, name: str, max_waiting: int | None) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_max_waiting", {"name": name, "max_waiting": max_waiting})


async def queue_room(conn: AsyncConn, queue: str) -> tuple[int, int] | None:
    """(max_waiting, waiting) for a queue with a limit, else None."""
    row = await fetch_one(conn, "queue_room", {"queue": queue})
    return None if row is None else (int(row["max_waiting"]), int(row["waiting"]))


async def schema_revision(conn: AsyncConn) -> str | None:
    row = await fetch_one(conn, "schema_revision", {})
    return None if row is None else str(row["version_num"])


async def limited_queues(conn: AsyncConn) -> set[str]:
    """Names of the queues that have a max_waiting."""
    return {str(r["name"]) for r in await fetch_all(conn, "limited_queues", {})}
