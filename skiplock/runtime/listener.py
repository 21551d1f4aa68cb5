"""One dedicated autocommit LISTEN connection per worker, with TCP keepalive and a jittered
reconnect. A notification only wakes the claim loop early: workers never depend on it (the
poll interval finds every job anyway)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import psycopg
from psycopg import sql

from ..events import emit
from ..queries import session
from ..queries.jobs import NOTIFY_CHANNEL
from .service import Service

LISTEN = sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL))


class Listener(Service):
    """Calls `on_notify(queue)` for each NOTIFY naming one of `queues` (None: any), and
    `on_notify("")` after each (re)connection: notifications may have been missed meanwhile."""

    name = "listener"
    stop_timeout = 0  # it only waits for notifications: cancelled at once

    def __init__(self, url: str, on_notify: Callable[[str], None], *, queues: Collection[str] | None = None,
                 timeout: float = 1.0) -> None:
        super().__init__()
        self.url = url
        self.on_notify = on_notify
        self.queues = set(queues) if queues else None
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run_once(self) -> None:
        """Connect, LISTEN, and pass notifications on until the connection fails (or stop())."""
        self._conn = conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5,
            keepalives_count=3, connect_timeout=5)
        await conn.execute(LISTEN)
        self.failures = 0
        self.on_notify("")  # we may have missed notifications while away: look once
        while not self.stopping:
            async for n in conn.notifies(timeout=self.timeout):
                if self.queues is None or n.payload in self.queues:
                    self.on_notify(n.payload)
            await session.ping(conn)  # the timeout elapsed: is the connection still alive?

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self.run_once()
            except (psycopg.Error, OSError) as exc:
                emit("skiplock.worker.db_error", during="listen", error=f"{type(exc).__name__}: {exc}".strip())
                await self._closed()
                await self._wait_for(within=self._failed(base=0.2, cap=10.0))

    async def _closed(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken; we reconnect next
                pass
            self._conn = None
