"""Returns jobs whose lease expired to the queue (or to failed, on their last attempt).
Every worker runs it; FOR UPDATE SKIP LOCKED lets several run at once without waiting."""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from ..events import emit
from ..queries import jobs, workers
from .service import PeriodicService


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

