"""Flow limits with real worker processes: a queue's max_running holds across 4 workers, also
while one is killed with SIGKILL and its jobs are rescued; a rate limit holds across 4 workers
and the queue still drains at about that rate; a limit changed while workers run takes effect
at their next claim; and a small queue is not starved by a big backlog in another queue served
by the same worker.

Concurrency is computed from the jobs' own records (chaos.ledger: a row when the handler starts
and one when it ends, timestamps from the database's clock), not from the workers' bookkeeping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
from psycopg.types.json import Jsonb

from app.http import create_app
from app.settings import Settings
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.procs import wait_for


def submit(url: str, n: int, queue: str, **args: Any) -> list[uuid.UUID]:
    return [r[0] for r in rows(url, "SELECT skiplock.enqueue('chaos.work', %s, queue => %s) "
                                    "FROM generate_series(1, %s)", (Jsonb(args), queue, n))]


def intervals(url: str, jobs: list[uuid.UUID], ended: dict[str, datetime]) -> list[tuple[datetime, datetime]]:
    """Each execution's [start, end] from the ledger. An execution whose worker was killed before
    it recorded its end ran at most until the kill (`ended[worker_id]`, read after the process
    was gone)."""
    out = []
    for _job, _attempt, worker, start, end in rows(url, """
            SELECT job_id, attempt, worker_id, min(at) FILTER (WHERE phase = 'start'),
                   min(at) FILTER (WHERE phase = 'end')
              FROM chaos.ledger WHERE job_id = ANY(%s) GROUP BY 1, 2, 3""", (jobs,)):
        if end is None:
            assert worker in ended, f"an execution on {worker} never ended, and that worker was not killed"
            end = ended[worker]
        out.append((start, end))
    return out


def peak(spans: list[tuple[datetime, datetime]], since: datetime | None = None) -> int:
    """The most executions running at one instant (at or after `since`)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = top = 0
    for at, step in events:
        now += step
        if since is None or at >= since:
            top = max(top, now)
    return top


def test_max_running_3_holds_across_4_workers_while_one_is_killed_and_rescued(
        chaos_url: str, make_fleet: Callable[..., Fleet]) -> None:
    url = chaos_url
    scalar(url, "INSERT INTO skiplock.queues (name, max_running) VALUES ('gpu', 3) RETURNING name")
    fleet = make_fleet(url, lease_seconds=30)  # the dead worker is found by its session, not its lease
    workers = [fleet.start() for _ in range(4)]
    jobs = submit(url, 200, "gpu", seconds=0.1)
    wait_for(lambda: scalar(url, "SELECT count(*) FROM chaos.ledger WHERE phase = 'end'") >= 50, 60,
             "50 jobs to finish")
    # a worker whose handler is running right now (started, not ended)
    victim = wait_for(lambda: next((w for w in workers if scalar(url, """
        SELECT count(*) FROM chaos.ledger s WHERE s.worker_id = %s AND s.phase = 'start'
           AND NOT EXISTS (SELECT 1 FROM chaos.ledger e WHERE e.job_id = s.job_id AND e.attempt = s.attempt
                             AND e.phase = 'end')""", (w.worker_id,))), None), 30, "a worker running a job",
                      interval=0.005)
    fleet.kill(victim)
    ended = {victim.worker_id: scalar(url, "SELECT clock_timestamp()")}
    wait_terminal(url, jobs, 120)
    result = audit(url, jobs, fleet.disrupted)
    result.assert_clean()
    rescued = scalar(url, "SELECT count(*) FROM skiplock.job_history WHERE worker_id = %s AND state = 'queued'",
                     (victim.worker_id,))
    spans = intervals(url, jobs, ended)
    print(f"\nmax_running 3, 4 workers, 1 killed: {len(spans)} executions, {rescued} rescued, "
          f"peak {peak(spans)} at once")
    assert rescued >= 1, "the killed worker held no job: nothing was rescued"
    assert peak(spans) == 3


def test_rate_20_per_2s_holds_across_4_workers_and_drains_near_the_rate(
        chaos_url: str, make_fleet: Callable[..., Fleet]) -> None:
    url = chaos_url
    scalar(url, "INSERT INTO skiplock.queues (name, rate_limit, rate_period) VALUES ('api', 20, '2 s') "
                "RETURNING name")
    fleet = make_fleet(url)
    for _ in range(4):
        fleet.start()
    n = 100
    jobs = submit(url, n, "api")
    wait_terminal(url, jobs, 60)
    audit(url, jobs, set()).assert_clean()
    starts: list[datetime] = sorted(r[0] for r in rows(url, "SELECT started_at FROM skiplock.jobs WHERE id = ANY(%s)",
                                                       (jobs,)))
    window = timedelta(seconds=2)
    busiest = max(sum(1 for s in starts if t <= s < t + window) for t in starts)
    # the first 20 start at once; each later 20 once the window has moved on: (n - 20) / 10 s at best
    took = (starts[-1] - starts[0]).total_seconds()
    rate = (n - 20) / took
    print(f"\nrate 20/2s, 4 workers: busiest 2 s window {busiest} starts; {n} jobs drained at {rate:.1f}/s "
          f"after the first 20 (the limit: 10/s)")
    assert busiest == 20
    assert rate >= 0.75 * 10, f"drained at {rate:.1f}/s, under 75% of the limit's 10/s"


def put(url: str, queue: str, body: dict[str, Any]) -> httpx.Response:
    api = create_app(Settings(database_url=url))

    async def go() -> httpx.Response:
        async with api.router.lifespan_context(api):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
                return await c.put(f"/queues/{queue}", json=body)

    return asyncio.run(go())


def test_a_limit_set_by_put_or_psql_takes_effect_on_running_workers(
        chaos_url: str, make_fleet: Callable[..., Fleet]) -> None:
    url = chaos_url
    fleet = make_fleet(url, concurrency=8)
    fleet.start()
    fleet.start()
    jobs = submit(url, 120, "live", seconds=0.3)
    wait_for(lambda: scalar(url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running'") >= 12, 30,
             "the workers to run more than 12 jobs at once (no limit yet)")
    assert put(url, "live", {"max_running": 2}).status_code == 200
    set_at = scalar(url, "SELECT clock_timestamp()")
    wait_for(lambda: scalar(url, "SELECT count(*) FROM chaos.ledger WHERE phase = 'start' AND at > %s",
                            (set_at,)) >= 10, 60, "10 jobs to start under the limit of 2")
    scalar(url, "UPDATE skiplock.queues SET max_running = 5 WHERE name = 'live' RETURNING name")
    raised_at = scalar(url, "SELECT clock_timestamp()")
    wait_terminal(url, jobs, 120)
    claimed_at = dict(rows(url, "SELECT id, started_at FROM skiplock.jobs WHERE id = ANY(%s)", (jobs,)))
    before = intervals(url, [j for j in jobs if claimed_at[j] < set_at], {})
    under_two = intervals(url, [j for j in jobs if claimed_at[j] < raised_at], {})
    after_two = intervals(url, [j for j in jobs if set_at < claimed_at[j] < raised_at], {})
    under_five = intervals(url, jobs, {})
    after_five = intervals(url, [j for j in jobs if claimed_at[j] > raised_at], {})
    # from the first start of a job claimed after a change, the new limit holds
    two = peak(under_two, since=min(s for s, _ in after_two))
    five = peak(under_five, since=min(s for s, _ in after_five))
    print(f"\nlive change: peak {peak(before)} before, {two} under max_running 2 (PUT), {five} under 5 (psql)")
    assert peak(before) > 5
    assert two <= 2
    assert 2 < five <= 5


def test_a_small_queue_is_not_starved_by_a_big_backlog_in_another(
        chaos_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """100,000 due jobs in `big`, then 100 in `small`, one worker of both: the small queue's jobs
    all finish while the big queue still holds nearly all of its backlog."""
    url = chaos_url
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("WITH quiet AS (SELECT set_config('skiplock.notify', 'deferred', true)) "
                  "INSERT INTO skiplock.jobs (task, args, queue) SELECT 'echo', '{\"message\": \"x\"}', 'big' "
                  "FROM generate_series(1, 100000), quiet")
        c.execute("VACUUM ANALYZE skiplock.jobs")
    small = [r[0] for r in rows(url, "SELECT skiplock.enqueue('echo', '{\"message\": \"y\"}', queue => 'small') "
                                     "FROM generate_series(1, 100)")]
    fleet = make_fleet(url, queues="big,small", concurrency=20, lease_seconds=30)
    fleet.start()
    wait_terminal(url, small, 120)
    big_left = scalar(url, "SELECT count(*) FROM skiplock.jobs WHERE queue = 'big' AND state = 'queued'")
    took = scalar(url, "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM skiplock.jobs "
                       "WHERE queue = 'small'")
    print(f"\nfair queues: the small queue's 100 jobs finished in {took:.2f}s; {big_left:,} big jobs still queued")
    assert big_left > 90_000
