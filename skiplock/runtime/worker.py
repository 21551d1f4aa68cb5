"""A worker process: composes the claim loop (producer) with its background services
(completer, heartbeat, watchdog, listener, rescuers, summary, pruner: `Worker.services`), hands
them the one in-flight registry, and owns the one shutdown path:

signal -> stop claiming -> wait up to the grace period for running jobs -> cancel the rest
(a sync handler's thread cannot be cancelled: it is told through `ctx.cancelled`) and wait up
to STOP_WAIT for them to stop -> flush acknowledgements -> release to `queued` the jobs whose
handlers stopped -> unregister. A job whose handler is still running is *not* released (it
would run twice at once): it is named in the stopped event as abandoned, and its lease lapses
after the process exits, so the rescuer re-queues it. In a process of its own (`own_process`)
the worker exits within the grace period plus watchdog.SHUTDOWN_BOUND whatever handlers do.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Sequence

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from .. import catalog, db
from ..backoff import retry_delay
from ..events import emit
from ..queries import jobs, workers
from ..storable import MAX_RESULT_BYTES
from ..tasks import TaskRegistry
from ..tasks import registry as default_registry
from . import threads
from .completer import Completer
from .heartbeat import Heartbeat
from .inflight import InFlight, Running
from .listener import Listener
from .producer import Producer
from .pruner import Pruner
from .rescuer import DeadWorkerRescuer, Rescuer
from .scheduler import Scheduler
from .service import Lifecycle
from .summary import Summary
from .transactions import HandlerTransactions
from .watchdog import EXIT_WEDGED, SHUTDOWN_BOUND, Watchdog

STOP_WAIT = 3.0
"""Seconds a stopping worker waits, after the grace period and the cancellation, for handlers
to stop before it abandons them (leaves their jobs to the rescuer)."""


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"Worker: {name} must be {'>= 0' if allow_zero else '> 0'}, not {value!r}")
    return value


class Worker:
    """Runs jobs from `queues` (None: every queue) with up to `concurrency` at once."""

    def __init__(self, url: str, *, queues: Sequence[str] | None = None, concurrency: int = 10,
                 registry: TaskRegistry | None = None, lease_seconds: float = 30.0,
                 heartbeat_seconds: float | None = None, poll_interval: float = 1.0, grace_seconds: float = 10.0,
                 rescue_interval: float = 5.0, retention_seconds: float | None = 7 * 86400,
                 prune_interval: float = 60.0, summary_interval: float = 30.0, burst: bool = False,
                 listen: bool = True, worker_id: str | None = None, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 10_000:
            raise ValueError(f"Worker: concurrency must be an integer from 1 to 10000, not {concurrency!r}")
        if not isinstance(max_result_bytes, int) or isinstance(max_result_bytes, bool) or max_result_bytes < 1:
            raise ValueError(f"Worker: max_result_bytes must be an integer >= 1, not {max_result_bytes!r}")
        self.max_result_bytes = max_result_bytes
        self.url = url
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.registry = registry if registry is not None else default_registry
        self.lease_seconds = _positive("lease_seconds", lease_seconds)
        self.heartbeat_seconds = _positive("heartbeat_seconds", heartbeat_seconds or lease_seconds / 3)
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.grace_seconds = _positive("grace_seconds", grace_seconds, allow_zero=True)
        self.rescue_interval = _positive("rescue_interval", rescue_interval)
        self.retention_seconds = retention_seconds
        self.prune_interval = prune_interval
        self.summary_interval = summary_interval
        self.burst = burst
        self.listen = listen
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop_requested = asyncio.Event()
        self.started = asyncio.Event()
        self.abandoned: list[uuid.UUID] = []  # jobs whose handlers still ran at the end of run()
        self.exit_code = 0
        self.inflight = InFlight(self.id)
        self.registration = workers.Registration(self.id, socket.gethostname(), os.getpid(), self.queues,
                                                 self.concurrency)
        # The heartbeat runs on its own thread and connection (a blocked event loop must not
        # stop it); the watchdog, built here for install_signal_handlers(), halts it if wedged.
        self.heartbeat = Heartbeat(url, self.inflight, worker=self.registration, lease_seconds=self.lease_seconds,
                                   interval=self.heartbeat_seconds, on_lost=self.inflight.lose)
        self.watchdog = Watchdog(self.id, lease_seconds=self.lease_seconds, grace_seconds=self.grace_seconds,
                                 request_stop=self.request_stop, held=self.inflight.held_ids,
                                 halt=self.heartbeat.halt)

    def request_stop(self) -> None:
        """Begin the graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        """Make this worker the owner of its process (what `skiplock worker` does): SIGTERM and
        SIGINT stop it even while a handler blocks the event loop, a second one or the hard
        deadline ends the process, and a job blocking the loop past its timeout is interrupted."""
        self.watchdog.own_process()

    def leftovers(self) -> str | None:
        """What would keep this process alive after run() (None: nothing): handler threads,
        other non-daemon threads, or handlers' tasks that ignore cancellation."""
        found = []
        if threads.any_running():
            found.append("sync handler threads")
        # The loop's default executor ("asyncio_N", e.g. psycopg's address lookups) is left to
        # asyncio: its threads idle; a handler that stuck one is bounded by the exit deadline.
        others = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()
                  and not t.name.startswith("asyncio_")]
        if others:
            found.append(f"threads {', '.join(others[:5])}")
        if self.inflight.abandoned:
            found.append(f"{len(self.inflight.abandoned)} handler tasks ignoring cancellation")
        return "; ".join(found) or None

    def services(self, pool: AsyncConnectionPool, completer: Completer, producer: Producer) -> list[Lifecycle]:
        """Every background piece beside the claim loop, in the order they start; they stop in
        the reverse order, after the claim loop and the drain (the completer last, so that it
        flushes every outcome). A new piece (a scheduler) is added here."""
        services: list[Lifecycle] = [completer, self.heartbeat, self.watchdog]
        if self.listen:  # also the worker's liveness lock, and prompt cancellation
            services.append(Listener(self.url, producer.notify, queues=self.queues, on_cancel=self.inflight.cancel,
                                     worker=self.registration))
        services.append(Rescuer(pool, interval=self.rescue_interval,
                                stale_worker_seconds=max(3600, self.lease_seconds * 10)))
        services.append(DeadWorkerRescuer(pool))
        services.append(Summary(pool, self.inflight, completer.counts, worker_id=self.id, queues=self.queues,
                                interval=self.summary_interval))
        services.append(Scheduler(pool, self.registry))
        if self.retention_seconds:
            services.append(Pruner(pool, interval=self.prune_interval, retention_seconds=self.retention_seconds))
        return services

    async def run(self) -> None:
        # No check on checkout: it cost a round trip per claim and per flush (~0.6 ms of each
        # pickup); every worker query is retried after a failure, on a fresh connection.
        # A short pool timeout: while the database is away every service is waiting in the pool,
        # and the pool (reconnect_timeout=0) makes a new connection attempt only for a new
        # request; each timed-out request is retried, so recovery follows within seconds.
        # Seven connections: two claim statements at once (producer.claim_parts), the completer's
        # flush, and the two rescuers, summary and pruner (the heartbeat and the listener have
        # their own).
        pool = db.make_pool(self.url, min_size=2, max_size=7, name=f"skiplock-worker-{self.id}",
                            check=False, timeout=min(5.0, self.lease_seconds / 4))
        await pool.open()
        completer = Completer(pool, self.inflight, worker_id=self.id, stop_timeout=SHUTDOWN_BOUND - STOP_WAIT - 1)
        transactions = HandlerTransactions(self.url, worker_id=self.id, size=self.concurrency, counts=completer.counts,
                                           lock_wait=self.lease_seconds / 3)
        producer = Producer(pool, self.inflight, self.registry, worker_id=self.id, queues=self.queues,
                            concurrency=self.concurrency, lease_seconds=self.lease_seconds,
                            poll_interval=self.poll_interval, on_outcome=completer.add, on_update=completer.update,
                            healthy=self.heartbeat.healthy, burst=self.burst, max_result_bytes=self.max_result_bytes,
                            transactions=transactions)
        services = self.services(pool, completer, producer)
        await self._register(pool)
        for s in services:
            s.start()
        emit("skiplock.worker.started", worker=self.id, queues=",".join(self.queues or ["*"]),
             concurrency=self.concurrency, lease_seconds=self.lease_seconds)
        self.started.set()
        producer.start()
        claim_loop = asyncio.create_task(producer.wait(), name="skiplock.claim-loop-end")
        stop_wait = asyncio.create_task(self._stop_requested.wait(), name="skiplock.stop-wait")
        try:
            await asyncio.wait([claim_loop, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            claim_loop.cancel()
            self.watchdog.arm_deadline()
            emit("skiplock.worker.stopping", worker=self.id, running=len(self.inflight.running))
            await producer.stop()
            if producer.wedged:
                self.exit_code = EXIT_WEDGED
            leftover = await self._drain()
            for s in reversed(services):
                await s.stop()
            await self._release(pool, leftover)
            await transactions.close()
            try:
                async with pool.connection() as conn:
                    await workers.unregister_worker(conn, self.id)
            except Exception:  # noqa: BLE001, S110 - the stale-worker sweep removes it later
                pass
            await pool.close()
            counts = completer.counts
            emit("skiplock.worker.stopped", worker=self.id, claimed=producer.claimed, succeeded=counts["succeeded"],
                 failed=counts["failed"], retried=counts["queued"], parked=counts["waiting"], fenced=counts["fenced"],
                 abandoned=",".join(map(str, self.abandoned)) or None)

    async def _register(self, pool: AsyncConnectionPool) -> None:
        failures = 0
        while True:
            try:
                async with pool.connection() as conn:
                    await workers.register_worker(conn, self.registration)
                    await catalog.record_tasks(conn, self.registry, worker_id=self.id)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying until the database is ready
                error = str(exc).strip()
                if isinstance(exc, psycopg.errors.UndefinedTable):
                    error = "the database has no skiplock schema yet: run `skiplock migrate` (make migrate)"
                emit("skiplock.worker.db_error", worker=self.id, during="register", error=error)
                if self._stop_requested.is_set():
                    return
                failures += 1
                await asyncio.sleep(retry_delay(failures, base=0.1, cap=10.0))

    async def _drain(self) -> list[Running]:
        """Let running jobs finish within the grace period; then stop the rest: cancel async
        handlers, tell sync ones through ctx.cancelled (cancelling the task that awaits a
        thread would not stop the thread), and wait up to STOP_WAIT. Returns those that
        stopped without an outcome (to release); those still running are abandoned, not released."""
        running = list(self.inflight.running.values())
        if running:
            await asyncio.wait([r.task for r in running], timeout=self.grace_seconds)
        rest = [r for r in running if not r.task.done()]
        in_threads = {j.job_id for j in threads.running(self.id)}
        for r in rest:
            self.inflight.interrupted.add(r.job.id)
            r.ctx.mark_cancelled()
            if r.job.id not in in_threads:
                r.task.cancel()
        if rest:
            await asyncio.wait([r.task for r in rest], timeout=STOP_WAIT)
        self.abandoned = [r.job.id for r in rest if not r.task.done()]
        for r in rest:
            if not r.task.done():
                emit("skiplock.job.abandoned", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
                     worker=self.id, kind="shutdown",
                     reason=f"its handler did not stop within the grace period and {STOP_WAIT}s after it was "
                            "cancelled; not released (it would run twice at once): the rescuer re-queues it "
                            "after its lease")
        return [r for r in rest if r.task.done()]

    async def _release(self, pool: AsyncConnectionPool, stopped: list[Running]) -> None:
        """Give the jobs whose handlers stopped at shutdown back to their queue, with their last
        progress and checkpoint (an outcome we could not flush is not ours to release)."""
        unconfirmed = self.inflight.unconfirmed()
        leftover = [r for r in stopped if r.job.id not in unconfirmed]
        for attempt in range(1, 11):
            if not leftover:
                return
            try:
                async with pool.connection() as conn:
                    released = await jobs.release_many_if_held(
                        conn, worker_id=self.id, ids=[r.job.id for r in leftover],
                        attempts=[r.job.attempt for r in leftover],
                        checkpoints=[db.jsonb(r.ctx.pending_checkpoint) if r.ctx.has_checkpoint else None
                                     for r in leftover],
                        progresses=[db.jsonb(r.ctx.pending_progress) for r in leftover])
                for r in leftover:
                    emit("skiplock.job.released", job_id=r.job.id, task=r.job.task, attempt=r.job.attempt,
                         worker=self.id, correlation_id=r.job.correlation_id, released=r.job.id in released)
                return
            except Exception as exc:  # noqa: BLE001 - if we cannot release, the rescuer will
                emit("skiplock.worker.db_error", worker=self.id, during="release", error=str(exc).strip())
                await asyncio.sleep(retry_delay(attempt, base=0.1, cap=5.0))
