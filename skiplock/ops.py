"""The operations API: one object that the CLI, the HTTP API and your own Python code call to
inspect and steer jobs and queues. Each operation is composed here once; adapters only parse
their input and render the answer.

    async with Operations.connect(url) as ops:
        job = await ops.get_job("01a2...")          # the row and its timeline
        await ops.retry(job["id"])
        page = await ops.list_jobs(state="failed", limit=20)

Every method takes a connection from the provider it was built with (a pool by default), so
an adapter can hand in its own (the HTTP API's tracks outages for its 503s).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import db, insight
from .batches import BATCH_STATES, check_completion_json, enqueue_batch
from .catalog import RecordedTask, WithRecorded
from .cron import check_schedule_name, next_after
from .enqueue import MAX_ARGS_BYTES, CheckedSpec, Enqueued, JobSpec, check_spec, enqueue_many
from .errors import (
    BatchNotFound,
    InvalidInput,
    JobNotFound,
    QueueFull,
    QueueNotEmpty,
    QueueNotFound,
    ScheduleNotFound,
    SkiplockError,
    translate,
)
from .job import STATES, check_queue, check_task_name
from .limits import UNSET, QueueLimits, Unset, check_limits
from .queries import api, batches, jobs, queues, schedules, session, workers
from .queries import tasks as tasks_q
from .runtime.pruner import prune_finished_jobs
from .storable import Unstorable, to_json
from .tasks import TaskRegistry
from .tasks import registry as default_registry
from .wakeup import Wakeups

Connect = Callable[[], AbstractAsyncContextManager[db.AsyncConn]]

MAX_PAGE = 500

RECORDED_TTL = 5.0
"""How long a task looked up in skiplock.tasks (or found missing there) is remembered (seconds)."""


def parse_job_id(value: str | uuid.UUID, field: str = "id") -> uuid.UUID:
    """A job id from user input, or InvalidInput naming the field."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        kind = "job" if field == "id" else field
        raise InvalidInput(f"{value!r} is not a {kind} id (a UUID)", field=field) from None


def encode_cursor(job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
"""A job cursor is a job id in unpadded URL-safe base64 (22 characters): base64 decoders skip
other characters, so anything else is refused before decoding."""


def decode_cursor(raw: str) -> uuid.UUID:
    try:
        if not isinstance(raw, str) or not CURSOR_RE.fullmatch(raw):
            raise ValueError(raw)
        return uuid.UUID(bytes=base64.urlsafe_b64decode(raw + "=="))
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor is not one this API returned", field="cursor") from None


def _with_next_run(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with next_run_at filled in where no scheduler has computed it yet (an active
    schedule just created, edited or resumed); a bad definition leaves it None."""
    if row["next_run_at"] is None and not row["paused"] and row["error"] is None:
        after = max(d for d in (row["last_tick_at"], row["since"]) if d is not None)
        with contextlib.suppress(SkiplockError):
            row["next_run_at"] = next_after(row["cron"], row["timezone"], after)
    return row


def _at_index(exc: SkiplockError, index: int) -> None:
    exc.details["index"] = index
    exc.message = f"job {index}: {exc.message}"
    exc.args = (exc.message,)


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class BatchPage:
    batches: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueuePage:
    queues: list[dict[str, Any]]
    next_cursor: str | None


class Operations:
    """Inspect and steer jobs and queues (see the module docstring)."""

    def __init__(self, connect: Connect, *, pool: AsyncConnectionPool | None = None,
                 registry: TaskRegistry | None = None, max_args_bytes: int = MAX_ARGS_BYTES,
                 limits: QueueLimits | None = None, wakeups: Wakeups | None = None) -> None:
        self._connect = connect
        self._pool = pool
        self.registry = registry if registry is not None else default_registry
        self.max_args_bytes = max_args_bytes
        self.limits = limits if limits is not None else QueueLimits()
        self.wakeups = wakeups
        self._recorded: dict[str, tuple[RecordedTask | None, float]] = {}

    @classmethod
    def from_pool(cls, pool: AsyncConnectionPool, **kw: Any) -> Operations:
        return cls(pool.connection, pool=pool, **kw)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, max_size: int = 2, **kw: Any) -> AsyncIterator[Operations]:
        """Operations over a small pool of their own, closed on exit."""
        pool = db.make_pool(url, min_size=1, max_size=max_size, name="skiplock-ops")
        await pool.open(wait=True)
        try:
            yield cls.from_pool(pool, **kw)
        finally:
            await pool.close()

    # -- submission ---------------------------------------------------------------------------
    async def submit(self, specs: Sequence[JobSpec], *, correlation_id: str | None = None,
                     json_args: bool = False, correlation_ids: Sequence[str | None] | None = None) -> list[Enqueued]:
        """Submit jobs from outside the caller's transaction (HTTP, CLI, your code): all or
        none. Queue limits (`max_waiting`) hold exactly (QueueFull beyond them); a repeated
        idempotency key gets its job back, or IdempotencyConflict for a different job, even
        when its queue is full (the job needs no room). `json_args=True` checks arguments
        strictly as JSON (`"7"` is not a number). With more than one spec, an error names the
        job's position in `details["index"]`. Workers are woken after the commit when this
        object has Wakeups (the HTTP API), else by the insert itself.

        `correlation_ids` (one per spec) gives each job its own correlation id instead.

        Inside your own transaction, use `skiplock.enqueue` / `enqueue_many` (the same rules)."""
        registry = await self._registry_for(specs)
        for i, spec in enumerate(specs):
            try:
                t = registry.get(spec.task)
                if json_args:
                    t.check_json_args(spec.args)
                check_queue(spec.queue or t.queue)
            except SkiplockError as exc:
                if len(specs) > 1:
                    _at_index(exc, i)
                raise
        deferred = self.wakeups is not None
        async with self._conn() as conn:
            try:
                stored = await enqueue_many(conn, specs, registry=registry, max_args_bytes=self.max_args_bytes,
                                            correlation_id=correlation_id, defer_notify=deferred, limits=self.limits,
                                            correlation_ids=correlation_ids)
            except QueueFull:
                raise
            except SkiplockError as exc:
                if len(specs) > 1:
                    exc.details.setdefault("index", 0)
                raise
        if self.wakeups is not None:
            self.wakeups.touch({j.row["queue"] for j in stored if j.created})  # committed: wake workers
        return stored

    async def check_submission(self, spec: JobSpec, *, json_args: bool = False) -> CheckedSpec:
        """Raise what `submit([spec])` would raise for its input (InvalidInput, UnknownTask...),
        without storing anything: the checks that need no write. Returns the spec with the
        values to store, which `submit` then stores without checking them again."""
        registry = await self._registry_for([spec])
        t = registry.get(spec.task)
        if json_args:
            t.check_json_args(spec.args)
        check_queue(spec.queue or t.queue)
        return check_spec(spec, registry=registry, max_args_bytes=self.max_args_bytes)

    async def _registry_for(self, specs: Sequence[JobSpec]) -> TaskRegistry:
        """This process's tasks, plus those of `specs` it does not import but its workers
        recorded in skiplock.tasks (defaults and argument schema; cached RECORDED_TTL s)."""
        missing = {s.task for s in specs if isinstance(s.task, str) and s.task not in self.registry}
        if not missing:
            return self.registry
        now = time.monotonic()
        found: dict[str, RecordedTask] = {}
        for name in missing:
            cached = self._recorded.get(name)
            if cached is None or now - cached[1] > RECORDED_TTL:
                async with self._conn() as conn:
                    row = await tasks_q.recorded_task(conn, name)
                cached = (RecordedTask(row) if row else None, now)
                self._recorded[name] = cached
            if cached[0] is not None:
                found[name] = cached[0]
        return WithRecorded(self.registry, found) if found else self.registry

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[db.AsyncConn]:
        """A connection; database errors leave as SkiplockErrors (by constraint name)."""
        async with self._connect() as conn:
            try:
                yield conn
            except psycopg.OperationalError:
                raise  # the adapter decides what an outage means (503, exit code 4)
            except psycopg.Error as exc:
                raise translate(exc) from exc

    # -- jobs ---------------------------------------------------------------------------------
    async def get_job(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        """The job's row with its timeline under "history" (oldest first); JobNotFound if none."""
        jid = parse_job_id(job_id)
        async with self._conn() as conn:
            row = await jobs.get_job(conn, jid)
            if row is None:
                raise JobNotFound(f"no job {jid}", field="id")
            row["history"] = await jobs.get_history(conn, jid)
        return row

    async def list_jobs(self, *, queue: str | None = None, state: str | None = None, task: str | None = None,
                        batch: str | uuid.UUID | None = None, limit: int = 50,
                        cursor: str | None = None) -> JobPage:
        """Newest first; `next_cursor` continues with older jobs (keyset on the time-ordered id,
        so inserts during paging never shift or repeat a page)."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}", field="state", value=state)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit", value=limit)
        batch_id = parse_job_id(batch, field="batch") if batch is not None else None
        before = decode_cursor(cursor) if cursor is not None else None
        async with self._conn() as conn:
            rows = await jobs.list_jobs(conn, queue=check_queue(queue) if queue is not None else None,
                                        state=state, task=check_task_name(task) if task is not None else None,
                                        batch_id=batch_id, before=before, limit=limit + 1)
        page = rows[:limit]
        return JobPage(page, encode_cursor(page[-1]["id"]) if len(rows) > limit else None)

    async def search_jobs(self, *, queue: str | None = None, state: str | None = None, task: str | None = None,
                          batch: str | uuid.UUID | None = None, text: str | None = None,
                          since: datetime | None = None, until: datetime | None = None, limit: int = 50,
                          cursor: str | None = None) -> insight.SearchPage:
        """The dashboard's job list: list_jobs plus a time range (of creation) and a text search
        in the task, arguments and last error, reading a bounded number of rows per page
        (insight.SCAN_ROWS); a short page with a cursor means older matches may follow."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}", field="state", value=state)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit", value=limit)
        async with self._conn() as conn:
            return await insight.search_jobs(
                conn, queue=check_queue(queue) if queue is not None else None, state=state,
                task=check_task_name(task) if task is not None else None,
                batch_id=parse_job_id(batch, field="batch") if batch is not None else None,
                text=text or None, since=since, until=until,
                before=decode_cursor(cursor) if cursor is not None else None, limit=limit)

    async def throughput(self, *, now: datetime | None = None) -> tuple[list[insight.Bucket], list[insight.Bucket]]:
        """Jobs finished per minute over the last hour and per hour over the last day."""
        async with self._conn() as conn:
            return await insight.throughput(conn, now=now)

    async def retry_failed(self, queue: str, *, correlation_id: str | None = None) -> int:
        """Every failed job of the queue back to queued (as `retry` does each); how many."""
        name = check_queue(queue, field="name")
        async with self._conn() as conn:
            return await insight.retry_failed(conn, name, correlation_id=correlation_id)

    async def cancel(self, job_id: str | uuid.UUID, *, correlation_id: str | None = None) -> dict[str, Any]:
        """waiting, queued or running → cancelled (a running job's worker stops it; the jobs
        waiting for it are cancelled too); InvalidTransition otherwise. Returns the job's row."""
        return await self._transition(jobs.cancel_job, job_id, correlation_id)

    async def retry(self, job_id: str | uuid.UUID, *, correlation_id: str | None = None) -> dict[str, Any]:
        """failed or cancelled → queued, with a fresh round of attempts (or waiting, for a job
        whose dependencies have not all succeeded; InvalidTransition while one of them is failed
        or cancelled); InvalidTransition otherwise. Returns the job's row."""
        return await self._transition(jobs.retry_job, job_id, correlation_id)

    async def resume(self, job_id: str | uuid.UUID, data: Any = None, *,
                     correlation_id: str | None = None) -> dict[str, Any]:
        """A parked job back in its queue, due now; its next attempt gets `data` (JSON) as
        ctx.review. InvalidTransition for a job that is not parked. Returns the job's row."""
        try:
            stored = None if data is None else db.stored_json(to_json(data, what="data", limit=MAX_ARGS_BYTES))
        except Unstorable as exc:
            raise InvalidInput(exc.message, field="data") from None
        return await self._transition(lambda conn, jid: jobs.resume_job(conn, jid, stored), job_id, correlation_id)

    async def fail(self, job_id: str | uuid.UUID, reason: str | None = None, *,
                   correlation_id: str | None = None) -> dict[str, Any]:
        """A parked job failed for good (dead-letter set), with `reason` as its last error.
        InvalidTransition for a job that is not parked. Returns the job's row."""
        if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 2000):
            raise InvalidInput("reason must be a text of 1-2000 characters", field="reason")
        return await self._transition(lambda conn, jid: jobs.fail_job(conn, jid, reason), job_id, correlation_id)

    async def _transition(self, action: Callable[[db.AsyncConn, uuid.UUID], Any], job_id: str | uuid.UUID,
                          correlation_id: str | None) -> dict[str, Any]:
        jid = parse_job_id(job_id)
        async with self._conn() as conn:
            async with conn.transaction():
                await session.set_correlation_id(conn, correlation_id)
                await action(conn, jid)
            row = await jobs.get_job(conn, jid)
        if row is None:  # pruned between the transition and the read
            raise JobNotFound(f"no job {jid}", field="id")
        return row

    async def prune(self, *, older_than_seconds: float, now: datetime | None = None) -> int:
        """Delete finished jobs older than `older_than_seconds` (what the worker's pruner does)."""
        if self._pool is None:
            raise RuntimeError("Operations.prune needs a pool (Operations.from_pool or .connect)")
        try:
            return await prune_finished_jobs(self._pool, older_than_seconds=older_than_seconds, now=now)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise translate(exc) from exc

    # -- queues -------------------------------------------------------------------------------
    async def queues(self, *, limit: int = 100, cursor: str | None = None,
                     now: datetime | None = None) -> QueuePage:
        """Queues in name order, a page at a time: counts by state, throughput, oldest waiting
        age, paused, limits. The cursor is the previous page's last name, so queues created or
        deleted meanwhile never shift a page. A queue exists while jobs name it or it has
        settings."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit", value=limit)
        after = check_queue(cursor, field="cursor") if cursor is not None else None
        async with self._conn() as conn:
            rows = await queues.queue_page(conn, after=after, limit=limit + 1, now=now)
        page = rows[:limit]
        return QueuePage(page, page[-1]["queue"] if len(rows) > limit else None)

    async def delete_queue(self, name: str) -> None:
        """Forget an empty queue's settings; QueueNotEmpty while jobs name it (finished ones
        until pruned), QueueNotFound when it has neither jobs nor settings."""
        name = check_queue(name, field="name")
        async with self._conn() as conn:
            jobs_left, existed = await queues.delete_queue_if_empty(conn, name)
        if jobs_left:
            raise QueueNotEmpty(f"queue {name!r} still has {jobs_left} jobs; delete it once they are finished and "
                                "pruned", field="name", details={"queue": name, "jobs": jobs_left})
        if not existed:
            raise QueueNotFound(f"no queue {name!r}", field="name", details={"queue": name})
        self.limits.forget()

    async def queue_stats(self) -> list[dict[str, Any]]:
        """skiplock.queue_stats: counts by state per queue (what `skiplock status` prints)."""
        async with self._conn() as conn:
            return await queues.queue_stats(conn)

    async def pause_queue(self, name: str) -> dict[str, Any]:
        """Workers stop claiming from the queue; it still accepts jobs."""
        return await self._set_paused(name, True)

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        name = check_queue(name, field="name")
        async with self._conn() as conn:
            row = await queues.set_paused(conn, name, paused)
        assert row is not None
        return row

    async def set_queue_limits(self, name: str, *, max_waiting: int | None | Unset = UNSET,
                               max_running: int | None | Unset = UNSET,
                               per_key: tuple[str, int] | None | Unset = UNSET,
                               rate: tuple[int, float] | None | Unset = UNSET) -> dict[str, Any]:
        """Set a queue's limits; those left out keep their value, None removes one. Workers apply
        a change within 2 s (skiplock.limits.LIMITS_TTL), without a restart.

        - `max_waiting`: beyond it, submissions are refused (QueueFull).
        - `max_running`: at most this many of the queue's jobs run at once, over every worker.
        - `per_key=(arg, n)`: at most n running jobs share one value of the argument `arg`.
        - `rate=(n, seconds)`: at most n jobs start in any window of that many seconds."""
        name = check_queue(name, field="name")
        given = {k: v for k, v in (("max_waiting", max_waiting), ("max_running", max_running),
                                   ("per_key", per_key), ("rate", rate)) if not isinstance(v, Unset)}
        values = check_limits(given)
        async with self._conn() as conn:
            row = await api.set_queue_limits(conn, name, sorted(given), **values)
        self.limits.forget()
        assert row is not None
        return row

    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        async with self._conn() as conn:
            return await api.schema_revision(conn)

    # -- schedules ----------------------------------------------------------------------------
    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule (skiplock.schedules) in name order, with its next run: the stored
        one, or for an active schedule no scheduler has looked at yet, computed here."""
        async with self._conn() as conn:
            rows = await schedules.list_schedules(conn)
        return [_with_next_run(r) for r in rows]

    async def get_schedule(self, name: str) -> dict[str, Any]:
        """One schedule; ScheduleNotFound if none has this name."""
        return _with_next_run(await self._schedule_action(schedules.get_schedule, name))

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """No job is enqueued for it until it is resumed; its ticks meanwhile are not caught up."""
        return _with_next_run(await self._schedule_action(schedules.pause_schedule, name))

    async def resume_schedule(self, name: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Ticks count again from now (none missed while paused is enqueued)."""
        return _with_next_run(await self._schedule_action(
            lambda conn, n: schedules.resume_schedule(conn, n, now=now), name))

    async def _schedule_action(self, action: Callable[[db.AsyncConn, str], Awaitable[dict[str, Any] | None]],
                               name: str) -> dict[str, Any]:
        name = check_schedule_name(name)
        async with self._conn() as conn:
            row = await action(conn, name)
        if row is None:
            raise ScheduleNotFound(f"no schedule {name!r}", field="name", details={"schedule": name})
        return row

    # -- workers ------------------------------------------------------------------------------
    async def workers(self, *, hostname: str | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
        """Registered workers (optionally of one host) with the age of their last heartbeat."""
        async with self._conn() as conn:
            return await workers.list_workers(conn, hostname=hostname, now=now)

    # -- batches ------------------------------------------------------------------------------
    async def submit_batch(self, specs: Sequence[JobSpec], *, on_complete: JobSpec | None = None,
                           seal: bool = True, correlation_id: str | None = None,
                           json_args: bool = False) -> dict[str, Any]:
        """Create a batch with its jobs in one transaction (skiplock.batches.enqueue_batch), sealed
        unless `seal=False`; returns the batch (as get_batch) with its jobs' ids under "job_ids".
        The rules of `submit` hold for the jobs; an error names the job's position."""
        everything = [*specs, on_complete] if on_complete is not None else list(specs)
        registry = await self._registry_for(everything)
        for i, spec in enumerate(specs):
            try:
                t = registry.get(spec.task)
                if json_args:
                    t.check_json_args(spec.args)
                check_queue(spec.queue or t.queue)
            except SkiplockError as exc:
                _at_index(exc, i)
                raise
        if on_complete is not None and json_args:
            check_completion_json(on_complete, registry)
        deferred = self.wakeups is not None
        async with self._conn() as conn:
            made = await enqueue_batch(conn, specs, on_complete=on_complete, seal=seal, registry=registry,
                                       max_args_bytes=self.max_args_bytes, correlation_id=correlation_id,
                                       defer_notify=deferred, limits=self.limits)
            row = await batches.get_batch(conn, made.id)
        if self.wakeups is not None:
            self.wakeups.touch({j.row["queue"] for j in made.jobs if j.created})  # committed: wake workers
        assert row is not None
        row["job_ids"] = [j.id for j in made.jobs]
        return row

    async def get_batch(self, batch_id: str | uuid.UUID) -> dict[str, Any]:
        """The batch's counts, percent, state, times and its completion job (the job's row under
        "completion_job", None until the batch ends); BatchNotFound if none."""
        bid = parse_job_id(batch_id, field="batch")
        async with self._conn() as conn:
            row = await batches.get_batch(conn, bid)
            if row is None:
                raise BatchNotFound(f"no batch {bid}", field="id")
            cj = row["completion_job_id"]
            row["completion_job"] = await jobs.get_job(conn, cj) if cj is not None else None
        return row

    async def list_batches(self, *, state: str | None = None, limit: int = 50,
                           cursor: str | None = None) -> BatchPage:
        """Newest first, a page at a time (keyset on the time-ordered id, as list_jobs)."""
        if state is not None and state not in BATCH_STATES:
            raise InvalidInput(f"state must be one of {', '.join(BATCH_STATES)}", field="state", value=state)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit", value=limit)
        before = decode_cursor(cursor) if cursor is not None else None
        async with self._conn() as conn:
            rows = await batches.list_batches(conn, state=state, before=before, limit=limit + 1)
        page = rows[:limit]
        return BatchPage(page, encode_cursor(page[-1]["id"]) if len(rows) > limit else None)

    async def batch_jobs(self, batch_id: str | uuid.UUID, *, state: str | None = None, limit: int = 50,
                         cursor: str | None = None) -> JobPage:
        """The batch's jobs, newest first (as list_jobs); BatchNotFound if no such batch."""
        bid = parse_job_id(batch_id, field="batch")
        async with self._conn() as conn:
            if await batches.get_batch(conn, bid) is None:
                raise BatchNotFound(f"no batch {bid}", field="id")
        return await self.list_jobs(state=state, batch=bid, limit=limit, cursor=cursor)

    async def seal_batch(self, batch_id: str | uuid.UUID) -> dict[str, Any]:
        """No more jobs join the batch; it completes once its jobs have ended."""
        return await self._batch_action(batches.seal_batch, batch_id, None, None)

    async def cancel_batch(self, batch_id: str | uuid.UUID, *, correlation_id: str | None = None) -> dict[str, Any]:
        """Cancel its queued and running jobs (their workers stop them at once) and seal it; the
        batch, with the number cancelled under "cancelled_now"."""
        return await self._batch_action(batches.cancel_batch, batch_id, correlation_id, "cancelled_now")

    async def retry_batch(self, batch_id: str | uuid.UUID, *, correlation_id: str | None = None) -> dict[str, Any]:
        """Put its failed jobs back in their queues (a finished batch becomes active, and
        completes again when they end); the batch, with the number retried under "retried_now"."""
        return await self._batch_action(batches.retry_batch, batch_id, correlation_id, "retried_now")

    async def _batch_action(self, action: Callable[[db.AsyncConn, uuid.UUID], Awaitable[Any]],
                            batch_id: str | uuid.UUID, correlation_id: str | None, key: str | None) -> dict[str, Any]:
        bid = parse_job_id(batch_id, field="batch")
        try:
            async with self._conn() as conn:
                async with conn.transaction():
                    await session.set_correlation_id(conn, correlation_id)
                    done = await action(conn, bid)
        except JobNotFound:  # the function's no_data_found: no such batch
            raise BatchNotFound(f"no batch {bid}", field="id") from None
        row = await self.get_batch(bid)
        if key is not None:
            row[key] = done
        return row
