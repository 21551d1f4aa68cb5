"""What the routes share: the pool (with outage tracking), settings, registry, the wake-ups
sent after submissions commit, and the operations object every route calls."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.requests import Request

from app.settings import Settings
from skiplock import db
from skiplock.coalesce import SubmitCoalescer
from skiplock.enqueue import Enqueued, JobSpec
from skiplock.errors import InvalidInput
from skiplock.metrics import JobMetrics
from skiplock.ops import Operations
from skiplock.tasks import TaskRegistry
from skiplock.wakeup import Wakeups

OUTAGE_WAIT = 1.0
"""Longest wait for a connection while the database is known to be down (seconds)."""

@dataclass
class ApiState:
    pool: AsyncConnectionPool
    settings: Settings
    registry: TaskRegistry
    wakeups: Wakeups
    outage: bool = False
    ops: Operations = field(init=False)
    job_metrics: JobMetrics = field(init=False)
    submitter: SubmitCoalescer | None = None  # POST /jobs in groups; started by the lifespan
    metrics_registry: CollectorRegistry = field(default_factory=CollectorRegistry)  # this process's requests

    def __post_init__(self) -> None:
        # Operations over this state's connections (an outage is tracked and answered 503),
        # waking workers after each submission commits.
        self.ops = Operations(lambda: self.connection(), pool=self.pool, registry=self.registry,
                              max_args_bytes=self.settings.max_args_bytes, wakeups=self.wakeups)
        self.job_metrics = JobMetrics(lambda: self.connection(), live_seconds=self.settings.lease_seconds)

    async def submit_one(self, spec: JobSpec, *, correlation_id: str | None) -> Enqueued:
        """One job from a request, stored with those of the requests that arrive meanwhile
        (skiplock/coalesce.py); alone before the lifespan has started the coalescer."""
        if self.submitter is not None:
            return await self.submitter.submit(spec, correlation_id=correlation_id, json_args=True)
        [job] = await self.ops.submit([spec], correlation_id=correlation_id, json_args=True)
        return job

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


def query_int(params: Mapping[str, str], name: str, default: int) -> int:
    """An integer query parameter; anything else is InvalidInput naming it."""
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # "²".isdigit() is true
        raise InvalidInput(f"{name} must be a whole number, not {raw[:40]!r}", field=name)
    return int(raw)


def api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def request_id(request: Request) -> str:
    return str(request.state.request_id)
