"""/jobs: submit (one or many), inspect, list, cancel, retry."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from skiplock.enqueue import JobSpec
from skiplock.errors import IdempotencyConflict, InvalidInput

from .bodies import read_json, validate
from .context import api, query_int, request_id
from .schemas import BulkIn, BulkOut, FailIn, HistoryEntry, JobDetail, JobIn, JobOut, JobPage, ResumeIn


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json", headers=headers)


HEADER_KEY_RE = re.compile(r"^[!-~]([ -~]{0,253}[!-~])?$")
"""An Idempotency-Key header: 1-255 printable ASCII characters (HTTP trims spaces at the ends)."""


def _spec(body: JobIn, key: str | None) -> JobSpec:
    return JobSpec(task=body.task, args=body.args, queue=body.queue, priority=body.priority, run_at=body.run_at,
                   delay=body.delay, max_attempts=body.max_attempts, timeout=body.timeout, idempotency_key=key,
                   batch_id=body.batch_id, depends_on=body.depends_on)


async def submit(request: Request) -> Response:
    """POST /jobs: 201 new job; 200 the same job for a repeated Idempotency-Key; 409 if the
    key was used for a different job."""
    state = api(request)
    body = validate(JobIn, await read_json(request, state.settings.max_body_bytes))
    header_key = request.headers.get("idempotency-key")
    if header_key is not None and not HEADER_KEY_RE.fullmatch(header_key):
        raise InvalidInput("the Idempotency-Key header must be 1-255 printable ASCII characters",
                           field="Idempotency-Key")
    if header_key is not None and body.idempotency_key is not None and header_key != body.idempotency_key:
        raise InvalidInput("the Idempotency-Key header and the idempotency_key field differ",
                           field="idempotency_key")
    key = header_key if header_key is not None else body.idempotency_key
    job = await state.submit_one(_spec(body, key), correlation_id=request_id(request))
    out = JobOut.from_row(job.row)
    return _json(out, 201 if job.created else 200, {"Location": f"/jobs/{out.id}"})


async def submit_bulk(request: Request) -> Response:
    """POST /jobs/bulk: all jobs in one transaction, or none (422 or 409 names the bad index).
    Idempotency keys follow the rule of POST /jobs, item by item."""
    state = api(request)
    try:
        data = await read_json(request, state.settings.max_body_bytes)
        limit = state.settings.max_bulk_jobs
        if isinstance(data, dict) and isinstance(data.get("jobs"), list) and len(data["jobs"]) > limit:
            raise InvalidInput(f"at most {limit} jobs per request, got {len(data['jobs'])}", field="jobs",
                               details={"limit": limit})
        body = validate(BulkIn, data)
        jobs = await state.ops.submit([_spec(j, j.idempotency_key) for j in body.jobs],
                                      correlation_id=request_id(request), json_args=True)
    except (InvalidInput, IdempotencyConflict) as exc:
        index = re.match(r"^jobs\.([0-9]+)(\.|$)", exc.details.get("field") or "")
        if index:  # the body's path names a job: say which, as the engine's refusals do
            exc.details["index"] = int(index[1])
        exc.details.setdefault("index", 0)  # a bulk of one names its index too
        raise
    out = BulkOut(ids=[j.id for j in jobs], created=sum(1 for j in jobs if j.created))
    return _json(out, 201)


async def get_job(request: Request) -> Response:
    job = await api(request).ops.get_job(request.path_params["job_id"])
    history = [HistoryEntry(**h) for h in job["history"]]
    return _json(JobDetail(**JobOut.from_row(job).model_dump(), history=history))


async def list_jobs(request: Request) -> Response:
    """GET /jobs: newest first; `next_cursor` continues with older jobs."""
    p = request.query_params
    unknown = sorted(set(p) - {"queue", "state", "task", "batch", "limit", "cursor"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    page = await api(request).ops.list_jobs(queue=p.get("queue"), state=p.get("state"), task=p.get("task"),
                                            batch=p.get("batch"), limit=query_int(p, "limit", 50),
                                            cursor=p.get("cursor"))
    return _json(JobPage(jobs=[JobOut.from_row(r) for r in page.jobs], next_cursor=page.next_cursor))


async def cancel(request: Request) -> Response:
    """POST /jobs/{id}/cancel: waiting, queued or running → cancelled; 409 otherwise."""
    job = await api(request).ops.cancel(request.path_params["job_id"], correlation_id=request_id(request))
    return _json(JobOut.from_row(job))


async def resume(request: Request) -> Response:
    """POST /jobs/{id}/resume: a parked job back in its queue; {"data": ...} is what its next
    attempt receives as ctx.review. 409 for a job that is not parked."""
    body = validate(ResumeIn, await read_json(request, api(request).settings.max_body_bytes))
    job = await api(request).ops.resume(request.path_params["job_id"], body.data, correlation_id=request_id(request))
    return _json(JobOut.from_row(job))


async def fail(request: Request) -> Response:
    """POST /jobs/{id}/fail: a parked job failed for good; {"reason": ...} is its last error."""
    body = validate(FailIn, await read_json(request, api(request).settings.max_body_bytes))
    job = await api(request).ops.fail(request.path_params["job_id"], body.reason, correlation_id=request_id(request))
    return _json(JobOut.from_row(job))


async def retry(request: Request) -> Response:
    """POST /jobs/{id}/retry: failed or cancelled → queued (or waiting) with fresh attempts; 409 otherwise."""
    job = await api(request).ops.retry(request.path_params["job_id"], correlation_id=request_id(request))
    return _json(JobOut.from_row(job))
