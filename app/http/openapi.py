"""/openapi.json, generated: the route table below names each endpoint's models, statuses and
parameters; every schema comes from the pydantic models in schemas.py and the registered
tasks' argument models. It states every rule the server checks, so that a request the
description allows is one the server accepts (a fuzzer checks both ways: make test, make fuzz).

Rules JSON Schema cannot say (the Idempotency-Key header against the body's idempotency_key,
the args size in stored bytes, the count of JSON values per body) are in the descriptions."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from app.settings import Settings
from skiplock.batches import BATCH_STATES
from skiplock.job import QUEUE_RE, STATES, TASK_RE
from skiplock.tasks import TaskRegistry

from . import bodies
from . import schemas as s

REF = "#/components/schemas/{model}"
NO_NUL = s.NO_NUL
JSON_VALUE = "JsonValue"

ERRORS = {
    400: "A header that may appear once appears twice (Host, Authorization, Content-Length, Content-Type, "
         "Idempotency-Key, ...)",
    401: "Missing or wrong bearer token (when SKIPLOCK_API_TOKENS is set)",
    404: "Unknown id (job or batch), schedule or route",
    405: "Method not allowed on this path (the Allow header lists the allowed ones)",
    403: "A state change sent from another origin (Origin or Sec-Fetch-Site: cross-site), or the token's role "
         "(read, submit, admin) may not make this request",
    408: "The request's head or body did not arrive in time (SKIPLOCK_HEADER_TIMEOUT, SKIPLOCK_BODY_TIMEOUT)",
    409: "The job's state forbids this, the idempotency key was used for a different job "
         "(details.job_id; in a bulk also details.index), the queue still has jobs (details.jobs), or the "
         "job names a sealed batch (code batch_sealed)",
    413: "Request body over the size limit (SKIPLOCK_MAX_BODY_BYTES)",
    415: "The request body is not sent as Content-Type: application/json",
    421: "The Host header names a host this server does not answer to (SKIPLOCK_ALLOWED_HOSTS)",
    422: "Invalid input; details.field names the field at fault (a bulk item also details.index). "
         "Also refused anywhere in a body: duplicate keys in an object, NUL characters, lone UTF-16 "
         "surrogates, numbers beyond +-1.8e308, nesting deeper than 64 levels, more JSON items "
         "(values and keys) than the limit below",
    431: "The request line and headers are over SKIPLOCK_MAX_HEADER_BYTES",
    429: "The queue holds its maximum of waiting jobs, or the token is over its request rate (Retry-After: "
         "seconds until a request is served); a repeat of an idempotent submission still gets its job",
    503: "The database is unreachable (Retry-After): the first request of an outage within the pool "
         "timeout (5 s), later ones within about 1 s",
}
RETRY_AFTER = (429, 503)


def header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


REQUEST_ID_OUT = header("The request's X-Request-ID if it was valid, else a generated id")


def q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
QUEUE = {"name": "name", "in": "path", "required": True, "description": "Queue name",
         "schema": {"type": "string", "pattern": QUEUE_RE.pattern}}
SCHEDULE = {"name": "name", "in": "path", "required": True, "description": "Schedule name",
            "schema": {"type": "string", "pattern": TASK_RE.pattern}}
# Named `id`, not `batch_id`: a job's batch_id (null for most jobs) is not a link to a batch.
BATCH_ID = {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid",
                       "pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"}}
PRINTABLE_255 = r"^[!-~]([ -~]{0,253}[!-~])?$"
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "description": "A repeat with the same job returns that job (200); a different job 409. Same as "
                              "the body's idempotency_key: give one or the other, or both equal (else 422). "
                              "1-255 characters, no NUL; HTTP trims spaces at either end",
               "schema": {"type": "string", "pattern": PRINTABLE_255}}
REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False,
              "description": "Correlation id echoed in the response and stored in the job's history. Kept when it "
                             "is 1-200 characters from A-Z a-z 0-9 . _ : / + = -; otherwise replaced by a "
                             "generated id (never refused)",
              "schema": {"type": "string"}}


@dataclass
class Op:
    """One operation: the route table's row."""

    method: str
    path: str
    summary: str
    ok: dict[int, tuple[type[BaseModel] | None, str]]  # None: no body (204)
    errors: list[int]
    body: type[BaseModel] | None = None
    params: list[dict[str, Any]] = field(default_factory=list)
    ok_headers: dict[str, dict[str, Any]] = field(default_factory=dict)


LOCATION = {"Location": header("/jobs/{id} of the job")}

ROUTES: list[Op] = [
    Op("post", "/jobs", "Submit one job", {201: (s.JobOut, "Created"),
                                           200: (s.JobOut, "The job submitted earlier with this idempotency key")},
       [401, 409, 413, 415, 422, 429, 503], s.JobIn, [IDEMPOTENCY], LOCATION),
    Op("post", "/jobs/bulk", "Submit many jobs in one transaction: all or none", {201: (s.BulkOut, "Created")},
       [401, 409, 413, 415, 422, 429, 503], s.BulkIn),
    Op("get", "/jobs", "List jobs, newest first", {200: (s.JobPage, "A page of jobs")}, [401, 422, 503],
       params=[q("queue", "Only this queue", {"type": "string", "pattern": QUEUE_RE.pattern}),
               q("state", "Only this state", {"type": "string", "enum": list(STATES)}),
               q("task", "Only this task (any task name; unknown ones match nothing)",
                 {"type": "string", "pattern": TASK_RE.pattern}),
               q("batch", "Only this batch id", {"type": "string", "format": "uuid"}),
               q("limit", "Page size (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
               q("cursor", "next_cursor of the previous page", {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"})]),
    Op("get", "/jobs/{job_id}", "A job and its history", {200: (s.JobDetail, "The job")}, [401, 404, 422, 503],
       params=[JOB_ID]),
    Op("post", "/jobs/{job_id}/cancel", "Cancel a waiting, queued or running job", {200: (s.JobOut, "Cancelled")},
       [401, 404, 409, 422, 503], params=[JOB_ID]),
    Op("post", "/jobs/{job_id}/retry", "Put a failed or cancelled job back in its queue (or waiting again, "
       "for a job whose dependencies have not all succeeded; 409 while one is failed or cancelled)",
       {200: (s.JobOut, "Queued (or waiting) again")}, [401, 404, 409, 422, 503], params=[JOB_ID]),
    Op("post", "/jobs/{job_id}/resume", "Resume a parked job: back in its queue; its next attempt receives "
       "`data` as ctx.review (409 for a job that is not parked)", {200: (s.JobOut, "Queued again")},
       [401, 404, 409, 413, 415, 422, 503], s.ResumeIn, [JOB_ID]),
    Op("post", "/jobs/{job_id}/fail", "Fail a parked job for good, with `reason` as its last error (409 for a "
       "job that is not parked)", {200: (s.JobOut, "Failed")}, [401, 404, 409, 413, 415, 422, 503], s.FailIn,
       [JOB_ID]),
    Op("post", "/batches", "Create a batch with its jobs in one transaction, and its completion job",
       {201: (s.BatchCreated, "Created")}, [401, 409, 413, 415, 422, 429, 503], s.BatchIn,
       ok_headers={"Location": header("/batches/{id} of the batch")}),
    Op("get", "/batches", "List batches, newest first, with their counts and percent",
       {200: (s.BatchPage, "A page of batches")}, [401, 422, 503],
       params=[q("state", "Only this state", {"type": "string", "enum": list(BATCH_STATES)}),
               q("limit", "Page size (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
               q("cursor", "next_cursor of the previous page", {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"})]),
    Op("get", "/batches/{id}", "A batch: counts, percent, state, times and its completion job",
       {200: (s.BatchDetail, "The batch")}, [401, 404, 422, 503], params=[BATCH_ID]),
    Op("get", "/batches/{id}/jobs", "A batch's jobs, newest first", {200: (s.JobPage, "A page of jobs")},
       [401, 404, 422, 503],
       params=[BATCH_ID, q("state", "Only this state", {"type": "string", "enum": list(STATES)}),
               q("limit", "Page size (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
               q("cursor", "next_cursor of the previous page", {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"})]),
    Op("post", "/batches/{id}/cancel", "Cancel a batch's queued and running jobs, and seal it",
       {200: (s.BatchCancelled, "Cancelled")}, [401, 404, 422, 503], params=[BATCH_ID]),
    Op("post", "/batches/{id}/retry", "Put a batch's failed jobs back in their queues",
       {200: (s.BatchRetried, "Retried")}, [401, 404, 422, 503], params=[BATCH_ID]),
    Op("post", "/batches/{id}/seal", "Seal an open batch: no more jobs join it; it completes when they end",
       {200: (s.BatchDetail, "Sealed")}, [401, 404, 422, 503], params=[BATCH_ID]),
    Op("get", "/queues", "Queues in name order: counts by state, throughput, oldest waiting age",
       {200: (s.QueuePage, "A page of queues")}, [401, 422, 503],
       params=[q("limit", "Page size (default 100)", {"type": "integer", "minimum": 1, "maximum": 500}),
               q("cursor", "next_cursor of the previous page (a queue name)",
                 {"type": "string", "pattern": QUEUE_RE.pattern})]),
    Op("delete", "/queues/{name}", "Delete a queue that no job names (forgets its settings)",
       {204: (None, "Deleted")}, [401, 404, 409, 422, 503], params=[QUEUE]),
    Op("put", "/queues/{name}", "Set a queue's limits (fields left out keep their value; null removes one)",
       {200: (s.QueueState, "Updated")},
       [401, 413, 415, 422, 503], s.QueueLimits, [QUEUE]),
    Op("post", "/queues/{name}/pause", "Pause a queue (it still accepts jobs)", {200: (s.QueueState, "Paused")},
       [401, 422, 503], params=[QUEUE]),
    Op("post", "/queues/{name}/resume", "Resume a paused queue", {200: (s.QueueState, "Resumed")},
       [401, 422, 503], params=[QUEUE]),
    Op("get", "/schedules", "Cron schedules in name order, with their next run",
       {200: (s.ScheduleList, "Schedules")}, [401, 503]),
    Op("post", "/schedules/{name}/pause", "Pause a schedule: no job is enqueued for it until resumed",
       {200: (s.ScheduleOut, "Paused")}, [401, 404, 422, 503], params=[SCHEDULE]),
    Op("post", "/schedules/{name}/resume", "Resume a schedule; ticks missed while paused get no job",
       {200: (s.ScheduleOut, "Resumed")}, [401, 404, 422, 503], params=[SCHEDULE]),
    Op("get", "/tasks", "Registered tasks and their argument JSON schema", {200: (s.TaskList, "Tasks")}, [401]),
    Op("get", "/health", "200 when the database answers at the expected schema revision, with the live workers "
       "(none live is still 200); 503 when the database does not answer in time or is at another revision",
       {200: (s.Health, "Healthy")}, [503]),
    Op("get", "/metrics", "Prometheus text format (text/plain): queue depth, workers and job counters read from the "
       "database, and this process's request counts", {200: (None, "Metrics in Prometheus text format")},
       [401, 503]),
]
OPEN = {"/health"}  # no token needed


class RequestSchema(GenerateJsonSchema):
    """Request schemas that say what PostgreSQL can store: strings and keys without NUL,
    any-JSON values as JsonValue (which says the same at every depth), http(s) URLs as such."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        out = super().str_schema(schema)
        out.setdefault("pattern", NO_NUL)
        return out

    def any_schema(self, schema: core_schema.AnySchema) -> JsonSchemaValue:
        return {"$ref": REF.format(model=JSON_VALUE)}

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        out = super().dict_schema(schema)
        by_key = out.pop("patternProperties", None)  # pydantic's form for a patterned key type
        if by_key is not None:
            [(_, values)] = by_key.items()
            out["additionalProperties"] = values
        out["propertyNames"] = {"pattern": NO_NUL}
        return out

    def url_schema(self, schema: core_schema.UrlSchema) -> JsonSchemaValue:
        out = super().url_schema(schema)
        if set(schema.get("allowed_schemes") or ()) == {"http", "https"}:
            # What HttpUrl takes, narrowed to plain host names: the format `uri` admits any scheme.
            out["pattern"] = r"^https?://[a-z][a-z0-9]{0,30}(\.[a-z][a-z0-9]{0,30}){0,4}(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]*)*$"
        return out


def _storable_keys(schema: Any) -> None:
    """Every object in a request schema says its keys hold no NUL, and what its undeclared
    keys may hold (any storable JSON) where it allows them."""
    if isinstance(schema, list):
        for v in schema:
            _storable_keys(v)
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "object":
        schema.setdefault("propertyNames", {"pattern": NO_NUL})
        if "properties" in schema and schema.get("additionalProperties", True) is True:
            schema["additionalProperties"] = {"$ref": REF.format(model=JSON_VALUE)}
    for v in schema.values():
        _storable_keys(v)


def _json_value() -> dict[str, Any]:
    ref = {"$ref": REF.format(model=JSON_VALUE)}
    return {"description": "Any JSON value PostgreSQL can store: no NUL in strings or keys",
            "anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "number"},
                      {"type": "string", "pattern": NO_NUL},
                      {"type": "array", "items": ref},
                      {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": ref}]}


def _job_variants(defs: dict[str, Any], registry: TaskRegistry, args_refs: dict[str, dict[str, Any]],
                  model: str = "JobIn") -> None:
    """`model` (JobIn, BatchJobIn) becomes one variant per registered task: `task` is that
    name, `args` that task's argument schema (required when the task has required arguments)."""
    base = defs.pop(model)
    variants = []
    for t in registry:
        v = copy.deepcopy(base)
        name = f"{model}_{t.name}"
        v["title"] = name
        v["properties"]["task"] = {"const": t.name, "description": "Registered task name (GET /tasks)"}
        v["properties"]["args"] = {**args_refs[t.name], "description": f"Keyword arguments of {t.name}"}
        required = bool(defs.get(args_refs[t.name]["$ref"].rsplit("/", 1)[1], {}).get("required"))
        v["required"] = ["task", "args"] if required else ["task"]
        defs[name] = v
        variants.append({"$ref": REF.format(model=name)})
    if not variants:  # no task registered: no job can be submitted
        base["properties"]["task"] = {"not": {}}
        defs[f"{model}_none"] = base
        variants.append({"$ref": REF.format(model=f"{model}_none")})
    defs[model] = {"title": model, "description": base.get("description", ""), "oneOf": variants}


def _completion_variants(defs: dict[str, Any], registry: TaskRegistry, args_refs: dict[str, dict[str, Any]]) -> None:
    """CompletionIn becomes one variant per registered task that takes a `batch` argument, its
    args that task's schema without `batch` (the batch adds it when it ends)."""
    base = defs.pop("CompletionIn")
    variants = []
    for t in registry:
        args = copy.deepcopy(defs.get(args_refs[t.name]["$ref"].rsplit("/", 1)[1], {}))
        if "batch" not in args.get("properties", {}):
            continue
        del args["properties"]["batch"]
        args["required"] = [r for r in args.get("required", []) if r != "batch"]
        if not args["required"]:
            del args["required"]
        args["additionalProperties"] = False
        v = copy.deepcopy(base)
        name = f"CompletionIn_{t.name}"
        v["title"] = name
        v["properties"]["task"] = {"const": t.name, "description": "A registered task taking `batch`"}
        v["properties"]["args"] = {**args, "title": f"{t.name} args", "description": f"Keyword arguments of {t.name} "
                                   "but batch"}
        v["required"] = ["task", "args"] if args.get("required") else ["task"]
        defs[name] = v
        variants.append({"$ref": REF.format(model=name)})
    if not variants:
        base["properties"]["task"] = {"not": {}}
        defs["CompletionIn_none"] = base
        variants.append({"$ref": REF.format(model="CompletionIn_none")})
    defs["CompletionIn"] = {"title": "CompletionIn", "description": base.get("description", ""), "oneOf": variants}


@lru_cache(maxsize=8)
def _spec(limits: tuple[int, int, int], tasks_key: str, registry: TaskRegistry) -> dict[str, Any]:
    max_body, max_args, max_bulk = limits
    request_models = {op.body for op in ROUTES if op.body is not None}
    response_models = {m for op in ROUTES for m, _ in op.ok.values() if m is not None} | {s.ErrorBody}
    task_models = {t.name: t.model for t in registry}
    keys, req_top = models_json_schema([(m, "validation") for m in sorted(request_models, key=lambda m: m.__name__)]
                                       + [(m, "validation") for m in task_models.values()],
                                       ref_template=REF, schema_generator=RequestSchema)
    _, resp_top = models_json_schema([(m, "serialization") for m in sorted(response_models, key=lambda m: m.__name__)],
                                     ref_template=REF)
    _storable_keys(req_top.get("$defs", {}))
    defs: dict[str, Any] = {**resp_top.get("$defs", {}), **req_top.get("$defs", {}), JSON_VALUE: _json_value()}
    args_refs = {name: keys[(m, "validation")] for name, m in task_models.items()}
    _job_variants(defs, registry, args_refs)
    _job_variants(defs, registry, args_refs, "BatchJobIn")
    _completion_variants(defs, registry, args_refs)
    for name in (n for n in defs if n.startswith("CompletionIn_")):
        defs[name]["properties"]["queue"]["anyOf"][0]["pattern"] = QUEUE_RE.pattern
    for name in (n for n in defs if n.startswith(("JobIn_", "BatchJobIn_"))):
        props = defs[name]["properties"]
        props["queue"]["anyOf"][0]["pattern"] = QUEUE_RE.pattern
        props["run_at"]["anyOf"][0]["pattern"] = s.RFC3339.pattern  # also excludes years 1 and 9999
        # run_at and delay are alternatives: both given (not null) is refused
        defs[name]["not"] = {"required": ["run_at", "delay"],
                             "properties": {"run_at": {"type": "string"}, "delay": {"type": "number"}}}
    defs["BulkIn"]["properties"]["jobs"]["maxItems"] = max_bulk
    defs["BatchIn"]["properties"]["jobs"]["maxItems"] = max_bulk
    items = max(1, max_body // bodies.BYTES_PER_ITEM)
    limits_text = (f"Limits: body {max_body} bytes (413 above); at most {items} JSON items (values and keys) per "
                   f"body; args at most {max_args} bytes as stored (UTF-8 JSON); a bulk at most {max_bulk} jobs.")
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        out: dict[str, Any] = {"summary": op.summary, "parameters": [*op.params, REQUEST_ID], "responses": {}}
        if op.body is not None:
            out["requestBody"] = {"required": True, "description": limits_text,
                                  "content": {"application/json": {"schema": {"$ref": REF.format(
                                      model=op.body.__name__)}}}}
        for status, (model, description) in op.ok.items():
            if model is None:
                out["responses"][str(status)] = {"description": description,
                                                 "headers": {"X-Request-ID": REQUEST_ID_OUT}}
                continue
            out["responses"][str(status)] = {"description": description,
                                             "headers": {"X-Request-ID": REQUEST_ID_OUT, **op.ok_headers},
                                             "content": {"application/json": {"schema": {"$ref": REF.format(
                                                 model=model.__name__)}}}}
        # The guard answers these before any route: duplicated headers, unknown host, slow or
        # oversized heads and bodies; cross-origin refusals only for state changes.
        guard = [400, 408, 421, 431] + ([403] if op.method != "get" else [])
        if op.path not in OPEN:  # a token's role and request rate
            guard += [403, 429]
        for status in sorted({*op.errors, *guard, 405}):
            headers = {"X-Request-ID": REQUEST_ID_OUT}
            if status in RETRY_AFTER:
                headers["Retry-After"] = header("Seconds to wait before retrying", {"type": "string",
                                                                                     "pattern": "^[0-9]+$"})
            if status == 401:
                headers["WWW-Authenticate"] = header("Bearer")
            out["responses"][str(status)] = {"description": ERRORS[status], "headers": headers,
                                             "content": {"application/json": {"schema": {"$ref": REF.format(
                                                 model="ErrorBody")}}}}
        if op.path not in OPEN:
            out["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method] = out
    return {
        "openapi": "3.1.0",
        "info": {"title": "Skiplock", "version": "1",
                 "description": "A job queue that lives in PostgreSQL. " + limits_text},
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def spec(settings: Settings, registry: TaskRegistry) -> dict[str, Any]:
    """The description for these limits and these tasks (cached while both stay the same)."""
    tasks_key = json.dumps([[t.name, t.json_schema()] for t in registry], sort_keys=True, default=str)
    return _spec((settings.max_body_bytes, settings.max_args_bytes, settings.max_bulk_jobs), tasks_key, registry)
