"""Jobs parked for a person: a handler parks its job (ctx.park), which leaves the claim path in
state waiting without failing or using up an attempt; an operator resumes it with data its
next attempt receives, fails it or cancels it; the database refuses what parking must not do;
its batch's counts stay exact."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from skiplock import InvalidTransition, JobContext, JobSpec, Operations, Park, TaskRegistry, Worker, enqueue_batch, task

REVIEWS: list[Any] = []


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task(name="needs_review", max_attempts=1, registry=reg)
    async def needs_review(doc: str, ctx: JobContext) -> dict[str, Any]:
        REVIEWS.append(ctx.review)
        if ctx.review is None:
            ctx.park(f"quality check failed for {doc}", {"score": 0.4})
        return {"doc": doc, "review": ctx.review}

    @task(name="parks_sync", max_attempts=1, registry=reg)
    def parks_sync() -> None:
        raise Park("a person must look", data=[1, 2])

    @task(name="bad_park", max_attempts=1, registry=reg)
    async def bad_park(ctx: JobContext) -> None:
        ctx.park("unstorable", {1, 2})

    return reg


def row(url: str, query: str, params: Any = None) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
        found = c.execute(query, params).fetchone()
    assert found is not None
    return found


async def run_until(url: str, reg: TaskRegistry, done: str) -> None:
    worker = Worker(url, registry=reg, poll_interval=0.02)
    run = asyncio.create_task(worker.run())
    try:
        for _ in range(1000):
            if row(url, done)["ok"]:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for: {done}")
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)


def test_a_parked_job_waits_for_a_person_and_its_next_attempt_gets_the_review(db_url: str):
    reg = registry()
    REVIEWS.clear()

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            batch = await enqueue_batch(c, [JobSpec("needs_review", {"doc": "a.pdf"})], registry=reg)
        await run_until(db_url, reg, "SELECT count(*) = 1 AS ok FROM skiplock.parked_jobs")
        parked = row(db_url, "SELECT * FROM skiplock.parked_jobs")
        assert (parked["reason"], parked["data"], parked["parked_attempt"], parked["batch_id"]) == (
            "quality check failed for a.pdf", {"score": 0.4}, 1, batch.id)
        job = row(db_url, "SELECT * FROM skiplock.jobs")
        # not failed, no attempt used up: the job could run max_attempts (1) more times
        assert (job["state"], job["attempt"], job["last_error"]) == ("waiting", 0, "quality check failed for a.pdf")
        assert row(db_url, "SELECT queued, parked, waiting, total FROM skiplock.batch_progress") == {
            "queued": 0, "parked": 1, "waiting": 0, "total": 1}
        async with Operations.connect(db_url, registry=reg) as ops:
            with pytest.raises(InvalidTransition):
                await ops.retry(job["id"])  # parked is not failed
            resumed = await ops.resume(job["id"], {"approved_by": "ana"}, correlation_id="review-7")
            assert (resumed["state"], resumed["parked"], resumed["review"]) == ("queued", None, {"approved_by": "ana"})
            with pytest.raises(InvalidTransition, match="not parked"):
                await ops.resume(job["id"])
        await run_until(db_url, reg, "SELECT count(*) = 1 AS ok FROM skiplock.jobs WHERE state = 'succeeded'")
        assert REVIEWS == [None, {"approved_by": "ana"}]
        done = row(db_url, "SELECT * FROM skiplock.jobs")
        assert (done["attempt"], done["result"]) == (1, {"doc": "a.pdf", "review": {"approved_by": "ana"}})
        timeline = [(h["state"], h["error"], h["correlation_id"]) for h in rows(
            db_url, "SELECT * FROM skiplock.job_timeline WHERE job_id = %s ORDER BY step", (job["id"],))]
        assert [t[0] for t in timeline] == ["queued", "running", "waiting", "queued", "running", "succeeded"]
        assert timeline[2][1] == "quality check failed for a.pdf" and timeline[3][2] == "review-7"
        assert row(db_url, "SELECT state, succeeded FROM skiplock.batch_progress") == {
            "state": "succeeded", "succeeded": 1}

    asyncio.run(go())


def rows(url: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
        return c.execute(query, params).fetchall()


def test_an_operator_fails_or_cancels_a_parked_job_and_bad_park_data_fails_the_job(db_url: str):
    reg = registry()

    async def go() -> None:
        async with Operations.connect(db_url, registry=reg) as ops:
            a = (await ops.submit([JobSpec("parks_sync")]))[0].id
            b = (await ops.submit([JobSpec("parks_sync")]))[0].id
            bad = (await ops.submit([JobSpec("bad_park")]))[0].id
            await run_until(db_url, reg, "SELECT count(*) = 2 AS ok FROM skiplock.parked_jobs")
            assert row(db_url, "SELECT data FROM skiplock.parked_jobs WHERE id = %s", (a,))["data"] == [1, 2]
            failed = await ops.fail(a, "not fixable")
            assert (failed["state"], failed["last_error"], failed["parked"]) == ("failed", "not fixable", None)
            cancelled = await ops.cancel(b)
            assert (cancelled["state"], cancelled["parked"]) == ("cancelled", None)
        bad_row = row(db_url, "SELECT state, last_error FROM skiplock.jobs WHERE id = %s", (bad,))
        assert bad_row["state"] == "failed" and "Unstorable park data" in bad_row["last_error"]

    asyncio.run(go())


def test_the_database_refuses_what_parking_must_not_do(db_url: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        job = c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}')").fetchone()[0]  # type: ignore[index]
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_parked_waiting"):
            c.execute("UPDATE skiplock.jobs SET parked = '{\"reason\": \"x\"}' WHERE id = %s", (job,))
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_waiting_has_a_reason"):
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                      "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (job,))
            c.execute("UPDATE skiplock.jobs SET state = 'waiting', lease_expires_at = NULL WHERE id = %s", (job,))
        with pytest.raises(psycopg.errors.CheckViolation, match="not parked"):
            c.execute("SELECT skiplock.resume(%s)", (job,))
        with pytest.raises(psycopg.errors.CheckViolation, match="not parked"):
            c.execute("SELECT skiplock.fail(%s, 'x')", (job,))


def test_http_resume_and_fail_of_parked_jobs(db_url: str):
    from starlette.testclient import TestClient

    import app.tasks  # noqa: F401 - registers the example tasks
    from app.http import create_app
    from app.settings import Settings

    with psycopg.connect(db_url, autocommit=True) as c:
        ids = [c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}')").fetchone()[0]  # type: ignore[index]
               for _ in range(2)]
        for j in ids:  # parked by hand, as park_many_if_held does
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                      "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (j,))
            c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                      "last_error = 'look', parked = '{\"reason\": \"look\"}' WHERE id = %s", (j,))
    with TestClient(create_app(Settings(database_url=db_url)), base_url="http://localhost:8000") as client:
        listed = client.get("/jobs", params={"state": "waiting"}).json()["jobs"]
        assert {j["id"] for j in listed} == {str(j) for j in ids} and listed[0]["parked"] == {"reason": "look"}
        r = client.post(f"/jobs/{ids[0]}/resume", json={"data": {"fixed": True}}, headers={"X-Request-ID": "op-1"})
        assert r.status_code == 200 and (r.json()["state"], r.json()["review"]) == ("queued", {"fixed": True})
        assert client.post(f"/jobs/{ids[0]}/resume", json={}).status_code == 409
        r = client.post(f"/jobs/{ids[1]}/fail", json={"reason": "cannot be fixed"})
        assert r.status_code == 200 and (r.json()["state"], r.json()["last_error"]) == ("failed", "cannot be fixed")
        assert client.post(f"/jobs/{ids[1]}/fail", json={"reason": 5}).status_code == 422
        history = client.get(f"/jobs/{ids[0]}").json()["history"]
        assert [(h["state"], h["correlation_id"]) for h in history][-1] == ("queued", "op-1")


def test_cli_resumes_with_data_and_fails_parked_jobs(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    from app import cli

    monkeypatch.setenv("DATABASE_URL", db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        ids = [c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}')").fetchone()[0]  # type: ignore[index]
               for _ in range(2)]
        for j in ids:
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                      "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (j,))
            c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                      "parked = '{\"reason\": \"look\"}' WHERE id = %s", (j,))
    assert cli.main(["resume", str(ids[0]), "--data", "[1]"]) == 2
    assert cli.main(["resume", str(ids[0]), "--data", "{nope"]) == 2
    assert cli.main(["resume", str(ids[0]), "--data", '{"ok": true}']) == 0
    assert cli.main(["fail", str(ids[1]), "--reason", "no"]) == 0
    assert cli.main(["fail", str(ids[1])]) == 2  # no longer parked
    err = capsys.readouterr().err
    assert "must be a JSON object" in err and "--data is not valid JSON" in err
    assert row(db_url, "SELECT review FROM skiplock.jobs WHERE id = %s", (ids[0],))["review"] == {"ok": True}
    assert row(db_url, "SELECT state, last_error FROM skiplock.jobs WHERE id = %s", (ids[1],)) == {
        "state": "failed", "last_error": "no"}
