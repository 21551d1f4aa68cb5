"""Retention: the pruner (skiplock/runtime/pruner.py: Pruner, sql prune_finished) deletes finished
jobs and their history once they are older than the retention, a small batch per statement,
and never a queued or running job, however old. Several pruners at once (every worker runs
one) share the work through SKIP LOCKED without errors or double counting. A real worker
prunes when it starts, and `skiplock prune` does it from the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from skiplock import db
from skiplock.queries import jobs as job_queries
from skiplock.runtime.pruner import Pruner
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet, worker_env
from tests.acceptance.procs import cli, wait_for

DAY = 86400.0


def seed(url: str) -> None:
    """300 old finished jobs (100 per terminal state, 2 history rows each), 50 finished an hour
    ago, and 40 queued/running jobs whose timestamps are older than anything (finished_at too,
    which no real transition leaves behind: it proves the state guard, not the timestamp)."""
    with psycopg.connect(url, autocommit=True) as c, c.transaction():
        # Finished and running rows loaded directly: the insert guard is off for this transaction only.
        c.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER jobs_insert_queued")
        c.execute("""
            INSERT INTO skiplock.jobs (task, state, attempt, created_at, finished_at, worker_id, lease_expires_at,
                                       run_at)
            SELECT 'echo', s.state, 1, now() - interval '10 days', now() - f.age, NULL::text, NULL::timestamptz,
                   now() - interval '10 days'
              FROM (VALUES ('succeeded'::skiplock.job_state), ('failed'), ('cancelled')) s(state),
                   (VALUES (interval '3 days')) f(age), generate_series(1, 100)
            UNION ALL
            SELECT 'echo', 'succeeded', 1, now() - interval '2 hours', now() - interval '1 hour', NULL, NULL,
                   now() - interval '2 hours'
              FROM generate_series(1, 50)
            UNION ALL
            SELECT 'echo', 'queued', 0, now() - interval '30 days', now() - interval '30 days', NULL, NULL,
                   now() + interval '1 year'  -- scheduled: no worker may run it during the test
              FROM generate_series(1, 20)
            UNION ALL
            SELECT 'echo', 'running', 1, now() - interval '30 days', now() - interval '30 days', 'gone-worker',
                   now() + interval '1 hour', now() - interval '30 days'
              FROM generate_series(1, 20)""")
        c.execute("""INSERT INTO skiplock.job_history (job_id, state, attempt)
                     SELECT id, x.state, 1 FROM skiplock.jobs,
                            (VALUES ('running'::skiplock.job_state), ('succeeded')) x(state)""")
        c.execute("ALTER TABLE skiplock.jobs ENABLE TRIGGER jobs_insert_queued")


def counts(url: str) -> dict[str, int]:
    return dict(rows(url, """SELECT CASE WHEN state IN ('queued', 'running') THEN 'live'
                                         WHEN finished_at > now() - interval '1 day' THEN 'recent' ELSE 'old' END,
                                    count(*) FROM skiplock.jobs GROUP BY 1"""))


def orphans(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM skiplock.job_history h WHERE NOT EXISTS"
                           " (SELECT 1 FROM skiplock.jobs j WHERE j.id = h.job_id)"))


def test_pruner_deletes_old_finished_jobs_in_small_batches_and_never_live_ones(db_url: str) -> None:
    seed(db_url)
    assert counts(db_url) == {"old": 300, "recent": 50, "live": 40}
    history_before = scalar(db_url, "SELECT count(*) FROM skiplock.job_history")

    async def go() -> tuple[int, list[int]]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            one = await job_queries.prune_finished(conn, older_than_seconds=DAY, limit=7)
        pools = [db.make_pool(db_url, min_size=1, max_size=2) for _ in range(3)]
        for p in pools:
            await p.open()
        try:
            pruners = [Pruner(p, interval=60, retention_seconds=DAY, batch=20) for p in pools]
            totals = await asyncio.gather(*(pr.run_once() for pr in pruners))
        finally:
            for p in pools:
                await p.close()
        return one, list(totals)

    one, totals = asyncio.run(go())
    assert one == 7, "one statement deletes at most its batch"
    assert sum(totals) == 300 - 7, totals  # three pruners at once: all of it, nothing twice
    assert counts(db_url) == {"recent": 50, "live": 40}
    assert orphans(db_url) == 0
    # every job lost its 2 history rows, nothing else went
    assert scalar(db_url, "SELECT count(*) FROM skiplock.job_history") == history_before - 300 * 2

    # time is a parameter: two days from now, the recent ones are old enough; live ones never are
    async def later() -> int:
        now = scalar(db_url, "SELECT now()") + timedelta(days=2)
        pool = db.make_pool(db_url, min_size=1, max_size=1)
        await pool.open()
        try:
            return await Pruner(pool, interval=60, retention_seconds=DAY, batch=8).run_once(now=now)
        finally:
            await pool.close()

    assert asyncio.run(later()) == 50
    assert counts(db_url) == {"live": 40}
    assert scalar(db_url, "SELECT count(*) FROM skiplock.job_history") == 40 * 2


def test_worker_prunes_on_start_and_cli_prunes_on_demand(db_url: str, make_fleet: Callable[..., Fleet]) -> None:
    seed(db_url)
    fleet = make_fleet(db_url, retention_seconds=DAY)
    fleet.start(wait=False)  # the pruner runs once at start, then every prune interval
    wait_for(lambda: counts(db_url).get("old", 0) == 0, 30, "the worker to prune the old finished jobs")
    assert counts(db_url) == {"recent": 50, "live": 40}
    assert fleet.stop_all() == {"w1": 0}
    env: dict[str, Any] = worker_env(db_url)
    out = cli(["prune", "--older-than", "60"], env).stdout
    assert "pruned 50 finished jobs" in out
    assert counts(db_url) == {"live": 40} and orphans(db_url) == 0
