"""/queues: counts, throughput and age, a page at a time; pause, resume, the limits (waiting
jobs, running jobs, per key, rate), and deleting an empty queue.

A queue exists while jobs name it or it has settings: pausing or limiting a queue before its
first job arrives is how one is prepared, so any valid name may be configured. What bounds
that is the listing's paging and DELETE /queues/{name}."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from skiplock.errors import InvalidInput
from skiplock.job import check_queue

from .bodies import read_json, validate
from .context import api, query_int
from .schemas import FlowLimits, PerKey, QueueLimits, QueueOut, QueuePage, QueueState, Rate

DEFAULT_LIMIT = 100


def _json(model: QueuePage | QueueState) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def list_queues(request: Request) -> Response:
    """GET /queues?limit=&cursor=: queues in name order, a page at a time."""
    p = request.query_params
    unknown = sorted(set(p) - {"limit", "cursor"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    page = await api(request).ops.queues(limit=query_int(p, "limit", DEFAULT_LIMIT), cursor=p.get("cursor"))
    return _json(QueuePage(queues=[QueueOut(**FlowLimits.nested(r)) for r in page.queues],
                           next_cursor=page.next_cursor))


async def pause(request: Request) -> Response:
    """POST /queues/{name}/pause: workers stop claiming from it; it still accepts jobs."""
    return _json(QueueState(**FlowLimits.nested(await api(request).ops.pause_queue(request.path_params["name"]))))


async def resume(request: Request) -> Response:
    return _json(QueueState(**FlowLimits.nested(await api(request).ops.resume_queue(request.path_params["name"]))))


async def set_limits(request: Request) -> Response:
    """PUT /queues/{name}: {"max_waiting", "max_running", "per_key", "rate"}, each optional (left
    out: unchanged; null: no limit). Workers apply it within 2 s."""
    state = api(request)
    name = check_queue(request.path_params["name"], field="name")
    body = validate(QueueLimits, await read_json(request, state.settings.max_body_bytes))
    given: dict[str, Any] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if isinstance(value, PerKey):
            value = (value.arg, value.max_running)
        elif isinstance(value, Rate):
            value = (value.limit, value.period)
        given[field] = value
    row = await state.ops.set_queue_limits(name, **given)
    return _json(QueueState(**FlowLimits.nested(row)))


async def delete(request: Request) -> Response:
    """DELETE /queues/{name}: 204, its settings forgotten; 409 while jobs name it; 404 unknown."""
    state = api(request)
    await state.ops.delete_queue(request.path_params["name"])
    return Response(status_code=204)
