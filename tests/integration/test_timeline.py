"""A job's timeline (skiplock.job_timeline, what GET /jobs/{id} shows) is the same sequence of
transitions the earlier design recorded, one history row per transition, for every path:
success, retry, failure, rescue, release, cancel and operator retry. Only what changed on
purpose differs: a transition made outside any request now carries the job's own correlation
id instead of none.

The earlier design's recorder runs beside the new one in the same database: a frozen copy of
its statement triggers (migration 0002's jobs_after_update_v2 and 0004's insert trigger, the
history part only), writing to a table of its own. Two translations keep it faithful: the
earlier engine cleared worker_id whenever a run ended, so its `coalesce(new, old)` worker is
written here as "the worker of whichever side is running"; and its insert statement passed
the correlation id through the skiplock.correlation_id setting, where the new one passes it
as a column."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from skiplock import Backoff, JobContext, TaskRegistry, Worker, enqueue, task
from skiplock.queries import jobs as q
from skiplock.queries import session

FAST = Backoff(base_seconds=0.01, factor=2, max_seconds=0.05, jitter=0)

LEGACY_RECORDER = r"""
CREATE TABLE public.legacy_history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id         uuid NOT NULL,
    state          skiplock.job_state NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempt        integer NOT NULL,
    worker_id      text,
    error          text,
    correlation_id text
);
CREATE FUNCTION public.legacy_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.legacy_history (job_id, state, attempt, worker_id, error, correlation_id)
  SELECT n.id, n.state, n.attempt,
         CASE WHEN n.state = 'running' THEN n.worker_id WHEN o.state = 'running' THEN o.worker_id END,
         CASE WHEN o.state = 'running' AND n.state IN ('queued', 'failed') THEN n.last_error END,
         nullif(current_setting('skiplock.correlation_id', true), '')
    FROM old_jobs o JOIN new_jobs n ON n.id = o.id
   WHERE n.state <> o.state OR n.attempt <> o.attempt;
  RETURN NULL;
END $$;
CREATE FUNCTION public.legacy_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.legacy_history (job_id, state, attempt, correlation_id)
  SELECT n.id, n.state, n.attempt,
         coalesce(nullif(current_setting('skiplock.correlation_id', true), ''), n.correlation_id)
    FROM new_jobs n;
  RETURN NULL;
END $$;
CREATE TRIGGER legacy_after_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.legacy_after_update();
CREATE TRIGGER legacy_after_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.legacy_after_insert();
"""

Entry = tuple[str, int, str | None, str | None, str | None]


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="echo", registry=r)
    async def echo(message: str) -> dict[str, str]:
        return {"message": message}

    @task(name="flaky", max_attempts=3, retry=FAST, registry=r)
    async def flaky(fail_times: int, ctx: JobContext) -> int:
        if ctx.attempt - (ctx.max_attempts - 3) <= fail_times:
            raise ValueError(f"boom on attempt {ctx.attempt}")
        return ctx.attempt

    return r


@pytest.fixture
def recorded(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(LEGACY_RECORDER)
    return db_url


async def _run_worker(url: str, reg: TaskRegistry) -> None:
    for _ in range(100):
        await asyncio.wait_for(Worker(url, registry=reg, burst=True, poll_interval=0.02).run(), timeout=60)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'queued'")
            if (await cur.fetchone())[0] == 0:  # type: ignore[index]
                return
        await asyncio.sleep(0.02)
    raise AssertionError("jobs still queued after 100 burst runs")


async def _operator(url: str, action: Any, job_id: uuid.UUID, request_id: str) -> None:
    """What Operations.cancel / .retry do: the action inside a transaction tagged with the request."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():
            await session.set_correlation_id(conn, request_id)
            await action(conn, job_id)


async def _every_path(url: str, reg: TaskRegistry) -> dict[str, uuid.UUID]:
    jobs: dict[str, uuid.UUID] = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async def submit(name: str, task_name: str, args: dict[str, Any], cid: str | None = None) -> None:
            jobs[name] = (await enqueue(conn, task_name, args, registry=reg, correlation_id=cid)).id

        await submit("success", "echo", {"message": "hi"}, "req-success")
        await submit("success_no_cid", "echo", {"message": "hi"})
        await submit("retry_then_success", "flaky", {"fail_times": 1}, "req-retry")
        await submit("failure", "flaky", {"fail_times": 9}, "req-fail")
        await submit("cancel_queued", "echo", {"message": "x"}, "req-cq")
        await _operator(url, q.cancel_job, jobs["cancel_queued"], "op-cancel-1")
        await _run_worker(url, reg)
        # operator retry of a failed job, which then fails its new round again
        await _operator(url, q.retry_job, jobs["failure"], "op-retry-1")
        await _run_worker(url, reg)
        # operator retry of a cancelled job, which then succeeds
        await _operator(url, q.retry_job, jobs["cancel_queued"], "op-retry-2")
        await _run_worker(url, reg)

        # Runs that a worker does not finish: claimed here as workers would, then rescued
        # (lease expired; on the last attempt it fails), released at shutdown, released
        # after a lost claim answer, or cancelled while running.
        for name in ("rescue", "rescue_last", "release", "release_unknown", "cancel_running"):
            await submit(name, "echo", {"message": name}, f"req-{name}")
        await conn.execute("UPDATE skiplock.jobs SET max_attempts = 1 WHERE id = %s", (jobs["rescue_last"],))
        claimed = await q.claim_batch(conn, worker_id="w-lost", queues=None, limit=10, lease_seconds=30)
        assert len(claimed) == 5
        attempt = {j.id: j.attempt for j in claimed}
        for name in ("rescue", "rescue_last"):
            await conn.execute("UPDATE skiplock.jobs SET lease_expires_at = now() - interval '1 second' "
                               "WHERE id = %s", (jobs[name],))
        rescued = await q.rescue_expired(conn)
        assert {r["id"] for r in rescued} == {jobs["rescue"], jobs["rescue_last"]}
        released = await q.release_many_if_held(conn, worker_id="w-lost", ids=[jobs["release"]],
                                                 attempts=[attempt[jobs["release"]]], checkpoints=[None],
                                                 progresses=[None])
        assert released == {jobs["release"]}
        unknown = await q.release_unknown_holds(conn, worker_id="w-lost",
                                                 known=[jobs["cancel_running"]])
        assert {r["id"] for r in unknown} == {jobs["release_unknown"]}
        await _operator(url, q.cancel_job, jobs["cancel_running"], "op-cancel-2")
        await _run_worker(url, reg)  # the rescued and released jobs run again and succeed
    return jobs


def _timeline(c: psycopg.Connection[Any], job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return c.execute("SELECT state::text, attempt, worker_id, error, correlation_id, at FROM skiplock.job_timeline"
                     " WHERE job_id = %s ORDER BY step", (job_id,)).fetchall()


def _legacy(c: psycopg.Connection[Any], job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return c.execute("SELECT state::text, attempt, worker_id, error, correlation_id, at FROM public.legacy_history"
                     " WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()


def test_the_timeline_is_what_one_history_row_per_transition_recorded_on_every_path(recorded, reg):
    jobs = asyncio.run(_every_path(recorded, reg))
    with psycopg.connect(recorded, autocommit=True) as c:
        for name, job_id in jobs.items():
            [[own_cid]] = c.execute("SELECT correlation_id FROM skiplock.jobs WHERE id = %s", (job_id,)).fetchall()
            new, old = _timeline(c, job_id), _legacy(c, job_id)
            expected = [(s, a, w, e, cid if cid is not None else own_cid) for s, a, w, e, cid, _ in old]
            assert [row[:5] for row in new] == expected, name
            # the same moments: the row's timestamps are its transaction's time, the old
            # recorder's the clock during that transaction
            for (*_, at_new), (*_, at_old) in zip(new, old, strict=True):
                assert abs(at_new - at_old) < timedelta(seconds=5), name
            assert [row[5] for row in new] == sorted(row[5] for row in new), name
        # every path was taken: the kinds of transition the timelines show
        seen = {(row[0]) for job_id in jobs.values() for row in _timeline(c, job_id)}
        assert seen == {"queued", "running", "succeeded", "failed", "cancelled"}
        # the happy path wrote no history row at all
        for name in ("success", "success_no_cid"):
            assert c.execute("SELECT count(*) FROM skiplock.job_history WHERE job_id = %s",
                             (jobs[name],)).fetchone() == (0,)
        assert [r[:5] for r in _timeline(c, jobs["success"])] == [
            ("queued", 0, None, None, "req-success"),
            ("running", 1, _timeline(c, jobs["success"])[1][2], None, "req-success"),
            ("succeeded", 1, _timeline(c, jobs["success"])[1][2], None, "req-success")]


def test_the_job_row_keeps_its_correlation_id_and_the_worker_of_its_latest_run(recorded, reg):
    jobs = asyncio.run(_every_path(recorded, reg))
    with psycopg.connect(recorded, autocommit=True) as c:
        row = c.execute("SELECT state::text, correlation_id, worker_id FROM skiplock.jobs WHERE id = %s",
                        (jobs["success"],)).fetchone()
        assert row is not None
        assert row[:2] == ("succeeded", "req-success") and row[2] is not None
        # plain SQL takes the transaction's setting
        c.execute("BEGIN")
        c.execute("SELECT set_config('skiplock.correlation_id', 'psql-1', true)")
        [[sql_job]] = c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"a\"}')").fetchall()
        c.execute("COMMIT")
        assert c.execute("SELECT correlation_id FROM skiplock.jobs WHERE id = %s", (sql_job,)).fetchone() == ("psql-1",)


def test_a_handler_sees_its_jobs_correlation_id_and_its_events_carry_it(db_url, reg, caplog):
    @task(name="whoami", registry=reg)
    async def whoami(ctx: JobContext) -> dict[str, str | None]:
        return {"cid": ctx.correlation_id}

    async def go() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            tagged = (await enqueue(conn, "whoami", {}, registry=reg, correlation_id="req-ctx")).id
            untagged = (await enqueue(conn, "whoami", {}, registry=reg)).id
            flaky = (await enqueue(conn, "flaky", {"fail_times": 1}, registry=reg, correlation_id="req-ev")).id
        await _run_worker(db_url, reg)
        return tagged, untagged, flaky

    caplog.set_level("INFO", logger="skiplock")
    tagged, untagged, flaky = asyncio.run(go())
    with psycopg.connect(db_url, autocommit=True) as c:
        results = dict(c.execute("SELECT id, result FROM skiplock.jobs WHERE task = 'whoami'").fetchall())
    assert results == {tagged: {"cid": "req-ctx"}, untagged: {"cid": None}}
    retrying = [r.getMessage() for r in caplog.records if "skiplock.job.retrying" in r.getMessage()]
    assert len(retrying) == 1 and f"job_id={flaky}" in retrying[0] and "correlation_id=req-ev" in retrying[0]
