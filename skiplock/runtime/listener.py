"""LISTEN on one dedicated autocommit connection and wake the claim loop. Never depended on:
the claim loop also polls, and a lost connection is re-opened with jittered backoff (and
the claim loop woken, in case a notification was missed meanwhile)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection
from typing import Any

import psycopg
from psycopg import sql

from ..events import emit
from ..queries import session
from ..queries.jobs import NOTIFY_CHANNEL

LISTEN = sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL))


class Listener:
    name = "listener"

    def __init__(self, url: str, on_notify: Callable[[str], None], *, queues: Collection[str] | None = None,
                 timeout: float = 1.0) -> None:
        self.url = url
        self.on_notify = on_notify
        self.queues = set(queues) if queues else None
        self.timeout = timeout
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="skiplock.listener")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5,
                    keepalives_count=3, connect_timeout=5)
                await self._conn.execute(LISTEN)
                self.connected.set()
                failures = 0
                self.on_notify("")  # we may have missed notifications while away: look once
                while not self._stop.is_set():
                    async for n in self._conn.notifies(timeout=self.timeout):
                        if self.queues is None or n.payload in self.queues:
                            self.on_notify(n.payload)
                    # timeout elapsed: check the connection is still alive
                    await session.ping(self._conn)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                failures += 1
                emit("skiplock.worker.db_error", during="listen", error=f"{type(exc).__name__}: {exc}".strip())
                if self._conn is not None:
                    try:
                        await self._conn.close()
                    except Exception:  # noqa: BLE001, S110 - already broken; we reconnect next
                        pass
                    self._conn = None
                await asyncio.sleep(min(0.2 * 2**failures, 10.0) * random.uniform(0.5, 1.0))
