"""Batches: a group of jobs with exact live counts, a final state, and one completion job
enqueued in the transaction that ends the batch's last job (the database keeps the counts and
decides the end: sql/schema.sql, skiplock.batches_count_v1).

    batch = await enqueue_batch(conn, [JobSpec("resize", {"url": u}) for u in urls],
                                on_complete=JobSpec("report", {"title": "thumbnails"}))

The completion task receives its own arguments plus `batch` (annotate it `BatchOutcome`):
{"id", "state", "total", "succeeded", "failed", "cancelled"}. Or open a batch, fill it in several transactions
(`enqueue_many` with `batch_id=`), and seal it; a batch that is not sealed never completes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Literal

import psycopg
from pydantic import BaseModel

from . import db
from .enqueue import MAX_ARGS_BYTES, Enqueued, JobSpec, _resolve, enqueue_many
from .errors import InvalidInput, SkiplockError, translate
from .limits import QueueLimits
from .queries import batches
from .tasks import TaskRegistry
from .tasks import registry as default_registry

BATCH_STATES = ("open", "active", "succeeded", "failed", "cancelled")
"""open: still taking jobs (never completes); active: sealed, jobs left to run; then final:
cancelled if any job was cancelled, else failed if any failed, else succeeded."""

_SAMPLE_OUTCOME = {"id": str(uuid.UUID(int=0)), "state": "succeeded", "total": 0, "succeeded": 0, "failed": 0,
                   "cancelled": 0}


class BatchOutcome(BaseModel):
    """The `batch` argument of a completion job: how the batch ended."""

    skiplock_whole_args: ClassVar[bool] = False  # a handler's only parameter, still named `batch`

    id: uuid.UUID
    state: Literal["succeeded", "failed", "cancelled"]
    total: int
    succeeded: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch just created: its id, its state after creation, and its jobs."""

    id: uuid.UUID
    state: str
    jobs: list[Enqueued]


def completion_job(spec: JobSpec, *, registry: TaskRegistry | None = None,
                   max_args_bytes: int = MAX_ARGS_BYTES) -> dict[str, Any]:
    """The completion job as a batch stores it (skiplock.batches.on_complete), checked as any
    job is, with its `batch` argument (added when the batch ends) standing in for the check."""
    reg = registry if registry is not None else default_registry
    if spec.batch_id is not None or spec.idempotency_key is not None or spec.run_at is not None \
            or spec.delay is not None:
        raise InvalidInput("on_complete takes no batch_id, idempotency_key, run_at or delay", field="on_complete")
    if "batch" in spec.args:
        raise InvalidInput("on_complete.args.batch is set when the batch ends; leave it out",
                           field="on_complete.args.batch")
    try:
        r = _resolve(replace(spec, args={**spec.args, "batch": _SAMPLE_OUTCOME}), reg, max_args_bytes, None)
    except SkiplockError as exc:
        exc.field = exc.details["field"] = f"on_complete.{exc.field or 'task'}"
        exc.message = f"on_complete: {exc.message}"
        exc.args = (exc.message,)
        raise
    args = {k: v for k, v in r["args"].items() if k != "batch"}
    return {"task": r["task"], "args": args, "queue": r["queue"], "priority": r["priority"],
            "max_attempts": r["max_attempts"], "timeout": r["timeout"]}


def check_completion_json(spec: JobSpec, registry: TaskRegistry) -> None:
    """Check the completion job's arguments strictly as JSON (Task.check_json_args), as a
    submitter speaking JSON sends them."""
    try:
        registry.get(spec.task).check_json_args({**spec.args, "batch": _SAMPLE_OUTCOME})
    except SkiplockError as exc:
        exc.field = exc.details["field"] = f"on_complete.{exc.field or 'task'}"
        exc.message = f"on_complete: {exc.message}"
        exc.args = (exc.message,)
        raise


async def open_batch(conn: db.AsyncConn, *, on_complete: JobSpec | None = None,
                     registry: TaskRegistry | None = None, correlation_id: str | None = None) -> uuid.UUID:
    """Open an empty batch in the caller's transaction; returns its id. Add jobs with
    `enqueue_many(conn, [JobSpec(..., batch_id=id)])`, then `seal_batch`."""
    stored = completion_job(on_complete, registry=registry) if on_complete is not None else None
    try:
        row = await batches.open_batch(conn, on_complete=stored, correlation_id=correlation_id)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return uuid.UUID(str(row["id"]))


async def seal_batch(conn: db.AsyncConn, batch_id: uuid.UUID) -> str:
    """No more jobs join the batch; returns its state (final at once when none is left to run)."""
    try:
        return await batches.seal_batch(conn, batch_id)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def enqueue_batch(conn: db.AsyncConn, specs: Sequence[JobSpec], *, on_complete: JobSpec | None = None,
                        seal: bool = True, registry: TaskRegistry | None = None,
                        max_args_bytes: int = MAX_ARGS_BYTES, correlation_id: str | None = None,
                        now: datetime | None = None, defer_notify: bool = False,
                        limits: QueueLimits | None = None) -> Batch:
    """Create a batch with its jobs in one transaction (a savepoint inside the caller's): all
    or nothing, sealed unless `seal=False`. The rules of `enqueue_many` hold for the jobs; they
    take no idempotency key (a repeated key would name a job outside the batch) and no other
    batch_id. `on_complete` is the job enqueued once when the batch ends."""
    for i, spec in enumerate(specs):
        if spec.idempotency_key is not None or (spec.batch_id is not None):
            raise InvalidInput(f"job {i}: the jobs of a new batch take no idempotency_key or batch_id",
                               field="idempotency_key" if spec.idempotency_key is not None else "batch_id",
                               details={"index": i})
    cid = correlation_id[:200] if correlation_id else None
    async with conn.transaction():
        batch_id = await open_batch(conn, on_complete=on_complete, registry=registry, correlation_id=cid)
        jobs = await enqueue_many(conn, [replace(s, batch_id=batch_id) for s in specs], registry=registry,
                                  max_args_bytes=max_args_bytes, correlation_id=cid, now=now,
                                  defer_notify=defer_notify, limits=limits) if specs else []
        state = await seal_batch(conn, batch_id) if seal else "open"
    return Batch(batch_id, state, jobs)
