"""Cron schedules: their definition and the arithmetic of ticks. No database here: time is a
parameter, so a scheduler (skiplock/runtime/scheduler.py) and the tests step a clock.

Expressions have 5 fields (minute hour day month weekday) or 6 with seconds first, parsed by
cronsim. Ticks are computed in the schedule's time zone and stored in UTC. Across daylight
saving time changes a schedule at a fixed local time (`30 2 * * *`) fires once a day, as
Debian's cron does: in the spring gap at the first minute after it (03:00), in the autumn's
repeated hour at the first occurrence only; a schedule with `*` or `*/n` in its minute or hour
field follows real time (every 15 minutes stays every 15 minutes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidInput
from .job import PRIORITY_NAMES, TASK_RE, check_queue, check_task_name, priority_value

NAME_RE = TASK_RE
"""A schedule's name (the table's CHECK says the same): a @task's schedule takes the task's name."""

MAX_CATCH_UP_STEPS = 10_000
"""Bound on forward steps when looking for the last tick before now (normally none are needed)."""


def check_schedule_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(f"schedule name must match {NAME_RE.pattern}, not {name!r}", field=field, value=name)
    return name


def zone(timezone: str) -> ZoneInfo:
    """The IANA time zone called `timezone`, or InvalidInput."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(f"unknown time zone {timezone!r} (an IANA name such as 'Europe/Paris' or 'UTC')",
                           field="timezone", value=timezone) from None


def check_cron(expr: str, timezone: str = "UTC") -> str:
    """`expr` if it is a cron expression that fires at least once (else InvalidInput)."""
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6):
        raise InvalidInput(f"cron must have 5 fields (minute hour day month weekday) or 6 (seconds first), "
                           f"not {expr!r}", field="cron", value=expr)
    next_after(expr, timezone, datetime(2000, 1, 1, tzinfo=UTC))
    return expr


def next_after(expr: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after `after`, in UTC."""
    tz = zone(timezone)
    try:
        return next(CronSim(expr, after.astimezone(tz))).astimezone(UTC)
    except CronSimError as exc:
        raise InvalidInput(f"invalid cron expression {expr!r}: {exc}", field="cron", value=expr) from None
    except StopIteration:
        raise InvalidInput(f"cron expression {expr!r} never fires", field="cron", value=expr) from None


def last_at_or_before(expr: str, timezone: str, now: datetime) -> datetime | None:
    """The latest tick at or before `now`, in UTC (None if there is none within 50 years)."""
    tz = zone(timezone)
    try:
        # cronsim steps back from `now` strictly (from a whole second) or from `now` without
        # its fraction: one microsecond later makes `now` itself count.
        from_ = now.astimezone(tz) + timedelta(microseconds=1)
        return next(CronSim(expr, from_, reverse=True)).astimezone(UTC)
    except CronSimError as exc:
        raise InvalidInput(f"invalid cron expression {expr!r}: {exc}", field="cron", value=expr) from None
    except StopIteration:
        return None


class Due(NamedTuple):
    """What a scheduler does with a schedule now."""

    tick: datetime | None  # the tick to enqueue now (None: none is due)
    next: datetime  # the tick after it: the schedule's next run
    catch_up: bool  # earlier ticks were missed too (downtime): `tick` stands for them all


def due_tick(expr: str, timezone: str, *, after: datetime, now: datetime) -> Due:
    """The tick to enqueue now, if any fell in (after, now], and the one after it. After
    downtime several ticks fell in: only the latest is enqueued, so a schedule enqueues one
    catch-up job, not a burst."""
    first = next_after(expr, timezone, after)
    if first > now:
        return Due(None, first, False)
    tick = first
    latest = last_at_or_before(expr, timezone, now)
    if latest is not None and tick < latest <= now:
        tick = latest
    following = next_after(expr, timezone, tick)
    for _ in range(MAX_CATCH_UP_STEPS):  # in case the backward step landed early (it does not, in practice)
        if following > now:
            break
        tick, following = following, next_after(expr, timezone, following)
    return Due(tick, following, tick != first)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of the job for one tick: the unique index on (queue, key) lets
    only one job per tick exist, whichever scheduler enqueues it."""
    return f"schedule:{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass
class Schedule:
    """A schedule defined in code: one job of `task` with `args` per tick of `cron` in
    `timezone`. `queue` and `priority` default to the task's."""

    name: str
    task: str
    cron: str
    timezone: str = "UTC"
    args: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: str | int | None = None

    def __post_init__(self) -> None:
        check_schedule_name(self.name)
        zone(self.timezone)
        check_cron(self.cron, self.timezone)
        if not isinstance(self.args, dict):
            raise InvalidInput(f"schedule {self.name!r}: args must be a dict", field="args")
        if self.queue is not None:
            check_queue(self.queue)
        check_task_name(self.task)
        if self.priority is not None:  # stored by name, as skiplock.enqueue() takes it
            self.priority = PRIORITY_NAMES[priority_value(self.priority)]
