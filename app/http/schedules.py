"""/schedules: cron schedules with their next run; pause and resume one."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from skiplock.errors import InvalidInput

from .context import api
from .schemas import ScheduleList, ScheduleOut


def _json(model: ScheduleList | ScheduleOut) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def list_schedules(request: Request) -> Response:
    """GET /schedules: every schedule in name order (there are few: no paging)."""
    unknown = sorted(request.query_params)
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    rows = await api(request).ops.schedules()
    return _json(ScheduleList(schedules=[ScheduleOut(**r) for r in rows]))


async def pause(request: Request) -> Response:
    """POST /schedules/{name}/pause: no job is enqueued for it until it is resumed."""
    return _json(ScheduleOut(**await api(request).ops.pause_schedule(request.path_params["name"])))


async def resume(request: Request) -> Response:
    """POST /schedules/{name}/resume: ticks count again from now (none missed meanwhile is enqueued)."""
    return _json(ScheduleOut(**await api(request).ops.resume_schedule(request.path_params["name"])))
