"""One dedicated autocommit connection per worker, with TCP keepalive and a jittered reconnect.
It carries three things that need a long-lived session:

- LISTEN skiplock_jobs: a notification only wakes the claim loop early; workers never depend
  on it (the poll interval finds every job anyway).
- LISTEN skiplock_cancel: skiplock.cancel names a running job ("id:attempt"); the worker
  running that attempt stops its handler at once. Its heartbeat is the fallback.
- The worker's liveness lock (sql/workers.sql: take_worker_lock), held for as long as this
  session lives: when the process dies the server releases it, and other workers' rescuers
  take the worker's jobs back within a second instead of waiting for their leases. After a
  reconnect the lock is taken again; until then (and when another session holds the key) the
  listener keeps trying, about once a second."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Collection
from typing import Any

import psycopg
from psycopg import sql

from ..events import emit
from ..queries import session, workers
from ..queries.jobs import CANCEL_CHANNEL, NOTIFY_CHANNEL
from .service import Service

LISTEN = sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL))
LISTEN_CANCEL = sql.SQL("LISTEN {}").format(sql.Identifier(CANCEL_CHANNEL))

FORGET_TIMEOUT = 2.0
"""Seconds a stopping listener spends telling the database the worker leaves on purpose."""


def parse_cancel(payload: str) -> tuple[uuid.UUID, int] | None:
    """(job id, attempt) from a cancel notification's "id:attempt"; None if malformed."""
    job_id, _, attempt = payload.partition(":")
    try:
        return uuid.UUID(job_id), int(attempt)
    except ValueError:
        return None


class Listener(Service):
    """Calls `on_notify(queue)` for each NOTIFY naming one of `queues` (None: any), and
    `on_notify("")` after each (re)connection: notifications may have been missed meanwhile.
    With `on_cancel`, calls `on_cancel(job_id, attempt)` for each running job cancelled. With
    `worker`, holds that worker's liveness lock on its session."""

    name = "listener"
    stop_timeout = 0  # it only waits for notifications: cancelled at once

    def __init__(self, url: str, on_notify: Callable[[str], None], *, queues: Collection[str] | None = None,
                 timeout: float = 1.0, on_cancel: Callable[[uuid.UUID, int], None] | None = None,
                 worker: workers.Registration | None = None) -> None:
        super().__init__()
        self.url = url
        self.on_notify = on_notify
        self.on_cancel = on_cancel
        self.worker = worker
        self.queues = set(queues) if queues else None
        self.timeout = timeout
        self.locked = False  # this session holds the worker's liveness lock
        self._leaving = False
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run_once(self) -> None:
        """Connect, LISTEN, take the liveness lock, and pass notifications on until the
        connection fails (or stop())."""
        self.locked = False
        self._conn = conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5,
            keepalives_count=3, connect_timeout=5)
        await conn.execute(LISTEN)
        if self.on_cancel is not None:
            await conn.execute(LISTEN_CANCEL)
        await self._take_lock(conn)
        self.failures = 0
        self.on_notify("")  # we may have missed notifications while away: look once
        while not self.stopping:
            async for n in conn.notifies(timeout=self.timeout):
                self._dispatch(n.channel, n.payload)
            # The timeout elapsed: is the connection still alive? (Taking the lock proves it too.)
            if self.worker is not None and not self.locked:
                await self._take_lock(conn)
            else:
                await session.ping(conn)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            cancelled = parse_cancel(payload)
            if cancelled is not None and self.on_cancel is not None:
                self.on_cancel(*cancelled)
        elif self.queues is None or payload in self.queues:
            self.on_notify(payload)

    async def _take_lock(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.worker is not None and not self.locked:
            self.locked = await workers.take_worker_lock(conn, self.worker)

    async def stop(self) -> None:
        self._leaving = True
        await super().stop()

    async def _run(self) -> None:
        self._leaving = False
        while not self.stopping:
            try:
                await self.run_once()
            except (psycopg.Error, OSError) as exc:
                emit("skiplock.worker.db_error", during="listen", error=f"{type(exc).__name__}: {exc}".strip())
                await self._closed()
                await self._wait_for(within=self._failed(base=0.2, cap=10.0))

    async def _closed(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._leaving and self.locked and self.worker is not None:
            # Leaving on purpose: the end of this session must not read as the worker's death
            # while it still flushes and releases what it holds.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(workers.forget_worker_lock(conn, self.worker.id), FORGET_TIMEOUT)
        self.locked = False
        try:
            await conn.close()
        except Exception:  # noqa: BLE001, S110 - already broken; we reconnect next
            pass
