"""The arithmetic of schedules, without a database: ticks in a time zone across daylight saving
time, the one catch-up tick after downtime, and definitions refused with the field at fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from skiplock import InvalidArguments, InvalidInput, TaskRegistry, schedule, task
from skiplock.cron import due_tick, next_after, tick_key
from skiplock.runtime.scheduler import code_rows

PARIS = "Europe/Paris"


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def ticks(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while (t := next_after(expr, tz, t)) <= end:
        out.append(t)
    return out


def test_a_fixed_local_time_fires_once_on_the_spring_day_whose_hour_does_not_exist():
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    got = ticks("30 2 * * *", PARIS, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))
    assert got == [utc(2026, 3, 28, 1, 30),   # 02:30 CET
                   utc(2026, 3, 29, 1, 0),    # the first minute after the gap: 03:00 CEST, once
                   utc(2026, 3, 30, 0, 30)]   # 02:30 CEST


def test_a_fixed_local_time_fires_once_on_the_autumn_day_whose_hour_repeats():
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    got = ticks("30 2 * * *", PARIS, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12))
    assert got == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30),  # the first 02:30 only
                   utc(2026, 10, 26, 1, 30)]


def test_an_interval_schedule_follows_real_time_through_both_changes():
    # every 30 minutes: the repeated hour has its two half-hours twice, the missing hour none
    autumn = ticks("*/30 * * * *", PARIS, utc(2026, 10, 24, 23, 59), utc(2026, 10, 25, 3, 0))
    assert autumn == [utc(2026, 10, 25, 0, 0) + timedelta(minutes=30 * i) for i in range(7)]
    spring = ticks("*/30 * * * *", PARIS, utc(2026, 3, 28, 23, 59), utc(2026, 3, 29, 3, 0))
    assert spring == [utc(2026, 3, 29, 0, 0) + timedelta(minutes=30 * i) for i in range(7)]


def test_a_catch_up_across_the_autumn_change_is_one_tick_the_latest():
    due = due_tick("30 2 * * *", PARIS, after=utc(2026, 10, 23, 12), now=utc(2026, 10, 25, 1, 40))
    assert due == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), True)


def test_due_tick_is_none_before_the_first_tick_and_one_latest_tick_after_downtime():
    start = utc(2026, 1, 1, 12)
    assert due_tick("* * * * * *", "UTC", after=start, now=start + timedelta(milliseconds=999)) == (
        None, start + timedelta(seconds=1), False)
    assert due_tick("* * * * * *", "UTC", after=start, now=start + timedelta(seconds=1)) == (
        start + timedelta(seconds=1), start + timedelta(seconds=2), False)
    # ten minutes down: one tick stands for the 600 missed, and the next is the one after now
    now = start + timedelta(minutes=10, milliseconds=300)
    assert due_tick("* * * * * *", "UTC", after=start, now=now) == (
        start + timedelta(minutes=10), start + timedelta(minutes=10, seconds=1), True)
    # a year down with a per-second schedule is still one step, not 31 million
    year = start + timedelta(days=365)
    assert due_tick("* * * * * *", "UTC", after=start, now=year).tick == year


def test_the_tick_key_names_the_schedule_and_the_tick_in_utc():
    paris_noon = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert tick_key("nightly", paris_noon) == "schedule:nightly:2026-07-01T14:00:00Z"


def test_definitions_are_checked_where_they_are_written():
    reg = TaskRegistry()

    @task(registry=reg)
    async def report(day: str = "today") -> None: ...

    with pytest.raises(InvalidInput) as bad_cron:
        schedule("r", report, "61 * * * *", registry=reg)
    assert bad_cron.value.field == "cron"
    with pytest.raises(InvalidInput) as bad_fields:
        schedule("r", report, "* * *", registry=reg)
    assert bad_fields.value.field == "cron"
    with pytest.raises(InvalidInput) as bad_zone:
        schedule("r", report, "0 * * * *", timezone="Mars/Olympus", registry=reg)
    assert bad_zone.value.field == "timezone"
    with pytest.raises(InvalidInput) as never:
        schedule("r", report, "0 0 31 2 *", registry=reg)
    assert never.value.field == "cron"
    with pytest.raises(InvalidInput):
        @task(registry=reg, schedule="* * * * *")
        async def needs_args(n: int) -> None: ...  # a scheduled job has no arguments
    assert "needs_args" not in reg

    @task(registry=reg, schedule="*/5 * * * *", timezone=PARIS)
    async def every_five() -> None: ...

    s = schedule("report-daily", report, "0 6 * * *", args={"day": "yesterday"}, priority="high", registry=reg)
    assert reg.schedules == {"every_five": reg.schedules["every_five"], "report-daily": s}
    assert (reg.schedules["every_five"].cron, reg.schedules["every_five"].timezone) == ("*/5 * * * *", PARIS)
    assert (s.task, s.args, s.priority) == ("report", {"day": "yesterday"}, "high")
    with pytest.raises(InvalidInput):  # one name, two definitions
        schedule("report-daily", report, "0 7 * * *", registry=reg)
    with pytest.raises(InvalidArguments, match="schedule 'typo': invalid arguments for task 'report'") as bad_args:
        schedule("typo", report, "0 7 * * *", args={"dya": "today"}, registry=reg)
    assert bad_args.value.field == "args.dya" and "typo" not in reg.schedules


def test_a_schedule_whose_task_refuses_its_arguments_is_left_out_of_the_rows_a_worker_writes():
    reg = TaskRegistry()
    schedule("early", "defined_later", "0 * * * *", args={"n": "x"}, registry=reg)  # the task is not known yet
    schedule("fine", "defined_later", "0 * * * *", args={"n": 2}, registry=reg)

    @task(registry=reg, queue="later", priority="low")
    async def defined_later(n: int) -> None: ...

    rows = code_rows(reg)
    assert rows["names"] == ["fine"] and (rows["queues"], rows["priorities"]) == (["later"], ["low"])
