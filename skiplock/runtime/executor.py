"""Runs one claimed job: resolve its task, validate its arguments, call the handler under
its timeout, and turn whatever happens into an Outcome for the completer.

Whatever a handler returns or raises is that job's outcome and nothing else's: an exception
of any class (SystemExit, KeyboardInterrupt, its own CancelledError...) ends the attempt
with the exception recorded, and a result that cannot be stored fails the job, as does one that
does not match the handler's return annotation (when pydantic can validate it)."""

from __future__ import annotations

import asyncio
import inspect
import traceback
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..backoff import DEFAULT_BACKOFF, Backoff
from ..context import JobContext
from ..errors import JobCancelled, NonRetryableError, Park, SkiplockError, UnknownTask
from ..job import ClaimedJob
from ..storable import MAX_RESULT_BYTES, InvalidResult, Unstorable, safe_text, to_json
from ..tasks import TaskRegistry
from . import threads


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, as it will be written (fenced by attempt)."""

    job_id: uuid.UUID
    attempt: int
    state: str  # succeeded | queued (retry) | failed | waiting (parked)
    task: str
    result_json: bytes | None = None  # the result as stored: UTF-8 JSON, checked (skiplock.storable)
    error: str | None = None
    run_at: datetime | None = None
    checkpoint: Any = None
    has_checkpoint: bool = False
    progress: dict[str, Any] | None = None
    duration: float = 0.0
    size: int = 0  # bytes of result and checkpoint: the completer bounds a batch by it
    refused: bool = False  # the database refused the handler's outcome; this is its replacement
    park_json: bytes | None = None  # parked: the handler's data for the operator, as stored (checked JSON)


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc)).strip()
    if isinstance(exc, asyncio.CancelledError):
        text += ("\n(the handler raised CancelledError itself; the worker did not cancel this job: "
                 "it ends this attempt like any exception)")
    elif not isinstance(exc, Exception):
        text += f"\n(raised by the handler: {type(exc).__name__} ends this job's attempt, not the worker)"
    return safe_text(text)


async def _contained(call: Awaitable[Any], ctx: JobContext) -> tuple[BaseException | None, Any]:
    """Await the handler and hand back what it raised instead of raising it. SystemExit and
    KeyboardInterrupt that escape an asyncio task stop the event loop, i.e. the worker, and
    any other BaseException would bypass the job's outcome. Only a cancellation the worker
    asked for (job cancelled or lost, shutdown, timeout) is raised: the task's cancelling()
    count or the context's flag says so; a CancelledError without either is the handler's."""
    try:
        return None, await call
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if ctx.cancelled or (current is not None and current.cancelling()):
            raise
        return exc, None
    except BaseException as exc:  # noqa: BLE001 - whatever the handler raised is its job's outcome
        return exc, None


def _hint(result: Any) -> str:
    """What a careless result probably is (a coroutine is closed, so no "never awaited" warning)."""
    if inspect.iscoroutine(result) or inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        return " (an awaitable: was an async call not awaited?)"
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return " (a generator, whose body never ran: return a list)"
    return ""


def _unstorable_result(task: str, result: Any, exc: Unstorable) -> str:
    return (f"Unstorable result: task {task!r} returned {type(result).__name__}{_hint(result)}: {exc.message}. "
            "Not retried: the same code would return the same value. A result must be JSON: None, "
            "str, int, float, bool, list, tuple, or dict with string keys.")


def _invalid_result(task: str, result: Any, exc: InvalidResult) -> str:
    return (f"Invalid result: task {task!r} {exc.message}{_hint(result)}. Not retried: the same code would return "
            "the same value.")


def end_of_attempt(job: ClaimedJob, ctx: JobContext, state: str, *, duration: float,
                   result_json: bytes | None = None, error: str | None = None,
                   run_at: datetime | None = None) -> Outcome:
    """The attempt's outcome, carrying what the handler last reported (checkpoint, progress)."""
    size = (len(result_json) if result_json is not None else 0) + ctx.checkpoint_bytes
    return Outcome(job_id=job.id, attempt=job.attempt, state=state, task=job.task, result_json=result_json,
                   error=error, run_at=run_at, checkpoint=ctx.pending_checkpoint, has_checkpoint=ctx.has_checkpoint,
                   progress=ctx.pending_progress, duration=duration, size=size)


def failed_attempt(job: ClaimedJob, ctx: JobContext, retry: Backoff, error: str, *, duration: float,
                   now: datetime | None = None) -> Outcome:
    """The attempt failed with `error`: the job runs again after the task's backoff, or fails
    on its last attempt. (The one place this is decided, timeouts included.)"""
    if job.attempt >= job.max_attempts:
        return end_of_attempt(job, ctx, "failed", duration=duration, error=error)
    return end_of_attempt(job, ctx, "queued", duration=duration, error=error,
                          run_at=retry.next_run_at(job.attempt, now or datetime.now(UTC)))


async def execute(job: ClaimedJob, ctx: JobContext, registry: TaskRegistry, *,
                  max_result_bytes: int = MAX_RESULT_BYTES) -> Outcome:
    """Run the handler; never raises except CancelledError (job cancelled or worker stopping)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def outcome(state: str, result_json: bytes | None = None, error: str | None = None) -> Outcome:
        return end_of_attempt(job, ctx, state, duration=loop.time() - started, result_json=result_json, error=error)

    def failure(error: str) -> Outcome:
        return failed_attempt(job, ctx, t.retry, error, duration=loop.time() - started)

    try:
        t = registry.get(job.task)
    except UnknownTask as exc:
        # Another worker may import it (a fleet mid-deploy, or workers of different code
        # sharing a queue): a failed attempt, retried after the default backoff, so the job
        # finds such a worker or fails on its last attempt, as a handler's error would.
        error = f"UnknownTask: {exc.message}; not imported by worker {ctx.worker_id} (SKIPLOCK_TASKS)"
        return failed_attempt(job, ctx, DEFAULT_BACKOFF, safe_text(error), duration=loop.time() - started)
    try:
        kwargs = t.call_kwargs(job.args)
    except SkiplockError as exc:  # arguments the task can never take: dead-letter it at once
        return outcome("failed", error=safe_text(f"{type(exc).__name__}: {exc.message}"))
    except BaseException as exc:  # noqa: BLE001 - an argument model's own validator raised
        return outcome("failed", error=_error_text(exc))
    if t.context_param:
        kwargs[t.context_param] = ctx
    try:
        if t.is_async:
            call = t.fn(**kwargs)
        else:
            call = threads.run(t.fn, **kwargs)
        # A sync handler's exceptions, SystemExit included, come back through its thread's future.
        raised, result = await asyncio.wait_for(_contained(call, ctx), timeout=job.timeout)
    except asyncio.CancelledError:
        ctx.mark_cancelled()
        raise
    except TimeoutError:
        error = f"TimeoutError: task {job.task!r} ran longer than its timeout of {job.timeout}s"
        return failure(error)
    except BaseException as exc:  # noqa: BLE001 - calling the handler raised before it could run
        raised, result = exc, None
    if isinstance(raised, Park):
        return _parked(job, ctx, raised, loop.time() - started, max_result_bytes)
    if raised is not None:
        if isinstance(raised, NonRetryableError | JobCancelled):
            return outcome("failed", error=_error_text(raised))
        return failure(_error_text(raised))
    if t.result_adapter is not None:  # typed by its return annotation: validated, then serialised
        try:
            result = t.result_data(result)
        except InvalidResult as exc:
            return outcome("failed", error=safe_text(_invalid_result(job.task, result, exc)))
    if result is None:  # the common case: nothing to check
        return outcome("succeeded")
    try:
        stored = to_json(result, what="it", limit=max_result_bytes)
    except Unstorable as exc:
        return outcome("failed", error=safe_text(_unstorable_result(job.task, result, exc)))
    return outcome("succeeded", result_json=stored)



MAX_PARK_REASON = 2000
"""Characters of a park's reason kept (the rest is cut)."""


def _parked(job: ClaimedJob, ctx: JobContext, park: Park, duration: float, limit: int) -> Outcome:
    """The handler parked its job: the reason as text, the data checked as a result is; data
    that cannot be stored fails the job without retry, saying why (as a result would)."""
    reason = park.reason if isinstance(park.reason, str) else repr(park.reason)
    try:
        data = None if park.data is None else to_json(park.data, what="the park's data", limit=limit)
    except Unstorable as exc:
        return end_of_attempt(job, ctx, "failed", duration=duration,
                              error=safe_text(f"Unstorable park data: task {job.task!r} parked with "
                                              f"{type(park.data).__name__}: {exc.message}. Not retried."))
    outcome = end_of_attempt(job, ctx, "waiting", duration=duration, error=safe_text(reason[:MAX_PARK_REASON]))
    outcome.park_json = data
    return outcome
