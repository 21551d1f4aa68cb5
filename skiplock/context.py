"""The job context a handler may ask for (a parameter annotated `JobContext`, or named `ctx`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from .errors import InvalidInput, JobCancelled


class JobContext:
    """What a running handler knows of its job and how it talks back.

    `checkpoint` is what the previous attempt saved (None on the first run); `save_checkpoint`
    and `progress` are stored promptly, fenced to this attempt, and both are visible in psql
    (`skiplock.jobs.checkpoint`, `.progress`). Both work from async and sync handlers.
    """

    def __init__(self, *, job_id: uuid.UUID, task: str, queue: str, attempt: int, max_attempts: int,
                 checkpoint: Any, worker_id: str, on_update: Callable[[JobContext], None]) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.checkpoint = checkpoint
        self.worker_id = worker_id
        self._on_update = on_update
        self._cancelled = False  # set from the event loop, read from any thread: a plain flag
        self.pending_progress: dict[str, Any] | None = None
        self.pending_checkpoint: Any = None
        self.has_checkpoint = False

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or the worker is shutting down past its grace period)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        if self._cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def mark_cancelled(self) -> None:
        self._cancelled = True

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress: 0-100 and an optional message."""
        if not 0 <= percent <= 100:
            raise InvalidInput(f"progress percent must be within 0..100, not {percent}", field="percent")
        self.pending_progress = {"percent": float(percent), "message": message}
        self._on_update(self)

    def save_checkpoint(self, data: Any) -> None:
        """Save JSON-serialisable state; the next attempt receives it as `ctx.checkpoint`."""
        json.dumps(data)  # fail here, in the handler, if it cannot be stored
        self.checkpoint = data
        self.pending_checkpoint = data
        self.has_checkpoint = True
        self._on_update(self)
