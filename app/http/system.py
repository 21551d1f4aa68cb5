"""/health, /tasks and /openapi.json."""

from __future__ import annotations

from typing import Any

import psycopg.errors
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import migrate
from skiplock.job import PRIORITY_NAMES, priority_value
from skiplock.queries import api as api_queries
from skiplock.queries import metrics as metrics_queries

from .context import api
from .errors import error_response
from .openapi import spec
from .schemas import Health, TaskList, TaskOut, WorkersHealth


async def health(request: Request) -> Response:
    """200 when the database answers (within 3 s for a connection and the statement timeout for
    each query) and its schema is at this code's migration, else 503. Live workers are
    reported, not required: with none, jobs are still accepted and wait for one."""
    state = api(request)
    expected = migrate.head_revision()
    workers: dict[str, Any] | None = None
    try:
        async with state.connection(wait=3) as conn:
            try:
                revision = await api_queries.schema_revision(conn)
            except psycopg.errors.UndefinedTable:
                revision = None
            if revision == expected:
                workers = await metrics_queries.metrics_workers(conn, live_seconds=state.settings.lease_seconds)
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer "unhealthy"
        return error_response(503, "database_unavailable", f"the database does not answer: {exc}".strip(),
                              headers={"Retry-After": "5"})
    if revision != expected or workers is None:
        return error_response(503, "schema_mismatch",
                              f"the database schema is at {revision!r}, this code needs {expected!r}: "
                              "run `skiplock migrate`", {"found": revision, "expected": expected})
    live = WorkersHealth(live=workers["live"], slots=workers["slots"],
                         oldest_heartbeat_seconds=workers["oldest_heartbeat_seconds"] if workers["live"] else None)
    return Response(Health(status="ok", database="ok", schema_revision=revision, workers=live).model_dump_json(),
                    media_type="application/json")


async def tasks(request: Request) -> Response:
    out = TaskList(tasks=[TaskOut(name=t.name, queue=t.queue, priority=PRIORITY_NAMES[priority_value(t.priority)],
                                  max_attempts=t.max_attempts, timeout=t.timeout, args_schema=t.json_schema())
                          for t in api(request).registry])
    return Response(out.model_dump_json(), media_type="application/json")


async def openapi(request: Request) -> Response:
    state = api(request)
    return JSONResponse(spec(state.settings, state.registry))
