"""What a worker holds, in the one registry the worker owns and hands to the producer, the
completer and the heartbeat: the jobs whose handlers run, the outcomes waiting for their
acknowledgement, and the handlers the worker gave up on that still run (abandoned).

A job is held (its lease renewed, its row fenced to this worker and attempt) from its claim
until the database confirms its outcome, or until it is lost (cancelled or rescued), or
released at shutdown. An abandoned handler's slot stays taken until its code returns: a
handler that ignored its timeout or cancellation for OVERRUN_GRACE (an async one swallowing
CancelledError, a sync one whose thread cannot be stopped) is named in the log, and counted.

Read and changed on the event loop only, except `held_ids()` (the watchdog's thread)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ..context import JobContext
from ..events import emit
from ..job import ClaimedJob
from . import threads
from .executor import Outcome

OVERRUN_GRACE = 2.0
"""Seconds a handler has to stop after its timeout or a cancellation before it is abandoned."""

Attempts = dict[uuid.UUID, int]  # job id -> the attempt this worker holds it under


@dataclass(eq=False)
class Running:
    job: ClaimedJob
    ctx: JobContext
    task: asyncio.Task[None]
    started: float = 0.0  # time.monotonic()
    overran: bool = False  # abandoned past its timeout; its outcome was recorded for it
    timer: asyncio.TimerHandle | None = None


class InFlight:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.running: dict[uuid.UUID, Running] = {}
        self.outcomes: list[Outcome] = []
        """Outcomes waiting for their acknowledgement, oldest first (the completer's buffer)."""
        self.abandoned: dict[asyncio.Task[None], Running] = {}  # code still running for a job no longer ours
        self.interrupted: set[uuid.UUID] = set()  # told to stop at shutdown: released, not failed
        self.acknowledged = asyncio.Event()
        """Set by the completer after each flush; a claim loop held back by unconfirmed
        outcomes clears it and waits on it."""

    def holds(self) -> tuple[Attempts, Attempts]:
        """(running, held): the running jobs, and every job held (running or unconfirmed)."""
        running = {r.job.id: r.job.attempt for r in self.running.values()}
        return running, running | self.unconfirmed()

    def unconfirmed(self) -> Attempts:
        """Jobs whose outcome waits for its acknowledgement: still held, and not ours to release."""
        return {o.job_id: o.attempt for o in self.outcomes}

    def held_ids(self) -> list[str]:
        """The running jobs' ids; safe from another thread (copies, no iteration of a live dict)."""
        return [str(i) for i in list(self.running)]

    def stuck_slots(self) -> int:
        """Slots held by abandoned handlers (async tasks and sync threads) still running."""
        return len(self.abandoned) + len(threads.abandoned(self.worker_id))

    def add(self, r: Running) -> None:
        self.running[r.job.id] = r

    def leave(self, job_id: uuid.UUID) -> bool:
        """The current job task ends: free its slot. False if its outcome was already recorded
        (it was abandoned past its timeout)."""
        task = asyncio.current_task()
        current = self.running.get(job_id)
        if current is not None and current.task is task:  # only our own entry
            del self.running[job_id]
            if current.timer is not None:
                current.timer.cancel()
            return True
        if task is not None and (gone := self.abandoned.pop(task, None)) is not None:
            emit("skiplock.job.abandoned_returned", job_id=job_id, task=gone.job.task, attempt=gone.job.attempt,
                 worker=self.worker_id, kind="task")
            return not gone.overran
        return True

    def overrun(self, r: Running) -> bool:
        """`r` ignored its timeout for OVERRUN_GRACE: abandon it (its slot stays taken until it
        returns). False if it ended meanwhile; True: the caller records its timeout."""
        if self.running.get(r.job.id) is not r or r.task.done():
            return False
        del self.running[r.job.id]
        r.overran = True
        self.abandoned[r.task] = r
        emit("skiplock.job.abandoned", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
             worker=self.worker_id, kind="task",
             reason=f"still running {OVERRUN_GRACE}s after its timeout of {r.job.timeout}s (it ignores "
                    "cancellation); the timeout is recorded and it holds its slot until it returns")
        return True

    def cancel(self, job_id: uuid.UUID, attempt: int) -> None:
        """The job was cancelled while this attempt ran (skiplock.cancel's notification)."""
        self.lose({job_id: attempt}, reason="cancelled")

    def lose(self, lost: Mapping[uuid.UUID, int], *, reason: str = "cancelled or lease lost") -> None:
        """Stop running the jobs this worker no longer holds (cancelled or rescued), given as
        {id: attempt}: a job since claimed again under a newer attempt is left alone."""
        for job_id, attempt in lost.items():
            r = self.running.get(job_id)
            if r is None or r.job.attempt != attempt:
                continue
            emit("skiplock.job.lost", job_id=job_id, task=r.job.task, attempt=r.job.attempt,
                 worker=self.worker_id, correlation_id=r.job.correlation_id, reason=reason)
            r.ctx.mark_cancelled()
            r.task.cancel()
            del self.running[job_id]
            if r.timer is not None:
                r.timer.cancel()
            self._abandon(r)

    def _abandon(self, r: Running) -> None:
        """Keep counting the slot of a task we stopped waiting for until it really ends; name it
        if it has not ended after OVERRUN_GRACE (it ignores cancellation)."""
        if r.task.done():
            return
        self.abandoned[r.task] = r

        def check() -> None:
            if self.abandoned.get(r.task) is r and not r.overran:
                emit("skiplock.job.abandoned", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
                     worker=self.worker_id, kind="task",
                     reason=f"still running {OVERRUN_GRACE}s after it was cancelled (it ignores cancellation); "
                            "it holds its slot until it returns")
        asyncio.get_running_loop().call_later(OVERRUN_GRACE, check)
