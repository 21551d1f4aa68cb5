"""Buffered, fenced acknowledgements. Handlers' outcomes (and progress/checkpoint updates)
are collected and written one statement per flush: the flush starts as soon as something
is buffered, so under load batches grow by themselves while idle latency stays one round
trip. An outcome the database did not confirm stays buffered and is retried."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import db
from .context import JobContext
from .events import emit
from .executor import Outcome

MAX_BATCH = 1000


class Completer:
    name = "completer"

    def __init__(self, pool: AsyncConnectionPool, worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self._outcomes: list[Outcome] = []
        self._updates: dict[tuple[uuid.UUID, int], JobContext] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fenced: list[uuid.UUID] = []
        self.acknowledged = 0
        self.on_flush: Callable[[], None] | None = None  # the producer waits on full buffers

    # -- producers of work ------------------------------------------------------------------
    def add(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._idle.clear()
        self._wake.set()

    def update(self, ctx: JobContext) -> None:
        """Called by a handler's context, possibly from a worker thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_update, ctx)

    def _add_update(self, ctx: JobContext) -> None:
        self._updates[(ctx.job_id, ctx.attempt)] = ctx
        self._idle.clear()
        self._wake.set()

    @property
    def pending_outcomes(self) -> int:
        return len(self._outcomes)

    def held(self) -> dict[uuid.UUID, int]:
        """Jobs whose outcome waits for its acknowledgement, with their attempt: the worker
        still holds them, so their leases are renewed like those of running jobs."""
        return {o.job_id: o.attempt for o in self._outcomes}

    @property
    def pending(self) -> int:
        return len(self._outcomes) + len(self._updates)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="skiplock.completer")

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a flush deadline
        """Flush what is buffered (retrying for up to `timeout`), then stop."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            emit("skiplock.worker.db_error", worker=self.worker_id,
                 error=f"{self.pending} acknowledgements unconfirmed at shutdown; their leases will expire "
                       "and the jobs will run again")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outcomes or self._updates:
                try:
                    await self.run_once()
                    failures = 0
                    if self.on_flush is not None:
                        self.on_flush()
                except (psycopg.Error, OSError) as exc:
                    failures += 1
                    emit("skiplock.worker.db_error", worker=self.worker_id, during="acknowledge",
                         error=f"{type(exc).__name__}: {exc}".strip())
                    await asyncio.sleep(min(0.05 * 2**failures, 5.0) * random.uniform(0.5, 1.0))
            self._idle.set()

    async def run_once(self) -> int:
        """Write up to MAX_BATCH buffered outcomes and all buffered updates; returns how many
        outcomes were written. On error nothing is dropped."""
        batch = self._outcomes[:MAX_BATCH]
        updates = dict(self._updates)
        written = 0
        async with self.pool.connection() as conn:
            if updates:
                live = [c for key, c in updates.items() if not any((o.job_id, o.attempt) == key for o in batch)]
                if live:
                    await db.update_many_if_held(
                        conn, worker_id=self.worker_id, ids=[c.job_id for c in live],
                        attempts=[c.attempt for c in live],
                        checkpoints=[db.jsonb(c.pending_checkpoint) if c.has_checkpoint else None for c in live],
                        progresses=[db.jsonb(c.pending_progress) for c in live])
                for key, c in updates.items():
                    if self._updates.get(key) is c:
                        del self._updates[key]
            if batch:
                changed = await db.finish_many_if_held(
                    conn, worker_id=self.worker_id, ids=[o.job_id for o in batch],
                    attempts=[o.attempt for o in batch], states=[o.state for o in batch],
                    results=_column([db.jsonb(o.result) for o in batch]), errors=_column([o.error for o in batch]),
                    run_ats=_column([o.run_at for o in batch]),
                    checkpoints=_column([db.jsonb(o.checkpoint) if o.has_checkpoint else None for o in batch]),
                    progresses=_column([db.jsonb(o.progress) for o in batch]))
                del self._outcomes[:len(batch)]
                written = len(batch)
                self.acknowledged += len(changed)
                for o in batch:
                    if o.job_id not in changed:
                        self.fenced.append(o.job_id)
                        emit("skiplock.job.fenced", job_id=o.job_id, task=o.task, attempt=o.attempt,
                             worker=self.worker_id, reason="no longer held by this attempt; answer ignored")
        return written

def _column(values: list[Any]) -> list[Any] | None:
    """A column of the acknowledgement, or None when every value is NULL (no-op jobs: no
    result, error, checkpoint or progress). unnest() pads a NULL array with NULLs, and
    sending nothing saves psycopg from dumping thousands of NULLs per flush."""
    for v in values:
        if v is not None:
            return values
    return None
