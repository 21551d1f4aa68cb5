"""Batches in the database: counts kept by the statements that change the jobs, through every
path a job takes (claim, success, retry, failure, rescue, release, cancel, operator retry,
hand-made SQL), and the completion job enqueued once, in the transaction that ends the batch."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import app.tasks  # noqa: F401 - registers the example tasks (echo)
from skiplock import BatchNotFound, BatchSealed, InvalidInput, JobSpec, Operations, enqueue_batch, enqueue_many
from skiplock.queries.loader import q

COUNTS = ("waiting", "queued", "running", "parked", "succeeded", "failed", "cancelled")


def counts(c: psycopg.Connection[Any], batch: uuid.UUID) -> tuple[dict[str, int], dict[str, int]]:
    """(the batch's counts, its jobs counted by state), read in one snapshot."""
    with c.transaction():
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = c.execute("SELECT * FROM skiplock.batch_progress WHERE id = %s", (batch,)).fetchone()
        by_state = {r["state"]: r["n"] for r in c.execute(
            "SELECT CASE WHEN parked IS NULL THEN state::text ELSE 'parked' END AS state, count(*) AS n "
            "FROM skiplock.jobs WHERE batch_id = %s GROUP BY 1", (batch,))}
    assert row is not None
    stored = {k: row[k] for k in ("total", *COUNTS)}
    real = {k: int(by_state.get(k, 0)) for k in COUNTS}
    return stored, {"total": sum(real.values()), **real}


def exact(c: psycopg.Connection[Any], batch: uuid.UUID) -> dict[str, int]:
    stored, real = counts(c, batch)
    assert stored == real
    return stored


def claim(c: psycopg.Connection[Any], worker: str, limit: int, now: datetime | None = None) -> list[Any]:
    """Claim from the batches' queue (completion jobs go to queue `reports`)."""
    return c.execute(q("claim_batch"), {"worker_id": worker, "queues": ["default"], "limit": limit, "lease_seconds": 30,
                                        "now": now, "turn": 0}).fetchall()


def finish(c: psycopg.Connection[Any], worker: str, jobs: list[Any], state: str, error: str | None = None) -> None:
    c.execute(q("finish_many_if_held"), {
        "worker_id": worker, "ids": [j["id"] for j in jobs], "attempts": [j["attempt"] for j in jobs],
        "states": [state] * len(jobs), "results": None, "errors": [error] * len(jobs) if error else None,
        "run_ats": None, "checkpoints": None, "progresses": None, "now": None}).fetchall()


def make_batch(db_url: str, n: int, *, seal: bool = True,
               on_complete: JobSpec | None = JobSpec("batch_done", queue="reports"),
               **job: Any) -> uuid.UUID:
    async def go() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            b = await enqueue_batch(c, [JobSpec("echo", {"message": str(i)}, **job) for i in range(n)],
                                    on_complete=on_complete, seal=seal)
            return b.id
    return asyncio.run(go())


def completion_jobs(c: psycopg.Connection[Any], batch: uuid.UUID) -> list[dict[str, Any]]:
    return c.execute("SELECT * FROM skiplock.jobs WHERE task = 'batch_done' AND args->'batch'->>'id' = %s ORDER BY id",
                     (str(batch),)).fetchall()


@pytest.fixture
def conn(db_url: str) -> Any:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def test_counts_follow_every_path_and_the_completion_job_gets_the_final_counts(db_url, conn):
    b = make_batch(db_url, 10, max_attempts=2, on_complete=JobSpec("batch_done", {"message": "done"}, queue="reports"))
    assert exact(conn, b) == {"total": 10, "waiting": 0, "queued": 10, "running": 0, "parked": 0,
                              "succeeded": 0, "failed": 0, "cancelled": 0}
    assert conn.execute("SELECT state FROM skiplock.batches WHERE id = %s", (b,)).fetchone()["state"] == "active"
    jobs = claim(conn, "w1", 6)
    assert exact(conn, b)["running"] == 6
    finish(conn, "w1", jobs[:3], "succeeded")
    finish(conn, "w1", jobs[3:4], "queued", "boom")             # a retry after backoff
    finish(conn, "w1", jobs[4:5], "failed", "for good")
    conn.execute(q("release_many_if_held"), {"worker_id": "w1", "ids": [jobs[5]["id"]],
                                             "attempts": [jobs[5]["attempt"]], "checkpoints": None,
                                             "progresses": None, "now": None})
    assert exact(conn, b) == {"total": 10, "waiting": 0, "queued": 6, "running": 0, "parked": 0,
                              "succeeded": 3, "failed": 1, "cancelled": 0}
    # a worker that stops renewing its lease: the rescuer puts its jobs back (or fails them)
    later = datetime.now(UTC) + timedelta(minutes=5)
    lost = claim(conn, "w2", 2)
    conn.execute(q("rescue_expired"), {"limit": 100, "now": later})
    assert exact(conn, b)["running"] == 0 and lost
    cancelled = conn.execute("SELECT id FROM skiplock.jobs WHERE batch_id = %s AND state = 'queued' LIMIT 1",
                             (b,)).fetchone()["id"]
    conn.execute("SELECT skiplock.cancel(%s)", (cancelled,))
    conn.execute("SELECT skiplock.retry(%s)", (cancelled,))     # operator retry
    exact(conn, b)
    while rest := claim(conn, "w3", 3, now=later):
        assert completion_jobs(conn, b) == []
        finish(conn, "w3", rest, "succeeded")
        exact(conn, b)
    final = conn.execute("SELECT * FROM skiplock.batch_progress WHERE id = %s", (b,)).fetchone()
    ended = exact(conn, b)
    assert (final["state"], final["percent"], ended["queued"] + ended["running"]) == ("failed", 100.0, 0)
    [done] = completion_jobs(conn, b)
    assert final["completion_job_id"] == done["id"]
    outcome = {k: ended[k] for k in ("succeeded", "failed", "cancelled")}
    assert done["args"] == {"message": "done", "batch": {"id": str(b), "state": "failed", "total": 10, **outcome}}
    assert done["batch_id"] is None and done["state"] == "queued"


def test_hand_made_sql_keeps_the_counts_and_a_deleted_queued_job_leaves_its_batch(db_url, conn):
    b = make_batch(db_url, 4)
    conn.execute("UPDATE skiplock.jobs SET state = 'cancelled', finished_at = now() WHERE id = "
                 "(SELECT id FROM skiplock.jobs WHERE batch_id = %s ORDER BY id LIMIT 1)", (b,))
    conn.execute("DELETE FROM skiplock.jobs WHERE id = (SELECT id FROM skiplock.jobs WHERE batch_id = %s "
                 "AND state = 'queued' ORDER BY id LIMIT 1)", (b,))
    assert exact(conn, b)["total"] == 3
    finish(conn, "w", claim(conn, "w", 10), "succeeded")
    assert exact(conn, b) == {"total": 3, "waiting": 0, "queued": 0, "running": 0, "parked": 0,
                              "succeeded": 2, "failed": 0, "cancelled": 1}
    assert conn.execute("SELECT state FROM skiplock.batches WHERE id = %s", (b,)).fetchone()["state"] == "cancelled"
    # pruning its finished jobs keeps the batch's record
    conn.execute("DELETE FROM skiplock.jobs WHERE batch_id = %s", (b,))
    assert conn.execute("SELECT total, succeeded FROM skiplock.batches WHERE id = %s", (b,)).fetchone() == \
        {"total": 3, "succeeded": 2}


def test_open_batch_filled_in_several_transactions_completes_only_once_sealed(db_url, conn):
    b = conn.execute("SELECT skiplock.open_batch('batch_done', '{\"message\": \"end\"}') AS id").fetchone()["id"]
    for i in range(3):
        conn.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text), batch_id => %s)",
                     (str(i), b))
        finish(conn, "w", claim(conn, "w", 10), "succeeded")
    assert exact(conn, b)["succeeded"] == 3
    assert conn.execute("SELECT state FROM skiplock.batches WHERE id = %s", (b,)).fetchone()["state"] == "open"
    assert completion_jobs(conn, b) == []
    assert conn.execute("SELECT skiplock.seal_batch(%s) AS s", (b,)).fetchone()["s"] == "succeeded"
    assert conn.execute("SELECT skiplock.seal_batch(%s) AS s", (b,)).fetchone()["s"] == "succeeded"
    assert len(completion_jobs(conn, b)) == 1
    with pytest.raises(psycopg.errors.CheckViolation, match="is sealed"):
        conn.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s)", (b,))


def test_a_sealed_batch_refuses_jobs_and_a_batch_id_naming_no_batch_stays_a_label(db_url, conn):
    b = make_batch(db_url, 2)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            with pytest.raises(BatchSealed) as e:
                await enqueue_many(c, [JobSpec("echo", {"message": "late"}, batch_id=b)])
            assert e.value.field == "batch_id"
            label = uuid.uuid4()
            [j] = await enqueue_many(c, [JobSpec("echo", {"message": "tagged"}, batch_id=label)])
            assert j.row["batch_id"] == label
            with pytest.raises(InvalidInput) as e:
                await enqueue_batch(c, [JobSpec("echo", {"message": "k"}, idempotency_key="k")])
            assert e.value.field == "idempotency_key"
            with pytest.raises(InvalidInput) as e:
                await enqueue_batch(c, [JobSpec("echo", {"message": "x"})],
                                    on_complete=JobSpec("batch_done", {"message": 5}))
            assert e.value.field == "on_complete.args.message"
    asyncio.run(go())
    assert exact(conn, b)["total"] == 2


def test_an_empty_batch_completes_when_sealed(db_url, conn):
    b = make_batch(db_url, 0)
    row = conn.execute("SELECT * FROM skiplock.batch_progress WHERE id = %s", (b,)).fetchone()
    assert (row["state"], row["percent"], row["total"]) == ("succeeded", 100.0, 0)
    assert len(completion_jobs(conn, b)) == 1


def test_one_statement_over_several_batches_counts_each(db_url, conn):
    a, b = make_batch(db_url, 3), make_batch(db_url, 2)
    jobs = claim(conn, "w", 10)
    assert len(jobs) == 5
    assert (exact(conn, a)["running"], exact(conn, b)["running"]) == (3, 2)
    finish(conn, "w", jobs, "succeeded")
    assert (len(completion_jobs(conn, a)), len(completion_jobs(conn, b))) == (1, 1)


def ops_run(db_url: str, fn: Any) -> Any:
    async def go() -> Any:
        async with Operations.connect(db_url) as ops:
            return await fn(ops)
    return asyncio.run(go())


def test_operations_cancel_running_and_queued_jobs_then_retry_failed_ones(db_url, conn):
    b = make_batch(db_url, 5, max_attempts=1)
    running = claim(conn, "w", 2)
    finish(conn, "w", running[:1], "failed", "nope")
    conn.execute("LISTEN skiplock_cancel")
    shown = ops_run(db_url, lambda o: o.cancel_batch(b, correlation_id="op-9"))
    assert (shown["state"], shown["cancelled_now"], shown["cancelled"], shown["failed"]) == ("cancelled", 4, 4, 1)
    told = [n.payload for n in conn.notifies(timeout=1, stop_after=1)]
    assert told == [f"{running[1]['id']}:{running[1]['attempt']}"]
    assert shown["completion_job"]["args"]["batch"]["state"] == "cancelled"
    retried = ops_run(db_url, lambda o: o.retry_batch(b))
    assert (retried["state"], retried["retried_now"], retried["queued"], retried["finished_at"]) == \
        ("active", 1, 1, None)
    finish(conn, "w", claim(conn, "w", 5), "succeeded")
    again = ops_run(db_url, lambda o: o.get_batch(str(b)))
    assert (again["state"], again["succeeded"], again["cancelled"]) == ("cancelled", 1, 4)
    assert len(completion_jobs(conn, b)) == 2  # it ended twice: once per end, each with its counts
    page = ops_run(db_url, lambda o: o.batch_jobs(b, limit=3))
    assert len(page.jobs) == 3 and page.next_cursor
    listed = ops_run(db_url, lambda o: o.list_batches(state="cancelled"))
    assert [x["id"] for x in listed.batches] == [b]
    with pytest.raises(BatchNotFound):
        ops_run(db_url, lambda o: o.cancel_batch(uuid.uuid4()))
    with pytest.raises(BatchNotFound):
        ops_run(db_url, lambda o: o.batch_jobs(uuid.uuid4()))
    with pytest.raises(InvalidInput):
        ops_run(db_url, lambda o: o.list_batches(state="done"))


def test_cli_lists_shows_cancels_and_retries_batches(db_url, conn, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    from app import cli

    b = make_batch(db_url, 3, max_attempts=1)
    finish(conn, "w", claim(conn, "w", 1), "failed", "no")
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert cli.main(["batch", "list"]) == 0
    out = capsys.readouterr().out
    assert str(b) in out and "active" in out and "33.3" in out
    assert cli.main(["batch", "cancel", str(b)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["cancelled_now"]) == ("cancelled", 2)
    assert cli.main(["batch", "retry", str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["retried_now"] == 1
    assert cli.main(["batch", "show", str(b)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["queued"], shown["completion_job"]["task"]) == ("active", 1, "batch_done")
    assert cli.main(["batch", "show", str(uuid.uuid4())]) == 2
    assert "no batch" in capsys.readouterr().err


def test_a_waiting_job_counts_as_waiting_in_its_batch_and_a_batch_cancel_cancels_it(db_url, conn):
    b = conn.execute("SELECT skiplock.open_batch('batch_done', '{\"message\": \"end\"}') AS id").fetchone()["id"]
    first = conn.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"a\"}') AS id").fetchone()["id"]
    waits = conn.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"b\"}', batch_id => %s, "
                         "depends_on => ARRAY[%s::uuid]) AS id", (b, first)).fetchone()["id"]
    assert exact(conn, b) == {"total": 1, "waiting": 1, "queued": 0, "running": 0, "parked": 0, "succeeded": 0,
                              "failed": 0, "cancelled": 0}
    assert conn.execute("SELECT skiplock.cancel_batch(%s) AS n", (b,)).fetchone()["n"] == 1
    assert conn.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (waits,)).fetchone()["state"] \
        == "cancelled"
    assert exact(conn, b)["cancelled"] == 1
    assert len(completion_jobs(conn, b)) == 1


def test_the_pruner_deletes_a_finished_batch_with_its_jobs_and_never_an_unfinished_one(db_url, conn):
    from skiplock import db
    from skiplock.runtime.pruner import Pruner

    done, active = make_batch(db_url, 2), make_batch(db_url, 2)
    for b in (done, active):
        conn.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                     "lease_expires_at = now() + interval '1 minute' WHERE batch_id = %s", (b,))
    conn.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() "
                 "WHERE batch_id = %s OR id = (SELECT min(id::text)::uuid FROM skiplock.jobs WHERE batch_id = %s)",
                 (done, active))
    assert exact(conn, done)["succeeded"] == 2 and exact(conn, active)["running"] == 1

    async def prune(days: float) -> int:
        now = conn.execute("SELECT now() AS t").fetchone()["t"] + timedelta(days=days)
        pool = db.make_pool(db_url, min_size=1, max_size=1)
        await pool.open()
        try:
            return await Pruner(pool, interval=60, retention_seconds=86400, batch=1).run_once(now=now)
        finally:
            await pool.close()

    assert asyncio.run(prune(0)) == 0  # not old enough: nothing goes
    assert conn.execute("SELECT count(*) AS n FROM skiplock.batches").fetchone()["n"] == 2
    assert asyncio.run(prune(2)) == 3  # the finished batch's two jobs and the active one's finished job
    left = {r["id"] for r in conn.execute("SELECT id FROM skiplock.batches")}
    assert left == {active}  # the finished batch went after its jobs; the active one stays, counts intact
    assert counts(conn, active)[0] == {"total": 2, "waiting": 0, "queued": 0, "running": 1, "parked": 0,
                                       "succeeded": 1, "failed": 0, "cancelled": 0}
