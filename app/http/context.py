"""What the routes share: the pool (with outage tracking), settings, registry, the wake-ups
sent after submissions commit, and the queue-limit check that runs around a submission."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request

from app.settings import Settings
from skiplock import db
from skiplock.errors import InvalidInput, QueueFull
from skiplock.ops import Operations
from skiplock.queries import api as api_queries
from skiplock.tasks import TaskRegistry
from skiplock.wakeup import Wakeups

OUTAGE_WAIT = 1.0
"""Longest wait for a connection while the database is known to be down (seconds)."""

LIMITS_TTL = 2.0
"""How long the set of limited queues is cached (seconds)."""


@dataclass
class ApiState:
    pool: AsyncConnectionPool
    settings: Settings
    registry: TaskRegistry
    wakeups: Wakeups
    outage: bool = False
    _limited: set[str] = field(default_factory=set)
    _limited_at: float = -1e9
    ops: Operations = field(init=False)

    def __post_init__(self) -> None:
        # Operations over this state's connections: an outage is tracked and answered 503.
        self.ops = Operations(lambda: self.connection(), pool=self.pool)

    @contextlib.asynccontextmanager
    async def connection(self, wait: float | None = None) -> AsyncIterator[db.AsyncConn]:
        """A pool connection within `wait` seconds (default: the pool's timeout), else
        PoolTimeout (→ 503).

        The first request of an outage waits the whole pool timeout, because a busy pool and a
        dead database look the same to a waiting client. What tells them apart is the pool's
        count of failed connection attempts: if it rose while we waited, the database is down,
        and until a connection is had again every request waits at most OUTAGE_WAIT. The pool
        tries a fresh connection for each of those requests, so recovery needs no restart.
        """
        if wait is None:
            wait = self.pool.timeout
        if self.outage:
            wait = min(wait, OUTAGE_WAIT)
        failed_before = self.pool.get_stats().get("connections_errors", 0)
        conn: db.AsyncConn | None = None
        try:
            async with self.pool.connection(timeout=wait) as conn:
                self.outage = False
                yield conn
        except PoolTimeout:
            if self.pool.get_stats().get("connections_errors", 0) > failed_before:
                self.outage = True
            raise
        except psycopg.OperationalError:
            # A connection lost mid-request (the server went away); a query error is not an outage.
            if conn is not None and conn.broken:
                self.outage = True
            raise

    async def limited_queues(self, conn: db.AsyncConn) -> set[str]:
        """Queues that have a max_waiting, refreshed at most every LIMITS_TTL: submissions to
        other queues pay nothing for the limit check."""
        if time.monotonic() - self._limited_at > LIMITS_TTL:
            self._limited = await api_queries.limited_queues(conn)
            self._limited_at = time.monotonic()
        return self._limited

    def forget_limits(self) -> None:
        self._limited_at = -1e9

    @contextlib.asynccontextmanager
    async def reserve(self, conn: db.AsyncConn, wanted: dict[str, int]) -> AsyncIterator[None]:
        """Run the body (the insert) only if every limited queue has room for `wanted[queue]`
        more waiting jobs, else raise QueueFull (429).

        For limited queues the check and the body share one transaction holding the queues'
        rows, so concurrent submitters cannot both see room for the last slot. Unlimited
        queues keep the single-statement insert with no transaction around it.
        """
        known = await self.limited_queues(conn)
        limited = sorted(q for q in wanted if q in known)
        if not limited:
            yield
            return
        async with conn.transaction():
            limits = await api_queries.lock_limited_queues(conn, limited)
            waiting = await api_queries.count_waiting_in(conn, list(limits)) if limits else {}
            for queue, limit in limits.items():
                now = waiting.get(queue, 0)
                if now + wanted[queue] > limit:
                    raise QueueFull(f"queue {queue!r} holds {now} waiting jobs; its limit is {limit}",
                                    field="queue", details={"queue": queue, "waiting": now, "max_waiting": limit})
            yield


def query_int(params: Mapping[str, str], name: str, default: int) -> int:
    """An integer query parameter; anything else is InvalidInput naming it."""
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"{name} must be a whole number, not {raw[:40]!r}", field=name)
    return int(raw)


def api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def request_id(request: Request) -> str:
    return str(request.state.request_id)
