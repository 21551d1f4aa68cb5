"""/batches: create a batch with its jobs, watch its progress, list its jobs, cancel, retry,
seal an open one."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from skiplock.enqueue import JobSpec
from skiplock.errors import IdempotencyConflict, InvalidInput

from .bodies import read_json, validate
from .context import api, query_int, request_id
from .schemas import (
    BatchCancelled,
    BatchCreated,
    BatchDetail,
    BatchIn,
    BatchJobIn,
    BatchOut,
    BatchPage,
    BatchRetried,
    CompletionIn,
    JobOut,
    JobPage,
)


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json", headers=headers)


def _spec(body: BatchJobIn) -> JobSpec:
    return JobSpec(task=body.task, args=body.args, queue=body.queue, priority=body.priority, run_at=body.run_at,
                   delay=body.delay, max_attempts=body.max_attempts, timeout=body.timeout)


def _completion(body: CompletionIn) -> JobSpec:
    return JobSpec(task=body.task, args=body.args, queue=body.queue, priority=body.priority,
                   max_attempts=body.max_attempts, timeout=body.timeout)


def _detail(row: dict[str, Any], model: type[BatchDetail] = BatchDetail) -> BatchDetail:
    job = row["completion_job"]
    return model.model_validate({**row, "completion_job": JobOut.from_row(job) if job is not None else None})


async def create(request: Request) -> Response:
    """POST /batches: the batch and its jobs in one transaction (all or none; 422 names the
    bad job's index), sealed unless "seal": false."""
    state = api(request)
    try:
        data = await read_json(request, state.settings.max_body_bytes)
        limit = state.settings.max_bulk_jobs
        if isinstance(data, dict) and isinstance(data.get("jobs"), list) and len(data["jobs"]) > limit:
            raise InvalidInput(f"at most {limit} jobs per request, got {len(data['jobs'])}", field="jobs",
                               details={"limit": limit})
        body = validate(BatchIn, data)
        row = await state.ops.submit_batch([_spec(j) for j in body.jobs],
                                           on_complete=_completion(body.on_complete) if body.on_complete else None,
                                           seal=body.seal, correlation_id=request_id(request), json_args=True)
    except (InvalidInput, IdempotencyConflict) as exc:
        index = re.match(r"^jobs\.([0-9]+)(\.|$)", exc.details.get("field") or "")
        if index:  # the body's path names a job: say which, as the engine's refusals do
            exc.details["index"] = int(index[1])
        raise
    out = BatchCreated.model_validate(row)
    return _json(out, 201, {"Location": f"/batches/{out.id}"})


async def list_batches(request: Request) -> Response:
    """GET /batches: newest first; `next_cursor` continues with older batches."""
    p = request.query_params
    unknown = sorted(set(p) - {"state", "limit", "cursor"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    page = await api(request).ops.list_batches(state=p.get("state"), limit=query_int(p, "limit", 50),
                                               cursor=p.get("cursor"))
    return _json(BatchPage(batches=[BatchOut.model_validate(r) for r in page.batches], next_cursor=page.next_cursor))


async def get_batch(request: Request) -> Response:
    """GET /batches/{id}: counts, percent, state, times and the completion job."""
    return _json(_detail(await api(request).ops.get_batch(request.path_params["id"])))


async def list_jobs(request: Request) -> Response:
    """GET /batches/{id}/jobs: the batch's jobs, newest first (as GET /jobs?batch=)."""
    p = request.query_params
    unknown = sorted(set(p) - {"state", "limit", "cursor"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    page = await api(request).ops.batch_jobs(request.path_params["id"], state=p.get("state"),
                                             limit=query_int(p, "limit", 50), cursor=p.get("cursor"))
    return _json(JobPage(jobs=[JobOut.from_row(r) for r in page.jobs], next_cursor=page.next_cursor))


async def cancel(request: Request) -> Response:
    """POST /batches/{id}/cancel: its queued and running jobs are cancelled, and it is sealed."""
    row = await api(request).ops.cancel_batch(request.path_params["id"], correlation_id=request_id(request))
    return _json(_detail(row, BatchCancelled))


async def retry(request: Request) -> Response:
    """POST /batches/{id}/retry: its failed jobs go back to their queues."""
    row = await api(request).ops.retry_batch(request.path_params["id"], correlation_id=request_id(request))
    return _json(_detail(row, BatchRetried))


async def seal(request: Request) -> Response:
    """POST /batches/{id}/seal: no more jobs join it; it completes once they have ended."""
    return _json(_detail(await api(request).ops.seal_batch(request.path_params["id"])))
