"""`make soak`: a steady submit + work load for a long time (10 minutes by default), to show
that nothing degrades: per minute it prints throughput, pickup latency percentiles (claim
time minus due time), and the dead tuples and table/index sizes of the queue tables.

    python -m bench.soak [--minutes 10] [--rate 200] [--workers 2] [--concurrency 20]
                         [--retention 60] [--url postgresql://...]

Without --url (or DATABASE_URL) it starts a private PostgreSQL cluster of its own (as the
tests do), migrates it, and removes it at the end. Workers are real `python -m app worker`
processes; they prune finished jobs older than --retention seconds (their pruner runs at
start and then every 60 s), which is what keeps the jobs table bounded.

At the end it checks: last-minute throughput >= 90% of the first minute's; last-minute p99
pickup latency <= 1.5x the first minute's; the jobs table (heap + indexes) in the last
minute no larger than 1.25x its largest size up to minute 3 (by then pruning is steady).
Exit status 1 if a check fails. Standalone: imports nothing else from bench/.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from app import migrate
from app.embedded_pg import scratch_database

ROOT = Path(__file__).resolve().parent.parent
LAG = 2.0  # seconds: a window is read this long after it closes, so late commits are in it

STATS = """
SELECT c.relname, s.n_live_tup, s.n_dead_tup, pg_relation_size(c.oid), pg_indexes_size(c.oid),
       s.autovacuum_count, s.autoanalyze_count
  FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE s.schemaname = 'skiplock' AND c.relname IN ('jobs', 'job_history')"""

SAMPLE = 5.0  # seconds between samples

# Jobs finished, and pickup latencies (claim time - due time) of jobs claimed, in [a, b), by
# minute of the run. Read a few seconds behind real time (LAG) and long before the pruner
# could delete them (retention >> LAG + SAMPLE).
WINDOW = """
SELECT floor(extract(epoch FROM finished_at - %(t0)s) / 60)::int, count(*), 0, NULL::float8[]
  FROM skiplock.jobs WHERE finished_at >= %(a)s AND finished_at < %(b)s GROUP BY 1
UNION ALL
SELECT floor(extract(epoch FROM created_at - %(t0)s) / 60)::int, 0, count(*), NULL::float8[]
  FROM skiplock.jobs WHERE created_at >= %(a)s AND created_at < %(b)s GROUP BY 1
UNION ALL
SELECT floor(extract(epoch FROM started_at - %(t0)s) / 60)::int, 0, 0,
       array_agg(extract(epoch FROM started_at - run_at)::float8)
  FROM skiplock.jobs WHERE started_at >= %(a)s AND started_at < %(b)s GROUP BY 1"""


@dataclass
class Minute:
    done: int = 0
    submitted: int = 0
    latencies: list[float] = field(default_factory=list)
    tables: dict[str, tuple[int, int, int, int, int, int]] = field(default_factory=dict)
    max_jobs_bytes: int = 0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        migrate.upgrade(url)
        yield url
        return
    with scratch_database("skiplock-soak-") as (_, scratch_url):
        yield scratch_url


class Submitter(threading.Thread):
    """Submits `rate` jobs per second in ten small statements a second: 90% `echo`, 10% `sleep`
    for 20 ms (which reports progress, so handlers also write while they run)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(name="soak-submit", daemon=True)
        self.url = url
        self.rate = rate
        self.halt = threading.Event()

    def run(self) -> None:
        rand = random.Random(42)
        tick = 0.1
        owed = 0.0
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_at = time.monotonic()
            while not self.halt.is_set():
                owed += self.rate * tick
                n, owed = int(owed), owed - int(owed)
                specs = [("sleep", {"seconds": 0.02}) if rand.random() < 0.1 else ("echo", {"message": str(i)})
                         for i in range(n)]
                if specs:
                    conn.execute("SELECT skiplock.enqueue(t, a) FROM unnest(%s::text[], %s::jsonb[]) AS x(t, a)",
                                 ([t for t, _ in specs], [Jsonb(a) for _, a in specs]))
                next_at += tick
                self.halt.wait(max(0.0, next_at - time.monotonic()))


def start_workers(url: str, n: int, concurrency: int, retention: float, logdir: Path) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    env.update(DATABASE_URL=url, PYTHONPATH=str(ROOT), SKIPLOCK_CONCURRENCY=str(concurrency),
               SKIPLOCK_RETENTION_SECONDS=str(retention), SKIPLOCK_LOG_LEVEL="WARNING")
    return [subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=ROOT, env=env,
                             stdout=open(logdir / f"worker{i}.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
            for i in range(n)]


def fmt_bytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f}MB"


def print_minute(i: int, m: Minute) -> None:
    j = m.tables.get("jobs", (0,) * 6)
    h = m.tables.get("job_history", (0,) * 6)
    print(f"min {i + 1:>2}: done {m.done / 60:7.1f}/s  submitted {m.submitted / 60:7.1f}/s  "
          f"pickup p50 {m.pct(50) * 1000:6.1f}ms p95 {m.pct(95) * 1000:6.1f}ms p99 {m.pct(99) * 1000:6.1f}ms  | "
          f"jobs live {j[0]:>6} dead {j[1]:>6} heap {fmt_bytes(j[2])} idx {fmt_bytes(j[3])} av {j[4]}  | "
          f"history live {h[0]:>6} dead {h[1]:>6} heap {fmt_bytes(h[2])} idx {fmt_bytes(h[3])} av {h[4]}",
          flush=True)


def soak(url: str, minutes: float, rate: float, workers: int, concurrency: int, retention: float,
         logdir: Path) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        opts = conn.execute("SELECT relname, reloptions FROM pg_class WHERE relnamespace = 'skiplock'::regnamespace"
                            " AND relname IN ('jobs', 'job_history') ORDER BY 1").fetchall()
        naptime = conn.execute("SHOW autovacuum_naptime").fetchone()
    print(f"soak: {minutes:g} min, {rate:g} jobs/s, {workers} workers x {concurrency}, retention {retention:g}s; "
          f"autovacuum_naptime {naptime[0] if naptime else '?'}", flush=True)
    for name, o in opts:
        print(f"  {name}: {', '.join(o or [])}", flush=True)
    procs = start_workers(url, workers, concurrency, retention, logdir)
    submitter = Submitter(url, rate)
    by_minute: dict[int, Minute] = defaultdict(Minute)
    ok = False
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT count(*) FROM skiplock.workers").fetchone()[0] < workers:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise SystemExit(f"soak: workers did not register; see {logdir}")
                time.sleep(0.2)
            t0_db = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            t0 = time.monotonic()
            submitter.start()
            window_start = t0_db
            printed = -1
            while time.monotonic() - t0 < minutes * 60 + LAG + SAMPLE:
                time.sleep(SAMPLE)  # the sampling period of a load generator, not a wait for a condition
                elapsed = time.monotonic() - t0
                if elapsed >= minutes * 60:
                    submitter.halt.set()
                window_end = conn.execute("SELECT now() - make_interval(secs => %s)", (LAG,)).fetchone()[0]  # type: ignore[index]
                for minute, done, created, lat in conn.execute(WINDOW, {"t0": t0_db, "a": window_start,
                                                                        "b": window_end}):
                    by_minute[minute].done += done
                    by_minute[minute].submitted += created
                    by_minute[minute].latencies += [float(x) for x in lat or ()]
                window_start = window_end
                cur = by_minute[min(int(elapsed // 60), int(minutes) - 1)]
                cur.tables = {r[0]: tuple(r[1:]) for r in conn.execute(STATS).fetchall()}  # type: ignore[misc]
                jobs = cur.tables.get("jobs")
                if jobs:
                    cur.max_jobs_bytes = max(cur.max_jobs_bytes, jobs[2] + jobs[3])
                read_up_to = int((window_end - t0_db).total_seconds() // 60)  # minutes before this are complete
                for i in range(printed + 1, min(read_up_to, int(minutes))):
                    print_minute(i, by_minute[i])
                    printed = i
        full = [i for i in sorted(by_minute) if i < int(minutes)]
        for i in range(printed + 1, len(full)):
            print_minute(i, by_minute[i])
        if len(full) < 2:
            print("soak: run at least 2 minutes for a comparison")
            return True
        first, last = by_minute[full[0]], by_minute[full[-1]]
        early = max(by_minute[i].max_jobs_bytes for i in full[:3])
        checks = [
            ("throughput last/first minute", last.done / max(first.done, 1), ">= 0.90", last.done >= 0.9 * first.done),
            ("p99 pickup last/first minute", last.pct(99) / max(first.pct(99), 1e-9), "<= 1.50",
             last.pct(99) <= 1.5 * first.pct(99)),
            ("jobs table+indexes last minute / max up to minute 3", last.max_jobs_bytes / max(early, 1), "<= 1.25",
             last.max_jobs_bytes <= 1.25 * early),
        ]
        print(f"\nfirst minute: {first.done / 60:.1f} jobs/s, p99 {first.pct(99) * 1000:.1f}ms; last minute: "
              f"{last.done / 60:.1f} jobs/s, p99 {last.pct(99) * 1000:.1f}ms; jobs table+indexes up to minute 3 "
              f"{fmt_bytes(early)}, last minute {fmt_bytes(last.max_jobs_bytes)}")
        ok = True
        for name, value, want, passed in checks:
            print(f"  {'PASS' if passed else 'FAIL'} {name}: {value:.2f} (want {want})")
            ok = ok and passed
        return ok
    finally:
        submitter.halt.set()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    p.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "200")), help="jobs per second")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--retention", type=float, default=60.0, help="seconds finished jobs are kept")
    p.add_argument("--url", default=os.environ.get("DATABASE_URL"))
    args = p.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="skiplock-soak-logs-"))
    with database(args.url) as url:
        ok = soak(url, args.minutes, args.rate, args.workers, args.concurrency, args.retention, logdir)
    print(f"soak: {'ok' if ok else 'FAILED'} (worker logs in {logdir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
