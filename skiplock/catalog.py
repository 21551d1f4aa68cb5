"""The task catalog in the database (skiplock.tasks): what workers serve, with each task's
defaults and argument schema, for submitters that do not import the task's code."""

from __future__ import annotations

from collections.abc import Iterable

from .db import AsyncConn, jsonb
from .job import priority_value
from .queries import tasks as catalog_queries
from .tasks import Task


async def record_tasks(conn: AsyncConn, tasks: Iterable[Task], *, worker_id: str | None = None) -> int:
    """Record (or update) these tasks' defaults and argument schemas."""
    ts = list(tasks)
    if not ts:
        return 0
    return await catalog_queries.record_tasks(
        conn, worker_id=worker_id, names=[t.name for t in ts], queues=[t.queue for t in ts],
        priorities=[priority_value(t.priority) for t in ts], max_attempts=[t.max_attempts for t in ts],
        timeouts=[None if t.timeout is None else float(t.timeout) for t in ts],
        schemas=[jsonb(t.json_schema()) for t in ts])

