"""The job context a handler may ask for (a parameter annotated `JobContext`, or named `ctx`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from .errors import InvalidInput, JobCancelled, Park
from .storable import MAX_RESULT_BYTES, to_json


class JobContext:
    """What a running handler knows of its job and how it talks back.

    `checkpoint` is what the previous attempt saved (None on the first run); `save_checkpoint`
    and `progress` are stored promptly, fenced to this attempt, and both are visible in psql
    (`skiplock.jobs.checkpoint`, `.progress`). Both work from async and sync handlers, and
    both raise InvalidInput, in the handler, for a value that cannot be stored (see
    skiplock.storable) or is larger than `max_json_bytes`. `correlation_id` is the id of the
    request that submitted the job (None if it had none). `review` is what the operator who
    resumed the job from a park gave this attempt (None otherwise).
    """

    def __init__(self, *, job_id: uuid.UUID, task: str, queue: str, attempt: int, max_attempts: int,
                 checkpoint: Any, worker_id: str, on_update: Callable[[JobContext], None],
                 max_json_bytes: int = MAX_RESULT_BYTES, correlation_id: str | None = None,
                 open_transaction: Callable[[JobContext], Awaitable[Any]] | None = None, review: Any = None) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.checkpoint = checkpoint
        self.worker_id = worker_id
        self.correlation_id = correlation_id
        self.review = review
        self._on_update = on_update
        self._open_transaction = open_transaction
        self.max_json_bytes = max_json_bytes
        self._cancelled = False  # set from the event loop, read from any thread: a plain flag
        self.pending_progress: dict[str, Any] | None = None
        self.pending_checkpoint: Any = None
        self.has_checkpoint = False
        self.checkpoint_bytes = 0

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or the worker is shutting down past its grace period)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        if self._cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def mark_cancelled(self) -> None:
        self._cancelled = True

    def transaction(self) -> Awaitable[Any]:
        """`conn = await ctx.transaction()`: a psycopg AsyncConnection with a transaction open,
        whose commit is this job's acknowledgement. Write the application's own rows on it and
        return: the worker marks the job succeeded in the same transaction and commits, so the
        writes and the success commit together or not at all (a crash, a rescue or a
        cancellation before the commit leaves no write behind). If the handler raises, the
        writes are rolled back and the attempt fails as usual. Calling it again within the
        attempt returns the same connection. Async handlers only."""
        if self._open_transaction is None:
            raise InvalidInput("ctx.transaction() is available to handlers run by a worker", field="transaction")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise InvalidInput("ctx.transaction() needs an async handler (async def): a sync handler runs on "
                               "a thread of its own", field="transaction") from None
        return self._open_transaction(self)

    def park(self, reason: str, data: Any = None) -> NoReturn:
        """Park the job for a person and end this attempt (raises Park): the job waits in state
        `waiting`, without failing and with this attempt given back, until an operator resumes
        it (the next attempt gets the operator's data as `ctx.review`), fails it or cancels it.
        `reason` (text) and `data` (JSON) show in skiplock.parked_jobs, the API and the dashboard."""
        raise Park(reason, data)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress: 0-100 and an optional message."""
        if not 0 <= percent <= 100:
            raise InvalidInput(f"progress percent must be within 0..100, not {percent}", field="percent")
        if message is not None and not isinstance(message, str):
            raise InvalidInput(f"progress message must be a string or None, not {type(message).__name__}",
                               field="message")
        report = {"percent": float(percent), "message": message}
        to_json(report, what="the progress report", limit=self.max_json_bytes)
        self.pending_progress = report
        self._on_update(self)

    def save_checkpoint(self, data: Any) -> None:
        """Save JSON state; the next attempt receives it as `ctx.checkpoint`. What is stored is
        `data` as it is now: later changes to the same object are not saved."""
        stored = to_json(data, what="the checkpoint", limit=self.max_json_bytes)
        self.checkpoint = data
        self.pending_checkpoint = json.loads(stored)  # a copy, checked: the handler may change `data`
        self.checkpoint_bytes = len(stored)
        self.has_checkpoint = True
        self._on_update(self)
