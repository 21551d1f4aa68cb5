"""Lease renewal, on a thread of its own with a connection of its own, so that nothing a
handler does on the event loop (a blocking call, a CPU loop) stops it.

Every `interval` seconds it extends the lease of each job the worker still holds (fenced by
attempt): running, or finished and waiting for its acknowledgement. It also touches the
worker's row in skiplock.workers. Running jobs missing from the answer were cancelled or
rescued: the worker stops running them. A row locked by another transaction (a handler that
updates its own job row and keeps its transaction open) is skipped, not waited for: one
handler's lock must not hold up every other job's renewal. A worker whose heartbeats keep
failing stops claiming (`healthy()` turns false) until one succeeds again.

What the worker holds is read on the event loop; while the loop is blocked the last answer
is used (nothing on the loop can change it meanwhile)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
import uuid
from typing import Any

import psycopg
import psycopg.errors

from ..events import emit
from ..queries import jobs, session, workers
from .producer import Producer

log = logging.getLogger("skiplock")

SNAPSHOT_WAIT = 0.5
"""How long a round waits for the event loop to say what the worker holds before it uses
the previous answer (the loop is blocked)."""

Holds = tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]  # (running, all held) -> attempt


class Heartbeat:
    name = "heartbeat"

    def __init__(self, url: str, producer: Producer, *, worker_id: str, lease_seconds: float,
                 interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"Heartbeat: interval must be > 0, not {interval}")
        self.url = url
        self.producer = producer
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.last_ok = time.monotonic()
        self.halted = False  # set when the worker is wedged: its leases must lapse
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._last: Holds = ({}, {})
        self._blocked: set[uuid.UUID] = set()
        self._waiter: threading.Thread | None = None

    def healthy(self) -> bool:
        """False once renewals have failed for longer than half a lease: our leases may lapse,
        so claiming more would only hand out jobs we cannot keep."""
        return time.monotonic() - self.last_ok < self.lease_seconds / 2

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._loop = asyncio.get_running_loop()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="skiplock-heartbeat", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        while thread is not None and thread.is_alive():  # noqa: ASYNC110 - a thread is awaited
            await asyncio.sleep(0.02)
        self._thread = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                delay = self.interval
                try:
                    self.run_once()
                    self.failures = 0
                except Exception as exc:  # noqa: BLE001 - the heartbeat must survive anything
                    self._disconnect()
                    self.failures += 1
                    # Never wait longer than a round: a refused connection costs nothing, and
                    # once the database is back every lease must be renewed before it lapses.
                    delay = min(self.interval, 0.25 * 2 ** min(self.failures, 6)) * random.uniform(0.5, 1.0)
                    log.warning("skiplock.%s failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__,
                                exc, delay)
                self._stop.wait(delay)
        finally:
            self._disconnect()

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

    def _holds(self) -> Holds:
        """What the worker holds, read on the event loop; the previous answer if it is blocked."""
        loop = self._loop
        if loop is None:
            return self._last
        box: concurrent.futures.Future[Holds] = concurrent.futures.Future()

        def collect() -> None:
            try:
                running = {r.job.id: r.job.attempt for r in self.producer.running.values()}
                box.set_result((running, running | self.producer.completer.held()))
            except BaseException as exc:  # noqa: BLE001 - handed to the heartbeat thread
                box.set_exception(exc)

        try:
            loop.call_soon_threadsafe(collect)
            self._last = box.result(timeout=SNAPSHOT_WAIT)
        except (TimeoutError, RuntimeError):  # blocked, or closed: what we knew last is still true
            pass
        return self._last

    def run_once(self) -> int:
        """One renewal; returns how many jobs are still held. Blocking: call it off the loop."""
        running, holds = self._holds()
        if self.halted:
            return 0
        conn = self._connect()
        held: set[uuid.UUID] = set()
        if holds:
            held, renewed = jobs.extend_leases_if_held(conn, worker_id=self.worker_id, holds=holds,
                                                       lease_seconds=self.lease_seconds)
            self._report_blocked(held - renewed, holds)
        try:
            workers.touch_worker(conn, self.worker_id)
        except psycopg.errors.LockNotAvailable:
            pass  # someone holds our worker row; the leases above are what matters
        self.last_ok = time.monotonic()
        if running and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._judge, set(running), held)
            except RuntimeError:
                pass
        return len(held)

    def _judge(self, asked: set[uuid.UUID], held: set[uuid.UUID]) -> None:
        # Only judge jobs that were running when we asked; newer ones are not in `held`.
        self.producer.cancel_lost(held | (set(self.producer.running) - asked))

    def _report_blocked(self, blocked: set[uuid.UUID], holds: dict[uuid.UUID, int]) -> None:
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

    def _wait_for_locks(self, holds: dict[uuid.UUID, int]) -> None:
        """Renew `holds` waiting for their row locks, on a connection of its own, for up to a
        lease; the next round starts another waiter for rows still locked."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(self.interval))) as conn:
                session.set_timeouts(conn, statement_ms=int(self.lease_seconds * 1000))
                jobs.extend_leases_waiting(conn, worker_id=self.worker_id, holds=holds,
                                           lease_seconds=self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.info("skiplock.heartbeat: renewal of locked rows gave up (%s: %s)", type(exc).__name__, exc)
