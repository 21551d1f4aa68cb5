"""Connections: the pools the worker, the API and Operations use, and the values sent as jsonb.
The queries themselves are reached through skiplock.queries."""

from __future__ import annotations

import select
import time
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

AsyncConn = psycopg.AsyncConnection[Any]


def make_pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "skiplock",
              timeout: float = 30.0, check: bool | Literal["passive"] = True,
              statement_timeout: float | None = None) -> AsyncConnectionPool:
    """An unopened pool (open it with `await pool.open()`). `timeout` bounds the wait for a
    connection (PoolTimeout after it). reconnect_timeout=0: no background retry loop while the
    database is away; the next caller's request makes a new attempt.

    `check` decides what a checkout verifies:
    - True: a round trip on every checkout, so a restarted database costs failed checks, not
      failed queries (each failed check makes the pool back off, 1 s then 2 s...).
    - "passive" (the API): no round trip. A connection whose server has sent something while
      idle (a restart or a terminated backend ends each session with a message and EOF) is
      checked then, and a dead one is replaced at once, without back-off: a restart costs no
      request that arrives after the database is back, and the hot path only a poll().
    - False: nothing, for callers that retry every query anyway (the worker).

    `statement_timeout` (seconds) bounds every statement on these connections, waits for locks
    included: the server cancels it past the bound (psycopg.errors.QueryCanceled). It is sent
    as a startup option of each connection, so it costs no round trip.
    """
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(2, int(timeout))}
    if statement_timeout is not None:
        kwargs["options"] = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
    if check == "passive":
        return PassivePool(url, min_size=min_size, max_size=max_size, open=False, name=name, check=None,
                           timeout=timeout, kwargs=kwargs, reconnect_timeout=0)
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, name=name,
                               check=AsyncConnectionPool.check_connection if check else None, timeout=timeout,
                               kwargs=kwargs, reconnect_timeout=0)


class PassivePool(AsyncConnectionPool):
    """A pool that hands out only connections the server has not closed, at the cost of a
    poll() per checkout (see make_pool's check="passive")."""

    async def getconn(self, timeout: float | None = None) -> AsyncConn:  # noqa: ASYNC109 - the pool's signature
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = await super().getconn(max(0.0, deadline - time.monotonic()))
            if not conn.closed and not _has_input(conn):
                return conn
            try:
                await self.check_connection(conn)  # a notice leaves it usable; an EOF fails at once
            except psycopg.Error:
                await self.putconn(conn)  # closed now: the pool discards it and opens another
                continue
            return conn


def _has_input(conn: AsyncConn) -> bool:
    """Whether the server has sent anything on this idle connection (no wait, no round trip).
    A pool connection runs no LISTEN, so that is a notice or the end of the session."""
    fd = conn.pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # Windows: no poll(), and no FD_SETSIZE bound on sockets
    return bool(readable)


def jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _same(data: bytes) -> bytes:
    return data


def stored_json(data: bytes | None) -> Jsonb | None:
    """JSON already serialised and checked (skiplock.storable.to_json), sent as it is: not
    parsed again, nor dumped again."""
    return None if data is None else Jsonb(data, dumps=_same)
