"""Transactional completion: a handler's own writes and its job's acknowledgement in one
transaction (`await ctx.transaction()`).

The handler gets a connection with a transaction already open. It writes what it wants and
returns; the worker then acknowledges the job (the same fenced statement the completer uses)
on that connection and commits. Either both commit or neither: a worker that dies before
the commit leaves nothing (PostgreSQL rolls the transaction back when the session ends) and
the job runs again; an attempt that no longer holds its job (rescued, cancelled) finds the
fence closed at the acknowledgement and rolls its writes back. A handler that raises, times
out or is cancelled has its transaction rolled back, and its outcome goes the usual way.

The connection refuses commit() and rollback() from the handler: the commit is the
acknowledgement. Savepoints (`async with conn.transaction():`) work as usual inside it.
Each such job is acknowledged on its own (one statement and one commit per job), not in the
completer's batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .. import db
from ..context import JobContext
from ..errors import JobCancelled
from ..events import emit
from ..queries import jobs
from ..storable import safe_text
from .executor import Outcome

LOCKED_WAIT = 0.02
"""Seconds between tries while another transaction (a lease renewal) holds the job's row."""


class HandlerConnection(psycopg.AsyncConnection[Any]):
    """A connection whose transaction the worker ends: commit() and rollback() are refused
    while a handler holds it."""

    _worker_owned = False

    async def commit(self) -> None:
        if not self._worker_owned:
            raise psycopg.ProgrammingError(
                "skiplock: this connection's commit is the job's acknowledgement: return from the handler "
                "to commit (use `async with conn.transaction():` for a savepoint)")
        await super().commit()

    async def rollback(self) -> None:
        if not self._worker_owned:
            raise psycopg.ProgrammingError(
                "skiplock: this connection's transaction is ended by the worker: raise to roll it back "
                "(use `async with conn.transaction():` for a savepoint you can roll back)")
        await super().rollback()

    async def _end(self, commit: bool) -> None:
        self._worker_owned = True
        try:
            await (super().commit() if commit else super().rollback())
        finally:
            self._worker_owned = False


class HandlerTransactions:
    """The connections handlers' transactions run on: a pool of its own (at most one per
    running job), opened at the first ctx.transaction(), so that workers whose handlers never
    ask for one hold no extra connection."""

    def __init__(self, url: str, *, worker_id: str, size: int, counts: dict[str, int],
                 lock_wait: float = 10.0) -> None:
        self.url = url
        self.worker_id = worker_id
        self.size = size
        self.counts = counts  # the completer's: confirmed outcomes by state, and fenced
        self.lock_wait = lock_wait
        self._pool: AsyncConnectionPool[HandlerConnection] | None = None
        self._opening: asyncio.Lock | None = None
        self._held: dict[int, HandlerConnection] = {}  # id(ctx) -> its connection

    async def open_for(self, ctx: JobContext) -> HandlerConnection:
        """The job's transaction: the same connection for every call within one attempt."""
        conn = self._held.get(id(ctx))
        if conn is not None:
            return conn
        conn = await (await self._pool_open()).getconn()
        self._held[id(ctx)] = conn
        if not await jobs.held_in_transaction(conn, job_id=ctx.job_id, attempt=ctx.attempt, worker_id=self.worker_id):
            raise JobCancelled(f"job {ctx.job_id} is no longer held by attempt {ctx.attempt}: nothing it writes "
                               "could commit")
        return conn

    async def _pool_open(self) -> AsyncConnectionPool[HandlerConnection]:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(self.url, min_size=0, max_size=self.size, open=False,
                                           name=f"skiplock-handler-tx-{self.worker_id}",
                                           connection_class=HandlerConnection,
                                           check=AsyncConnectionPool.check_connection,
                                           kwargs={"autocommit": False, "connect_timeout": 5})
                await pool.open()
                self._pool = pool
        return self._pool

    def holds(self, ctx: JobContext) -> bool:
        return id(ctx) in self._held

    async def settle(self, ctx: JobContext, outcome: Outcome, failure: Callable[[str], Outcome]) -> Outcome | None:
        """End the job's transaction with its outcome. A success is acknowledged in it and
        committed: returns None (nothing left for the completer). Anything else rolls the
        handler's writes back and returns the outcome to acknowledge as usual; so does a
        transaction that could not commit, as `failure(error)` (the attempt failed: retried
        or failed by the task's rules; if it did commit after all, the fence drops it)."""
        conn = self._held.get(id(ctx))
        if conn is None:
            return outcome
        if outcome.state != "succeeded":
            await self.discard(ctx)
            return outcome
        try:
            done = await self._acknowledge(conn, outcome)
            if done:
                await conn._end(commit=True)
        except Exception as exc:  # noqa: BLE001 - not committed: the job runs again, its writes with it
            await self.discard(ctx)
            return failure(safe_text("the handler's transaction could not be committed with its "
                                     f"acknowledgement: {type(exc).__name__}: {exc}".strip()))
        await self._put_back(ctx, conn, rollback=not done)
        if done:
            self.counts["succeeded"] += 1
        else:
            self.counts["fenced"] += 1
            emit("skiplock.job.fenced", job_id=outcome.job_id, task=outcome.task, attempt=outcome.attempt,
                 worker=self.worker_id, reason="no longer held by this attempt; its transaction was rolled back")
        return None

    async def _acknowledge(self, conn: HandlerConnection, o: Outcome) -> bool:
        """The completer's fenced statement for one outcome, inside the handler's transaction.
        A row another transaction holds for a moment (a lease renewal) is tried again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait
        while True:
            done, locked = await jobs.finish_many_if_held(
                conn, worker_id=self.worker_id, ids=[o.job_id], attempts=[o.attempt], states=[o.state],
                results=[db.stored_json(o.result_json)], errors=None, run_ats=None,
                checkpoints=[db.jsonb(o.checkpoint) if o.has_checkpoint else None],
                progresses=[db.jsonb(o.progress)])
            if o.job_id in done:
                return True
            if o.job_id not in locked:
                return False
            if loop.time() > deadline:
                raise TimeoutError(f"job {o.job_id}'s row stayed locked by another transaction for "
                                   f"{self.lock_wait}s")
            await asyncio.sleep(LOCKED_WAIT)

    async def discard(self, ctx: JobContext) -> None:
        """Roll back and return the job's connection, if it has one (never raises)."""
        conn = self._held.get(id(ctx))
        if conn is not None:
            await self._put_back(ctx, conn, rollback=True)

    async def _put_back(self, ctx: JobContext, conn: HandlerConnection, *, rollback: bool) -> None:
        self._held.pop(id(ctx), None)
        if rollback:
            with contextlib.suppress(Exception):
                await conn._end(commit=False)
        assert self._pool is not None
        await self._pool.putconn(conn)  # a connection left in a transaction is discarded by the pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

