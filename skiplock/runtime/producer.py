"""The claim loop: one per worker process. It claims `LIMIT <free slots>` due jobs in one
statement, starts each in its own asyncio task, and sleeps until a NOTIFY, a freed slot or
the poll interval. Database errors never end it: it backs off and tries again.

What runs is kept in the worker's in-flight registry (runtime/inflight.py). A slot stays taken
while its handler's code runs, even after the worker gave up on it (abandoned): a handler
that ignores its timeout has its attempt recorded as timed out. When abandoned handlers hold
every slot, the claim loop ends and the worker stops (`wedged`) so that a fresh process can
take over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ..context import JobContext
from ..events import emit, log
from ..job import ClaimedJob
from ..limits import QueueLimits
from ..queries import jobs, queues
from ..storable import MAX_RESULT_BYTES
from ..tasks import TaskRegistry
from .executor import Outcome, execute, failed_attempt
from .inflight import OVERRUN_GRACE, InFlight, Running
from .service import Service
from .threads import JobRef, current_job
from .transactions import HandlerTransactions

CLAIM_PART = 200
"""Rows per claim statement before a claim is split in two. Measured with no-op jobs at
concurrency 400 (docs/performance.md): two concurrent claims of 200 drained 26.1k jobs/s
where one claim of 400 drained 22.5k (medians of 4, alternating runs)."""
MAX_CLAIM_PARTS = 2


def claim_parts(free: int) -> list[int]:
    """How many rows each concurrent claim statement asks for: `free` split evenly into at
    most MAX_CLAIM_PARTS statements of about CLAIM_PART rows."""
    n = max(1, min(MAX_CLAIM_PARTS, -(-free // CLAIM_PART)))
    return [free // n + (1 if i < free % n else 0) for i in range(n)]


class Producer(Service):
    """Claims and starts jobs from start() until stop() (or, in burst mode, until nothing is
    ready and nothing runs; or until abandoned handlers hold every slot: `wedged`).

    `on_outcome` takes each attempt's outcome (the completer's `add`), `on_update` each
    progress or checkpoint report, and `healthy()` says whether leases are being renewed."""

    name = "producer"

    def __init__(self, pool: AsyncConnectionPool, inflight: InFlight, registry: TaskRegistry, *,
                 worker_id: str, queues: Sequence[str] | None, concurrency: int, lease_seconds: float,
                 poll_interval: float, on_outcome: Callable[[Outcome], None],
                 on_update: Callable[[JobContext], None], healthy: Callable[[], bool] = lambda: True,
                 burst: bool = False, max_result_bytes: int = MAX_RESULT_BYTES,
                 transactions: HandlerTransactions | None = None, limits: QueueLimits | None = None) -> None:
        super().__init__()
        self.pool = pool
        self.inflight = inflight
        self.registry = registry
        self.worker_id = worker_id
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.on_outcome = on_outcome
        self.on_update = on_update
        self.healthy = healthy
        self.burst = burst
        self.max_result_bytes = max_result_bytes
        self.transactions = transactions
        self.ack_backlog = max(2 * concurrency, 1000)
        self.wedged = False
        self.claimed = 0
        self._wakeup = asyncio.Event()
        self._held_back = False
        self._maybe_more = True
        self._unsure = False  # a claim failed: it may have committed rows we never received
        self.limits = limits if limits is not None else QueueLimits()
        self.turn = 0  # claims so far: which queue goes first among equals (fair queues)
        self.held_by_limit: float | None = None
        """After a short claim from queues with flow limits: seconds until a rate limit gives
        room again (inf: only a finished job can); None when no limit applies."""

    def notify(self, _queue: str = "") -> None:
        """New jobs may be ready (a NOTIFY, or the listener reconnected): look now."""
        self._maybe_more = True
        self._wakeup.set()

    def _slot_freed(self) -> None:
        # A freed slot is worth a claim only if the last claim filled every slot (more may be
        # waiting); otherwise the next NOTIFY or poll finds new jobs. Claiming on every freed
        # slot ran an empty claim after each job of an idle worker.
        if self._maybe_more:
            self._wakeup.set()

    @property
    def free_slots(self) -> int:
        """Execution slots free to claim into. Outcomes still waiting to be acknowledged count
        too once there are more than one flush can take: without that back-pressure a claim
        loop faster than the database's acknowledgements piles up unconfirmed work."""
        self._held_back = len(self.inflight.outcomes) >= self.ack_backlog
        if self._held_back:
            return 0
        return self.concurrency - len(self.inflight.running) - self.inflight.stuck_slots()

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
            claimed = await self._claim(free)
        else:
            # Statements on two connections, so PostgreSQL works on both at once (one claim
            # statement runs on one core). Jobs a part claimed are started even if another part
            # failed; the failure then backs the loop off like any other.
            results = await asyncio.gather(*(self._claim(n) for n in parts), return_exceptions=True)
            claimed = [j for r in results if not isinstance(r, BaseException) for j in r]
            error = next((r for r in results if isinstance(r, BaseException)), None)
        self._maybe_more = len(claimed) == free
        debug = log.isEnabledFor(logging.DEBUG)
        for job in claimed:
            self._start(job, debug)
        self.claimed += len(claimed)
        self.held_by_limit = None if self._maybe_more or error is not None else await self._limit_wait()
        if error is not None:
            raise error
        return len(claimed)

    async def _release_unknown_holds(self) -> None:
        """Give back what a failed claim may have taken without our knowing. Runs in the claim
        loop, so no claim of ours is in flight; every job we hold is in the registry."""
        _, held = self.inflight.holds()
        async with self.pool.connection() as conn:
            released = await jobs.release_unknown_holds(conn, worker_id=self.worker_id, known=list(held))
        self._unsure = False
        for r in released:
            emit("skiplock.job.orphaned", job_id=r["id"], task=r["task"], attempt=r["attempt"],
                 worker=self.worker_id, reason="taken by a claim whose answer was lost; back in its queue, unstarted")

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        self.turn += 1
        async with self.pool.connection() as conn:
            limited = self._limited(await self.limits.flow_limited(conn))
            claim = jobs.claim_batch_limited if limited else jobs.claim_batch
            return await claim(conn, worker_id=self.worker_id, queues=self.queues, limit=limit,
                               lease_seconds=self.lease_seconds, turn=self.turn)

    def _limited(self, flow_limited: frozenset[str]) -> frozenset[str]:
        """The served queues among those with flow limits."""
        return flow_limited if self.queues is None else flow_limited.intersection(self.queues)

    async def _due_but_held(self) -> bool:
        """Burst mode: whether due jobs wait that a limit held back (then it does not exit yet)."""
        if self.held_by_limit is None:
            return False
        async with self.pool.connection() as conn:
            return await queues.count_ready(conn, self.queues) > 0

    async def _limit_wait(self) -> float | None:
        """After a claim that found fewer jobs than free slots: None if no served queue has a flow
        limit (it found every due job); else how long until a rate limit gives room again (inf:
        only a job of the queue finishing can, which for our own jobs is their acknowledgement)."""
        async with self.pool.connection() as conn:
            served = self._limited(await self.limits.flow_limited(conn))
            if not served:
                return None
            wait = await queues.next_rate_room(conn, sorted(served))
        return float("inf") if wait is None else max(0.0, wait)

    def _start(self, job: ClaimedJob, debug: bool) -> None:
        ctx = JobContext(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
                         max_attempts=job.max_attempts, checkpoint=job.checkpoint, worker_id=self.worker_id,
                         on_update=self.on_update, max_json_bytes=self.max_result_bytes,
                         correlation_id=job.correlation_id,
                         open_transaction=self.transactions.open_for if self.transactions else None,
                         review=job.review)
        if debug:
            emit("skiplock.job.started", job_id=job.id, task=job.task, attempt=job.attempt, worker=self.worker_id,
                 correlation_id=job.correlation_id)
        # One shared name: formatting the job id into each task's name cost more than the no-op job.
        started = time.monotonic()
        task = asyncio.create_task(self._execute(job, ctx, started), name="skiplock.job")
        r = Running(job, ctx, task, started)
        self.inflight.add(r)
        if job.timeout is not None:
            loop = asyncio.get_running_loop()
            r.timer = loop.call_at(loop.time() + job.timeout + OVERRUN_GRACE, self._overran, r)

    async def _execute(self, job: ClaimedJob, ctx: JobContext, started: float) -> None:
        # Names the job for the code it runs (tasks and threads it starts inherit it): the
        # watchdog reports who blocked the loop, and sync handler threads carry the job.
        current_job.set(JobRef(job.id, job.attempt, job.task, self.worker_id, job.timeout, started))
        ours = True
        tx = self.transactions
        try:
            outcome = await execute(job, ctx, self.registry, max_result_bytes=self.max_result_bytes)
            if tx is not None and tx.holds(ctx):
                # its writes and its acknowledgement commit together, here, while the job still counts as running
                settled = await tx.settle(ctx, outcome, lambda error: failed_attempt(
                    job, ctx, self.registry.get(job.task).retry, error, duration=outcome.duration))
                if settled is None:
                    self._record(outcome, job.correlation_id)
                    return
                outcome = settled
        except asyncio.CancelledError:
            return  # cancelled, rescued or released: whoever did that owns the row now
        finally:
            if tx is not None:
                await tx.discard(ctx)  # a transaction the attempt left open is rolled back
            ours = self.inflight.leave(job.id)
            self._slot_freed()
        if not ours:
            return  # abandoned past its timeout: the timeout was recorded for it
        if job.id in self.inflight.interrupted and outcome.state != "succeeded":
            return  # it stopped because the worker is stopping: released, not failed
        self._record(outcome, job.correlation_id)
        self.on_outcome(outcome)

    def _overran(self, r: Running) -> None:
        """The handler ignored its timeout for OVERRUN_GRACE: record the timeout, abandon it."""
        if not self.inflight.overrun(r):
            return
        error = (f"TimeoutError: task {r.job.task!r} ran longer than its timeout of {r.job.timeout}s and ignored "
                 "its cancellation")
        outcome = failed_attempt(r.job, r.ctx, self.registry.get(r.job.task).retry, error,
                                 duration=time.monotonic() - r.started)
        self._record(outcome, r.job.correlation_id)
        self.on_outcome(outcome)

    def _record(self, o: Outcome, correlation_id: str | None) -> None:
        """The outcome's event (counted once the database confirms it: Completer.counts)."""
        if o.state == "succeeded" and not log.isEnabledFor(logging.DEBUG):  # the hot path: no event to build
            return
        fields: dict[str, Any] = {"job_id": o.job_id, "task": o.task, "attempt": o.attempt,
                                  "worker": self.worker_id, "duration_ms": round(o.duration * 1000, 1),
                                  "correlation_id": correlation_id}
        if o.state == "succeeded":
            emit("skiplock.job.completed", **fields)
        elif o.state == "waiting":
            emit("skiplock.job.parked", **fields, reason=o.error)
        elif o.state == "queued":
            emit("skiplock.job.retrying", **fields, retry_at=o.run_at.isoformat() if o.run_at else None,
                 traceback=o.error)
        else:
            emit("skiplock.job.failed", **fields, traceback=o.error)

    async def _run(self) -> None:
        inflight = self.inflight
        while not self.stopping:
            self._wakeup.clear()
            inflight.acknowledged.clear()
            if inflight.stuck_slots() >= self.concurrency:
                self.wedged = True
                emit("skiplock.worker.wedged", worker=self.worker_id, stuck=inflight.stuck_slots(),
                     reason="abandoned handlers hold every slot; stopping so a fresh process can take over")
                return
            claimed = 0
            if self.free_slots > 0 and self.healthy():
                try:
                    claimed = await self.run_once()
                    self.failures = 0
                except (psycopg.Error, OSError) as exc:
                    self._unsure = True
                    delay = self._failed(base=0.1, cap=10.0)
                    emit("skiplock.worker.db_error", worker=self.worker_id, during="claim",
                         error=f"{type(exc).__name__}: {exc}".strip(), retry_in=round(delay, 2))
                    await self._wait_for(self._wakeup, within=delay)
                    continue
                if claimed and self._maybe_more and self.free_slots > 0:
                    continue  # the claim filled every slot it asked for: more may be ready now
                # A claim that found fewer jobs than free slots found them all: the next claim
                # waits for a NOTIFY, a freed slot or the poll (an idle worker used to run an
                # empty claim right after each pickup, before the handler had even started).
                if self.burst and not claimed and not inflight.running and not await self._due_but_held():
                    return
            # Held back by unconfirmed outcomes, or by a queue's max_running: room comes with the
            # next acknowledgement (of our jobs; another worker's is seen at the poll). Held back
            # by a rate limit: room comes when its window moves on.
            held = self._held_back or self.held_by_limit is not None
            wake = (self._wakeup, inflight.acknowledged) if held else (self._wakeup,)
            within = self.poll_interval
            if self.held_by_limit is not None:
                within = min(within, self.held_by_limit + 0.001)
            await self._wait_for(*wake, within=within)

