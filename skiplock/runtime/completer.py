"""Buffered, fenced acknowledgements. Handlers' outcomes (and progress/checkpoint updates)
are collected and written one statement per flush: the flush starts as soon as something
is buffered, so under load batches grow by themselves while idle latency stays one round
trip. An outcome the database did not confirm stays buffered and is retried; so does one
whose row another transaction has locked (a handler that returned with its own row locked):
it is skipped, not waited for, so that the other jobs' acknowledgements still land, and sent
again with the next flush, at the latest after LOCKED_RETRY seconds (so a lock held only
briefly, by the rescuer or the heartbeat, costs little). It is still held meanwhile: the
heartbeat renews its lease like a running job's.

Values are checked before they are buffered (skiplock.storable). Should the database still
refuse a batch for its content (a data exception, not a lost connection), the batch is split
until the refused outcome is found; that job alone fails, saying why, and the rest is written."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .. import db
from ..context import JobContext
from ..events import emit
from ..queries import jobs
from ..storable import safe_text
from .executor import Outcome
from .inflight import InFlight
from .service import Service

MAX_BATCH = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024
"""Results and checkpoints per statement: a batch of large results stays far below
PostgreSQL's 1 GB bound on one value (the jsonb[] array)."""
LOCKED_RETRY = 0.25
"""Seconds before an outcome whose row was locked is sent again, if no other flush comes first."""


class Completer(Service):
    """Writes the outcomes buffered in the in-flight registry (`add`) and the progress and
    checkpoint reports of running handlers (`update`). `stop()` flushes what is buffered,
    retrying for up to `stop_timeout` seconds."""

    name = "completer"

    def __init__(self, pool: AsyncConnectionPool, inflight: InFlight, *, worker_id: str,
                 stop_timeout: float = 30.0) -> None:
        super().__init__()
        self.pool = pool
        self.inflight = inflight
        self.worker_id = worker_id
        self.stop_timeout = stop_timeout
        self._updates: dict[tuple[uuid.UUID, int], JobContext] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locked: set[uuid.UUID] = set()  # outcomes whose row was locked at the last try
        self._reported: set[uuid.UUID] = set()  # those already named in the log
        # Confirmed outcomes by the state written, and those fenced (no longer ours: ignored).
        self.counts = {"succeeded": 0, "queued": 0, "failed": 0, "waiting": 0, "fenced": 0}

    def add(self, outcome: Outcome) -> None:
        self.inflight.outcomes.append(outcome)
        self._wake.set()

    def update(self, ctx: JobContext) -> None:
        """Called by a handler's context, possibly from a worker thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_update, ctx)

    def _add_update(self, ctx: JobContext) -> None:
        self._updates[(ctx.job_id, ctx.attempt)] = ctx
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.inflight.outcomes) + len(self._updates)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        super().start()

    def _stop_timed_out(self) -> None:
        emit("skiplock.worker.db_error", worker=self.worker_id,
             error=f"{self.pending} acknowledgements unconfirmed at shutdown; their leases will expire "
                   "and the jobs will run again")

    async def _run(self) -> None:
        # Flushes as soon as something is buffered; on stop(), once the buffer is empty.
        while True:
            while self._updates or self._unsent():
                try:
                    await self.run_once()
                    self.failures = 0
                    self.inflight.acknowledged.set()
                except Exception as exc:  # noqa: BLE001 - nothing may end the one loop that acknowledges
                    emit("skiplock.worker.db_error", worker=self.worker_id, during="acknowledge",
                         error=f"{type(exc).__name__}: {exc}".strip())
                    await asyncio.sleep(self._failed(base=0.05, cap=5.0))
            self._wake.clear()
            if not self.inflight.outcomes:
                if self.stopping:
                    return
                await self._wait_for(self._wake)
            else:  # only outcomes whose rows are locked: again with the next flush, or after LOCKED_RETRY
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), LOCKED_RETRY)
                self._locked.clear()

    def _unsent(self) -> bool:
        """Whether an outcome waits that was not found locked at this round's last try."""
        locked = self._locked
        return any(o.job_id not in locked for o in self.inflight.outcomes)

    async def run_once(self) -> int:
        """Write up to MAX_BATCH buffered outcomes (MAX_BATCH_BYTES) and all buffered updates;
        returns how many outcomes were settled (written, or fenced: no longer ours). On error
        nothing is dropped; an outcome whose row is locked stays buffered."""
        batch = self._next_batch()
        updates = dict(self._updates)
        async with self.pool.connection() as conn:
            if updates:
                live = [c for key, c in updates.items() if not any((o.job_id, o.attempt) == key for o in batch)]
                if live:
                    await self._update(conn, live)
                for key, c in updates.items():
                    if self._updates.get(key) is c:
                        del self._updates[key]
            return await self._finish(conn, batch) if batch else 0

    def _next_batch(self) -> list[Outcome]:
        n = total = 0
        for o in self.inflight.outcomes:
            if n == MAX_BATCH or (n and total + o.size > MAX_BATCH_BYTES):
                break
            n += 1
            total += o.size
        return self.inflight.outcomes[:n]

    async def _finish(self, conn: db.AsyncConn, batch: list[Outcome]) -> int:
        """Acknowledge `batch`; returns how many were written or fenced. A refused batch is
        split in two; a refused single outcome is replaced, in the buffer too, by the job's
        failure. Parks (rare) go by a statement of their own, first."""
        parks = [o for o in batch if o.state == "waiting"]
        if parks:
            settled = await self._park(conn, parks)
            batch = [o for o in batch if o.state != "waiting"]
            return settled + (await self._finish(conn, batch) if batch else 0)
        try:
            done, locked = await jobs.finish_many_if_held(
                conn, worker_id=self.worker_id, ids=[o.job_id for o in batch],
                attempts=[o.attempt for o in batch], states=[o.state for o in batch],
                results=_column([db.stored_json(o.result_json) for o in batch]),
                errors=_column([o.error for o in batch]), run_ats=_column([o.run_at for o in batch]),
                checkpoints=_column([db.jsonb(o.checkpoint) if o.has_checkpoint else None for o in batch]),
                progresses=_column([db.jsonb(o.progress) for o in batch]))
        except Exception as exc:
            if not _refused(exc) or (len(batch) == 1 and batch[0].refused):
                raise  # a connection's fault, or even the bare failure was refused: retry later
            if len(batch) > 1:
                half = len(batch) // 2
                return await self._finish(conn, batch[:half]) + await self._finish(conn, batch[half:])
            outcomes = self.inflight.outcomes
            failure = _refused_outcome(batch[0], exc)
            outcomes[next(i for i, o in enumerate(outcomes) if o is batch[0])] = failure
            emit("skiplock.job.failed", job_id=failure.job_id, task=failure.task, attempt=failure.attempt,
                 worker=self.worker_id, traceback=failure.error)
            return await self._finish(conn, [failure])
        self._settle(batch, locked)
        counts = self.counts
        for o in batch:
            if o.job_id in done:
                counts[o.state] += 1
            elif o.job_id in locked:
                self._locked.add(o.job_id)
                if o.job_id not in self._reported:
                    self._reported.add(o.job_id)
                    emit("skiplock.job.ack_blocked", job_id=o.job_id, task=o.task, attempt=o.attempt,
                         worker=self.worker_id, reason="its row is locked by another transaction (the handler's "
                                                       "own?); the outcome is sent again until the lock is released")
            else:
                counts["fenced"] += 1
                emit("skiplock.job.fenced", job_id=o.job_id, task=o.task, attempt=o.attempt,
                     worker=self.worker_id, reason="no longer held by this attempt; answer ignored")
            if o.job_id not in locked and self._reported:
                self._reported.discard(o.job_id)
        return len(batch) - len(locked)

    async def _park(self, conn: db.AsyncConn, parks: list[Outcome]) -> int:
        """Park these jobs (fenced; the rows are waited for, not skipped: parks are rare)."""
        done = await jobs.park_many_if_held(
            conn, worker_id=self.worker_id, ids=[o.job_id for o in parks], attempts=[o.attempt for o in parks],
            reasons=[o.error or "" for o in parks], datas=[db.stored_json(o.park_json) for o in parks],
            checkpoints=[db.jsonb(o.checkpoint) if o.has_checkpoint else None for o in parks],
            progresses=[db.jsonb(o.progress) for o in parks])
        self._settle(parks, set())
        for o in parks:
            if o.job_id in done:
                self.counts["waiting"] += 1
            else:
                self.counts["fenced"] += 1
                emit("skiplock.job.fenced", job_id=o.job_id, task=o.task, attempt=o.attempt,
                     worker=self.worker_id, reason="no longer held by this attempt; its park was ignored")
        return len(parks)

    def _settle(self, batch: list[Outcome], locked: set[uuid.UUID]) -> None:
        """Take `batch` out of the buffer, but for the outcomes whose row was locked."""
        outcomes = self.inflight.outcomes
        if not locked and outcomes and outcomes[0] is batch[0]:
            del outcomes[:len(batch)]  # the common case: the batch is the buffer's head
            return
        gone = {id(o) for o in batch if o.job_id not in locked}
        outcomes[:] = [o for o in outcomes if id(o) not in gone]

    async def _update(self, conn: db.AsyncConn, live: list[JobContext]) -> None:
        """Write progress and checkpoints; a refused batch is split, and a refused single
        update dropped: the job's outcome carries the same values and fails alone."""
        try:
            await jobs.update_many_if_held(
                conn, worker_id=self.worker_id, ids=[c.job_id for c in live], attempts=[c.attempt for c in live],
                checkpoints=[db.jsonb(c.pending_checkpoint) if c.has_checkpoint else None for c in live],
                progresses=[db.jsonb(c.pending_progress) for c in live])
        except Exception as exc:
            if not _refused(exc):
                raise
            if len(live) > 1:
                half = len(live) // 2
                await self._update(conn, live[:half])
                await self._update(conn, live[half:])
                return
            c = live[0]
            if self._updates.get((c.job_id, c.attempt)) is c:
                del self._updates[(c.job_id, c.attempt)]
            emit("skiplock.worker.db_error", worker=self.worker_id, during="update", job_id=c.job_id,
                 error=f"progress or checkpoint refused: {type(exc).__name__}: {exc}".strip())


def _refused(exc: BaseException) -> bool:
    """The database refused what was sent (SQLSTATE class 22, a data exception, or 23, a
    constraint), or psycopg could not convert it: the content's fault, not the connection's."""
    if isinstance(exc, psycopg.Error):
        return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)
    return isinstance(exc, TypeError | ValueError)


def _refused_outcome(o: Outcome, exc: BaseException) -> Outcome:
    """The job's failure in place of an outcome the database refused, without the values."""
    error = (f"the database refused this job's outcome ({o.state}): {type(exc).__name__}: {exc}. The job "
             "failed without retrying; its result, checkpoint and progress were not stored.")
    if o.error:
        error += f" The handler's error was:\n{o.error}"
    return Outcome(job_id=o.job_id, attempt=o.attempt, state="failed", task=o.task, error=safe_text(error),
                   duration=o.duration, refused=True)


def _column(values: list[Any]) -> list[Any] | None:
    """A column of the acknowledgement, or None when every value is NULL (no-op jobs: no
    result, error, checkpoint or progress). unnest() pads a NULL array with NULLs, and
    sending nothing saves psycopg from dumping thousands of NULLs per flush."""
    for v in values:
        if v is not None:
            return values
    return None
