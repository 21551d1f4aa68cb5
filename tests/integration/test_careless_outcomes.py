"""Outcomes a careless handler produces, against a real database: a batch the database refuses
for one outcome's content writes the rest and fails that job alone; results and checkpoints
are bounded; fenced answers are counted apart. (Real worker processes: tests/acceptance/
test_careless_outcomes.py.)"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import psycopg
import pytest

from skiplock import InvalidInput, JobContext, TaskRegistry, Worker, db, enqueue, task
from skiplock.queries import jobs as job_queries
from skiplock.runtime.completer import Completer
from skiplock.runtime.executor import Outcome
from skiplock.runtime.inflight import InFlight


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="echo", registry=r)
    async def echo(message: str) -> dict[str, str]:
        return {"message": message}

    @task(name="text", registry=r)
    async def text(chars: str, n: int) -> str:
        return chars * n

    @task(name="checkpoint", registry=r)
    def checkpoint(n: int, ctx: JobContext) -> str:
        try:
            ctx.save_checkpoint("x" * n)
        except InvalidInput as exc:
            return "refused" if "the limit is 100" in exc.message else exc.message
        return "saved"

    @task(name="cancels_itself", registry=r)
    async def cancels_itself(ctx: JobContext, url: str) -> dict[str, bool]:
        # A cancel by a plain UPDATE sends no notification (skiplock.cancel's would stop this
        # handler at once): the handler answers, and the worker learns only from the fence.
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("UPDATE skiplock.jobs SET state = 'cancelled', worker_id = NULL,"
                               " lease_expires_at = NULL, finished_at = now() WHERE id = %s", (ctx.job_id,))
        return {"done": True}  # the job is no longer ours: this answer is fenced

    return r


async def submit(url: str, reg: TaskRegistry, name: str, args: dict[str, Any]) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return (await enqueue(conn, name, args, registry=reg)).id


async def drain(url: str, reg: TaskRegistry, **kw: Any) -> Worker:
    w = Worker(url, registry=reg, burst=True, poll_interval=0.02, **kw)
    await asyncio.wait_for(w.run(), timeout=60)
    return w


def row(pg_conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any]:
    cur = pg_conn.execute("SELECT state::text, attempt, result, last_error, checkpoint FROM skiplock.jobs"
                          " WHERE id = %s", (job_id,))
    names = [d.name for d in cur.description or []]
    values = cur.fetchone()
    pg_conn.commit()
    assert values is not None
    return dict(zip(names, values, strict=True))


def test_a_batch_refused_for_one_outcome_writes_the_rest_and_fails_that_job_alone(db_url, pg_conn, reg):
    """Outcomes that slipped past the checks (as a future bug might let them): text that is
    not JSON, a NUL in the error text, a NaN checkpoint, a checkpoint psycopg cannot even
    serialise. Each fails its own job saying why; the good outcomes of the same batch are
    written in the same flush, and nothing stays buffered to be retried forever."""
    async def go() -> tuple[list[uuid.UUID], list[uuid.UUID], uuid.UUID, Completer]:
        *ids, running = [await submit(db_url, reg, "echo", {"message": str(i)}) for i in range(11)]
        pool = db.make_pool(db_url, min_size=1, max_size=2)
        await pool.open()
        try:
            async with pool.connection() as conn:
                jobs = {j.id: j for j in await job_queries.claim_batch(conn, worker_id="W", queues=None,
                                                                      limit=11, lease_seconds=30)}
            completer = Completer(pool, InFlight("W"), worker_id="W")
            poisons: list[dict[str, Any]] = [
                {"result_json": b"NaN"},
                {"state": "failed", "error": "a NUL \x00 in the error"},
                {"checkpoint": float("nan"), "has_checkpoint": True},
                {"checkpoint": {1, 2}, "has_checkpoint": True},
            ]
            bad = [ids[1], ids[4], ids[5], ids[8]]
            for job_id in ids:
                fields: dict[str, Any] = {"state": "succeeded", "result_json": b'{"ok":true}'}
                if job_id in bad:
                    fields |= poisons[bad.index(job_id)]
                completer.add(Outcome(job_id=job_id, attempt=jobs[job_id].attempt, task="echo", **fields))
            # a progress report of a running job, refused the same way, is dropped (its outcome
            # would carry the same report and fail alone)
            ctx = JobContext(job_id=running, task="echo", queue="default", attempt=1, max_attempts=3,
                             checkpoint=None, worker_id="W", on_update=lambda c: None)
            ctx.pending_progress = {"percent": float("nan"), "message": None}
            completer._add_update(ctx)  # what ctx.progress() would buffer, had it not checked
            assert await completer.run_once() == 10
            return ids, bad, running, completer
        finally:
            await pool.close()

    ids, bad, running, completer = asyncio.run(go())
    assert completer.pending == 0
    assert row(pg_conn, running)["state"] == "running"
    assert completer.counts == {"succeeded": 6, "queued": 0, "failed": 4, "waiting": 0, "fenced": 0}
    for job_id in ids:
        r = row(pg_conn, job_id)
        if job_id in bad:
            assert r["state"] == "failed" and r["result"] is None and r["checkpoint"] is None, r
            assert r["last_error"].startswith("the database refused this job's outcome"), r["last_error"]
        else:
            assert (r["state"], r["result"], r["last_error"]) == ("succeeded", {"ok": True}, None)
    assert "a NUL \\x00 in the error" in row(pg_conn, bad[1])["last_error"]


def test_results_are_bounded_in_utf8_bytes_of_json_and_a_larger_one_fails_at_once(db_url, pg_conn, reg):
    async def go() -> list[uuid.UUID]:
        jobs = [await submit(db_url, reg, "text", {"chars": "x", "n": 98}),   # "xx...x": 100 bytes
                await submit(db_url, reg, "text", {"chars": "x", "n": 99}),   # 101 bytes
                await submit(db_url, reg, "text", {"chars": "é", "n": 50})]   # 50 characters, 102 bytes
        await drain(db_url, reg, max_result_bytes=100)
        return jobs

    fits, over, wide = asyncio.run(go())
    assert row(pg_conn, fits)["state"] == "succeeded"
    for job_id, size in ((over, 101), (wide, 102)):
        r = row(pg_conn, job_id)
        assert (r["state"], r["attempt"], r["result"]) == ("failed", 1, None), r  # max_attempts 3: not retried
        assert f"is {size} bytes of JSON; the limit is 100" in r["last_error"]
        assert "Not retried: the same code would return the same value" in r["last_error"]


def test_a_checkpoint_over_the_bound_raises_in_the_handler_and_is_not_stored(db_url, pg_conn, reg):
    async def go() -> tuple[uuid.UUID, uuid.UUID]:
        small = await submit(db_url, reg, "checkpoint", {"n": 10})
        large = await submit(db_url, reg, "checkpoint", {"n": 200})
        await drain(db_url, reg, max_result_bytes=100)
        return small, large

    small, large = asyncio.run(go())
    assert (row(pg_conn, small)["result"], row(pg_conn, small)["checkpoint"]) == ("saved", "x" * 10)
    assert (row(pg_conn, large)["result"], row(pg_conn, large)["checkpoint"]) == ("refused", None)


def test_the_result_bound_is_a_validated_worker_argument():
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_result_bytes must be an integer >= 1"):
            Worker("postgresql://unused", max_result_bytes=bad)  # type: ignore[arg-type]


def test_a_fenced_answer_is_counted_apart_not_as_a_success(db_url, pg_conn, reg, caplog):
    async def go() -> tuple[uuid.UUID, Worker]:
        job = await submit(db_url, reg, "cancels_itself", {"url": db_url})
        return job, await drain(db_url, reg)

    with caplog.at_level(logging.INFO, logger="skiplock"):
        job, w = asyncio.run(go())
    assert row(pg_conn, job)["state"] == "cancelled"
    [stopped] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skiplock.worker.stopped")]
    assert " succeeded=0 failed=0 " in stopped and "fenced=1" in stopped, stopped
