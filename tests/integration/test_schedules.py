"""Cron schedules on a real database: several schedulers on their own connections, stepping
one clock, enqueue exactly one job per tick and one catch-up job after downtime; rows written
from psql are schedules too; operators see, pause and resume them over HTTP and the CLI."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from app import cli
from app.http import create_app
from app.settings import Settings
from skiplock import Operations, ScheduleNotFound, TaskRegistry, db, schedule, task
from skiplock.runtime.scheduler import Round, Scheduler

T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task(registry=reg, queue="cron", schedule="* * * * * *")  # every second (6 fields: seconds first)
    async def heartbeat() -> None: ...

    @task(registry=reg)
    async def report(day: str, pages: int = 1) -> None: ...

    schedule("daily-report", report, "30 2 * * *", args={"day": "yesterday"}, timezone="Europe/Paris",
             registry=reg)
    return reg


async def schedulers(url: str, reg: TaskRegistry, n: int) -> list[Scheduler]:
    out = []
    for i in range(n):
        pool = db.make_pool(url, min_size=1, max_size=1, name=f"scheduler-{i}")
        await pool.open(wait=True)
        out.append(Scheduler(pool, reg))
    return out


async def close(scheds: list[Scheduler]) -> None:
    for s in scheds:
        await s.pool.close()


def jobs_of(conn: psycopg.Connection[Any], task_name: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT idempotency_key, run_at, queue, args FROM skiplock.jobs WHERE task = %s "
                        "ORDER BY run_at", (task_name,)).fetchall()


def test_three_schedulers_stepping_60_seconds_enqueue_60_jobs_and_one_catch_up_after_10_minutes(db_url, pg_conn):
    reg = registry()
    rnd = random.Random(13)

    async def go() -> list[Round]:
        scheds = await schedulers(db_url, reg, 3)
        rounds: list[Round] = []

        async def step(now: datetime, which: list[Scheduler]) -> None:
            rounds.extend(await asyncio.gather(*(s.run_once(now=now) for s in which)))

        try:
            await step(T0, scheds)  # each writes the code's schedules; ticks count from T0
            for i in range(1, 61):
                if i <= 20:
                    which = scheds  # all three race for every tick
                elif i <= 40:
                    which = rnd.sample(scheds, rnd.randint(1, 3))  # any one alive is enough
                else:
                    which = scheds[1:]  # one is gone for good
                await step(T0 + i * SECOND + timedelta(milliseconds=rnd.randint(0, 900)), which)
            assert len(jobs_of(pg_conn, "heartbeat")) == 60
            # all stopped for ten minutes, then back: one job stands for the 600 ticks missed
            await step(T0 + 660 * SECOND + timedelta(milliseconds=200), scheds)
            await step(T0 + 661 * SECOND, scheds)
        finally:
            await close(scheds)
        return rounds

    rounds = asyncio.run(go())
    got = jobs_of(pg_conn, "heartbeat")
    ticks = [T0 + i * SECOND for i in [*range(1, 61), 660, 661]]
    assert [k for k, *_ in got] == [f"schedule:heartbeat:{t:%Y-%m-%dT%H:%M:%SZ}" for t in ticks]
    assert [r for _, r, *_ in got] == ticks  # each job runs at its tick
    assert {q for _, _, q, _ in got} == {"cron"}  # the task's queue
    fired = [f for r in rounds for f in r.fired if f.name == "heartbeat"]
    assert len(fired) == 62 and [f.tick for f in fired if f.catch_up] == [T0 + 660 * SECOND]
    # the schedule in psql: its last tick, the job of it and its next run
    row = pg_conn.execute("SELECT s.last_tick_at, s.next_run_at, j.idempotency_key, s.defined_in, s.error "
                          "FROM skiplock.schedules s JOIN skiplock.jobs j ON j.id = s.last_job_id "
                          "WHERE s.name = 'heartbeat'").fetchone()
    assert row == (T0 + 661 * SECOND, T0 + 662 * SECOND, "schedule:heartbeat:2026-12-03T10:11:01Z", "code", None)
    # the daily report has not fired (its first tick, 02:30 in Paris, is the next day)
    assert jobs_of(pg_conn, "report") == []
    nxt = pg_conn.execute("SELECT next_run_at FROM skiplock.schedules WHERE name = 'daily-report'").fetchone()
    assert nxt == (datetime(2026, 12, 4, 1, 30, tzinfo=UTC),)


def test_a_row_inserted_from_psql_is_a_schedule_and_a_broken_one_spoils_only_itself(db_url, pg_conn):
    reg = TaskRegistry()
    pg_conn.execute("INSERT INTO skiplock.schedules (name, task, cron, timezone, args, since) VALUES "
                    "('by-hand', 'anything', '*/10 * * * *', 'UTC', '{\"n\": 1}', %s), "
                    "('typo', 'anything', '61 * * * *', 'UTC', '{}', %s), "
                    "('nowhere', 'anything', '* * * * *', 'Mars/Olympus', '{}', %s)", (T0, T0, T0))
    pg_conn.commit()

    async def go() -> list[Round]:
        [s] = await schedulers(db_url, reg, 1)
        try:
            return [await s.run_once(now=T0 + timedelta(minutes=m)) for m in (5, 10, 20)]
        finally:
            await close([s])

    rounds = asyncio.run(go())
    assert [[f.tick for f in r.fired] for r in rounds] == [[], [T0 + timedelta(minutes=10)],
                                                           [T0 + timedelta(minutes=20)]]
    rows = dict(pg_conn.execute("SELECT name, error FROM skiplock.schedules").fetchall())
    assert rows["by-hand"] is None
    assert "invalid cron expression '61 * * * *'" in rows["typo"]
    assert "unknown time zone 'Mars/Olympus'" in rows["nowhere"]
    # the job takes the row's arguments and the built-in defaults (no worker recorded the task)
    job = pg_conn.execute("SELECT args, queue, priority FROM skiplock.jobs WHERE task = 'anything' "
                          "ORDER BY run_at LIMIT 1").fetchone()
    assert job == ({"n": 1}, "default", 1)
    # fixing the cron from psql clears the error and starts the schedule afresh
    pg_conn.execute("UPDATE skiplock.schedules SET cron = '0 * * * *' WHERE name = 'typo'")
    pg_conn.commit()
    assert pg_conn.execute("SELECT error, next_run_at FROM skiplock.schedules WHERE name = 'typo'").fetchone() == (
        None, None)


def test_code_schedules_are_written_once_and_keep_an_operators_pause(db_url, pg_conn):
    reg = registry()

    async def go() -> None:
        [a, b] = await schedulers(db_url, reg, 2)
        try:
            await a.sync(now=T0)
            async with Operations.connect(db_url) as ops:
                await ops.pause_schedule("heartbeat")
            assert await b.sync(now=T0 + SECOND) == 0  # nothing differs: no write
            rounds = [await a.run_once(now=T0 + i * SECOND) for i in range(1, 5)]
            assert [f.name for r in rounds for f in r.fired] == []  # paused
        finally:
            await close([a, b])

    asyncio.run(go())
    assert pg_conn.execute("SELECT paused, next_run_at FROM skiplock.schedules WHERE name = 'heartbeat'"
                           ).fetchone() == (True, None)
    stored = pg_conn.execute("SELECT args, queue, priority, timezone FROM skiplock.schedules "
                             "WHERE name = 'daily-report'").fetchone()
    # the arguments as the task validates them (defaults filled in), queue and priority resolved
    assert stored == ({"day": "yesterday", "pages": 1}, "default", "normal", "Europe/Paris")


def ops_run(db_url: str, fn: Callable[[Operations], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Operations.connect(db_url) as ops:
            return await fn(ops)
    return asyncio.run(go())


def written(db_url: str) -> None:
    async def go() -> None:
        [s] = await schedulers(db_url, registry(), 1)
        try:
            await s.sync()
        finally:
            await close([s])
    asyncio.run(go())


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def test_http_lists_pauses_and_resumes_schedules(db_url, client: TestClient, pg_conn):
    written(db_url)
    listed = client.get("/schedules")
    assert listed.status_code == 200, listed.text
    body = listed.json()["schedules"]
    assert [s["name"] for s in body] == ["daily-report", "heartbeat"]
    report = body[0]
    assert (report["task"], report["cron"], report["timezone"], report["paused"], report["defined_in"]) == (
        "report", "30 2 * * *", "Europe/Paris", False, "code")
    assert report["next_run_at"] is not None  # computed even before a scheduler ran

    paused = client.post("/schedules/heartbeat/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True and paused.json()["next_run_at"] is None
    assert pg_conn.execute("SELECT paused FROM skiplock.schedules WHERE name = 'heartbeat'").fetchone() == (True,)
    resumed = client.post("/schedules/heartbeat/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert datetime.fromisoformat(resumed.json()["next_run_at"]) > datetime.now(UTC) - timedelta(seconds=5)

    missing = client.post("/schedules/nope/pause")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = client.post("/schedules/has%20space/resume")
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "name"
    assert client.get("/openapi.json").json()["paths"]["/schedules/{name}/pause"]["post"]["responses"]["200"]


def test_cli_lists_shows_pauses_and_resumes_schedules(db_url, pg_conn, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]):
    written(db_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert cli.main(["schedule", "list"]) == 0
    out = capsys.readouterr().out
    assert "daily-report" in out and "30 2 * * *" in out and "Europe/Paris" in out and "heartbeat" in out
    assert cli.main(["schedule", "pause", "heartbeat"]) == 0
    assert "paused" in capsys.readouterr().out
    assert pg_conn.execute("SELECT paused FROM skiplock.schedules WHERE name = 'heartbeat'").fetchone() == (True,)
    assert cli.main(["schedule", "resume", "heartbeat"]) == 0
    capsys.readouterr()
    assert pg_conn.execute("SELECT paused FROM skiplock.schedules WHERE name = 'heartbeat'").fetchone() == (False,)
    assert cli.main(["schedule", "show", "daily-report"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["args"]) == ("daily-report", {"day": "yesterday", "pages": 1})
    assert cli.main(["schedule", "pause", "nope"]) == 2
    assert "no schedule 'nope'" in capsys.readouterr().err
    with pytest.raises(ScheduleNotFound):
        ops_run(db_url, lambda o: o.resume_schedule("nope"))
