"""/queues: counts, throughput and age; pause, resume, and the waiting-jobs limit."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from skiplock import admin, db
from skiplock.job import check_queue

from .bodies import read_json, validate
from .context import api
from .schemas import QueueLimits, QueueList, QueueOut, QueueState


def _json(model: QueueList | QueueState) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def list_queues(request: Request) -> Response:
    async with api(request).connection() as conn:
        rows = await admin.queue_overview(conn)
    return _json(QueueList(queues=[QueueOut(**r) for r in rows]))


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
