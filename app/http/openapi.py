"""/openapi.json, generated: the route table below names each endpoint's models, statuses and
parameters; every schema comes from the pydantic models in schemas.py."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas as s
from .queues import QueuePage

ERRORS = {
    401: "Missing or wrong bearer token (when SKIPLOCK_API_TOKENS is set)",
    404: "Unknown id or route",
    409: "The job's state forbids this, the idempotency key was used for a different job, or the queue "
         "still has jobs (details.jobs)",
    413: "Request body too large (SKIPLOCK_MAX_BODY_BYTES)",
    422: "Invalid input; details.field names the field at fault (a bulk item also details.index). "
         "Also: JSON nested deeper than 64 levels, NUL characters, run_at outside years 1-9999",
    429: "The queue holds its maximum of waiting jobs (Retry-After); a repeat of an idempotent "
         "submission still gets its job",
    503: "The database is unreachable (Retry-After): the first request of an outage within the pool "
         "timeout (5 s), later ones within about 1 s",
}


def q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
QUEUE = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
               "description": "A repeat with the same body returns the same job (200); a different body 409"}

# (method, path, summary, request model, {status: (model, description)}, error statuses, parameters)
ROUTES: list[tuple[str, str, str, type[BaseModel] | None, dict[int, tuple[type[BaseModel] | None, str]], list[int],
                   list[dict[str, Any]]]] = [
    ("post", "/jobs", "Submit one job", s.JobIn,
     {201: (s.JobOut, "Created"), 200: (s.JobOut, "The job submitted earlier with this idempotency key")},
     [401, 409, 413, 422, 429, 503], [IDEMPOTENCY]),
    ("post", "/jobs/bulk", "Submit many jobs in one transaction", s.BulkIn, {201: (s.BulkOut, "Created")},
     [401, 413, 422, 429, 503], []),
    ("get", "/jobs", "List jobs, newest first", None, {200: (s.JobPage, "A page of jobs")}, [401, 422, 503],
     [q("queue", "Only this queue"), q("state", "Only this state", {"enum": ["queued", "running", "succeeded",
                                                                             "failed", "cancelled"]}),
      q("task", "Only this task"), q("batch", "Only this batch id", {"type": "string", "format": "uuid"}),
      q("limit", "Page size, 1-500 (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
      q("cursor", "next_cursor of the previous page")]),
    ("get", "/jobs/{job_id}", "A job and its history", None, {200: (s.JobDetail, "The job")}, [401, 404, 422, 503],
     [JOB_ID]),
    ("post", "/jobs/{job_id}/cancel", "Cancel a queued or running job", None, {200: (s.JobOut, "Cancelled")},
     [401, 404, 409, 422, 503], [JOB_ID]),
    ("post", "/jobs/{job_id}/retry", "Put a failed or cancelled job back in its queue", None,
     {200: (s.JobOut, "Queued again")}, [401, 404, 409, 422, 503], [JOB_ID]),
    ("get", "/queues", "Queues in name order: counts by state, throughput, oldest waiting age", None,
     {200: (QueuePage, "A page of queues")}, [401, 422, 503],
     [q("limit", "Page size, 1-500 (default 100)", {"type": "integer", "minimum": 1, "maximum": 500}),
      q("cursor", "next_cursor of the previous page")]),
    ("delete", "/queues/{name}", "Delete a queue that no job names (forgets its settings)", None,
     {204: (None, "Deleted")}, [401, 404, 409, 422, 503], [QUEUE]),
    ("put", "/queues/{name}", "Set a queue's waiting-jobs limit", s.QueueLimits, {200: (s.QueueState, "Updated")},
     [401, 413, 422, 503], [QUEUE]),
    ("post", "/queues/{name}/pause", "Pause a queue (it still accepts jobs)", None,
     {200: (s.QueueState, "Paused")}, [401, 422, 503], [QUEUE]),
    ("post", "/queues/{name}/resume", "Resume a paused queue", None, {200: (s.QueueState, "Resumed")},
     [401, 422, 503], [QUEUE]),
    ("get", "/tasks", "Registered tasks and their argument JSON schema", None, {200: (s.TaskList, "Tasks")},
     [401], []),
    ("get", "/health", "200 when the database answers at the expected schema revision", None,
     {200: (s.Health, "Healthy")}, [503], []),
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@cache
def spec() -> dict[str, Any]:
    models: set[type[BaseModel]] = {s.ErrorBody}
    for _, _, _, req, ok, _, _ in ROUTES:
        if req is not None:
            models.add(req)
        models.update(m for m, _ in ok.values() if m is not None)
    _, top = models_json_schema([(m, "validation" if m in (s.JobIn, s.BulkIn, s.QueueLimits) else "serialization")
                                 for m in sorted(models, key=lambda m: m.__name__)],
                                ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, req, ok, errors, params in ROUTES:
        op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {}}
        if req is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(req)}}}
        for status, (model, description) in ok.items():
            op["responses"][str(status)] = {"description": description} if model is None else {
                "description": description, "content": {"application/json": {"schema": _ref(model)}}}
        for status in errors:
            op["responses"][str(status)] = {"description": ERRORS[status],
                                            "content": {"application/json": {"schema": _ref(s.ErrorBody)}}}
        if path != "/health":
            op["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Skiplock", "version": "1", "description": "A job queue that lives in PostgreSQL"},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
