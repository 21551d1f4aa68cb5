"""What one GET /metrics costs against a million-row jobs table (docs/performance.md, Metrics).

    .venv/bin/python -m bench.metrics_cost [--rows 1000000]

Two tables of `rows` jobs in a scratch cluster: a history of finished jobs (7 days of them,
a small backlog waiting) and a backlog of waiting jobs. For each: the first scrape (the
counters' baseline), a steady scrape whose window holds 15 s of finished jobs at 1,000/s,
and the same through the HTTP endpoint (collect + render), medians of 5."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import psycopg

import app.tasks  # noqa: F401 - registers the example tasks
from app.embedded_pg import scratch_database
from app.http import create_app
from app.settings import Settings
from skiplock import db
from skiplock.metrics import JobMetrics

FINISHED_SQL = """
INSERT INTO skiplock.jobs (task, queue, state, attempt, args, run_at, created_at, started_at, finished_at, worker_id)
SELECT 'task' || (g %% 20), 'q' || (g %% 10), s.state::skiplock.job_state, 1, '{}', f - interval '2 s',
       f - interval '2 s', f - interval '1 s', f, 'w'
  FROM generate_series(1, %(n)s) g,
       LATERAL (SELECT %(now)s::timestamptz - make_interval(secs => (%(n)s - g) * %(spread)s::float8) AS f) t,
       LATERAL (SELECT CASE WHEN g %% 25 = 0 THEN 'failed' WHEN g %% 100 = 1 THEN 'cancelled'
                            ELSE 'succeeded' END AS state) s
"""
QUEUED_SQL = """
INSERT INTO skiplock.jobs (task, queue, args, run_at)
SELECT 'task' || (g %% 20), 'q' || (g %% 10), '{}', %(now)s::timestamptz - make_interval(secs => g %% 600)
  FROM generate_series(1, %(n)s) g
"""
HISTORY_SQL = """
INSERT INTO skiplock.job_history (job_id, state, at, attempt, worker_id, error)
SELECT j.id, 'queued', j.finished_at - interval '1.5 s', 1, 'w', 'Traceback: boom'
  FROM skiplock.jobs j WHERE j.state = 'succeeded' AND j.finished_at IS NOT NULL
 ORDER BY j.finished_at LIMIT %(n)s
"""


def load(url: str, *, finished: int, queued: int, now: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET session_replication_role = replica")  # bulk load: no triggers
        if finished:
            # 15 s at 1,000/s at the end, the rest spread over 7 days
            recent = min(15_000, finished)
            c.execute(FINISHED_SQL, {"n": finished - recent, "now": now - timedelta(seconds=15),
                                     "spread": 7 * 86400 / max(1, finished - recent)})
            c.execute(FINISHED_SQL, {"n": recent, "now": now, "spread": 0.001})
            c.execute(HISTORY_SQL, {"n": finished // 10})
        if queued:
            c.execute(QUEUED_SQL, {"n": queued, "now": now})
        c.execute("VACUUM ANALYZE skiplock.jobs")
        c.execute("VACUUM ANALYZE skiplock.job_history")


async def measure(url: str, now: datetime) -> dict[str, float]:
    pool = db.make_pool(url, max_size=2)
    await pool.open(wait=True)
    out: dict[str, list[float]] = {"first": [], "steady": [], "http": []}
    try:
        for _ in range(5):
            metrics = JobMetrics(pool.connection, live_seconds=30)
            t0 = time.perf_counter()
            await metrics.collect(now=now - timedelta(seconds=15))
            out["first"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            snap = await metrics.collect(now=now + timedelta(seconds=3))  # the window: the last 15 s
            out["steady"].append(time.perf_counter() - t0)
            assert sum(snap.finished.values()) >= 14_000 or sum(snap.finished.values()) == 0, snap.finished
    finally:
        await pool.close()
    api = create_app(Settings(database_url=url))
    async with api.router.lifespan_context(api):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://localhost") as c:
            await c.get("/metrics")
            for _ in range(5):
                t0 = time.perf_counter()
                r = await c.get("/metrics")
                out["http"].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    return {k: statistics.median(v) * 1000 for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    n = p.parse_args().rows
    now = datetime.now(UTC)
    for name, finished, queued in (("finished history", n - n // 20, n // 20), ("waiting backlog", 0, n)):
        with scratch_database("skiplock-metrics-cost-") as (_, url):
            t0 = time.perf_counter()
            load(url, finished=finished, queued=queued, now=now)
            loaded = time.perf_counter() - t0
            ms = asyncio.run(measure(url, now))
            print(f"{name}: {finished:,} finished + {queued:,} waiting (loaded in {loaded:.0f} s): "
                  f"first scrape {ms['first']:.1f} ms, steady scrape (15k finished in its window) "
                  f"{ms['steady']:.1f} ms, GET /metrics {ms['http']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
