"""/jobs: submit (one or many), inspect, list, cancel, retry."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections import Counter
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from skiplock import admin, db
from skiplock.enqueue import Enqueued, JobSpec, check_repeat, enqueue_many
from skiplock.errors import IdempotencyConflict, InvalidArguments, InvalidInput, JobNotFound, QueueFull
from skiplock.job import STATES, check_queue, check_task_name
from skiplock.tasks import Task

from .bodies import read_json, validate
from .context import api, request_id
from .schemas import BulkIn, BulkOut, HistoryEntry, JobDetail, JobIn, JobOut, JobPage


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json", headers=headers)


HEADER_KEY_RE = re.compile(r"^[!-~]([ -~]{0,253}[!-~])?$")
"""An Idempotency-Key header: 1-255 printable ASCII characters (HTTP trims spaces at the ends)."""


def _integral_as_int(value: Any) -> Any:
    """JSON Schema's integer includes 7.0: a copy with such floats as ints, for the check only."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_as_int(v) for v in value]
    return value


def check_args(t: Task, args: dict[str, Any]) -> None:
    """The arguments checked against the task as JSON, strictly: `true` or `"7"` is not a
    number, `7` is not a string (the task's own validation, which stores them, would convert).
    Depth is bounded by bodies.MAX_DEPTH, so the copy may recurse."""
    try:
        t.model.model_validate_json(json.dumps(_integral_as_int(args)), strict=True)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(x) for x in ("args", *e["loc"])), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        raise InvalidArguments(f"invalid arguments for task {t.name!r}: {first['field']}: {first['message']}",
                               field=first["field"], details={"errors": errors}) from None


def _spec(body: JobIn, key: str | None) -> JobSpec:
    return JobSpec(task=body.task, args=body.args, queue=body.queue, priority=body.priority, run_at=body.run_at,
                   delay=body.delay, max_attempts=body.max_attempts, timeout=body.timeout, idempotency_key=key,
                   batch_id=body.batch_id)


async def submit(request: Request) -> Response:
    """POST /jobs: 201 new job; 200 the same job for a repeated Idempotency-Key; 409 if the
    key was used for a different job (skiplock.enqueue decides which)."""
    state = api(request)
    body = validate(JobIn, await read_json(request, state.settings.max_body_bytes))
    header_key = request.headers.get("idempotency-key")
    if header_key is not None and not HEADER_KEY_RE.match(header_key):
        raise InvalidInput("the Idempotency-Key header must be 1-255 printable ASCII characters",
                           field="Idempotency-Key")
    if header_key is not None and body.idempotency_key is not None and header_key != body.idempotency_key:
        raise InvalidInput("the Idempotency-Key header and the idempotency_key field differ",
                           field="idempotency_key")
    key = header_key if header_key is not None else body.idempotency_key
    t = state.registry.get(body.task)
    check_args(t, body.args)
    queue = body.queue or t.queue
    async with state.connection() as conn:
        try:
            async with state.reserve(conn, {queue: 1}):
                [job] = await enqueue_many(conn, [_spec(body, key)], registry=state.registry,
                                           max_args_bytes=state.settings.max_args_bytes,
                                           correlation_id=request_id(request), defer_notify=True)
            if job.created:
                state.wakeups.touch([job.row["queue"]])  # committed: wake sleeping workers
        except QueueFull:
            # A client repeating a request whose answer it lost gets its job back (or a 409),
            # not a 429: the job it asks for is already stored and needs no room.
            existing = await admin.find_by_idempotency_key(conn, queue, key) if key is not None else None
            if existing is None:
                raise
            check_repeat(_spec(body, key), existing, registry=state.registry,
                         max_args_bytes=state.settings.max_args_bytes)
            job = Enqueued(existing, False)
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
    except InvalidInput as exc:
        index = re.match(r"^jobs\.([0-9]+)(\.|$)", exc.details.get("field", ""))
        if index:  # the path names a job: say which, as the other refusals of a bulk do
            exc.details["index"] = int(index[1])
        raise
    queues: Counter[str] = Counter()
    for i, j in enumerate(body.jobs):
        try:
            t = state.registry.get(j.task)
        except InvalidInput as exc:
            exc.details.update(index=i, field=f"jobs.{i}.task")
            raise
        try:
            check_args(t, j.args)
        except InvalidInput as exc:
            exc.details["index"] = i
            exc.message = f"job {i}: {exc.message}"
            raise
        queues[j.queue or t.queue] += 1
    async with state.connection() as conn:
        try:
            async with state.reserve(conn, dict(queues)):
                jobs: list[Enqueued] = await enqueue_many(
                    conn, [_spec(j, j.idempotency_key) for j in body.jobs], registry=state.registry,
                    max_args_bytes=state.settings.max_args_bytes, correlation_id=request_id(request),
                    defer_notify=True)
            state.wakeups.touch({j.row["queue"] for j in jobs if j.created})
        except (InvalidInput, IdempotencyConflict) as exc:
            exc.details.setdefault("index", 0)  # a bulk of one names its index too
            raise
    out = BulkOut(ids=[j.id for j in jobs], created=sum(1 for j in jobs if j.created))
    return _json(out, 201)


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidInput(f"{raw!r} is not a job id (a UUID)", field="id") from None


async def get_job(request: Request) -> Response:
    if request.path_params["job_id"] == "bulk":  # the path of POST /jobs/bulk, not a job
        raise HTTPException(405)
    state = api(request)
    job_id = _job_id(request.path_params["job_id"])
    async with state.connection() as conn:
        row = await db.get_job(conn, job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id}", field="id")
        history = await db.get_history(conn, job_id)
    out = JobDetail(**JobOut.from_row(row).model_dump(), history=[HistoryEntry(**h) for h in history])
    return _json(out)


def _cursor_encode(job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
"""A cursor is a job id in unpadded URL-safe base64 (22 characters): base64 decoders skip
other characters, so anything else is refused before decoding."""

LIMIT_RE = re.compile(r"^[0-9]{1,3}$")
"""`limit` in plain ASCII digits (int() would also take "+5", " 5", "1_0" and other scripts' digits)."""


def _cursor_decode(raw: str) -> uuid.UUID:
    try:
        if not CURSOR_RE.match(raw):
            raise ValueError(raw)
        return uuid.UUID(bytes=base64.urlsafe_b64decode(raw + "=="))
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor is not one this API returned", field="cursor") from None


async def list_jobs(request: Request) -> Response:
    """GET /jobs: newest first; `next_cursor` continues with older jobs (keyset on the
    time-ordered id, so inserts during paging never shift or repeat a page)."""
    p = request.query_params
    unknown = set(p) - {"queue", "state", "task", "batch", "limit", "cursor"}
    if unknown:
        raise InvalidInput(f"unknown query parameter {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    state_filter = p.get("state")
    if state_filter is not None and state_filter not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}", field="state", value=state_filter)
    limit = int(p.get("limit", "50")) if LIMIT_RE.match(p.get("limit", "50")) else 0
    if not 1 <= limit <= 500:
        raise InvalidInput("limit must be an integer from 1 to 500", field="limit")
    queue = check_queue(p["queue"]) if "queue" in p else None
    task = check_task_name(p["task"]) if "task" in p else None
    batch = None
    if "batch" in p:
        try:
            batch = uuid.UUID(p["batch"])
        except ValueError:
            raise InvalidInput("batch must be a UUID", field="batch") from None
    before = _cursor_decode(p["cursor"]) if "cursor" in p else None
    async with api(request).connection() as conn:
        rows = await admin.list_jobs(conn, queue=queue, state=state_filter, task=task, batch_id=batch,
                                     before=before, limit=limit + 1)
    jobs = [JobOut.from_row(r) for r in rows[:limit]]
    next_cursor = _cursor_encode(jobs[-1].id) if len(rows) > limit else None
    return _json(JobPage(jobs=jobs, next_cursor=next_cursor))


async def _transition(request: Request, action: Any) -> Response:
    state = api(request)
    job_id = _job_id(request.path_params["job_id"])
    async with state.connection() as conn:
        async with conn.transaction():
            await db.set_correlation_id(conn, request_id(request))
            await action(conn, job_id)
        row = await db.get_job(conn, job_id)
    assert row is not None
    return _json(JobOut.from_row(row))


async def cancel(request: Request) -> Response:
    """POST /jobs/{id}/cancel: queued or running → cancelled; 409 otherwise."""
    return await _transition(request, db.cancel_job)


async def retry(request: Request) -> Response:
    """POST /jobs/{id}/retry: failed or cancelled → queued with fresh attempts; 409 otherwise."""
    return await _transition(request, db.retry_job)
