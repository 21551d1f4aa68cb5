"""Operator queries (listing, queue limits, schema revision): thin functions over the named
queries, connection first, like skiplock.db."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from ..db import AsyncConn, fetch_all, fetch_one
from ..errors import QueueNotEmpty, QueueNotFound
from ..job import check_queue


async def list_jobs(conn: AsyncConn, *, queue: str | None = None, state: str | None = None,
                    task: str | None = None, batch_id: uuid.UUID | None = None, before: uuid.UUID | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    return await fetch_all(conn, "list_jobs", {"queue": queue, "state": state, "task": task, "batch_id": batch_id,
                                               "before": before, "limit": limit})


async def queue_page(conn: AsyncConn, *, after: str | None = None, limit: int = 100,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """Up to `limit` queues in name order, those named after `after` (the previous page's last)."""
    return await fetch_all(conn, "queue_page", {"after": after, "limit": limit, "now": now})


async def delete_queue(conn: AsyncConn, name: str) -> None:
    """Forget a queue: its settings (paused, limits) are deleted. Refused with QueueNotEmpty
    while any job names it (finished ones until the pruner deletes them), and QueueNotFound
    when it has neither jobs nor settings."""
    check_queue(name, field="name")
    row = await fetch_one(conn, "delete_queue_if_empty", {"name": name})
    assert row is not None
    jobs = int(row["jobs"])
    if jobs:
        raise QueueNotEmpty(f"queue {name!r} still has {jobs} jobs; delete it once they are finished and pruned",
                            field="name", details={"queue": name, "jobs": jobs})
    if not row["existed"]:
        raise QueueNotFound(f"no queue {name!r}", field="name", details={"queue": name})


async def set_max_waiting(conn: AsyncConn, name: str, max_waiting: int | None) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_max_waiting", {"name": name, "max_waiting": max_waiting})


async def lock_limited_queues(conn: AsyncConn, queues: list[str]) -> dict[str, int]:
    """{queue: max_waiting} for those of `queues` with a limit, their rows locked until the
    transaction ends (call inside one)."""
    rows = await fetch_all(conn, "lock_limited_queues", {"queues": queues})
    return {str(r["name"]): int(r["max_waiting"]) for r in rows}


async def count_waiting_in(conn: AsyncConn, queues: list[str]) -> dict[str, int]:
    """{queue: waiting jobs}; a queue with none is absent."""
    rows = await fetch_all(conn, "count_waiting_in", {"queues": queues})
    return {str(r["queue"]): int(r["waiting"]) for r in rows}


async def find_by_idempotency_key(conn: AsyncConn, queue: str, key: str) -> dict[str, Any] | None:
    """The job submitted to `queue` with this idempotency key, if any."""
    return await fetch_one(conn, "find_by_idempotency_key", {"queue": queue, "idempotency_key": key})


async def schema_revision(conn: AsyncConn) -> str | None:
    row = await fetch_one(conn, "schema_revision", {})
    return None if row is None else str(row["version_num"])


async def limited_queues(conn: AsyncConn) -> set[str]:
    """Names of the queues that have a max_waiting."""
    return {str(r["name"]) for r in await fetch_all(conn, "limited_queues", {})}
