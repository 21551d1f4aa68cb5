"""The dashboard's pages: overview (queues, workers, charts), the job list, a job's page."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from skiplock.batches import BATCH_STATES
from skiplock.errors import InvalidInput
from skiplock.job import PRIORITY_NAMES, STATES
from skiplock.ops import encode_cursor

from .charts import chart
from .web import HEADERS, Viewer, api, dashboard, page, view

FILTERS = ("queue", "state", "task", "batch", "since", "until", "q")


@view("read")
async def overview(request: Request, v: Viewer) -> Response:
    ops = api(request).ops
    queues = (await ops.queues(limit=500)).queues
    workers = await ops.workers()
    minutes, hours = await dashboard(request).charts.get(ops)
    return page(request, v, "overview.html", queues=queues, workers=workers,
                charts=[chart("Jobs finished per minute, last hour", minutes, "%H:%M"),
                        chart("Jobs finished per hour, last day", hours, "%d %H:00")])


def _moment(params: Any, name: str) -> datetime | None:
    """A time from a form field (datetime-local, read as UTC), or None when empty."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time (YYYY-MM-DDTHH:MM), not {raw[:40]!r}",
                           field=name) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@view("read")
async def jobs(request: Request, v: Viewer) -> Response:
    p = request.query_params
    given = {k: p[k].strip() for k in FILTERS if p.get(k, "").strip()}
    text = given.get("q")
    if text is not None:
        try:  # a job id: its page
            return RedirectResponse(f"/ui/jobs/{uuid.UUID(text)}", status_code=303, headers=HEADERS)
        except ValueError:
            pass
    found = await api(request).ops.search_jobs(
        queue=given.get("queue"), state=given.get("state"), task=given.get("task"), batch=given.get("batch"),
        text=text, since=_moment(p, "since"), until=_moment(p, "until"), cursor=p.get("cursor") or None, limit=50)
    older = None
    if found.next_before is not None:
        older = "/ui/jobs?" + urlencode({**given, "cursor": encode_cursor(found.next_before)})
    # Suggestions from the registry only: every queue name in the table would cost a scan.
    queues = sorted({t.queue for t in api(request).registry})
    tasks = sorted({t.name for t in api(request).registry})
    return page(request, v, "jobs.html", jobs=found.jobs, older=older, short=found.short, f=given,
                queues=queues, tasks=tasks, states=STATES, paged="cursor" in p)


def _pretty(value: Any) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True, default=str)


@view("read")
async def job(request: Request, v: Viewer) -> Response:
    row = await api(request).ops.get_job(request.path_params["job_id"])
    errors = [h for h in row["history"] if h["error"]]
    progress = row["progress"] if isinstance(row["progress"], dict) else None
    return page(request, v, "job.html", job=row, priority=PRIORITY_NAMES.get(row["priority"], row["priority"]),
                args=_pretty(row["args"]), result=_pretty(row["result"]), checkpoint=_pretty(row["checkpoint"]),
                progress=progress, errors=errors,
                parked_data=_pretty((row["parked"] or {}).get("data")), review=_pretty(row["review"]),
                parked_at=datetime.fromisoformat(row["parked"]["at"]) if row["parked"] else None)


@view("read")
async def batches(request: Request, v: Viewer) -> Response:
    p = request.query_params
    state = p.get("state") or None
    found = await api(request).ops.list_batches(state=state, cursor=p.get("cursor") or None, limit=50)
    older = None
    if found.next_cursor is not None:
        older = "/ui/batches?" + urlencode({**({"state": state} if state else {}), "cursor": found.next_cursor})
    return page(request, v, "batches.html", batches=found.batches, older=older, state=state, states=BATCH_STATES)


@view("read")
async def batch(request: Request, v: Viewer) -> Response:
    ops = api(request).ops
    row = await ops.get_batch(request.path_params["batch_id"])
    jobs = (await ops.batch_jobs(row["id"], limit=50)).jobs
    return page(request, v, "batch.html", b=row, jobs=jobs)
