"""The claim loop: one per worker process. It claims `LIMIT <free slots>` due jobs in one
statement, starts each in its own asyncio task, and sleeps until a NOTIFY, a freed slot or
the poll interval. Database errors never end it: it backs off and tries again.

A slot stays taken while its handler's code runs, even after the worker gave up on it: a
handler that ignored its timeout or cancellation for OVERRUN_GRACE (an async one that
swallows CancelledError, a sync one whose thread cannot be stopped) is *abandoned*: its
attempt is recorded as timed out (or its job was cancelled), it is logged, and its slot is
counted until the code returns. When abandoned handlers hold every slot, the claim loop
ends and the worker stops (`wedged`) so that a fresh process can take over."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import db, threads
from .completer import Completer
from .context import JobContext
from .events import emit, log
from .executor import Outcome, execute
from .job import ClaimedJob
from .storable import MAX_RESULT_BYTES
from .tasks import TaskRegistry
from .threads import JobRef, current_job

CLAIM_PART = 200
"""Rows per claim statement before a claim is split in two. Measured with no-op jobs at
concurrency 400 (README, Performance, change 15): two concurrent claims of 200 drained
26.1k jobs/s where one claim of 400 drained 22.5k (medians of 4, alternating runs)."""
MAX_CLAIM_PARTS = 2
OVERRUN_GRACE = 2.0
"""Seconds a handler has to stop after its timeout or a cancellation before it is abandoned."""


def claim_parts(free: int) -> list[int]:
    """How many rows each concurrent claim statement asks for: `free` split evenly into at
    most MAX_CLAIM_PARTS statements of about CLAIM_PART rows."""
    n = max(1, min(MAX_CLAIM_PARTS, -(-free // CLAIM_PART)))
    return [free // n + (1 if i < free % n else 0) for i in range(n)]


@dataclass(eq=False)
class Running:
    job: ClaimedJob
    ctx: JobContext
    task: asyncio.Task[None]
    started: float = 0.0  # time.monotonic()
    overran: bool = False  # abandoned past its timeout; its outcome was recorded for it
    timer: asyncio.TimerHandle | None = None


class Producer:
    name = "producer"

    def __init__(self, pool: AsyncConnectionPool, completer: Completer, registry: TaskRegistry, *,
                 worker_id: str, queues: Sequence[str] | None, concurrency: int, lease_seconds: float,
                 poll_interval: float, burst: bool = False,
                 healthy: Callable[[], bool] = lambda: True, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.pool = pool
        self.completer = completer
        self.registry = registry
        self.worker_id = worker_id
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.burst = burst
        self.healthy = healthy
        self.max_result_bytes = max_result_bytes
        self.running: dict[uuid.UUID, Running] = {}
        self.abandoned: dict[asyncio.Task[None], Running] = {}  # code still running for a job no longer ours
        self.wedged = False
        self.interrupted: set[uuid.UUID] = set()  # told to stop at shutdown (worker._drain)
        self.wakeup = asyncio.Event()
        self.stopping = asyncio.Event()
        self.claimed = 0
        self._failures = 0
        self.ack_backlog = max(2 * concurrency, 1000)
        self._held_back = False
        self._maybe_more = True
        self._unsure = False  # a claim failed: it may have committed rows we never received
        completer.on_flush = self._acks_flushed

    # Outcomes as the database confirmed them: a fenced answer (the job was no longer ours) is
    # counted apart, not as the success or failure the handler reported.
    @property
    def succeeded(self) -> int:
        return self.completer.counts["succeeded"]

    @property
    def failed(self) -> int:
        return self.completer.counts["failed"]

    @property
    def retried(self) -> int:
        return self.completer.counts["queued"]

    @property
    def fenced(self) -> int:
        return self.completer.counts["fenced"]

    def notify(self, _queue: str = "") -> None:
        """New jobs may be ready (a NOTIFY, or the listener reconnected): look now."""
        self._maybe_more = True
        self.wakeup.set()

    def _slot_freed(self) -> None:
        # A freed slot is worth a claim only if the last claim filled every slot (more may be
        # waiting); otherwise the next NOTIFY or poll finds new jobs. Claiming on every freed
        # slot ran an empty claim after each job of an idle worker.
        if self._maybe_more:
            self.wakeup.set()

    def _acks_flushed(self) -> None:
        if self._held_back:
            self.wakeup.set()

    @property
    def free_slots(self) -> int:
        """Execution slots free to claim into. Outcomes still waiting to be acknowledged count
        too once there are more than one flush can take: without that back-pressure a claim
        loop faster than the database's acknowledgements piles up unconfirmed work."""
        self._held_back = self.completer.pending_outcomes >= self.ack_backlog
        if self._held_back:
            return 0
        return self.concurrency - len(self.running) - self.stuck_slots

    @property
    def stuck_slots(self) -> int:
        """Slots held by abandoned handlers (async tasks and sync threads) still running."""
        return len(self.abandoned) + len(threads.abandoned(self.worker_id))

    async def run_once(self) -> int:
        """Claim up to the free slots and start them; returns how many were claimed."""
        if self._unsure:
            await self._release_unknown_holds()
        free = self.free_slots
        if free <= 0:
            return 0
        parts = claim_parts(free)
        error: BaseException | None = None
        if len(parts) == 1:
            jobs = await self._claim(free)
        else:
            # Statements on two connections, so PostgreSQL works on both at once (one claim
            # statement runs on one core). Jobs a part claimed are started even if another part
            # failed; the failure then backs the loop off like any other.
            results = await asyncio.gather(*(self._claim(n) for n in parts), return_exceptions=True)
            jobs = [j for r in results if not isinstance(r, BaseException) for j in r]
            error = next((r for r in results if isinstance(r, BaseException)), None)
        self._maybe_more = len(jobs) == free
        debug = log.isEnabledFor(logging.DEBUG)
        for job in jobs:
            self._start(job, debug)
        self.claimed += len(jobs)
        if error is not None:
            raise error
        return len(jobs)

    async def _release_unknown_holds(self) -> None:
        """Give back what a failed claim may have taken without our knowing. Runs in the claim
        loop, so no claim of ours is in flight; every job we hold is either running or waiting
        in the completer for its acknowledgement."""
        known = list(self.running.keys() | self.completer.held().keys())
        async with self.pool.connection() as conn:
            released = await db.release_unknown_holds(conn, worker_id=self.worker_id, known=known)
        self._unsure = False
        for r in released:
            emit("skiplock.job.orphaned", job_id=r["id"], task=r["task"], attempt=r["attempt"],
                 worker=self.worker_id, reason="taken by a claim whose answer was lost; back in its queue, unstarted")

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        async with self.pool.connection() as conn:
            return await db.claim_jobs(conn, worker_id=self.worker_id, queues=self.queues, limit=limit,
                                       lease_seconds=self.lease_seconds)

    def _start(self, job: ClaimedJob, debug: bool) -> None:
        ctx = JobContext(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
                         max_attempts=job.max_attempts, checkpoint=job.checkpoint, worker_id=self.worker_id,
                         on_update=self.completer.update, max_json_bytes=self.max_result_bytes,
                         correlation_id=job.correlation_id)
        if debug:
            emit("skiplock.job.started", job_id=job.id, task=job.task, attempt=job.attempt, worker=self.worker_id,
                 correlation_id=job.correlation_id)
        # One shared name: formatting the job id into each task's name cost more than the no-op job.
        started = time.monotonic()
        task = asyncio.create_task(self._execute(job, ctx, started), name="skiplock.job")
        r = self.running[job.id] = Running(job, ctx, task, started)
        if job.timeout is not None:
            r.timer = asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + job.timeout + OVERRUN_GRACE, self._overran, r)

    async def _execute(self, job: ClaimedJob, ctx: JobContext, started: float) -> None:
        # Names the job for the code it runs (tasks and threads it starts inherit it): the
        # watchdog reports who blocked the loop, and sync handler threads carry the job.
        current_job.set(JobRef(job.id, job.attempt, job.task, self.worker_id, job.timeout, started))
        ours = True
        try:
            outcome = await execute(job, ctx, self.registry, max_result_bytes=self.max_result_bytes)
        except asyncio.CancelledError:
            return  # cancelled, rescued or released: whoever did that owns the row now
        finally:
            ours = self._leave(job.id)
        if not ours:
            return  # abandoned past its timeout: the timeout was recorded for it
        if job.id in self.interrupted and outcome.state != "succeeded":
            return  # it stopped because the worker is stopping: released, not failed
        self._record(outcome, job.correlation_id)
        self.completer.add(outcome)

    def _leave(self, job_id: uuid.UUID) -> bool:
        """The current job task ends: free its slot. False if its outcome was already recorded."""
        task = asyncio.current_task()
        current = self.running.get(job_id)
        ours = True
        if current is not None and current.task is task:  # only our own entry
            del self.running[job_id]
            if current.timer is not None:
                current.timer.cancel()
        elif task is not None and (gone := self.abandoned.pop(task, None)) is not None:
            ours = not gone.overran
            emit("skiplock.job.abandoned_returned", job_id=job_id, task=gone.job.task, attempt=gone.job.attempt,
                 worker=self.worker_id, kind="task")
        self._slot_freed()
        return ours

    def _overran(self, r: Running) -> None:
        """The handler ignored its timeout for OVERRUN_GRACE: record the timeout, abandon it."""
        if self.running.get(r.job.id) is not r or r.task.done():
            return
        del self.running[r.job.id]
        r.overran = True
        self.abandoned[r.task] = r
        emit("skiplock.job.abandoned", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
             worker=self.worker_id, kind="task", correlation_id=r.job.correlation_id,
             reason=f"still running {OVERRUN_GRACE}s after its timeout of {r.job.timeout}s (it ignores "
                    "cancellation); the timeout is recorded and it holds its slot until it returns")
        outcome = self._timed_out(r)
        self._record(outcome, r.job.correlation_id)
        self.completer.add(outcome)

    def _timed_out(self, r: Running) -> Outcome:
        job, ctx = r.job, r.ctx
        error = (f"TimeoutError: task {job.task!r} ran longer than its timeout of {job.timeout}s and ignored "
                 "its cancellation")
        fields: dict[str, Any] = {"checkpoint": ctx.pending_checkpoint, "has_checkpoint": ctx.has_checkpoint,
                                  "progress": ctx.pending_progress, "duration": time.monotonic() - r.started}
        if job.attempt >= job.max_attempts:
            return Outcome(job.id, job.attempt, "failed", job.task, error=error, **fields)
        when = self.registry.get(job.task).retry.next_run_at(job.attempt, datetime.now(UTC))
        return Outcome(job.id, job.attempt, "queued", job.task, error=error, run_at=when, **fields)

    def _record(self, o: Outcome, correlation_id: str | None) -> None:
        """The outcome's event (counted once the database confirms it: see `succeeded`)."""
        if o.state == "succeeded" and not log.isEnabledFor(logging.DEBUG):  # the hot path: no event to build
            return
        fields: dict[str, Any] = {"job_id": o.job_id, "task": o.task, "attempt": o.attempt,
                                  "worker": self.worker_id, "duration_ms": round(o.duration * 1000, 1),
                                  "correlation_id": correlation_id}
        if o.state == "succeeded":
            emit("skiplock.job.completed", **fields)
        elif o.state == "queued":
            emit("skiplock.job.retrying", **fields, retry_at=o.run_at.isoformat() if o.run_at else None,
                 traceback=o.error)
        else:
            emit("skiplock.job.failed", **fields, traceback=o.error)

    def cancel_lost(self, held: set[uuid.UUID]) -> None:
        """Stop running the jobs this worker no longer holds (cancelled or rescued)."""
        for job_id, r in list(self.running.items()):
            if job_id not in held:
                emit("skiplock.job.lost", job_id=job_id, task=r.job.task, attempt=r.job.attempt,
                     worker=self.worker_id, correlation_id=r.job.correlation_id, reason="cancelled or lease lost")
                r.ctx.mark_cancelled()
                r.task.cancel()
                del self.running[job_id]
                if r.timer is not None:
                    r.timer.cancel()
                self.abandon(r)

    def abandon(self, r: Running) -> None:
        """Keep counting the slot of a task we stopped waiting for until it really ends; name it
        if it has not ended after OVERRUN_GRACE (it ignores cancellation)."""
        if r.task.done():
            return
        self.abandoned[r.task] = r

        def check() -> None:
            if self.abandoned.get(r.task) is r and not r.overran:
                emit("skiplock.job.abandoned", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
                     worker=self.worker_id, kind="task", correlation_id=r.job.correlation_id,
                     reason=f"still running {OVERRUN_GRACE}s after it was cancelled (it ignores cancellation); "
                            "it holds its slot until it returns")
        asyncio.get_running_loop().call_later(OVERRUN_GRACE, check)

    async def run(self) -> None:
        """Claim until stopped (or, in burst mode, until nothing is ready and nothing runs; or
        until abandoned handlers hold every slot)."""
        while not self.stopping.is_set():
            self.wakeup.clear()
            if self.stuck_slots >= self.concurrency:
                self.wedged = True
                emit("skiplock.worker.wedged", worker=self.worker_id, stuck=self.stuck_slots,
                     reason="abandoned handlers hold every slot; stopping so a fresh process can take over")
                return
            claimed = 0
            if self.free_slots > 0 and self.healthy():
                try:
                    claimed = await self.run_once()
                    self._failures = 0
                except (psycopg.Error, OSError) as exc:
                    self._unsure = True
                    self._failures += 1
                    delay = min(0.1 * 2**self._failures, 10.0) * random.uniform(0.5, 1.0)
                    emit("skiplock.worker.db_error", worker=self.worker_id, during="claim",
                         error=f"{type(exc).__name__}: {exc}".strip(), retry_in=round(delay, 2))
                    await self._sleep(delay)
                    continue
                if claimed and self._maybe_more and self.free_slots > 0:
                    continue  # the claim filled every slot it asked for: more may be ready now
                # A claim that found fewer jobs than free slots found them all: the next claim
                # waits for a NOTIFY, a freed slot or the poll (an idle worker used to run an
                # empty claim right after each pickup, before the handler had even started).
                if self.burst and not claimed and not self.running:
                    return
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        waits = [asyncio.ensure_future(self.wakeup.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
