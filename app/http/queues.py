"""/queues: counts, throughput and age, a page at a time; pause, resume, the waiting-jobs
limit, and deleting an empty queue.

A queue exists while jobs name it or it has settings: pausing or limiting a queue before its
first job arrives is how one is prepared, so any valid name may be configured. What bounds
that is the listing's paging and DELETE /queues/{name}."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from skiplock import admin, db
from skiplock.errors import InvalidInput
from skiplock.job import check_queue

from .bodies import read_json, validate
from .context import api
from .schemas import QueueLimits, QueueList, QueueOut, QueueState

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


class QueuePage(QueueList):
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page (queues in name order); "
                                                "null at the end")


def _json(model: QueuePage | QueueState) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def list_queues(request: Request) -> Response:
    """GET /queues?limit=&cursor=: queues in name order; the cursor is the last name of the
    previous page, so queues created or deleted meanwhile never shift a page."""
    p = request.query_params
    unknown = sorted(set(p) - {"limit", "cursor"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    try:
        limit = int(p.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    after = check_queue(p["cursor"], field="cursor") if "cursor" in p else None
    async with api(request).connection() as conn:
        rows = await admin.queue_page(conn, after=after, limit=limit + 1)
    queues = [QueueOut(**r) for r in rows[:limit]]
    next_cursor = queues[-1].queue if len(rows) > limit else None
    return _json(QueuePage(queues=queues, next_cursor=next_cursor))


async def _set_paused(request: Request, paused: bool) -> Response:
    name = check_queue(request.path_params["name"], field="name")
    async with api(request).connection() as conn:
        row = await db.set_paused(conn, name, paused)
    assert row is not None
    return _json(QueueState(**row))


async def pause(request: Request) -> Response:
    """POST /queues/{name}/pause: workers stop claiming from it; it still accepts jobs."""
    return await _set_paused(request, True)


async def resume(request: Request) -> Response:
    return await _set_paused(request, False)


async def set_limits(request: Request) -> Response:
    """PUT /queues/{name}: {"max_waiting": N | null}; beyond N waiting jobs POST /jobs answers 429."""
    state = api(request)
    name = check_queue(request.path_params["name"], field="name")
    body = validate(QueueLimits, await read_json(request, state.settings.max_body_bytes))
    async with state.connection() as conn:
        row = await admin.set_max_waiting(conn, name, body.max_waiting)
    state.forget_limits()
    assert row is not None
    return _json(QueueState(**row))


async def delete(request: Request) -> Response:
    """DELETE /queues/{name}: 204, its settings forgotten; 409 while jobs name it; 404 unknown."""
    state = api(request)
    name = check_queue(request.path_params["name"], field="name")
    async with state.connection() as conn:
        await admin.delete_queue(conn, name)
    state.forget_limits()
    return Response(status_code=204)
