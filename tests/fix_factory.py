"""A factory that inserts jobs in any state, straight into the table. The database refuses
an INSERT in any state but queued (trigger jobs_insert_queued); the factory switches that
one trigger off inside its own transaction, so no other session ever sees it off."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from skiplock.job import uuid7


def insert_job(conn: psycopg.Connection[Any], *, task: str = "echo", args: dict[str, Any] | None = None,
               queue: str = "default", state: str = "queued", priority: int = 1, attempt: int = 0,
               max_attempts: int = 3, run_at: datetime | None = None, worker_id: str | None = None,
               lease_expires_at: datetime | None = None, **extra: Any) -> uuid.UUID:
    job_id = uuid7()
    if state == "running":
        worker_id = worker_id or "factory-worker"
        lease_expires_at = lease_expires_at or datetime.now(UTC) + timedelta(seconds=30)
        attempt = attempt or 1
    cols: dict[str, Any] = {
        "id": job_id, "task": task, "args": Jsonb(args if args is not None else {"message": "hi"}), "queue": queue,
        "state": state, "priority": priority, "attempt": attempt, "max_attempts": max_attempts,
        "run_at": run_at or datetime.now(UTC), "worker_id": worker_id,
        "lease_expires_at": lease_expires_at, **extra}
    names = ", ".join(cols)
    marks = ", ".join(f"%({c})s" for c in cols)
    if state != "queued":
        conn.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER jobs_insert_queued")
    conn.execute(f"INSERT INTO skiplock.jobs ({names}) VALUES ({marks})", cols)  # type: ignore[arg-type]
    if state != "queued":
        conn.execute("ALTER TABLE skiplock.jobs ENABLE TRIGGER jobs_insert_queued")
    conn.commit()
    return job_id


@pytest.fixture
def make_job(pg_conn: psycopg.Connection[Any]) -> Callable[..., uuid.UUID]:
    def make(**kw: Any) -> uuid.UUID:
        return insert_job(pg_conn, **kw)
    return make
