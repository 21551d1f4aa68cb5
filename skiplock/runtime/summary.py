"""The periodic INFO line of a worker: jobs done and failed since the last one, their rate,
and how many run and how many are ready in its queues."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from psycopg_pool import AsyncConnectionPool

from ..events import emit
from ..queries import queues as queue_queries
from .inflight import InFlight
from .service import PeriodicService


class Summary(PeriodicService):
    name = "summary"

    def __init__(self, pool: AsyncConnectionPool, inflight: InFlight, counts: Mapping[str, int], *,
                 worker_id: str, queues: Sequence[str] | None, interval: float) -> None:
        super().__init__(interval)
        self.pool = pool
        self.inflight = inflight
        self.counts = counts  # confirmed outcomes by state (the completer's)
        self.worker_id = worker_id
        self.queues = queues
        self._last = (time.monotonic(), 0, 0, 0)

    async def run_once(self) -> None:
        t0, done0, failed0, fenced0 = self._last
        now = time.monotonic()
        done, failed, fenced = self.counts["succeeded"], self.counts["failed"], self.counts["fenced"]
        self._last = (now, done, failed, fenced)
        async with self.pool.connection() as conn:
            ready = await queue_queries.count_ready(conn, self.queues)
        emit("skiplock.worker.summary", worker=self.worker_id, done=done - done0, failed=failed - failed0,
             fenced=fenced - fenced0, rate_per_s=round((done - done0 + failed - failed0) / max(now - t0, 1e-9), 1),
             running=len(self.inflight.running), ready=ready)
