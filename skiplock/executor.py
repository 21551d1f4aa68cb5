"""Runs one claimed job: resolve its task, validate its arguments, call the handler under
its timeout, and turn whatever happens into an Outcome for the completer."""

from __future__ import annotations

import asyncio
import json
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .context import JobContext
from .errors import JobCancelled, NonRetryableError, SkiplockError
from .job import ClaimedJob
from .tasks import TaskRegistry


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, as it will be written (fenced by attempt)."""

    job_id: uuid.UUID
    attempt: int
    state: str  # succeeded | queued (retry) | failed
    task: str
    result: Any = None
    error: str | None = None
    run_at: datetime | None = None
    checkpoint: Any = None
    has_checkpoint: bool = False
    progress: dict[str, Any] | None = None
    duration: float = 0.0


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()[:20_000]


async def execute(job: ClaimedJob, ctx: JobContext, registry: TaskRegistry, *,
                  now: datetime | None = None) -> Outcome:
    """Run the handler; never raises except CancelledError (job cancelled or worker stopping)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def outcome(state: str, **kw: Any) -> Outcome:
        return Outcome(job_id=job.id, attempt=job.attempt, state=state, task=job.task,
                       checkpoint=ctx.pending_checkpoint, has_checkpoint=ctx.has_checkpoint,
                       progress=ctx.pending_progress, duration=loop.time() - started, **kw)

    try:
        t = registry.get(job.task)
        kwargs = t.call_kwargs(job.args)
    except SkiplockError as exc:  # a job that can never run here: dead-letter it at once
        return outcome("failed", error=f"{type(exc).__name__}: {exc.message}")
    if t.context_param:
        kwargs[t.context_param] = ctx
    try:
        if t.is_async:
            call = t.fn(**kwargs)
        else:
            call = asyncio.to_thread(t.fn, **kwargs)
        result = await asyncio.wait_for(call, timeout=job.timeout)
        result = json.loads(json.dumps(result, default=str)) if result is not None else None
        return outcome("succeeded", result=result)
    except asyncio.CancelledError:
        ctx.mark_cancelled()
        raise
    except TimeoutError as exc:
        error = f"TimeoutError: task {job.task!r} ran longer than its timeout of {job.timeout}s"
        return _failure(job, t.retry, outcome, error if str(exc) == "" else _error_text(exc), False, now)
    except (NonRetryableError, JobCancelled) as exc:
        return outcome("failed", error=_error_text(exc))
    except Exception as exc:  # noqa: BLE001 - any handler error is the job's failure, not ours
        return _failure(job, t.retry, outcome, _error_text(exc), False, now)


def _failure(job: ClaimedJob, backoff: Any, outcome: Any, error: str, final: bool,
             now: datetime | None) -> Outcome:
    if final or job.attempt >= job.max_attempts:
        result: Outcome = outcome("failed", error=error)
        return result
    when = backoff.next_run_at(job.attempt, now or datetime.now(UTC))
    retry: Outcome = outcome("queued", error=error, run_at=when)
    return retry
