"""sql/tasks.sql: the task catalog (skiplock.tasks), connection first."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from ..db import AsyncConn
from ._run import execute, fetch_one


async def record_tasks(conn: AsyncConn, *, worker_id: str | None, names: list[str], queues: list[str],
                       priorities: list[int], max_attempts: list[int], timeouts: list[float | None],
                       schemas: list[Jsonb | None]) -> int:
    """Record (or update) tasks' defaults and argument schemas, one array per column."""
    params: dict[str, Any] = {"worker_id": worker_id, "names": names, "queues": queues, "priorities": priorities,
                              "max_attempts": max_attempts, "timeouts": timeouts, "schemas": schemas}
    return await execute(conn, "record_tasks", params)


async def recorded_task(conn: AsyncConn, name: str) -> dict[str, Any] | None:
    """The task `name` as its workers recorded it (defaults and argument schema), if any."""
    return await fetch_one(conn, "recorded_task", {"name": name})
