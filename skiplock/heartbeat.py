"""Lease renewal. Every `interval` seconds the worker extends the lease of each job it still
holds (fenced by attempt): running, or finished and waiting for its acknowledgement. It also
touches its row in skiplock.workers. Running jobs missing from the answer were cancelled or
rescued: the worker stops running them. A worker whose heartbeats keep failing stops
claiming (`healthy()` turns false) until one succeeds again."""

from __future__ import annotations

import time
import uuid

from psycopg_pool import AsyncConnectionPool

from . import db
from .producer import Producer
from .service import PeriodicService


class Heartbeat(PeriodicService):
    name = "heartbeat"

    def __init__(self, pool: AsyncConnectionPool, producer: Producer, *, worker_id: str, lease_seconds: float,
                 interval: float) -> None:
        super().__init__(interval)
        self.pool = pool
        self.producer = producer
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.last_ok = time.monotonic()

    def healthy(self) -> bool:
        """False once renewals have failed for longer than half a lease: our leases may lapse,
        so claiming more would only hand out jobs we cannot keep."""
        return time.monotonic() - self.last_ok < self.lease_seconds / 2

    async def run_once(self) -> int:
        running = list(self.producer.running.values())
        # Finished jobs whose acknowledgement has not reached the database yet are held too:
        # while the database is away their leases must not lapse, or a live worker's job would
        # be rescued and run again.
        holds = {r.job.id: r.job.attempt for r in running} | self.producer.completer.held()
        async with self.pool.connection() as conn:
            held: set[uuid.UUID] = set()
            if holds:
                held = await db.extend_leases_if_held(
                    conn, worker_id=self.worker_id, ids=list(holds), attempts=list(holds.values()),
                    lease_seconds=self.lease_seconds)
            await db.touch_worker(conn, self.worker_id)
        self.last_ok = time.monotonic()
        if running:
            # Only judge jobs that were running when we asked; newer ones are not in `held`.
            asked = {r.job.id for r in running}
            self.producer.cancel_lost(held | (set(self.producer.running) - asked))
        return len(held)
