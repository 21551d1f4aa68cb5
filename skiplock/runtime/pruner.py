"""Deletes finished jobs (and their history) older than the retention, then the finished
batches of that age none of whose jobs is left, in small groups so it never holds many row
locks or blocks claims. The worker runs it as a service; operators
run the same loop once (`skiplock prune`, Operations.prune)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from ..queries import batches, jobs
from .service import PeriodicService


async def prune_finished_jobs(pool: AsyncConnectionPool, *, older_than_seconds: float, batch: int = 1000,
                              now: datetime | None = None) -> int:
    """Delete every finished job older than `older_than_seconds`, then the finished batches
    of that age left without jobs, `batch` rows per statement (each its own transaction);
    returns how many jobs were deleted."""
    total = await _in_groups(pool, jobs.prune_finished, older_than_seconds, batch, now)
    await _in_groups(pool, batches.prune_finished_batches, older_than_seconds, batch, now)
    return total


async def _in_groups(pool: AsyncConnectionPool, prune: Callable[..., Awaitable[int]], older_than_seconds: float,
                     batch: int, now: datetime | None) -> int:
    """Run `prune` (`batch` rows per statement) until a statement finds fewer; how many it deleted."""
    total = 0
    while True:
        async with pool.connection() as conn:
            n = await prune(conn, older_than_seconds=older_than_seconds, limit=batch, now=now)
        total += n
        if n < batch:
            return total


class Pruner(PeriodicService):
    name = "pruner"

    def __init__(self, pool: AsyncConnectionPool, *, interval: float, retention_seconds: float,
                 batch: int = 1000) -> None:
        super().__init__(interval)
        self.pool = pool
        self.retention_seconds = retention_seconds
        self.batch = batch

    async def run_once(self, now: datetime | None = None) -> int:
        return await prune_finished_jobs(self.pool, older_than_seconds=self.retention_seconds, batch=self.batch,
                                         now=now)
