"""sql/workers.sql: queries on skiplock.workers, connection first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..db import AsyncConn
from ._run import execute, fetch_all, fetch_one
from .loader import q


@dataclass(frozen=True)
class Registration:
    """A worker's row in skiplock.workers, as it registers (again, if its row was removed)."""

    id: str
    hostname: str
    pid: int
    queues: Sequence[str] | None
    concurrency: int

    def params(self) -> dict[str, Any]:
        return {"id": self.id, "hostname": self.hostname, "pid": self.pid,
                "queues": list(self.queues) if self.queues else None, "concurrency": self.concurrency}


async def register_worker(conn: AsyncConn, worker: Registration) -> None:
    await execute(conn, "register_worker", worker.params())


def touch_worker(conn: psycopg.Connection[Any], worker: Registration, now: datetime | None = None) -> None:
    """Blocking: the heartbeat runs it on its own thread."""
    conn.execute(q("touch_worker"), {**worker.params(), "now": now})


async def unregister_worker(conn: AsyncConn, worker_id: str) -> None:
    await execute(conn, "unregister_worker", {"id": worker_id})


async def delete_stale_workers(conn: AsyncConn, older_than_seconds: float, now: datetime | None = None) -> int:
    return await execute(conn, "delete_stale_workers", {"older_than_seconds": older_than_seconds, "now": now})


async def list_workers(conn: AsyncConn, *, hostname: str | None = None,
                       now: datetime | None = None) -> list[dict[str, Any]]:
    """Registered workers (optionally of one host) with the age of their last heartbeat."""
    return await fetch_all(conn, "list_workers", {"hostname": hostname, "now": now})


async def take_worker_lock(conn: AsyncConn, worker: Registration) -> bool:
    """Take the worker's liveness lock on this session (see the query); whether it was taken."""
    row = await fetch_one(conn, "take_worker_lock", worker.params())
    return bool(row and row["taken"])


async def forget_worker_lock(conn: AsyncConn, worker_id: str) -> None:
    await execute(conn, "forget_worker_lock", {"id": worker_id})


async def rescue_jobs_of_dead_workers(conn: AsyncConn, now: datetime | None = None) -> list[dict[str, Any]]:
    """The running jobs of workers whose session ended, back to queued (or failed): id, state, attempt."""
    return await fetch_all(conn, "rescue_jobs_of_dead_workers", {"now": now})
