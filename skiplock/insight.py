"""What the dashboard asks beyond the API's listing: a job search of bounded cost, finished
and failed jobs per minute and per hour, and retrying every failed job of a queue. Called
through Operations (skiplock/ops.py), which supplies the connection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import db
from .queries import dashboard, session

SCAN_ROWS = 20_000
"""Rows a search page reads at most (newest first, within the time range): with rare matches
the page is short and its cursor continues below the last row read."""
RETRY_CHUNK = 1_000
"""Failed jobs retried per transaction by retry_failed."""

LOWEST = uuid.UUID(int=0)
HIGHEST = uuid.UUID(int=(1 << 128) - 1)


def id_at(moment: datetime) -> uuid.UUID:
    """The lowest time-ordered id (UUIDv7) of this millisecond: every job created at or after
    `moment` has an id at least this, every one created before a smaller id."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=max(0, min(ms, (1 << 48) - 1)) << 80)


def created_of(job_id: uuid.UUID) -> datetime:
    """The creation time a UUIDv7 carries (millisecond precision)."""
    return datetime.fromtimestamp((job_id.int >> 80) / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class SearchPage:
    jobs: list[dict[str, Any]]
    next_before: uuid.UUID | None
    """Continue with ids below this one; None: nothing older matches."""
    short: bool
    """The page stopped at SCAN_ROWS rows read, not at its size: older matches may follow."""


async def search_jobs(conn: db.AsyncConn, *, queue: str | None, state: str | None, task: str | None,
                      batch_id: uuid.UUID | None, text: str | None, since: datetime | None,
                      until: datetime | None, before: uuid.UUID | None, limit: int,
                      scan: int = SCAN_ROWS) -> SearchPage:
    """Jobs newest first: created in [since, until), below the cursor `before`, matching the
    filters; `text` (any case) in the task, the arguments or the last error."""
    upper = min(before or HIGHEST, id_at(until) if until is not None else HIGHEST)
    lower = id_at(since) if since is not None else LOWEST
    params = {"before": upper, "after": lower, "scan": scan, "limit": limit + 1, "queue": queue, "state": state,
              "task": task, "text": text.lower() if text else None, "batch_id": batch_id}
    if batch_id is None:
        rows = await dashboard.search_jobs(conn, params)
    else:
        rows = await dashboard.search_batch_jobs(conn, params)
    if len(rows) > limit:
        return SearchPage(rows[:limit], rows[limit - 1]["id"], False)
    if batch_id is None:
        end = await dashboard.window_end(conn, before=upper, after=lower, scan=scan)
    else:
        end = await dashboard.batch_window_end(conn, batch_id=batch_id, before=upper, after=lower, scan=scan)
    return SearchPage(rows, end, end is not None)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


async def throughput(conn: db.AsyncConn, *, now: datetime | None = None) -> tuple[list[Bucket], list[Bucket]]:
    """(per minute over the last hour, per hour over the last day): jobs that finished in each,
    by how they ended; empty buckets included. One scan of jobs_finished_at_idx."""
    now = now or datetime.now(UTC)
    this_minute = now.replace(second=0, microsecond=0)
    this_hour = this_minute.replace(minute=0)
    day_start = this_hour - timedelta(hours=23)
    rows = await dashboard.finished_per_minute(conn, since=day_start, until=this_minute + timedelta(minutes=1))
    minutes = {this_minute - timedelta(minutes=i): [0, 0, 0] for i in range(60)}
    hours = {this_hour - timedelta(hours=i): [0, 0, 0] for i in range(24)}
    for r in rows:
        counts = (int(r["succeeded"]), int(r["failed"]), int(r["cancelled"]))
        for table, key in ((minutes, r["minute"]), (hours, r["minute"].replace(minute=0))):
            if key in table:
                table[key] = [a + b for a, b in zip(table[key], counts, strict=True)]
    return ([Bucket(k, *v) for k, v in sorted(minutes.items())], [Bucket(k, *v) for k, v in sorted(hours.items())])


async def retry_failed(conn: db.AsyncConn, queue: str, *, correlation_id: str | None) -> int:
    """Every failed job of the queue back to queued, RETRY_CHUNK per transaction; how many."""
    total = 0
    while True:
        async with conn.transaction():
            await session.set_correlation_id(conn, correlation_id)
            n = await dashboard.retry_failed_in_queue(conn, queue, limit=RETRY_CHUNK)
        total += n
        if n < RETRY_CHUNK:
            return total
