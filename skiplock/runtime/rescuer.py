"""Taking back the jobs of workers that are gone. Every worker runs both rescuers; FOR UPDATE
SKIP LOCKED (and, for the fast one, the dead worker's advisory lock) lets several run at once
without waiting or taking the same job twice.

- `Rescuer`: jobs whose lease expired (worker killed, frozen, cut off, heartbeats failing) go
  back to the queue, or to failed on their last attempt. The guarantee: it sees every case.
- `DeadWorkerRescuer`: every DEAD_CHECK_INTERVAL, the running jobs of workers whose liveness
  lock is free (their database session ended: the process died) are taken back at once, without
  waiting for their leases (sql/workers.sql: rescue_jobs_of_dead_workers). A wrong guess (a
  live worker whose connection broke) is harmless: fencing rejects its late answers."""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from ..events import emit
from ..queries import jobs, workers
from .service import PeriodicService

DEAD_CHECK_INTERVAL = 0.5
"""Seconds between two looks for dead workers: a killed worker's jobs run again within about this."""


class Rescuer(PeriodicService):
    name = "rescuer"

    def __init__(self, pool: AsyncConnectionPool, *, interval: float, stale_worker_seconds: float,
                 batch: int = 1000) -> None:
        super().__init__(interval)
        self.pool = pool
        self.stale_worker_seconds = stale_worker_seconds
        self.batch = batch

    async def run_once(self, now: datetime | None = None) -> int:
        async with self.pool.connection() as conn:
            rows = await jobs.rescue_expired(conn, limit=self.batch, now=now)
            await workers.delete_stale_workers(conn, self.stale_worker_seconds, now=now)
        for r in rows:
            emit("skiplock.job.rescued", job_id=r["id"], attempt=r["attempt"], now_state=r["state"])
        return len(rows)


class DeadWorkerRescuer(PeriodicService):
    name = "dead-worker-rescuer"

    def __init__(self, pool: AsyncConnectionPool, *, interval: float = DEAD_CHECK_INTERVAL) -> None:
        super().__init__(interval)
        self.pool = pool

    async def run_once(self, now: datetime | None = None) -> int:
        async with self.pool.connection() as conn:
            rows = await workers.rescue_jobs_of_dead_workers(conn, now=now)
        for r in rows:
            emit("skiplock.job.rescued", job_id=r["id"], attempt=r["attempt"], now_state=r["state"],
                 reason="its worker's database session ended")
        return len(rows)
