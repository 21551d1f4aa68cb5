"""sql/batches.sql: one function per named query on skiplock.batches, connection first, so each
runs on a pool connection or inside the caller's own transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..db import AsyncConn
from ._run import fetch_all, fetch_one


async def open_batch(conn: AsyncConn, *, on_complete: dict[str, Any] | None,
                     correlation_id: str | None) -> dict[str, Any]:
    """{"id", "state"} of a new open batch."""
    row = await fetch_one(conn, "open_batch", {"on_complete": Jsonb(on_complete) if on_complete is not None else None,
                                               "correlation_id": correlation_id})
    assert row is not None
    return row


async def seal_batch(conn: AsyncConn, batch_id: uuid.UUID) -> str:
    """The batch's state after sealing it (no_data_found: no such batch)."""
    row = await fetch_one(conn, "seal_batch", {"id": batch_id})
    assert row is not None
    return str(row["state"])


async def cancel_batch(conn: AsyncConn, batch_id: uuid.UUID) -> int:
    """How many of its queued and running jobs were cancelled."""
    row = await fetch_one(conn, "cancel_batch", {"id": batch_id})
    assert row is not None
    return int(row["cancelled"])


async def retry_batch(conn: AsyncConn, batch_id: uuid.UUID) -> int:
    """How many of its failed jobs were put back in their queues."""
    row = await fetch_one(conn, "retry_batch", {"id": batch_id})
    assert row is not None
    return int(row["retried"])


async def get_batch(conn: AsyncConn, batch_id: uuid.UUID) -> dict[str, Any] | None:
    return await fetch_one(conn, "get_batch", {"id": batch_id})


async def list_batches(conn: AsyncConn, *, state: str | None, before: uuid.UUID | None,
                       limit: int) -> list[dict[str, Any]]:
    return await fetch_all(conn, "list_batches", {"state": state, "before": before, "limit": limit})


async def prune_finished_batches(conn: AsyncConn, *, older_than_seconds: float, limit: int = 1000,
                                 now: datetime | None = None) -> int:
    row = await fetch_one(conn, "prune_finished_batches", {"older_than_seconds": older_than_seconds,
                                                           "limit": limit, "now": now})
    return int(row["deleted"]) if row else 0
