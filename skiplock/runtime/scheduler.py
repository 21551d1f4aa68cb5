"""The scheduler: enqueues the jobs of cron schedules (skiplock.schedules). Every worker runs
one, and any number may run at once: no leader is elected. What makes one job per tick is
the database, in each round's transaction:

- the due schedules are locked `FOR UPDATE SKIP LOCKED`, so two schedulers never work on one
  schedule at the same moment (and one that dies mid-round releases it with its connection);
- `last_tick_at` moves by a compare-and-set from the value the tick was computed from;
- the job's idempotency key names the tick (`schedule:NAME:TICK`), unique in its queue.

A tick is never skipped while any scheduler runs: a schedule stays due until a round
enqueues its tick. After downtime, the ticks missed become one catch-up job (the latest
tick's), not a burst. `run_once(now)` takes the time, so tests step a clock."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg_pool import AsyncConnectionPool

from .. import db
from ..cron import Schedule, due_tick, tick_key
from ..errors import SkiplockError
from ..events import emit
from ..job import PRIORITY_NAMES, priority_value
from ..queries import schedules
from ..storable import safe_text
from ..tasks import TaskRegistry
from .service import PeriodicService

log = logging.getLogger("skiplock")

HELD_WAIT = 0.05
"""Seconds before looking again at a due schedule another scheduler has locked."""

BATCH = 100
"""Schedules handled per round's transaction; a full batch starts the next round at once."""


@dataclass(slots=True)
class Fired:
    """A tick enqueued by this scheduler."""

    name: str
    tick: datetime
    job_id: uuid.UUID
    catch_up: bool  # ticks before this one were missed (downtime): this job stands for them


@dataclass(slots=True)
class Round:
    fired: list[Fired] = field(default_factory=list)
    wait: float = 0.0  # seconds until a schedule is due next (at most the scheduler's interval)


def code_rows(registry: TaskRegistry) -> dict[str, list[object]]:
    """The registry's schedules as the columns of upsert_code_schedules: arguments checked
    and queue and priority resolved from the task where this process has it. A schedule whose
    arguments its task refuses is left out (and logged)."""
    cols: dict[str, list[object]] = {k: [] for k in ("names", "tasks", "crons", "timezones", "args", "queues",
                                                     "priorities")}
    for s in registry.schedules.values():
        try:
            args, queue, priority = _resolved(registry, s)
        except SkiplockError as exc:  # this schedule only: the others are still written and run
            emit("skiplock.schedule.broken", schedule=s.name, error=exc.message)
            continue
        for k, v in zip(cols, (s.name, s.task, s.cron, s.timezone, db.jsonb(args), queue, priority), strict=True):
            cols[k].append(v)
    return cols


def _resolved(registry: TaskRegistry, s: Schedule) -> tuple[object, str | None, str | None]:
    priority = None if s.priority is None else str(s.priority)  # a name (Schedule stores names)
    if s.task not in registry:
        return s.args, s.queue, priority
    t = registry.get(s.task)
    try:
        args = t.validate(s.args)
    except SkiplockError as exc:
        raise type(exc)(f"schedule {s.name!r}: {exc.message}", field="args") from None
    return args, s.queue or t.queue, priority or PRIORITY_NAMES[priority_value(t.priority)]


class Scheduler(PeriodicService):
    """Looks for due schedules at least every `interval` seconds, and wakes when the next one
    is due. The schedules of `registry` are written to the table at the first round."""

    name = "scheduler"

    def __init__(self, pool: AsyncConnectionPool, registry: TaskRegistry, *, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.pool = pool
        self.registry = registry
        self._synced = False

    async def sync(self, now: datetime | None = None) -> int:
        """Write the schedules defined in code; how many rows changed."""
        cols = code_rows(self.registry)
        if not cols["names"]:
            return 0
        async with self.pool.connection() as conn:
            return await schedules.upsert_code_schedules(conn, now=now, **cols)  # type: ignore[arg-type]

    async def run_once(self, now: datetime | None = None) -> Round:
        """One round: enqueue the tick of every due schedule (the database's clock unless `now`)."""
        if not self._synced:
            await self.sync(now)
            self._synced = True
        result = Round()
        async with self.pool.connection() as conn:
            async with conn.transaction():
                due = await schedules.lock_due_schedules(conn, limit=BATCH, now=now)
                for row in due:
                    fired = await self._advance(conn, row)
                    if fired is not None:
                        result.fired.append(fired)
            nxt = None if len(due) == BATCH else await schedules.next_schedule_due(conn, now)
        for f in result.fired:
            emit("skiplock.schedule.enqueued", schedule=f.name, tick=f.tick.isoformat(), job_id=f.job_id,
                 catch_up=f.catch_up)
        if nxt is None:
            return result  # a full batch: more may be due, no wait
        result.wait = self.interval
        if nxt["next_run_at"] is not None and not nxt["uncomputed"]:
            until = (nxt["next_run_at"] - nxt["now"]).total_seconds()
            # Due already yet not ours: another scheduler holds it and is enqueueing it now.
            result.wait = min(self.interval, until if until > 0 else HELD_WAIT)
        return result

    async def _advance(self, conn: db.AsyncConn, row: dict[str, object]) -> Fired | None:
        name = str(row["name"])
        last = row["last_tick_at"]
        assert last is None or isinstance(last, datetime)
        after = max(d for d in (last, row["since"]) if isinstance(d, datetime))
        now = row["now"]
        assert isinstance(now, datetime)
        try:
            due = due_tick(str(row["cron"]), str(row["timezone"]), after=after, now=now)
        except SkiplockError as exc:
            await schedules.mark_schedule_broken(conn, name=name, error=safe_text(exc.message))
            emit("skiplock.schedule.broken", schedule=name, error=exc.message)
            return None
        if due.tick is None:
            await schedules.set_next_run_at(conn, name=name, last_tick_at=last, next_run_at=due.next)
            return None
        try:
            async with conn.transaction():  # a refused job (bad queue, args) spoils this schedule only
                job_id = await schedules.enqueue_tick(conn, name=name, last_tick_at=last, tick=due.tick,
                                                      next_run_at=due.next, idempotency_key=tick_key(name, due.tick))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            error = f"its job was refused: {exc}".strip()
            await schedules.mark_schedule_broken(conn, name=name, error=safe_text(error))
            emit("skiplock.schedule.broken", schedule=name, error=error)
            return None
        if job_id is None:
            return None
        return Fired(name, due.tick, job_id, catch_up=due.catch_up)

    def next_delay(self, result: Round) -> float:
        return result.wait
