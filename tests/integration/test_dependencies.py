"""Job dependencies: a job waits (state `waiting`, not claimable) until every job it names has
succeeded, is queued in the transaction that acknowledges the last one (with a NOTIFY, no
polling), and is cancelled with its own dependents when one of them fails or is cancelled.
Every submission path refuses unknown ids and cycles; the database refuses the transitions
the rules forbid."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings
from skiplock import JobContext, JobSpec, NonRetryableError, TaskRegistry, Worker, enqueue, enqueue_many, task
from skiplock.errors import InvalidInput, InvalidTransition
from skiplock.ops import Operations
from skiplock.queries import jobs as job_queries

NO_POLL = 3600.0
"""A worker's poll interval that no test outlives: only a NOTIFY wakes it."""


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="step", registry=r)
    async def step(name: str, ctx: JobContext) -> str:
        r.ran.append((name, "start", time.monotonic()))  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        r.ran.append((name, "end", time.monotonic()))  # type: ignore[attr-defined]
        return name

    @task(name="doomed", max_attempts=1, registry=r)
    async def doomed() -> None:
        raise NonRetryableError("doomed on purpose")

    r.ran = []  # type: ignore[attr-defined]
    return r


def state_of(db_url: str, job_id: uuid.UUID) -> str:
    with psycopg.connect(db_url, autocommit=True) as c:
        row = c.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def row_of(db_url: str, job_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as c:
        cur = c.execute("SELECT * FROM skiplock.jobs WHERE id = %s", (job_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row))


def timeline(db_url: str, job_id: uuid.UUID) -> list[str]:
    with psycopg.connect(db_url, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT state::text FROM skiplock.job_timeline WHERE job_id = %s "
                                        "ORDER BY step", (job_id,))]


async def submit_many(db_url: str, reg: TaskRegistry, specs: list[JobSpec]) -> list[uuid.UUID]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        return [j.id for j in await enqueue_many(conn, specs, registry=reg)]


def diamond(queue: str = "default") -> list[JobSpec]:
    """A -> (B, C) -> D, named by index in one call."""
    return [JobSpec("step", {"name": "A"}, queue=queue),
            JobSpec("step", {"name": "B"}, queue=queue, depends_on=[0]),
            JobSpec("step", {"name": "C"}, queue=queue, depends_on=[0]),
            JobSpec("step", {"name": "D"}, queue=queue, depends_on=[1, 2])]


# -- (1) A -> (B, C) -> D ------------------------------------------------------------------------
def test_d_is_queued_by_the_commit_that_acknowledges_the_later_of_b_and_c_and_workers_are_notified(db_url, reg):
    a, b, c, d = asyncio.run(submit_many(db_url, reg, diamond()))
    assert [state_of(db_url, j) for j in (a, b, c, d)] == ["queued", "waiting", "waiting", "waiting"]

    async def claim_and_ack(conn: psycopg.AsyncConnection[Any], job: uuid.UUID) -> None:
        [claimed] = await job_queries.claim_batch(conn, worker_id="w1", queues=None, limit=1, lease_seconds=30)
        assert claimed.id == job  # the only claimable job: the waiting ones are never claimed
        done, _ = await job_queries.finish_many_if_held(
            conn, worker_id="w1", ids=[job], attempts=[claimed.attempt], states=["succeeded"], results=None,
            errors=None, run_ats=None, checkpoints=None, progresses=None)
        assert done == {job}

    with psycopg.connect(db_url, autocommit=True) as listen:
        listen.execute("LISTEN skiplock_jobs")

        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await claim_and_ack(conn, a)
                assert {state_of(db_url, b), state_of(db_url, c), state_of(db_url, d)} == {"queued", "waiting"}
                assert state_of(db_url, d) == "waiting"
                [claimed] = await job_queries.claim_batch(conn, worker_id="w1", queues=None, limit=1,
                                                          lease_seconds=30)
                other = c if claimed.id == b else b
                await job_queries.finish_many_if_held(
                    conn, worker_id="w1", ids=[claimed.id], attempts=[claimed.attempt], states=["succeeded"],
                    results=None, errors=None, run_ats=None, checkpoints=None, progresses=None)
                assert state_of(db_url, d) == "waiting"  # one of its two dependencies is still to run
                listen.execute("SELECT 1")
                list(listen.notifies(timeout=0.2))  # forget the wakeups so far
                await claim_and_ack(conn, other)  # autocommit: this statement is the transaction

        asyncio.run(go())
        assert state_of(db_url, d) == "queued"  # right after that commit, from another session
        listen.execute("SELECT 1")
        assert [n.payload for n in listen.notifies(timeout=0.5)] == ["default"]
    assert timeline(db_url, d) == ["waiting", "queued"]


def test_a_worker_that_never_polls_runs_the_chain_in_dependency_order(db_url, reg):
    async def go() -> list[uuid.UUID]:
        w = Worker(db_url, registry=reg, concurrency=4, poll_interval=NO_POLL)
        runner = asyncio.create_task(w.run())
        await w.started.wait()
        ids = await submit_many(db_url, reg, diamond())
        deadline = time.monotonic() + 30
        while state_of(db_url, ids[3]) != "succeeded":
            assert time.monotonic() < deadline, [state_of(db_url, j) for j in ids]
            await asyncio.sleep(0.05)
        w.request_stop()
        await asyncio.wait_for(runner, 15)
        return ids

    ids = asyncio.run(go())
    at = {(name, edge): t for name, edge, t in reg.ran}  # type: ignore[attr-defined]
    assert at[("A", "end")] < at[("B", "start")] and at[("A", "end")] < at[("C", "start")]
    assert max(at[("B", "end")], at[("C", "end")]) < at[("D", "start")]
    assert timeline(db_url, ids[3]) == ["waiting", "queued", "running", "succeeded"]


def test_the_last_two_dependencies_finished_by_two_transactions_at_once_release_the_job(db_url, reg):
    """Each transaction alone sees the other's dependency unfinished: the dependent's row lock
    makes the later one wait and look again after the earlier one commits."""
    a, b, d = asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"}), JobSpec("step", {"name": "B"}),
                                                       JobSpec("step", {"name": "D"}, depends_on=[0, 1])]))
    claim = ("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
             "lease_expires_at = now() + interval '1 minute', started_at = now() WHERE id = ANY(%s)")
    succeed = "UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() WHERE id = %s"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(claim, ([a, b],))
    with psycopg.connect(db_url) as t1, psycopg.connect(db_url) as t2:
        t1.execute(succeed, (a,))  # holds D's row lock until it commits
        second = threading.Thread(target=lambda: (t2.execute(succeed, (b,)), t2.commit()))
        second.start()
        deadline = time.monotonic() + 10
        with psycopg.connect(db_url, autocommit=True) as watch:  # t2 waits for t1's lock on D
            while not watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline
                time.sleep(0.01)
        t1.commit()
        second.join(10)
    assert state_of(db_url, d) == "queued"


# -- (2) failure and cancellation cascade -----------------------------------------------------
def test_a_failed_dependency_cancels_its_dependents_naming_it_and_theirs_after_them(db_url, reg):
    specs = [JobSpec("step", {"name": "A"}), JobSpec("doomed", depends_on=[0]), JobSpec("step", {"name": "C"}),
             JobSpec("step", {"name": "D"}, depends_on=[1, 2]), JobSpec("step", {"name": "E"}, depends_on=[3])]
    a, b, c, d, e = asyncio.run(submit_many(db_url, reg, specs))

    async def drain() -> None:
        for _ in range(20):
            await asyncio.wait_for(Worker(db_url, registry=reg, burst=True, poll_interval=0.02).run(), 30)
            if all(state_of(db_url, j) not in ("queued", "running") for j in (a, b, c, d, e)):
                return
        raise AssertionError("jobs left to run")

    asyncio.run(drain())
    assert [state_of(db_url, j) for j in (a, b, c, d, e)] == ["succeeded", "failed", "succeeded", "cancelled",
                                                               "cancelled"]
    assert str(b) in row_of(db_url, d)["last_error"] and "doomed" in row_of(db_url, d)["last_error"]
    assert str(d) in row_of(db_url, e)["last_error"] and str(b) in row_of(db_url, e)["last_error"]
    assert timeline(db_url, d) == ["waiting", "cancelled"]
    assert ("D", "start") not in {(n, edge) for n, edge, _ in reg.ran}  # type: ignore[attr-defined]


def test_cancelling_a_waiting_job_cancels_its_dependents(db_url, reg):
    a, d, e = asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"}),
                                                     JobSpec("step", {"name": "D"}, depends_on=[0]),
                                                     JobSpec("step", {"name": "E"}, depends_on=[1])]))
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT skiplock.cancel(%s)::text", (d,)).fetchone() == ("cancelled",)
    assert (state_of(db_url, a), state_of(db_url, e)) == ("queued", "cancelled")
    assert str(d) in row_of(db_url, e)["last_error"]


def test_retry_waits_again_for_what_has_not_succeeded_and_is_refused_while_a_dependency_failed(db_url, reg):
    b, d = asyncio.run(submit_many(db_url, reg, [JobSpec("doomed"), JobSpec("step", {"name": "D"},
                                                                               depends_on=[0])]))
    asyncio.run(asyncio.wait_for(Worker(db_url, registry=reg, burst=True, poll_interval=0.02).run(), 30))
    assert (state_of(db_url, b), state_of(db_url, d)) == ("failed", "cancelled")

    async def retry(job: uuid.UUID) -> dict[str, Any]:
        async with Operations.connect(db_url) as ops:
            return await ops.retry(job)

    with pytest.raises(InvalidTransition, match=str(b)):
        asyncio.run(retry(d))
    assert asyncio.run(retry(b))["state"] == "queued"
    assert asyncio.run(retry(d))["state"] == "waiting"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = attempt + 1, worker_id = 'w', "
                  "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (b,))
        c.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL WHERE id = %s", (b,))
    assert state_of(db_url, d) == "queued"
    assert timeline(db_url, d) == ["waiting", "cancelled", "waiting", "queued"]


def test_a_dependency_that_already_succeeded_counts_as_met(db_url, reg):
    [a] = asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"})]))
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                  "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (a,))
        c.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL WHERE id = %s", (a,))

    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await enqueue(conn, "step", {"name": "B"}, registry=reg, depends_on=[a])

    job = asyncio.run(go())
    assert job.row["state"] == "queued" == state_of(db_url, job.id)


# -- (3) refusals at submission ----------------------------------------------------------------
def test_python_refuses_a_cycle_an_unknown_id_and_a_failed_dependency(db_url, reg):
    unknown = uuid.uuid4()
    with pytest.raises(InvalidInput, match="cycle: job 1 -> job 2 -> job 1") as cycle:
        asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"}),
                                              JobSpec("step", {"name": "B"}, depends_on=[0, 2]),
                                              JobSpec("step", {"name": "C"}, depends_on=[1])]))
    assert cycle.value.details["index"] == 1 and cycle.value.field == "depends_on"
    with pytest.raises(InvalidInput, match="cycle"):
        asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"}, depends_on=[0])]))
    with pytest.raises(InvalidInput, match=str(unknown)) as missing:
        asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "A"}),
                                              JobSpec("step", {"name": "B"}, depends_on=[0, unknown])]))
    assert missing.value.details["job_id"] == str(unknown) and missing.value.details["index"] == 1
    [b, _] = asyncio.run(submit_many(db_url, reg, [JobSpec("doomed"), JobSpec("step", {"name": "x"},
                                                                               depends_on=[0])]))
    asyncio.run(asyncio.wait_for(Worker(db_url, registry=reg, burst=True, poll_interval=0.02).run(), 30))
    with pytest.raises(InvalidInput, match=f"{b}, which is failed"):
        asyncio.run(submit_many(db_url, reg, [JobSpec("step", {"name": "y"}, depends_on=[str(b)])]))
    with psycopg.connect(db_url, autocommit=True) as c:  # nothing of the refused calls was stored
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone() == (2,)


def test_sql_refuses_an_unknown_id_and_a_cycle(db_url):
    unknown = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as c:
        with pytest.raises(psycopg.errors.CheckViolation, match=f"depends on {unknown}, which is not a job"):
            c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])", (unknown,))
        x, y = uuid.uuid4(), uuid.uuid4()
        with pytest.raises(psycopg.errors.CheckViolation, match="wait for each other"):
            c.execute("INSERT INTO skiplock.jobs (id, task, depends_on) VALUES (%s, 'echo', ARRAY[%s::uuid]), "
                      "(%s, 'echo', ARRAY[%s::uuid])", (x, y, y, x))
        a = c.execute("SELECT skiplock.enqueue('echo')").fetchone()[0]  # type: ignore[index]
        d = c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])", (a,)).fetchone()[0]  # type: ignore[index]
        assert c.execute("SELECT state::text, depends_on FROM skiplock.jobs WHERE id = %s", (d,)).fetchone() == (
            "waiting", [a])


def test_http_refuses_with_422_naming_the_id_or_the_cycle(db_url):
    unknown = str(uuid.uuid4())
    with TestClient(create_app(Settings(database_url=db_url))) as client:
        r = client.post("/jobs", json={"task": "echo", "args": {"message": "x"}, "depends_on": [unknown]})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert unknown in err["message"] and err["details"]["job_id"] == unknown
        assert err["details"]["field"] == "depends_on"
        r = client.post("/jobs/bulk", json={"jobs": [
            {"task": "echo", "args": {"message": "a"}, "depends_on": [1]},
            {"task": "echo", "args": {"message": "b"}, "depends_on": [0]}]})
        assert r.status_code == 422, r.text
        assert "cycle" in r.json()["error"]["message"] and r.json()["error"]["details"]["index"] == 0
        r = client.post("/jobs/bulk", json={"jobs": [
            {"task": "echo", "args": {"message": "a"}},
            {"task": "echo", "args": {"message": "b"}, "depends_on": [0]}]})
        assert r.status_code == 201, r.text
        first, second = r.json()["ids"]
        waiting = client.get("/jobs", params={"state": "waiting"}).json()["jobs"]
        assert [j["id"] for j in waiting] == [second] and waiting[0]["depends_on"] == [first]
        detail = client.get(f"/jobs/{second}").json()
        assert detail["state"] == "waiting" and [h["state"] for h in detail["history"]] == ["waiting"]
        [q] = client.get("/queues").json()["queues"]
        assert (q["waiting"], q["ready"]) == (1, 1)
        assert client.post(f"/jobs/{second}/cancel").json()["state"] == "cancelled"


# -- (4) the database refuses forbidden transitions and rows ----------------------------------
@pytest.mark.parametrize("statement", [
    "UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
    "lease_expires_at = now() + interval '1 minute' WHERE id = %(waiting)s",
    "UPDATE skiplock.jobs SET state = 'succeeded' WHERE id = %(waiting)s",
    "UPDATE skiplock.jobs SET state = 'waiting' WHERE id = %(queued)s",
    "INSERT INTO skiplock.jobs (task, state) VALUES ('echo', 'waiting')",
    "UPDATE skiplock.jobs SET depends_on = NULL WHERE id = %(waiting)s",
])
def test_psql_cannot_make_a_forbidden_transition_or_row(db_url, statement):
    with psycopg.connect(db_url, autocommit=True) as c:
        queued = c.execute("SELECT skiplock.enqueue('echo')").fetchone()[0]  # type: ignore[index]
        waiting = c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])",
                            (queued,)).fetchone()[0]  # type: ignore[index]
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute(statement, {"waiting": waiting, "queued": queued})
        assert c.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (waiting,)).fetchone() == ("waiting",)


# -- cost: only jobs with dependencies or dependents run a trigger function -----------------------
def test_a_plain_job_runs_no_row_trigger_function_and_a_dependent_one_runs_the_dependency_triggers(db_url):
    """A plain job's insert, claim and success call no row trigger function: only the batch
    counter, once per statement (a statement trigger: batches are counted per statement)."""
    from skiplock.queries.loader import q

    def functions_called(c: psycopg.Connection[Any], depends: bool) -> dict[str, int]:
        with c.transaction():
            c.execute("SET LOCAL track_functions = 'pl'")
            a = c.execute("SELECT skiplock.uuid_v7()").fetchone()[0]  # type: ignore[index]
            params = {"task": "echo", "args": "{}", "queue": "default", "priority": 1, "run_at": None,
                      "max_attempts": 3, "timeout": None, "idempotency_key": None, "batch_id": None,
                      "correlation_id": None, "defer_notify": False}
            c.execute(q("insert_job"), {**params, "id": a, "depends_on": None})
            if depends:
                c.execute(q("insert_job"), {**params, "id": uuid.uuid4(), "depends_on": [a]})
            [claimed] = c.execute(q("claim_batch"), {"worker_id": "w", "queues": None, "limit": 1,
                                                     "lease_seconds": 30, "now": None, "turn": 0}).fetchall()
            c.execute(q("finish_many_if_held"), {
                "worker_id": "w", "ids": [claimed[0]], "attempts": [claimed[5]], "states": ["succeeded"],
                "results": None, "errors": None, "run_ats": None, "checkpoints": None, "progresses": None,
                "now": None}).fetchall()
            return dict(c.execute("SELECT funcname, calls FROM pg_stat_xact_user_functions "
                                  "WHERE schemaname = 'skiplock'").fetchall())

    with psycopg.connect(db_url) as c:
        assert functions_called(c, depends=False) == {"batches_count_v1": 3}
        called = functions_called(c, depends=True)
    assert called.keys() >= {"jobs_submit_waiting_v1", "jobs_link_dependencies_v1", "jobs_release_dependents_v1"}
