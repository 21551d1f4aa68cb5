"""Example task handlers, so a newcomer can try everything without writing code.
`SKIPLOCK_TASKS=app.tasks` (the default) registers them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from pydantic import BaseModel, Field, HttpUrl

from skiplock import JobContext, NonRetryableError, task


@task(name="echo")
async def echo(message: str) -> dict[str, str]:
    """Return the message: the smallest job there is."""
    return {"message": message}


@task(name="sleep", timeout=3600)
async def sleep(seconds: float = 1.0, ctx: JobContext | None = None) -> dict[str, float]:
    """Sleep, reporting progress every tenth of the time; a slow job for trying leases and kills."""
    steps = 10
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        if ctx is not None:
            ctx.progress((i + 1) * 100 / steps)
    return {"slept": seconds}


@task(name="sleep_sync", timeout=3600)
def sleep_sync(seconds: float = 1.0) -> dict[str, float]:
    """The same as `sleep`, as a sync function (runs in the worker's thread pool)."""
    time.sleep(seconds)
    return {"slept": seconds}


@task(name="fail_n_times", max_attempts=5)
async def fail_n_times(n: int = 1, ctx: JobContext | None = None) -> dict[str, int]:
    """Fail the first `n` attempts, then succeed; `n` >= max_attempts ends in `failed`."""
    attempt = ctx.attempt if ctx else 1
    if attempt <= n:
        raise RuntimeError(f"failing on purpose: attempt {attempt} of the first {n}")
    return {"succeeded_on_attempt": attempt}


@task(name="always_fail", max_attempts=3)
async def always_fail(reason: str = "failing on purpose") -> None:
    """Raise on every attempt: lands in the dead-letter set (`skiplock.dead_letter`)."""
    raise RuntimeError(reason)


@task(name="count_to", max_attempts=5)
async def count_to(total: int = 100, fail_at: int | None = None, ctx: JobContext | None = None) -> dict[str, int]:
    """Count with checkpoints; with `fail_at` the first attempt crashes there and the next
    attempt resumes from the saved checkpoint instead of starting over."""
    start = int((ctx.checkpoint or {}).get("reached", 0)) if ctx else 0
    for i in range(start, total):
        if ctx is not None and i % 10 == 0:
            ctx.save_checkpoint({"reached": i})
            ctx.progress(100 * i / total, f"at {i}")
        if fail_at is not None and i == fail_at and ctx is not None and ctx.attempt == 1:
            raise RuntimeError(f"crashing at {i} on purpose")
    return {"counted": total, "resumed_from": start}


class WebhookArgs(BaseModel):
    url: HttpUrl
    payload: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


@task(name="webhook", queue="webhooks", max_attempts=8, timeout=130)
def webhook(args: WebhookArgs) -> dict[str, Any]:
    """POST `payload` as JSON to `url`. 5xx and network errors retry; 4xx fail at once."""
    req = urllib.request.Request(str(args.url), data=json.dumps(args.payload).encode(), method="POST",  # noqa: S310
                                 headers={"Content-Type": "application/json", "User-Agent": "skiplock-webhook"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout_seconds) as resp:  # noqa: S310 - HttpUrl admits http(s) only
            return {"status": resp.status}
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise NonRetryableError(f"webhook answered {exc.code}") from exc
        raise
