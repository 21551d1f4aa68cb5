"""The operations API (skiplock.Operations): what the CLI and the HTTP API call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import app.tasks  # noqa: F401 - registers the example tasks (echo)
from skiplock import InvalidInput, InvalidTransition, JobNotFound, Operations


def ops_run(db_url: str, fn: Callable[[Operations], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Operations.connect(db_url) as ops:
            return await fn(ops)
    return asyncio.run(go())


def test_show_cancel_retry_with_the_timeline_and_correlation_id(db_url, make_job):
    job = make_job(state="queued")
    shown = ops_run(db_url, lambda o: o.get_job(str(job)))
    assert (shown["state"], [h["state"] for h in shown["history"]]) == ("queued", ["queued"])
    assert ops_run(db_url, lambda o: o.cancel(job, correlation_id="op-1"))["state"] == "cancelled"
    assert ops_run(db_url, lambda o: o.retry(job, correlation_id="op-2"))["state"] == "queued"
    history = ops_run(db_url, lambda o: o.get_job(job))["history"]
    assert [(h["state"], h["correlation_id"]) for h in history][1:] == [("cancelled", "op-1"), ("queued", "op-2")]
    with pytest.raises(InvalidTransition, match="only failed or cancelled"):
        ops_run(db_url, lambda o: o.retry(job))


def test_bad_ids_and_unknown_jobs_are_named(db_url):
    with pytest.raises(InvalidInput, match="'nope' is not a job id") as e:
        ops_run(db_url, lambda o: o.cancel("nope"))
    assert e.value.field == "id"
    with pytest.raises(JobNotFound):
        ops_run(db_url, lambda o: o.get_job(uuid.uuid4()))


def test_list_pages_newest_first_with_filters(db_url, make_job):
    ids = [make_job(state="queued", queue="a") for _ in range(5)] + [make_job(state="failed", queue="b", attempt=3)]
    first = ops_run(db_url, lambda o: o.list_jobs(queue="a", limit=3))
    second = ops_run(db_url, lambda o: o.list_jobs(queue="a", limit=3, cursor=first.next_cursor))
    # newest first = descending id (uuid7: time-ordered; within one millisecond, by its random bits)
    assert [j["id"] for j in first.jobs + second.jobs] == sorted(ids[:5], reverse=True)
    assert second.next_cursor is None
    assert [j["id"] for j in ops_run(db_url, lambda o: o.list_jobs(state="failed")).jobs] == [ids[5]]
    for kw, field in [({"state": "done"}, "state"), ({"limit": 0}, "limit"), ({"limit": True}, "limit"),
                      ({"cursor": "!!"}, "cursor"), ({"queue": "Bad Q"}, "queue"), ({"batch": "x"}, "batch")]:
        with pytest.raises(InvalidInput) as e:
            ops_run(db_url, lambda o, kw=kw: o.list_jobs(**kw))
        assert e.value.field == field


def test_queues_pause_resume_limits_and_prune(db_url, make_job, pg_conn):
    make_job(state="queued", queue="mail")
    assert ops_run(db_url, lambda o: o.pause_queue("mail"))["paused"] is True
    assert ops_run(db_url, lambda o: o.set_queue_limits("mail", max_waiting=5))["max_waiting"] == 5
    [mail] = [q for q in ops_run(db_url, lambda o: o.queues()).queues if q["queue"] == "mail"]
    assert (mail["paused"], mail["max_waiting"]) == (True, 5)
    assert ops_run(db_url, lambda o: o.resume_queue("mail"))["paused"] is False
    old = make_job(state="succeeded", attempt=1, finished_at=__import__("datetime").datetime(2000, 1, 1,
                   tzinfo=__import__("datetime").timezone.utc))
    assert ops_run(db_url, lambda o: o.prune(older_than_seconds=3600)) == 1
    assert pg_conn.execute("SELECT count(*) FROM skiplock.jobs WHERE id = %s", (old,)).fetchone()[0] == 0


def test_submit_holds_queue_limits_and_gives_a_repeat_its_job_even_when_full(db_url, pg_conn):
    from skiplock import IdempotencyConflict, JobSpec, QueueFull

    async def go() -> None:
        async with Operations.connect(db_url, max_size=8) as ops:
            await ops.set_queue_limits("mail", max_waiting=3)
            spec = JobSpec("echo", {"message": "x"}, queue="mail", idempotency_key="k1")
            [first] = await ops.submit([spec])
            results = await asyncio.gather(*(ops.submit([JobSpec("echo", {"message": str(i)}, queue="mail")])
                                             for i in range(10)), return_exceptions=True)
            assert sum(1 for r in results if isinstance(r, QueueFull)) == 8  # 1 + 2 fit under the limit of 3
            [again] = await ops.submit([spec])  # full, but the job it asks for is stored
            assert (again.id, again.created) == (first.id, False)
            with pytest.raises(IdempotencyConflict):
                await ops.submit([JobSpec("echo", {"message": "other"}, queue="mail", idempotency_key="k1")])
            with pytest.raises(InvalidInput, match="job 1: .*args.message"):
                await ops.submit([JobSpec("echo", {"message": "a"}), JobSpec("echo", {"message": 7})],
                                 json_args=True)

    asyncio.run(go())
    assert pg_conn.execute("SELECT count(*) FROM skiplock.jobs WHERE queue = 'mail'").fetchone()[0] == 3


def test_an_api_without_the_tasks_code_takes_its_recorded_defaults_and_checks_its_schema(db_url, pg_conn):
    """The API (here: its Operations and app) imports no code for 'nightly'; a worker recorded it."""
    from starlette.testclient import TestClient

    from app.http import create_app
    from app.settings import Settings
    from skiplock import TaskRegistry, task
    from skiplock.catalog import record_tasks

    worker_side = TaskRegistry()

    @task(name="nightly", queue="reports", priority="high", max_attempts=6, timeout=9.0, registry=worker_side)
    async def nightly(day: str, pages: int = 10) -> None: ...

    async def record() -> None:
        async with await __import__("psycopg").AsyncConnection.connect(db_url, autocommit=True) as conn:
            await record_tasks(conn, worker_side, worker_id="w")
    asyncio.run(record())

    with TestClient(create_app(Settings(database_url=db_url), registry=TaskRegistry())) as client:
        ok = client.post("/jobs", json={"task": "nightly", "args": {"day": "mon"}})
        assert ok.status_code == 201, ok.text
        job = ok.json()
        assert (job["queue"], job["priority"], job["max_attempts"], job["timeout"]) == ("reports", "high", 6, 9.0)
        bad = client.post("/jobs", json={"task": "nightly", "args": {"day": "mon", "pages": "ten"}})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "args.pages", bad.text
        extra = client.post("/jobs", json={"task": "nightly", "args": {"day": "mon", "color": "red"}})
        assert extra.status_code == 422, extra.text
        unknown = client.post("/jobs", json={"task": "never_recorded", "args": {}})
        assert unknown.status_code == 422 and unknown.json()["error"]["details"]["field"] == "task"
    assert pg_conn.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 1
