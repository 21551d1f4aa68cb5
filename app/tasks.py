"""Example task handlers, so a newcomer can try everything without writing code.
`SKIPLOCK_TASKS=app.tasks` (the default) registers them.

Anyone who may submit jobs chooses these arguments, so every one is bounded, in its type hint
or by SKIPLOCK_MAX_ARGS_BYTES (refused at submission with 422 otherwise), and no handler
holds the worker's event loop: a long CPU step yields, a blocking one is a sync task (it
runs in a thread)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from pydantic import BaseModel, Field, HttpUrl

from skiplock import BatchOutcome, JobContext, NonRetryableError, task

from .webhook import post_json

MAX_SLEEP = 600.0
"""Longest `sleep`/`sleep_sync` (seconds): a sync sleep holds a worker thread until it ends."""

MAX_COUNT = 100_000

Seconds = Annotated[float, Field(ge=0, le=MAX_SLEEP)]


@task(name="echo")
async def echo(message: str) -> dict[str, str]:
    """Return the message: the smallest job there is."""
    return {"message": message}


@task(name="batch_done")
async def batch_done(batch: BatchOutcome, message: Annotated[str, Field(max_length=1000)] = "") -> dict[str, Any]:
    """A completion job for batches (on_complete): returns how the batch ended."""
    return {"message": message, "batch": batch.model_dump(mode="json")}


@task(name="sleep", timeout=MAX_SLEEP + 60)
async def sleep(seconds: Seconds = 1.0, ctx: JobContext | None = None) -> dict[str, float]:
    """Sleep, reporting progress every tenth of the time; a slow job for trying leases and kills."""
    steps = 10
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        if ctx is not None:
            ctx.progress((i + 1) * 100 / steps)
    return {"slept": seconds}


@task(name="sleep_sync", timeout=MAX_SLEEP + 60)
def sleep_sync(seconds: Seconds = 1.0) -> dict[str, float]:
    """The same as `sleep`, as a sync function (runs in the worker's thread pool)."""
    time.sleep(seconds)
    return {"slept": seconds}


@task(name="fail_n_times", max_attempts=5)
async def fail_n_times(n: Annotated[int, Field(ge=0, le=1000)] = 1,
                       ctx: JobContext | None = None) -> dict[str, int]:
    """Fail the first `n` attempts, then succeed; `n` >= max_attempts ends in `failed`."""
    attempt = ctx.attempt if ctx else 1
    if attempt <= n:
        raise RuntimeError(f"failing on purpose: attempt {attempt} of the first {n}")
    return {"succeeded_on_attempt": attempt}


@task(name="always_fail", max_attempts=3)
async def always_fail(reason: Annotated[str, Field(max_length=1000)] = "failing on purpose") -> None:
    """Raise on every attempt: lands in the dead-letter set (`skiplock.dead_letter`)."""
    raise RuntimeError(reason)


@task(name="count_to", max_attempts=5)
async def count_to(total: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 100,
                   fail_at: Annotated[int | None, Field(ge=0, le=MAX_COUNT)] = None,
                   ctx: JobContext | None = None) -> dict[str, int]:
    """Count with checkpoints; with `fail_at` the first attempt crashes there and the next
    attempt resumes from the saved checkpoint instead of starting over. Yields to the event
    loop every ten steps, so other jobs on the worker keep running."""
    start = int((ctx.checkpoint or {}).get("reached", 0)) if ctx else 0
    for i in range(start, total):
        if i % 10 == 0:
            if ctx is not None:
                ctx.save_checkpoint({"reached": i})
                ctx.progress(100 * i / total, f"at {i}")
            await asyncio.sleep(0)
        if fail_at is not None and i == fail_at and ctx is not None and ctx.attempt == 1:
            raise RuntimeError(f"crashing at {i} on purpose")
    return {"counted": total, "resumed_from": start}


class WebhookArgs(BaseModel):
    url: HttpUrl = Field(description="http or https; private, loopback and link-local addresses are refused "
                                     "unless SKIPLOCK_WEBHOOK_ALLOW_PRIVATE=1 (app/webhook.py)")
    payload: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="For the whole request")


@task(name="webhook", queue="webhooks", max_attempts=8, timeout=130)
def webhook(args: WebhookArgs) -> dict[str, Any]:
    """POST `payload` as JSON to `url`. 5xx and network errors retry; 3xx and 4xx fail at once
    (redirects are not followed: their target was never checked)."""
    status, body = post_json(str(args.url), json.dumps(args.payload).encode(), timeout=args.timeout_seconds)
    if 200 <= status < 300:
        return {"status": status}
    snippet = body[:200].decode("utf-8", "replace")
    if status < 500:
        raise NonRetryableError(f"webhook answered {status}: {snippet}")
    raise RuntimeError(f"webhook answered {status}: {snippet}")
