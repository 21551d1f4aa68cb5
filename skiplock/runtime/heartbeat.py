"""Lease renewal, on a thread of its own with a connection of its own, so that nothing a
handler does on the event loop (a blocking call, a CPU loop) stops it.

Every `interval` seconds it extends the lease of each job the worker still holds (fenced by
attempt): running, or finished and waiting for its acknowledgement. It also touches the
worker's row in skiplock.workers. Running jobs missing from the answer were cancelled or
rescued: `run_once()` returns them, and the heartbeat hands them to `on_lost` on the event
loop (the worker stops running them). A row locked by another transaction (a handler that
updates its own job row and keeps its transaction open) is skipped, not waited for: one
handler's lock must not hold up every other job's renewal. A worker whose heartbeats keep
failing stops claiming (`healthy()` turns false) until one succeeds again.

What the worker holds is read on the event loop; while the loop is blocked the last answer
is used (nothing on the loop can change it meanwhile)."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg.errors

from ..events import emit
from ..queries import jobs, session, workers
from .inflight import Attempts, InFlight
from .service import ThreadService

log = logging.getLogger("skiplock")

SNAPSHOT_WAIT = 0.5
"""How long a round waits for the event loop to say what the worker holds before it uses
the previous answer (the loop is blocked)."""


class Heartbeat(ThreadService):
    name = "heartbeat"

    def __init__(self, url: str, inflight: InFlight, *, worker: workers.Registration, lease_seconds: float,
                 interval: float, on_lost: Callable[[Attempts], None]) -> None:
        if interval <= 0:
            raise ValueError(f"Heartbeat: interval must be > 0, not {interval}")
        super().__init__()
        self.url = url
        self.inflight = inflight
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.on_lost = on_lost
        self.last_ok = time.monotonic()
        self.halted = False  # the worker is wedged: its leases must lapse
        self._conn: psycopg.Connection[Any] | None = None
        self._last: tuple[Attempts, Attempts] = ({}, {})
        self._blocked: set[uuid.UUID] = set()
        self._waiter: threading.Thread | None = None

    @property
    def worker_id(self) -> str:
        return self.worker.id

    def healthy(self) -> bool:
        """False once renewals have failed for longer than half a lease: our leases may lapse,
        so claiming more would only hand out jobs we cannot keep."""
        return time.monotonic() - self.last_ok < self.lease_seconds / 2

    def halt(self) -> None:
        """Stop renewing (the worker is wedged): its leases lapse and the rescuer takes its jobs."""
        self.halted = True

    def _run(self) -> None:
        try:
            while not self._halted.is_set():
                delay = self.interval
                try:
                    lost = self.run_once()
                    self.failures = 0
                    if lost:
                        self._hand_back(lost)
                except Exception as exc:  # noqa: BLE001 - the heartbeat must survive anything
                    self._disconnect()
                    # Never wait longer than a round: a refused connection costs nothing, and
                    # once the database is back every lease must be renewed before it lapses.
                    delay = self._failed(base=0.25, cap=self.interval)
                    log.warning("skiplock.%s failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__,
                                exc, delay)
                self._halted.wait(delay)
        finally:
            self._disconnect()

    def run_once(self) -> Attempts:
        """One renewal; returns the running jobs (id -> attempt) no longer held. Blocking: call
        it off the event loop."""
        running, holds = self._holds()
        if self.halted:
            return {}
        conn = self._connect()
        held: set[uuid.UUID] = set()
        if holds:
            held, renewed = jobs.extend_leases_if_held(conn, worker_id=self.worker_id, holds=holds,
                                                       lease_seconds=self.lease_seconds)
            self._report_blocked(held - renewed, holds)
        try:
            workers.touch_worker(conn, self.worker)
        except psycopg.errors.LockNotAvailable:
            pass  # someone holds our worker row; the leases above are what matters
        self.last_ok = time.monotonic()
        return {job_id: attempt for job_id, attempt in running.items() if job_id not in held}

    def _hand_back(self, lost: Attempts) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.on_lost, lost)
            except RuntimeError:  # the loop is closed: nothing runs any more
                pass

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(self.interval)),
                                   application_name=f"skiplock-heartbeat {self.worker_id}"[:63])
            # A renewal that cannot finish within a round is worth nothing; the next round retries.
            # lock_timeout covers the worker row (the job rows are skipped when locked).
            session.set_timeouts(conn, statement_ms=max(1000, int(self.interval * 1000)),
                                 lock_ms=max(500, int(self.interval * 500)))
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection is dropped either way
                pass
            self._conn = None

    def _holds(self) -> tuple[Attempts, Attempts]:
        """What the worker holds, read on the event loop; the previous answer if it is blocked."""
        loop = self._loop
        if loop is None:
            return self._last
        box: concurrent.futures.Future[tuple[Attempts, Attempts]] = concurrent.futures.Future()

        def collect() -> None:
            try:
                box.set_result(self.inflight.holds())
            except BaseException as exc:  # noqa: BLE001 - handed to the heartbeat thread
                box.set_exception(exc)

        try:
            loop.call_soon_threadsafe(collect)
            self._last = box.result(timeout=SNAPSHOT_WAIT)
        except (TimeoutError, RuntimeError):  # blocked, or closed: what we knew last is still true
            pass
        return self._last

    def _report_blocked(self, blocked: set[uuid.UUID], holds: Attempts) -> None:
        for job_id in blocked - self._blocked:
            emit("skiplock.job.lease_blocked", job_id=job_id, worker=self.worker_id,
                 reason="its row is locked by another transaction (the handler's own?); its lease is renewed "
                        "when the lock is released")
        self._blocked = blocked
        if blocked and (self._waiter is None or not self._waiter.is_alive()):
            ids = {i: holds[i] for i in blocked}
            self._waiter = threading.Thread(target=self._wait_for_locks, args=(ids,), daemon=True,
                                            name="skiplock-heartbeat-waiter")
            self._waiter.start()

    def _wait_for_locks(self, holds: Attempts) -> None:
        """Renew `holds` waiting for their row locks, on a connection of its own, for up to a
        lease; the next round starts another waiter for rows still locked."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(self.interval))) as conn:
                session.set_timeouts(conn, statement_ms=int(self.lease_seconds * 1000))
                jobs.extend_leases_waiting(conn, worker_id=self.worker_id, holds=holds,
                                           lease_seconds=self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.info("skiplock.heartbeat: renewal of locked rows gave up (%s: %s)", type(exc).__name__, exc)
