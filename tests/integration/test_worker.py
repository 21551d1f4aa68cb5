"""The worker end to end against a real database: run, retry, fail, timeout, context,
cancellation, graceful release, and fencing of late answers."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from skiplock import (
    Backoff,
    JobContext,
    JobSpec,
    NonRetryableError,
    TaskRegistry,
    Worker,
    enqueue,
    enqueue_many,
    task,
)
from skiplock.db import jsonb
from skiplock.queries import jobs as job_queries

FAST = Backoff(base_seconds=0.01, factor=2, max_seconds=0.05, jitter=0)


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="echo", registry=r)
    async def echo(message: str) -> dict[str, str]:
        return {"message": message}

    @task(name="echo_sync", registry=r)
    def echo_sync(message: str) -> dict[str, str]:
        return {"message": message, "sync": "yes"}

    @task(name="flaky", max_attempts=4, retry=FAST, registry=r)
    async def flaky(fail_times: int, ctx: JobContext) -> int:
        if ctx.attempt <= fail_times:
            raise ValueError(f"boom on attempt {ctx.attempt}")
        return ctx.attempt

    @task(name="fatal", max_attempts=5, registry=r)
    async def fatal() -> None:
        raise NonRetryableError("never going to work")

    @task(name="slow", max_attempts=2, timeout=0.2, retry=FAST, registry=r)
    async def slow() -> None:
        await asyncio.sleep(5)

    @task(name="resumable", max_attempts=3, retry=FAST, registry=r)
    async def resumable(ctx: JobContext) -> dict[str, Any]:
        start = (ctx.checkpoint or {}).get("at", 0)
        for i in range(start, 10):
            if i == 5 and ctx.attempt == 1:
                ctx.save_checkpoint({"at": 5})
                ctx.progress(50, "half way")
                raise RuntimeError("crash half way")
        return {"resumed_from": start}

    @task(name="forever", max_attempts=3, registry=r)
    async def forever(ctx: JobContext) -> None:
        ctx.progress(1, "started")
        await asyncio.sleep(60)

    return r


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def submit(url: str, reg: TaskRegistry, name: str, args: dict[str, Any] | None = None, **kw: Any) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return (await enqueue(conn, name, args or {}, registry=reg, **kw)).id


async def drain(url: str, reg: TaskRegistry, **kw: Any) -> None:
    """Run burst workers until no job in the worker's queues is queued, even for later
    (retries wait a few milliseconds with the FAST backoff)."""
    kw.setdefault("poll_interval", 0.02)
    queues = kw.get("queues")
    for _ in range(100):
        await asyncio.wait_for(Worker(url, registry=reg, burst=True, **kw).run(), timeout=60)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'queued'"
                                     " AND (%(q)s::text[] IS NULL OR queue = ANY(%(q)s))", {"q": queues})
            if (await cur.fetchone())[0] == 0:  # type: ignore[index]
                return
        await asyncio.sleep(0.02)
    raise AssertionError("jobs still queued after 100 burst runs")


def job_row(pg_conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any]:
    cur = pg_conn.execute("SELECT * FROM skiplock.jobs WHERE id = %s", (job_id,))
    cols = [d.name for d in cur.description or []]
    row = cur.fetchone()
    pg_conn.commit()
    assert row is not None
    return dict(zip(cols, row))


def history(pg_conn: psycopg.Connection[Any], job_id: uuid.UUID) -> list[str]:
    rows = pg_conn.execute("SELECT state FROM skiplock.job_timeline WHERE job_id=%s ORDER BY step",
                           (job_id,)).fetchall()
    pg_conn.commit()
    return [r[0] for r in rows]


def test_a_job_runs_to_succeeded_with_its_result_and_history(db_url, pg_conn, reg):
    async def go() -> tuple[uuid.UUID, uuid.UUID]:
        a = await submit(db_url, reg, "echo", {"message": "hi"})
        b = await submit(db_url, reg, "echo_sync", {"message": "there"})
        await drain(db_url, reg)
        return a, b

    a, b = run(go())
    ra, rb = job_row(pg_conn, a), job_row(pg_conn, b)
    assert (ra["state"], ra["result"], ra["attempt"]) == ("succeeded", {"message": "hi"}, 1)
    assert rb["result"] == {"message": "there", "sync": "yes"}
    assert ra["worker_id"] is not None and ra["finished_at"] is not None  # the worker that ran it
    assert history(pg_conn, a) == ["queued", "running", "succeeded"]


def test_a_failing_job_retries_then_fails_into_dead_letter_and_sql_retry_revives_it(db_url, pg_conn, reg):
    job = run(submit(db_url, reg, "flaky", {"fail_times": 10}))
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"]) == ("failed", 4)
    assert "ValueError: boom on attempt 4" in row["last_error"] and "Traceback" in row["last_error"]
    assert history(pg_conn, job) == ["queued"] + ["running", "queued"] * 3 + ["running", "failed"]
    dead = pg_conn.execute("SELECT id FROM skiplock.dead_letter").fetchall()
    assert dead == [(job,)]
    pg_conn.execute("SELECT skiplock.retry(%s)", (job,))
    pg_conn.commit()
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)  # a full fresh round of 4 attempts, counted on from 4
    assert (row["state"], row["attempt"], row["attempt_base"]) == ("failed", 8, 4)
    pg_conn.execute("SELECT skiplock.retry(%s)", (job,))
    pg_conn.execute("UPDATE skiplock.jobs SET args = '{\"fail_times\": 9}' WHERE id = %s", (job,))
    pg_conn.commit()
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)
    assert (row["state"], row["result"]) == ("succeeded", 10)


def test_retry_delays_grow_exponentially():
    b = Backoff(base_seconds=2, factor=2, max_seconds=60, jitter=0.2)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    delays = [(b.next_run_at(n, now) - now).total_seconds() for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        assert 0.8 * min(2 * 2 ** (n - 1), 60) <= d <= 1.2 * min(2 * 2 ** (n - 1), 60)
    assert delays[0] < delays[1] < delays[2] < delays[3] < delays[4]


def test_jitter_spreads_retries_across_its_whole_range():
    b = Backoff(base_seconds=10, factor=2, max_seconds=60, jitter=0.2)
    rnd = random.Random(1)
    delays = [b.delay(1, rnd) for _ in range(2000)]
    assert 8.0 <= min(delays) < 8.1 and 11.9 < max(delays) <= 12.0
    # roughly uniform: each fifth of the range holds about a fifth of the delays
    fifths = [sum(1 for d in delays if 8 + 0.8 * i <= d < 8 + 0.8 * (i + 1)) for i in range(5)]
    assert all(300 <= n <= 500 for n in fifths), fifths
    assert len({Backoff(base_seconds=10, jitter=0).delay(1, rnd) for _ in range(50)}) == 1


def test_non_retryable_error_fails_at_once(db_url, pg_conn, reg):
    job = run(submit(db_url, reg, "fatal"))
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"]) == ("failed", 1)
    assert "never going to work" in row["last_error"]


def test_a_job_over_its_timeout_is_retried_then_failed(db_url, pg_conn, reg):
    job = run(submit(db_url, reg, "slow"))
    started = time.monotonic()
    run(drain(db_url, reg))
    assert time.monotonic() - started < 4  # the handler sleeps 5 s: it was cut off
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"]) == ("failed", 2)
    assert "timeout of 0.2s" in row["last_error"]


def test_a_checkpoint_lets_the_next_attempt_resume_and_progress_is_stored(db_url, pg_conn, reg):
    job = run(submit(db_url, reg, "resumable"))
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)
    assert row["state"] == "succeeded"
    assert row["result"] == {"resumed_from": 5}
    assert row["checkpoint"] == {"at": 5}
    assert row["progress"] == {"percent": 50.0, "message": "half way"}


def test_unknown_task_in_the_table_fails_its_last_attempt_not_crashing_the_worker(db_url, pg_conn, reg, make_job):
    job = make_job(task="no_such_task", args={}, max_attempts=1)
    run(drain(db_url, reg))
    row = job_row(pg_conn, job)
    assert row["state"] == "failed" and "unknown task 'no_such_task'" in row["last_error"]
    assert "not imported by worker" in row["last_error"]


def test_a_task_this_worker_does_not_import_is_retried_and_run_by_a_worker_that_does(db_url, pg_conn, reg,
                                                                                    make_job):
    """A fleet mid-deploy: an old worker claims a job of a task only the new workers import.
    Its attempt fails and the job goes back after the backoff, instead of failing for good."""
    job = make_job(task="echo", args={"message": "new code"}, max_attempts=3)
    run(Worker(db_url, registry=TaskRegistry(), burst=True, poll_interval=0.02).run())  # the old worker
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"]) == ("queued", 1), row
    assert "unknown task 'echo'" in row["last_error"] and row["run_at"] > row["created_at"]
    pg_conn.execute("UPDATE skiplock.jobs SET run_at = now() WHERE id = %s", (job,))  # the backoff has passed
    pg_conn.commit()
    run(drain(db_url, reg))  # a new worker
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"], row["result"]) == ("succeeded", 2, {"message": "new code"}), row


def test_cancelling_a_running_job_stops_it_at_the_next_heartbeat(db_url, pg_conn, reg):
    async def go() -> uuid.UUID:
        job = await submit(db_url, reg, "forever")
        w = Worker(db_url, registry=reg, poll_interval=0.02, lease_seconds=3, heartbeat_seconds=0.1)
        runner = asyncio.create_task(w.run())
        await w.started.wait()
        while not w.inflight.running:
            await asyncio.sleep(0.01)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            assert await job_queries.cancel_job(conn, job) == "cancelled"
        while w.inflight.running:
            await asyncio.sleep(0.02)
        w.request_stop()
        await asyncio.wait_for(runner, 10)
        return job

    job = run(go())
    row = job_row(pg_conn, job)
    assert row["state"] == "cancelled"
    assert history(pg_conn, job) == ["queued", "running", "cancelled"]


def test_graceful_stop_releases_unfinished_jobs_to_queued_and_gives_the_attempt_back(db_url, pg_conn, reg):
    async def go() -> list[uuid.UUID]:
        jobs = [await submit(db_url, reg, "forever") for _ in range(3)]
        w = Worker(db_url, registry=reg, poll_interval=0.02, grace_seconds=0.2)
        runner = asyncio.create_task(w.run())
        while len(w.inflight.running) < 3:
            await asyncio.sleep(0.01)
        w.request_stop()
        await asyncio.wait_for(runner, 10)
        return jobs

    for job in run(go()):
        row = job_row(pg_conn, job)
        assert (row["state"], row["attempt"], row["lease_expires_at"]) == ("queued", 0, None)
        assert row["progress"] == {"percent": 1.0, "message": "started"}
    assert pg_conn.execute("SELECT count(*) FROM skiplock.workers").fetchone()[0] == 0


def test_a_late_answer_from_a_rescued_attempt_changes_nothing(db_url, pg_conn, reg):
    """Fencing: worker A claims, its lease expires, the rescuer re-queues, worker B claims
    and succeeds; A's late failure report must not overwrite B's outcome."""
    async def go() -> uuid.UUID:
        job = await submit(db_url, reg, "echo", {"message": "x"})
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            [a] = await job_queries.claim_batch(conn, worker_id="A", queues=None, limit=10, lease_seconds=1)
            later = datetime.now(UTC) + timedelta(seconds=5)
            rescued = await job_queries.rescue_expired(conn, now=later)
            assert [r["id"] for r in rescued] == [job]
            [b] = await job_queries.claim_batch(conn, worker_id="B", queues=None, limit=10, lease_seconds=30, now=later)
            assert b.attempt == a.attempt + 1
            done_b = await job_queries.finish_many_if_held(
                conn, worker_id="B", ids=[job], attempts=[b.attempt], states=["succeeded"],
                results=[jsonb({"by": "B"})], errors=[None], run_ats=[None], checkpoints=[None], progresses=[None])
            late_a = await job_queries.finish_many_if_held(
                conn, worker_id="A", ids=[job], attempts=[a.attempt], states=["failed"],
                results=[None], errors=["late"], run_ats=[None], checkpoints=[None], progresses=[None])
            assert done_b == ({job}, set()) and late_a == (set(), set())
            # A's lease renewal is fenced too
            with psycopg.connect(db_url, autocommit=True) as blocking:  # the heartbeat's queries block
                assert job_queries.extend_leases_if_held(blocking, worker_id="A", holds={job: a.attempt},
                                                         lease_seconds=30) == (set(), set())
        return job

    job = run(go())
    row = job_row(pg_conn, job)
    assert (row["state"], row["result"], row["attempt"]) == ("succeeded", {"by": "B"}, 2)


def test_rescue_on_the_last_attempt_moves_the_job_to_failed(db_url, pg_conn, make_job):
    job = make_job(state="running", attempt=3, max_attempts=3,
                   lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await job_queries.rescue_expired(conn)

    run(go())
    row = job_row(pg_conn, job)
    assert row["state"] == "failed" and "lease expired" in row["last_error"]


def test_claim_order_is_priority_then_fair_turns_across_queues_and_skips_paused_and_future(
        db_url, pg_conn, make_job):
    """Claims of 3 rows at a time, until nothing is left, take the due jobs of unpaused queues in
    exactly the order computed here in Python: priority first; within a priority the queues take
    turns (each queue's first job in run_at, id order, then each one's second, ...), the queues
    in name order (turn 0; a queue is served while it holds a queued job, due or not)."""
    rnd = random.Random(7)
    now = datetime.now(UTC)
    pg_conn.execute("INSERT INTO skiplock.queues (name, paused) VALUES ('paused_q', true)")
    pg_conn.commit()
    due: list[tuple[int, datetime, uuid.UUID, str]] = []
    later: set[str] = set()
    for _ in range(60):
        queue = rnd.choice(["a", "b", "c", "paused_q"])
        priority = rnd.randrange(3)
        run_at = now - timedelta(seconds=rnd.choice([1, 5, 5, 20, 60]))  # ties: id decides
        if rnd.random() < 0.15:
            run_at = now + timedelta(hours=1)  # not due
        job = make_job(queue=queue, priority=priority, run_at=run_at)
        if queue != "paused_q" and run_at <= now:
            due.append((priority, run_at, job, queue))
        elif queue != "paused_q":
            later.add(queue)
    assert len(due) > 20

    expected: list[set[uuid.UUID]] = []
    left = list(due)
    while left:
        served = sorted({q for *_, q in left} | later)
        rank: dict[uuid.UUID, int] = {}
        for q in served:
            for p in range(3):
                mine = sorted((r, i) for pr, r, i, qq in left if qq == q and pr == p)
                rank.update({i: n for n, (_, i) in enumerate(mine)})
        order = sorted(left, key=lambda t: (t[0], rank[t[2]], served.index(t[3])))
        expected.append({t[2] for t in order[:3]})
        left = order[3:]

    async def claim_all() -> list[list[uuid.UUID]]:
        batches: list[list[uuid.UUID]] = []
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            while rows := await job_queries.claim_batch(conn, worker_id="w", queues=None, limit=3, lease_seconds=30):
                batches.append([r.id for r in rows])
        return batches

    batches = run(claim_all())
    # RETURNING order within one statement is not guaranteed: compare each batch as a set
    assert [set(b) for b in batches] == expected


def test_worker_only_takes_its_queues(db_url, pg_conn, reg):
    async def go() -> tuple[uuid.UUID, uuid.UUID]:
        mine = await submit(db_url, reg, "echo", {"message": "a"}, queue="mine")
        other = await submit(db_url, reg, "echo", {"message": "b"}, queue="other")
        await drain(db_url, reg, queues=["mine"])
        return mine, other

    mine, other = run(go())
    assert job_row(pg_conn, mine)["state"] == "succeeded"
    assert job_row(pg_conn, other)["state"] == "queued"


def test_a_job_cancelled_and_retried_under_the_same_worker_fences_the_old_run(db_url, pg_conn, reg):
    """Cancel a running job, retry it, and let the same worker claim it again: the first run's
    late answer must not be taken for the second (the attempt counter never resets)."""
    async def go() -> uuid.UUID:
        job = await submit(db_url, reg, "echo", {"message": "x"})
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            [first] = await job_queries.claim_batch(conn, worker_id="W", queues=None, limit=1, lease_seconds=30)
            await job_queries.cancel_job(conn, job)
            await job_queries.retry_job(conn, job)
            [second] = await job_queries.claim_batch(conn, worker_id="W", queues=None, limit=1, lease_seconds=30)
            assert second.attempt == first.attempt + 1

            def ack(attempt: int, by: str) -> Any:
                return job_queries.finish_many_if_held(
                    conn, worker_id="W", ids=[job], attempts=[attempt], states=["succeeded"],
                    results=[jsonb({"by": by})], errors=[None], run_ats=[None], checkpoints=[None],
                    progresses=[None])

            assert await ack(first.attempt, "first") == (set(), set())
            assert await ack(second.attempt, "second") == ({job}, set())
        return job

    row = job_row(pg_conn, run(go()))
    assert (row["state"], row["result"]) == ("succeeded", {"by": "second"})


def test_split_claims_run_every_job_exactly_once(db_url, pg_conn, reg):
    """Concurrency above CLAIM_PART claims with two statements at once on two connections:
    together they take each queued job once, and every one runs once and succeeds."""
    from skiplock.runtime.producer import claim_parts

    assert claim_parts(401) == [201, 200] and claim_parts(200) == [200]

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await enqueue_many(conn, [JobSpec("echo", {"message": str(i)}) for i in range(1500)], registry=reg)
        await asyncio.wait_for(Worker(db_url, registry=reg, burst=True, concurrency=401, poll_interval=0.02).run(),
                               timeout=60)

    run(go())
    states = pg_conn.execute("SELECT state::text, attempt, count(*) FROM skiplock.jobs GROUP BY 1, 2").fetchall()
    claims = pg_conn.execute("SELECT count(*), count(DISTINCT job_id) FROM skiplock.job_timeline"
                             " WHERE state = 'running'").fetchone()
    pg_conn.commit()
    assert states == [("succeeded", 1, 1500)]
    assert claims == (1500, 1500)


def test_an_idle_worker_claims_once_per_pickup(db_url, pg_conn, reg, monkeypatch):
    """A claim that found fewer jobs than free slots found all there were: the next claim waits
    for a NOTIFY (an idle worker used to send an empty claim right after each pickup, ahead
    of the handler's start)."""
    results: list[int] = []
    real = job_queries.claim_batch

    async def counting(conn: Any, **kw: Any) -> Any:
        jobs = await real(conn, **kw)
        results.append(len(jobs))
        return jobs

    monkeypatch.setattr(job_queries, "claim_batch", counting)

    async def go() -> None:
        w = Worker(db_url, registry=reg, concurrency=10, poll_interval=30)
        runner = asyncio.create_task(w.run())
        while not results:  # the start-up claim
            await asyncio.sleep(0.01)
        for i in range(5):
            await submit(db_url, reg, "echo", {"message": str(i)})
            await asyncio.sleep(0.15)
        w.request_stop()
        await asyncio.wait_for(runner, timeout=30)

    run(go())
    done = pg_conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'").fetchone()
    pg_conn.commit()
    assert done == (5,)
    first = next(i for i, n in enumerate(results) if n)  # before it: start-up and listener-ready claims
    assert results[first:] == [1] * 5, results


def test_a_claim_whose_answer_was_lost_gives_its_jobs_back_at_once(db_url, pg_conn, reg, monkeypatch):
    """The claim commits but its answer never arrives (as when the server crashes between the
    two): the worker holds rows it never started. After the failure it gives them back to the
    queue with the attempt returned, so they run at once, not after the lease (60 s here) as if
    the worker had died."""
    real = job_queries.claim_batch
    lost: list[list[uuid.UUID]] = []

    async def answer_lost_once(conn: Any, **kw: Any) -> Any:
        jobs = await real(conn, **kw)
        if jobs and not lost:
            lost.append([j.id for j in jobs])
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return jobs

    monkeypatch.setattr(job_queries, "claim_batch", answer_lost_once)

    async def go() -> uuid.UUID:
        job = await submit(db_url, reg, "echo", {"message": "once"})
        w = Worker(db_url, registry=reg, concurrency=5, lease_seconds=60, poll_interval=0.05)
        runner = asyncio.create_task(w.run())
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for _ in range(200):  # 10 s at most
                cur = await conn.execute("SELECT state FROM skiplock.jobs WHERE id = %s", (job,))
                if (await cur.fetchone()) == ("succeeded",):
                    break
                await asyncio.sleep(0.05)
        w.request_stop()
        await asyncio.wait_for(runner, timeout=30)
        return job

    job = run(go())
    assert lost == [[job]]
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"], row["result"]) == ("succeeded", 1, {"message": "once"})
    assert history(pg_conn, job) == ["queued", "running", "queued", "running", "succeeded"]


def test_leases_of_finished_jobs_are_renewed_until_their_acknowledgement_lands(db_url, pg_conn, reg, monkeypatch):
    """The handler finished but the database refuses the acknowledgement for twice the lease:
    the heartbeat keeps renewing the job's lease meanwhile, so the rescuer leaves it alone and
    the job succeeds once, at attempt 1 (not rescued and run again as if the worker had died)."""
    real = job_queries.finish_many_if_held
    refuse_until: list[float] = []

    async def refusing(conn: Any, **kw: Any) -> Any:
        if not refuse_until:
            refuse_until.append(time.monotonic() + 3.0)
        if time.monotonic() < refuse_until[0]:
            raise psycopg.OperationalError("the database is away")
        return await real(conn, **kw)

    monkeypatch.setattr(job_queries, "finish_many_if_held", refusing)

    async def go() -> uuid.UUID:
        job = await submit(db_url, reg, "echo", {"message": "kept"})
        w = Worker(db_url, registry=reg, concurrency=5, lease_seconds=1.5, heartbeat_seconds=0.3,
                   rescue_interval=0.2, poll_interval=0.05)
        runner = asyncio.create_task(w.run())
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for _ in range(300):  # 15 s at most
                cur = await conn.execute("SELECT state FROM skiplock.jobs WHERE id = %s", (job,))
                if (await cur.fetchone()) == ("succeeded",):
                    break
                await asyncio.sleep(0.05)
        w.request_stop()
        await asyncio.wait_for(runner, timeout=30)
        return job

    job = run(go())
    assert refuse_until, "the acknowledgement was never attempted"
    row = job_row(pg_conn, job)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert history(pg_conn, job) == ["queued", "running", "succeeded"]


def test_a_worker_records_its_tasks_so_sql_submitters_get_their_defaults(db_url, pg_conn, reg):
    """A psql session imports no task code: skiplock.enqueue finds the defaults the worker recorded."""
    @task(name="nightly", queue="reports", priority="high", max_attempts=6, timeout=9.0, registry=reg)
    async def nightly(day: str) -> str:
        return day

    run(drain(db_url, reg))
    row = pg_conn.execute("SELECT queue, priority, max_attempts, timeout, args_schema->'required' "
                          "FROM skiplock.tasks WHERE name = 'nightly'").fetchone()
    assert row == ("reports", 0, 6, 9.0, ["day"])
    job = pg_conn.execute("SELECT skiplock.enqueue('nightly', '{\"day\": \"mon\"}')").fetchone()[0]
    pg_conn.commit()
    assert job_row(pg_conn, job)["queue"] == "reports"
    run(drain(db_url, reg))
    r = job_row(pg_conn, job)
    assert (r["state"], r["max_attempts"], r["timeout"], r["result"]) == ("succeeded", 6, 9.0, "mon")
