"""sql/dashboard.sql: the dashboard's job search, charts and bulk retry, connection first."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from ..db import AsyncConn
from ._run import fetch_all, fetch_one


async def search_jobs(conn: AsyncConn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Up to `limit` matching rows among the first `scan` rows below `before` (see the query).
    `params`: before, after, scan, limit, queue, state, task, text."""
    return await fetch_all(conn, "search_jobs", params)


async def search_batch_jobs(conn: AsyncConn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """search_jobs within the batch `batch_id`."""
    return await fetch_all(conn, "search_batch_jobs", params)


async def window_end(conn: AsyncConn, *, before: uuid.UUID, after: uuid.UUID, scan: int) -> uuid.UUID | None:
    """The last id a search with these bounds read, if it read `scan` rows (more lie below)."""
    row = await fetch_one(conn, "window_end", {"before": before, "after": after, "scan": scan})
    return row["id"] if row else None


async def batch_window_end(conn: AsyncConn, *, batch_id: uuid.UUID, before: uuid.UUID, after: uuid.UUID,
                           scan: int) -> uuid.UUID | None:
    row = await fetch_one(conn, "batch_window_end", {"batch_id": batch_id, "before": before, "after": after,
                                                     "scan": scan})
    return row["id"] if row else None


async def finished_per_minute(conn: AsyncConn, *, since: datetime, until: datetime) -> list[dict[str, Any]]:
    return await fetch_all(conn, "finished_per_minute", {"since": since, "until": until})


async def retry_failed_in_queue(conn: AsyncConn, queue: str, *, limit: int) -> int:
    row = await fetch_one(conn, "retry_failed_in_queue", {"queue": queue, "limit": limit})
    return int(row["retried"]) if row else 0
