"""Submitting jobs: one or many, on the caller's connection and inside its transaction
(rolled back = never existed). Arguments are checked against the task before anything is stored."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from . import db
from .errors import IdempotencyConflict, InvalidInput, QueueFull, SkiplockError, translate
from .job import check_queue, priority_value, uuid7
from .limits import QueueLimits, default_limits
from .queries import jobs
from .tasks import Task, TaskRegistry
from .tasks import registry as default_registry

MAX_ARGS_BYTES = 256 * 1024
"""Default bound on one job's JSON arguments; larger payloads belong in your own storage."""

MAX_DEPENDENCIES = 1000
"""Most jobs one job may wait for (the database's jobs_depends_on_size says the same)."""

Dependency = uuid.UUID | str | int
"""A job to wait for: its id (a UUID or its text), or the index of another job of the same
enqueue_many call."""


@dataclass
class JobSpec:
    """One job to submit. Unset options come from the task's defaults."""

    task: str
    args: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: str | int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    batch_id: uuid.UUID | None = None
    depends_on: Sequence[Dependency] | None = None
    """Jobs this one waits for: it stays `waiting` (not claimable) until every one of them has
    succeeded, and is cancelled if one fails for good or is cancelled. Ids of stored jobs (an
    unknown, failed or cancelled one is refused), or indexes of other jobs of the same call. A
    repeated idempotency key finds its stored job whatever this list says."""


@dataclass
class Enqueued:
    """The stored job (`row`, as in skiplock.jobs) and whether this call created it."""

    row: dict[str, Any]
    created: bool

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(str(self.row["id"]))


def _resolve(spec: JobSpec, reg: TaskRegistry, max_args_bytes: int, now: datetime | None) -> dict[str, Any]:
    """Validate one spec into the column values to insert, or raise naming the field."""
    t: Task = reg.get(spec.task)
    args = t.validate(spec.args)
    # Serialised once: the size check and the INSERT use the same text (jsonb parses it).
    # The size is the UTF-8 bytes stored, not the length of \u escapes (ensure_ascii=False).
    try:
        args_json = json.dumps(args, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(args_json.encode())
    except UnicodeEncodeError:  # a lone surrogate: not a character, so not storable text
        raise InvalidInput("args hold a lone UTF-16 surrogate (\\ud800-\\udfff), which is not a character",
                           field="args") from None
    except ValueError:  # NaN or Infinity: not JSON, and jsonb refuses them
        raise InvalidInput("args hold a number JSON cannot represent (NaN or Infinity)", field="args") from None
    if size > max_args_bytes:
        raise InvalidInput(f"args are {size} bytes; the limit is {max_args_bytes}", field="args", value=size)
    if spec.run_at is not None and spec.delay is not None:
        raise InvalidInput("give run_at or delay, not both", field="delay")
    run_at = spec.run_at
    if spec.delay is not None:
        if not isinstance(spec.delay, int | float) or not math.isfinite(spec.delay) or spec.delay < 0:
            raise InvalidInput(f"delay must be a number of seconds >= 0, not {spec.delay!r}", field="delay")
        run_at = (now or datetime.now(UTC)) + timedelta(seconds=spec.delay)
    if run_at is not None and run_at.tzinfo is None:
        raise InvalidInput("run_at must include a time zone", field="run_at", value=str(run_at))
    max_attempts = t.max_attempts if spec.max_attempts is None else spec.max_attempts
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not 1 <= max_attempts <= 1000:
        raise InvalidInput(f"max_attempts must be an integer from 1 to 1000, not {max_attempts!r}",
                           field="max_attempts", value=max_attempts)
    timeout = t.timeout if spec.timeout is None else spec.timeout
    if timeout is not None and (not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0):
        raise InvalidInput(f"timeout must be a number of seconds > 0, not {timeout!r}", field="timeout")
    if timeout is not None:
        timeout = float(timeout)  # one type per column: a bulk's list of timeouts is sent as one array
    key = spec.idempotency_key
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise InvalidInput("idempotency_key must be 1-255 characters", field="idempotency_key")
    return {
        "id": uuid7(), "task": t.name, "args": args, "args_json": args_json,
        "queue": check_queue(spec.queue or t.queue),
        "priority": priority_value(spec.priority if spec.priority is not None else t.priority),
        "run_at": run_at, "max_attempts": max_attempts, "timeout": timeout,
        "idempotency_key": key, "batch_id": spec.batch_id, "depends_on": None,
    }


def _dependency_refs(specs: Sequence[JobSpec]) -> dict[int, tuple[set[uuid.UUID], set[int]]]:
    """{index: (ids, indexes)} of the specs that name dependencies, checked: ids are UUIDs,
    indexes name other jobs of the call, and the call's jobs wait for each other in no cycle.
    Raises InvalidInput with `details["index"]` naming the job at fault."""
    refs: dict[int, tuple[set[uuid.UUID], set[int]]] = {}
    for i, spec in enumerate(specs):
        deps = spec.depends_on
        if deps is None:
            continue
        try:
            if isinstance(deps, str | bytes) or not isinstance(deps, Sequence):
                raise InvalidInput("depends_on must be a list of job ids", field="depends_on")
            if len(deps) > MAX_DEPENDENCIES:
                raise InvalidInput(f"depends_on names {len(deps)} jobs; the limit is {MAX_DEPENDENCIES}",
                                   field="depends_on", value=len(deps))
            ids: set[uuid.UUID] = set()
            indexes: set[int] = set()
            for d in deps:
                if isinstance(d, int) and not isinstance(d, bool):
                    if not 0 <= d < len(specs):
                        raise InvalidInput(f"depends_on names job {d} of this call, which has {len(specs)} jobs",
                                           field="depends_on", value=d)
                    indexes.add(d)
                elif isinstance(d, uuid.UUID):
                    ids.add(d)
                else:
                    try:
                        ids.add(uuid.UUID(d))  # type: ignore[arg-type]
                    except (ValueError, TypeError, AttributeError):
                        raise InvalidInput(f"depends_on holds {d!r}, which is not a job id (a UUID)",
                                           field="depends_on", value=str(d)) from None
        except InvalidInput as exc:
            _name_index(exc, i, len(specs))
            raise
        refs[i] = (ids, indexes)
    cycle = _cycle({i: indexes for i, (_, indexes) in refs.items()})
    if cycle:
        path = " -> ".join(f"job {j}" for j in cycle)
        error = InvalidInput(f"depends_on forms a cycle: {path}", field="depends_on", details={"cycle": cycle})
        _name_index(error, cycle[0], len(specs))
        raise error
    return refs


def _cycle(edges: dict[int, set[int]]) -> list[int]:
    """A cycle among the call's jobs as [a, b, ..., a], or [] (depth first, iteratively: the
    chain may be as long as the call)."""
    seen: dict[int, bool] = {}  # True while on the current path, False once explored
    for start in sorted(edges):
        if start in seen:
            continue
        path = [start]
        seen[start] = True
        stack = [iter(sorted(edges.get(start, ())))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                seen[path.pop()] = False
                stack.pop()
            elif seen.get(nxt) is True:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in seen:
                seen[nxt] = True
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return []


def _name_index(exc: SkiplockError, index: int, count: int) -> None:
    """Say which job of a call of many an error is about."""
    if count > 1 and "index" not in exc.details:
        exc.details["index"] = index
        exc.message = f"job {index}: {exc.message}"
        exc.args = (exc.message,)


async def _link(conn: db.AsyncConn, rows: list[dict[str, Any]],
                refs: dict[int, tuple[set[uuid.UUID], set[int]]]) -> None:
    """Each row's depends_on as sorted job ids. A job named by index that repeats a stored
    job's idempotency key is that stored job (the insert will skip it)."""
    named = sorted({j for _, indexes in refs.values() for j in indexes if rows[j]["idempotency_key"] is not None})
    stored: dict[int, uuid.UUID] = {}
    if named:
        found = await jobs.find_by_idempotency_keys(conn, [rows[j]["queue"] for j in named],
                                                    [rows[j]["idempotency_key"] for j in named])
        holder = {(f["queue"], f["idempotency_key"]): f["id"] for f in found}
        stored = {j: holder[(rows[j]["queue"], rows[j]["idempotency_key"])] for j in named
                  if (rows[j]["queue"], rows[j]["idempotency_key"]) in holder}
    for i, (ids, indexes) in refs.items():
        every = ids | {stored.get(j, rows[j]["id"]) for j in indexes}
        rows[i]["depends_on"] = sorted(every) if every else None


async def enqueue(conn: db.AsyncConn, task: str | Task, args: dict[str, Any] | None = None, *,
                  registry: TaskRegistry | None = None, max_args_bytes: int = MAX_ARGS_BYTES,
                  correlation_id: str | None = None, now: datetime | None = None, limits: QueueLimits | None = None,
                  **options: Any) -> Enqueued:
    """Submit one job; returns it. With an idempotency key already used in the queue,
    returns the existing job with `created=False` (a unique index decides, whatever races),
    even when the queue is full; otherwise QueueFull beyond the queue's `max_waiting`."""
    name = task.name if isinstance(task, Task) else task
    spec = JobSpec(task=name, args=args if args is not None else {}, **options)
    return (await enqueue_many(conn, [spec], registry=registry, max_args_bytes=max_args_bytes,
                               correlation_id=correlation_id, now=now, limits=limits))[0]


def _same_job(t: Task, spec: JobSpec, resolved: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a submission repeating an idempotency key asks for the job `row` stored under it.

    Task, arguments and queue are always compared, the arguments as the task validates them
    on both sides (a job stored from SQL with `{}` matches a repeat whose arguments take the
    defaults); other options only when the submission states them: a task's defaults may
    change between deploys, and a retried request must still find its job. `delay` is
    relative to each submission's own time, so it is never compared."""
    stated = [k for k in ("priority", "max_attempts", "timeout", "run_at", "batch_id") if getattr(spec, k) is not None]
    if not all(row.get(k) == resolved[k] for k in ("task", "queue", *stated)):
        return False
    if bool(row.get("args") == resolved["args"]):
        return True
    try:
        return bool(t.validate(row.get("args")) == resolved["args"])
    except InvalidInput:  # stored arguments the task refuses (submitted from SQL) are another job
        return False


def _conflict(index: int | None, key: str, row: dict[str, Any], batch_index: int | None) -> IdempotencyConflict:
    where = f"job {index}: " if index is not None else ""
    if batch_index is not None:  # the other job is in the same request (and is not stored)
        return IdempotencyConflict(f"{where}idempotency key {key!r} is also used by job {batch_index} of this "
                                   "request, for a different job", field="idempotency_key",
                                   details={"index": index, "same_key_as_index": batch_index})
    details: dict[str, Any] = {"job_id": str(row["id"])}
    if index is not None:
        details["index"] = index
    return IdempotencyConflict(f"{where}idempotency key {key!r} was already used for a different job {row['id']}",
                               field="idempotency_key", details=details)


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))


@dataclass
class CheckedSpec(JobSpec):
    """A JobSpec that `check_spec` accepted, carrying the values to insert (its id included),
    so that `enqueue_many` stores them without checking the spec again."""

    values: dict[str, Any] = field(default_factory=dict, repr=False)


def check_spec(spec: JobSpec, *, registry: TaskRegistry | None = None,
               max_args_bytes: int = MAX_ARGS_BYTES) -> CheckedSpec:
    """`spec` checked as `enqueue_many` checks it before storing (InvalidInput naming the
    field), with the values it resolves to (a `delay` counts from now)."""
    values = _resolve(spec, registry if registry is not None else default_registry, max_args_bytes, None)
    return CheckedSpec(**{name: getattr(spec, name) for name in _SPEC_FIELDS}, values=values)


def check_repeat(spec: JobSpec, row: dict[str, Any], *, registry: TaskRegistry | None = None,
                 max_args_bytes: int = MAX_ARGS_BYTES) -> None:
    """Raise IdempotencyConflict unless `row`, stored under `spec`'s idempotency key, is the
    job `spec` asks for (the rule every submission path applies)."""
    reg = registry if registry is not None else default_registry
    resolved = _resolve(spec, reg, max_args_bytes, None)
    if not _same_job(reg.get(spec.task), spec, resolved, row):
        raise _conflict(None, str(spec.idempotency_key), row, None)


async def enqueue_many(conn: db.AsyncConn, specs: Sequence[JobSpec], *, registry: TaskRegistry | None = None,
                       max_args_bytes: int = MAX_ARGS_BYTES, correlation_id: str | None = None,
                       now: datetime | None = None, defer_notify: bool = False,
                       limits: QueueLimits | None = None,
                       correlation_ids: Sequence[str | None] | None = None) -> list[Enqueued]:
    """Submit many jobs in one transaction: all are stored or none. A bad item raises
    InvalidInput with `details["index"]` naming it.

    A queue's `max_waiting` holds exactly, whatever else submits at once: beyond it the call
    raises QueueFull and stores nothing. Submitting to a limited queue locks that queue's row
    until the caller's transaction ends (keep such transactions short); a queue without a
    limit takes no lock and costs nothing. `limits` caches which queues are limited (default:
    one cache per process, refreshed every 2 s).

    An idempotency key names one job per queue: a repeat that asks for the same job (see
    `_same_job`) gets the stored one back (`created=False`); one that asks for a different
    job, stored earlier or earlier in `specs`, raises IdempotencyConflict naming its index,
    and nothing of the call is stored.

    `defer_notify=True` stores the jobs without waking sleeping workers: the caller promises
    to wake them after its transaction commits (skiplock.wakeup.Wakeups does). Use it only
    when many transactions submit at once; see skiplock/wakeup.py.

    `correlation_ids`, one per spec (None: `correlation_id`), gives each job its own: jobs
    of many requests stored together (skiplock/coalesce.py)."""
    reg = registry if registry is not None else default_registry
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        try:
            checked = spec.values if isinstance(spec, CheckedSpec) and now is None else None
            rows.append(dict(checked) if checked else _resolve(spec, reg, max_args_bytes, now))
        except SkiplockError as exc:
            if len(specs) > 1:
                exc.details["index"] = i
                exc.message = f"job {i}: {exc.message}"
                exc.args = (exc.message,)
            raise
    if not rows:
        return []
    refs = _dependency_refs(specs)
    cid = correlation_id[:200] if correlation_id else None
    if correlation_ids is not None:
        if len(correlation_ids) != len(rows):
            raise ValueError("enqueue_many: one correlation id per spec")
        for r, own in zip(rows, correlation_ids, strict=True):
            r["correlation_id"] = own[:200] if own else cid
    limits = limits if limits is not None else default_limits
    wanted = Counter(r["queue"] for r in rows)
    try:
        if refs:
            await _link(conn, rows, refs)
        if not await limits.needed(conn, wanted):
            return await _current_states(conn, await _store(conn, reg, specs, rows, cid, defer_notify), rows)
        # A limited queue: the reservation and the insert share a transaction (a savepoint
        # inside the caller's), whose end releases the queue rows it locked.
        async with conn.transaction():
            await limits.reserve(conn, wanted)
            return await _current_states(conn, await _store(conn, reg, specs, rows, cid, defer_notify), rows)
    except psycopg.Error as exc:
        error = translate(exc)
        if not isinstance(error, QueueFull):
            dependent = {str(r["id"]): i for i, r in enumerate(rows)}.get(str(error.details.get("dependent_id")))
            if dependent is not None:  # the database names the job by id: say which of the call's
                _name_index(error, dependent, len(rows))
            raise error from exc
    try:
        return await _stored_repeats(conn, reg, specs, rows, error)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def _current_states(conn: db.AsyncConn, stored: list[Enqueued], rows: list[dict[str, Any]]) -> list[Enqueued]:
    """A job with dependencies is inserted waiting and queued by the same statement when they
    have all succeeded already: read the state it has now."""
    if all(r["depends_on"] is None for r in rows):
        return stored
    linked = [j for j, r in zip(stored, rows, strict=True) if j.created and r["depends_on"] is not None]
    if linked:
        states = await jobs.job_states(conn, [j.id for j in linked])
        for j in linked:
            j.row["state"] = states.get(j.id, j.row["state"])
    return stored


async def _store(conn: db.AsyncConn, reg: TaskRegistry, specs: Sequence[JobSpec], rows: list[dict[str, Any]],
                 cid: str | None, defer_notify: bool) -> list[Enqueued]:
    if len(rows) == 1:
        job = await _insert_one(conn, rows[0], cid, defer_notify)
        if not job.created and not _same_job(reg.get(specs[0].task), specs[0], rows[0], job.row):
            raise _conflict(None, rows[0]["idempotency_key"], job.row, None)
        return [job]
    if all(r["idempotency_key"] is None for r in rows):
        # One INSERT statement stores every job or none (its trigger writes the history in
        # the same statement): on an autocommit connection it is its own transaction,
        # otherwise it joins the caller's.
        return await _insert_many(conn, rows, cid, defer_notify)
    # A conflict is known only after the insert: the insert and the check share a
    # transaction (a savepoint inside the caller's), so a refused call stores nothing.
    async with conn.transaction():
        jobs = await _insert_many(conn, rows, cid, defer_notify)
        _check_repeats(reg, specs, rows, jobs)
        return jobs


async def _stored_repeats(conn: db.AsyncConn, reg: TaskRegistry, specs: Sequence[JobSpec],
                          rows: list[dict[str, Any]], full: QueueFull) -> list[Enqueued]:
    """A full queue refuses a submission unless every job it asks for is already stored under
    its idempotency key (a client repeating a request whose answer it lost): it needs no room,
    so it gets those jobs back (or IdempotencyConflict), not QueueFull."""
    found: list[Enqueued] = []
    for i, (spec, row) in enumerate(zip(specs, rows, strict=True)):
        key = row["idempotency_key"]
        existing = await jobs.find_by_idempotency_key(conn, row["queue"], key) if key is not None else None
        if existing is None:
            raise full
        if not _same_job(reg.get(spec.task), spec, row, existing):
            raise _conflict(i if len(specs) > 1 else None, key, existing, None)
        found.append(Enqueued(existing, False))
    return found


def _check_repeats(reg: TaskRegistry, specs: Sequence[JobSpec], rows: list[dict[str, Any]],
                   jobs: list[Enqueued]) -> None:
    """Raise for the first job whose key names a different job, stored before or in this call."""
    own = {j.id: i for i, j in enumerate(jobs) if j.created}
    for i, (spec, row, job) in enumerate(zip(specs, rows, jobs, strict=True)):
        if not job.created and not _same_job(reg.get(spec.task), spec, row, job.row):
            raise _conflict(i, row["idempotency_key"], job.row, own.get(job.id))


async def _insert_one(conn: db.AsyncConn, row: dict[str, Any], correlation_id: str | None,
                      defer_notify: bool) -> Enqueued:
    params = dict(row, args=row["args_json"], defer_notify=defer_notify)
    params["correlation_id"] = row.get("correlation_id", correlation_id)
    inserted = await jobs.insert_job(conn, params)
    if inserted is not None:
        return Enqueued(inserted, True)
    existing = await jobs.find_by_idempotency_key(conn, row["queue"], row["idempotency_key"])
    assert existing is not None, "conflicting idempotency key vanished"
    return Enqueued(existing, False)


async def _insert_many(conn: db.AsyncConn, rows: list[dict[str, Any]], correlation_id: str | None,
                       defer_notify: bool) -> list[Enqueued]:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    inserted = await jobs.insert_jobs(conn, {"correlation_id": correlation_id,
        "defer_notify": defer_notify, "ids": cols["id"], "tasks": cols["task"],
        "args": cols["args_json"],
        "queues": cols["queue"], "priorities": cols["priority"], "run_ats": cols["run_at"],
        "max_attempts": cols["max_attempts"], "timeouts": cols["timeout"],
        "idempotency_keys": cols["idempotency_key"], "batch_ids": cols["batch_id"],
        "correlation_ids": cols.get("correlation_id", [None] * len(rows)),
        "depends_on": [None if d is None else "{" + ",".join(map(str, d)) + "}" for d in cols["depends_on"]]})
    created = {r["id"]: r for r in inserted}
    repeats = [r for r in rows if r["id"] not in created]
    # The jobs already holding the repeated keys (stored before, or by this very statement
    # for a key given twice), read in one statement.
    found = await jobs.find_by_idempotency_keys(conn, [r["queue"] for r in repeats],
                                                [r["idempotency_key"] for r in repeats]) if repeats else []
    holder = {(f["queue"], f["idempotency_key"]): f for f in found}
    out: list[Enqueued] = []
    for r in rows:
        if r["id"] in created:
            out.append(Enqueued(_fresh_row(r, created[r["id"]], correlation_id), True))
        else:
            out.append(Enqueued(holder[(r["queue"], r["idempotency_key"])], False))
    return out


def _fresh_row(resolved: dict[str, Any], inserted: dict[str, Any], correlation_id: str | None) -> dict[str, Any]:
    """The row of a job just inserted, as `SELECT *` would read it: the values sent, what the
    insert returned (state, run_at, created_at), and the columns' defaults for a new job."""
    row = {k: v for k, v in resolved.items() if k != "args_json"}
    row.setdefault("correlation_id", correlation_id)
    row.update(inserted)
    for name in ("result", "last_error", "progress", "checkpoint", "worker_id", "lease_expires_at", "started_at",
                 "finished_at"):
        row.setdefault(name, None)
    row.setdefault("attempt", 0)
    row.setdefault("attempt_base", 0)
    row.setdefault("has_dependents", False)
    return row
