"""Wake sleeping workers after many concurrent submissions commit, with one NOTIFY per burst.

By default the insert trigger sends the NOTIFY inside the submitting transaction, which is
always right: it is delivered at that transaction's commit. But PostgreSQL holds one
database-wide lock from a notifying transaction's pre-commit until its commit record is
flushed, so concurrent submitters that each notify commit one at a time instead of sharing
a WAL flush (32 clients of single-row INSERTs: ~4x slower with a NOTIFY in each; README,
Performance). A process that submits from many requests at once (the HTTP API) therefore
inserts with `defer_notify=True` and calls `touch(queue)` after each commit. One task sends
the NOTIFYs on a connection of its own, in a transaction that writes nothing (so it waits for
no flush): the first touch is sent at once, and the touches that arrive while a NOTIFY is on
its way are folded into the next one. Every touched queue is therefore notified after the
commit that touched it.

Never depended on, like every wake-up: if the process dies between a commit and its NOTIFY,
or the NOTIFY fails, workers find the job on their next poll (SKIPLOCK_POLL_INTERVAL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import psycopg

from .events import emit
from .queries.jobs import wake_queues
from .runtime.service import Service


class Wakeups(Service):
    name = "wakeups"
    stop_timeout = 1.0  # stop() sends what is pending within this, then closes

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.sent = 0
        """NOTIFY statements sent (each may cover many submissions and queues)."""
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None

    def touch(self, queues: Iterable[str]) -> None:
        """Call after the commit that queued jobs in `queues`."""
        self._pending.update(queues)
        if self._pending:
            self._wake.set()

    async def run_once(self) -> None:
        """Send one NOTIFY per queue touched since the last one."""
        queues, self._pending = sorted(self._pending), set()
        if not queues:
            return
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=5)
        await wake_queues(self._conn, queues)
        self.sent += 1

    async def _run(self) -> None:
        while self._pending or not self.stopping:
            if not self._pending:
                self._wake.clear()
                await self._wait_for(self._wake)
                continue
            try:
                await self.run_once()
                self.failures = 0
            except (psycopg.Error, OSError) as exc:
                # The jobs are stored; workers will find them on their next poll.
                emit("skiplock.api.db_error", during="wake", error=f"{type(exc).__name__}: {exc}".strip())
                await self._closed()
                await asyncio.sleep(self._failed(base=0.1, cap=5.0))

    async def _closed(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
