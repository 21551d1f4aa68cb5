"""sql/metrics.sql: the reads behind GET /metrics (skiplock/metrics.py), connection first.
Time-dependent queries take `now` (None: the database's now())."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..db import AsyncConn
from ._run import fetch_all, fetch_one


async def metrics_depth(conn: AsyncConn, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per queue: ready, scheduled, running and the oldest ready job's age in seconds."""
    return await fetch_all(conn, "metrics_depth", {"now": now})


async def metrics_settled_until(conn: AsyncConn, *, settle_seconds: float,
                                now: datetime | None = None) -> dict[str, Any]:
    """The end of the next counting window (`until`) and the last history id stamped by then."""
    row = await fetch_one(conn, "metrics_settled_until", {"settle_seconds": settle_seconds, "now": now})
    assert row is not None
    return row


async def metrics_finished(conn: AsyncConn, *, since: datetime, until: datetime,
                           bounds: Sequence[float]) -> list[dict[str, Any]]:
    """Jobs finished within (since, until]: counts and histogram buckets (see the query)."""
    return await fetch_all(conn, "metrics_finished", {"since": since, "until": until, "bounds": list(bounds)})


async def metrics_runs_ended(conn: AsyncConn, *, after_id: int, since: datetime,
                             until: datetime) -> list[dict[str, Any]]:
    """Retries and rescues within (since, until] from history rows after `after_id`, and the
    row of kind 'next' carrying where the next read starts."""
    return await fetch_all(conn, "metrics_runs_ended", {"after_id": after_id, "since": since, "until": until})


async def metrics_workers(conn: AsyncConn, *, live_seconds: float, now: datetime | None = None) -> dict[str, Any]:
    """Live workers (heartbeat within `live_seconds`), their slots and the oldest heartbeat's age."""
    row = await fetch_one(conn, "metrics_workers", {"live_seconds": live_seconds, "now": now})
    assert row is not None
    return row
