"""Skiplock's workloads: enqueue (one per transaction, bulk), drain, pickup latency, backlog
depth, many queues with mixed priorities, and worker memory."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from skiplock import JobSpec, enqueue, enqueue_many
from skiplock.job import QUEUE_RE

from . import tasks as _tasks  # noqa: F401 - registers the bench's task handlers
from .env import Server, execute, rss_mb, sample_drain, scalar, skiplock_worker, stop

DONE = "SELECT count(*) FROM skiplock.jobs WHERE finished_at IS NOT NULL"


def enqueue_one_per_tx(url: str, n: int) -> float:
    """Jobs/s through `enqueue()`: one job per call, each its own transaction, one connection."""

    async def go() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            for _ in range(20):  # warm: first statements, prepared statements
                await enqueue(c, "noop", {})
            t = time.perf_counter()
            for _ in range(n):
                await enqueue(c, "noop", {})
            return n / (time.perf_counter() - t)

    return asyncio.run(go())


def enqueue_bulk(url: str, n: int, per_call: int = 10_000) -> float:
    """Jobs/s through `enqueue_many()`, `per_call` jobs per call (one transaction each)."""

    async def go() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            await enqueue_many(c, [JobSpec("noop") for _ in range(100)])
            t = time.perf_counter()
            for _ in range(n // per_call):
                await enqueue_many(c, [JobSpec("noop") for _ in range(per_call)])
            return n // per_call * per_call / (time.perf_counter() - t)

    return asyncio.run(go())


def load(url: str, n: int, *, queues: int = 1, mixed_priorities: bool = False, queue: str = "default") -> None:
    """Queue `n` no-op jobs with one INSERT … SELECT generate_series, then VACUUM ANALYZE, as a
    settled backlog would be. No NOTIFY per row (skiplock.notify = 'deferred', as the engine's
    own inserts): no worker is listening yet."""
    if not QUEUE_RE.match(queue):
        raise ValueError(f"bad queue name {queue!r}")
    queue = f"'q' || (g % {int(queues)})::text" if queues > 1 else f"'{queue}'"
    prio = "(g % 3)::smallint" if mixed_priorities else "1::smallint"
    execute(url, f"WITH quiet AS (SELECT set_config('skiplock.notify', 'deferred', true)) "
                 f"INSERT INTO skiplock.jobs (task, queue, priority) SELECT 'noop', {queue}, {prio} "
                 f"FROM generate_series(1, {int(n)}) g, quiet",
            "VACUUM ANALYZE skiplock.jobs", "VACUUM ANALYZE skiplock.job_history")


def drain(server: Server, logdir: Path, n: int, *, concurrency: int, processes: int = 1, queues: int = 1,
          mixed_priorities: bool = False, backlog: int | None = None, max_running: int | None = None,
          **settings: Any) -> dict[str, Any]:
    """Steady-state jobs/s while `processes` burst workers drain `n` queued jobs (or, with
    `backlog`, the first `n` of `backlog` queued jobs); with `max_running`, the queue (a
    single queue, `default`) has that limit."""
    name = f"drain{n}c{concurrency}p{processes}"
    with server.database(name) as url:
        load(url, backlog or n, queues=queues, mixed_priorities=mixed_priorities)
        if max_running is not None:
            execute(url, f"INSERT INTO skiplock.queues (name, max_running) VALUES ('default', {int(max_running)})")
        procs = [skiplock_worker(url, logdir / f"{name}.{i}.log", concurrency=concurrency,
                                 burst=backlog is None, **settings) for i in range(processes)]
        try:
            d = sample_drain(url, DONE, n, procs, rss_of=procs[0].pid if processes == 1 else None)
        finally:
            for p in procs:
                stop(p)
        result = {"rate": d.rate(), "concurrency": concurrency, "processes": processes}
        if backlog is None:
            failed = scalar(url, "SELECT count(*) FROM skiplock.jobs WHERE state <> 'succeeded'")
            result["not_succeeded"] = failed
        if d.rss:
            result["rss_mb"] = [round(r, 1) for _, r in d.rss]
        return result


def flow(server: Server, logdir: Path, n: int, *, concurrency: int, reps: int) -> dict[str, Any]:
    """The cost of a limit that does not bind: drains of one queue with max_running at 10x the
    worker's concurrency beside the same drain without a limit, alternating, medians of `reps`."""
    limited: list[float] = []
    free: list[float] = []
    for _ in range(reps):
        free.append(drain(server, logdir, n, concurrency=concurrency)["rate"])
        limited.append(drain(server, logdir, n, concurrency=concurrency, max_running=10 * concurrency)["rate"])
    return {"concurrency": concurrency, "max_running": 10 * concurrency, "no_limit": statistics.median(free),
            "max_running_rate": statistics.median(limited)}


def latency(server: Server, logdir: Path, *, n: int = 500, gap: float = 0.02, warmup: int = 20,
            concurrency: int = 10) -> dict[str, Any]:
    """Pickup latency of an idle worker: from just before the enqueue call (its own
    transaction) to the start of the handler, in another process."""
    out = logdir / "latency-skiplock.txt"
    out.unlink(missing_ok=True)
    with server.database("latency") as url:
        proc = skiplock_worker(url, logdir / "latency.log", concurrency=concurrency, burst=False,
                               extra_env={"BENCH_LATENCY_FILE": str(out)})
        try:
            _wait_idle(url)

            async def go() -> None:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
                    for i in range(warmup + n):
                        await asyncio.sleep(gap)
                        await enqueue(c, "latency", {"t0": time.time()})
                        if i == warmup - 1:
                            await asyncio.sleep(0.5)
                            out.write_text("")

            asyncio.run(go())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(_lines(out)) < n:
                time.sleep(0.05)
            db_side = scalar(url, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY "
                                  "extract(epoch FROM started_at - created_at) * 1000) FROM skiplock.jobs")
        finally:
            stop(proc)
    values = sorted(float(x) * 1000 for x in _lines(out))
    return {**percentiles(values), "db_p50": round(db_side, 3)}


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_idle(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while scalar(url, "SELECT count(*) FROM skiplock.workers") == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not start")
        time.sleep(0.05)
    time.sleep(1.0)  # its listener connects right after it registers


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3),
            "max": round(values[-1], 3)}


def memory(server: Server, logdir: Path, *, n: int = 100_000, concurrency: int = 100) -> dict[str, Any]:
    """Worker RSS while it drains `n` no-op jobs at `concurrency`."""
    r = drain(server, logdir, n, concurrency=concurrency)
    rss = r.get("rss_mb", [])
    if not rss:
        return {"max_mb": None}
    quarter = max(1, len(rss) // 4)
    return {"max_mb": max(rss), "first_quarter_mb": max(rss[:quarter]), "last_quarter_mb": max(rss[-quarter:]),
            "samples": len(rss), "rate": r["rate"]}


__all__ = ["drain", "enqueue_bulk", "enqueue_one_per_tx", "flow", "latency", "load", "memory", "rss_mb"]


def _wait_http(port: int, proc: Any, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()  # noqa: S310
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the server did not start (see {log})") from None
            time.sleep(0.1)


def _http_load(port: int, url: str, path: str, conc: int, count: int, body: Any) -> dict[str, Any]:
    import json as _json
    import subprocess
    import sys

    from .env import ROOT, skiplock_env

    out = subprocess.run([sys.executable, "-m", "bench.http_load", str(port), path, str(conc), str(count),
                          _json.dumps(body)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env=skiplock_env(url))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = _json.loads(out.stdout)
    return result


def http(server: Server, logdir: Path, *, clients: int = 32, n: int = 6400, bulk_jobs: int = 1000,
         bulk_requests: int = 20) -> dict[str, Any]:
    """POST /jobs from `clients` keep-alive connections, and POST /jobs/bulk (`bulk_jobs` a
    request, 4 clients), against `python -m app api` (one process, defaults); then the same
    POST /jobs load against an empty Starlette endpoint served the same way (bench/empty_app.py),
    the framework's own ceiling on this machine."""
    import sys

    from app.embedded_pg import free_port

    from .env import skiplock_env, spawn

    body = {"task": "noop", "args": {}}
    port = free_port()
    with server.database("http") as url:
        log = logdir / "api.log"
        api = spawn([sys.executable, "-m", "app", "api", "--port", str(port)], skiplock_env(url), log)
        try:
            _wait_http(port, api, log)
            _http_load(port, url, "/jobs", clients, clients * 10, body)  # warm up
            one = _http_load(port, url, "/jobs", clients, n, body)
            bulk = _http_load(port, url, "/jobs/bulk", 4, bulk_requests, {"jobs": [body] * bulk_jobs})
            bulk["rate"] *= bulk_jobs
        finally:
            stop(api)
        port = free_port()
        log = logdir / "empty_app.log"
        empty = spawn([sys.executable, "-m", "bench.empty_app", str(port)], skiplock_env(url), log)
        try:
            _wait_http(port, empty, log)
            _http_load(port, url, "/jobs", clients, clients * 10, body)
            ceiling = _http_load(port, url, "/jobs", clients, n, body)
        finally:
            stop(empty)
    return {"post_jobs": one, "post_bulk": bulk, "empty_post": ceiling}


def latency_floor(server: Server, logdir: Path, *, n: int = 500, gap: float = 0.02, warmup: int = 20) -> dict[str, Any]:
    """The physical floor of pickup latency (bench/floor_latency.py), measured as `latency` is."""
    import sys

    from .env import skiplock_env, spawn
    from .floor_latency import ENQUEUE, TABLE

    out = logdir / "latency-floor.txt"
    out.unlink(missing_ok=True)
    with server.database("latency_floor", template=None) as url:
        execute(url, TABLE)
        proc = spawn([sys.executable, "-m", "bench.floor_latency", "listen", url, str(out)], skiplock_env(url),
                     logdir / "latency-floor.log")
        try:
            deadline = time.monotonic() + 30
            while "ready" not in _lines(out):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the floor listener did not start")
                time.sleep(0.05)
            with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
                for i in range(warmup + n):
                    time.sleep(gap)
                    c.execute(ENQUEUE, (time.time(),)).fetchall()
                    if i == warmup - 1:
                        time.sleep(0.5)
                        out.write_text("")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(_lines(out)) < n:
                time.sleep(0.05)
        finally:
            stop(proc)
    return percentiles(sorted(float(x) * 1000 for x in _lines(out) if x != "ready"))
