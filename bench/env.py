"""The bench's surroundings: a private PostgreSQL cluster (started the same way as the
tests'), one fresh database per workload cloned from a migrated template, worker processes,
and a sampler that turns a "jobs done" counter into a steady-state rate."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from app import migrate
from app.embedded_pg import Cluster, free_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "bench_template"


class Server:
    """One PostgreSQL server for the whole run; every system under test uses it."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="skiplock-bench-"))
        self.cluster = Cluster(self.home, port=free_port())
        self._n = 0

    def start(self) -> None:
        self.cluster.start()
        self.cluster.create_database(TEMPLATE)
        migrate.upgrade(self.url(TEMPLATE))

    def stop(self) -> None:
        self.cluster.destroy()

    def url(self, dbname: str) -> str:
        return self.cluster.url(dbname)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres"), autocommit=True)

    @contextmanager
    def database(self, name: str, *, template: str | None = TEMPLATE) -> Iterator[str]:
        """A fresh database (a clone of the migrated template, or empty), dropped afterwards."""
        self._n += 1
        db = f"b{self._n}_{name}"[:60]
        with self.admin() as c:
            if template:
                c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(db),
                                                                            sql.Identifier(template)))
            else:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        try:
            yield self.url(db)
        finally:
            with self.admin() as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            checkpoint(self)


def checkpoint(server: Server) -> None:
    """Start every workload from the same place: no checkpoint owed from the last one."""
    with server.admin() as c:
        c.execute("CHECKPOINT")


def scalar(url: str, query: Any, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
        return row[0] if row else None


def execute(url: str, *queries: Any) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for q in queries:
            c.execute(q)


# -- processes -------------------------------------------------------------------------------

def skiplock_env(url: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=url, SKIPLOCK_TASKS="bench.tasks", SKIPLOCK_LOG_LEVEL="WARNING",
               PYTHONPATH=str(ROOT))
    env.update({f"SKIPLOCK_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def skiplock_worker(url: str, log: Path, *, concurrency: int, burst: bool = True,
                    extra_env: dict[str, str] | None = None, **settings: Any) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "app", "worker", "--concurrency", str(concurrency)]
    if burst:
        cmd.append("--burst")
    return spawn(cmd, {**skiplock_env(url, **settings), **(extra_env or {})}, log)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- measuring a drain ------------------------------------------------------------------------

@dataclass
class Drain:
    """Samples of (seconds, jobs done) while workers drain `total` jobs."""

    total: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)

    def rate(self, lo: float = 0.05, hi: float = 0.95) -> float:
        """Steady-state jobs/s: the slope between the moments `lo` and `hi` of the jobs were
        done (interpolated between samples), so process start-up and the tail do not count."""
        t_lo = self._crossing(lo * self.total)
        t_hi = self._crossing(hi * self.total)
        if t_lo is None or t_hi is None or t_hi <= t_lo:
            done = [s for s in self.samples if s[1] > 0]
            if len(done) < 2:
                return 0.0
            (t0, n0), (t1, n1) = done[0], done[-1]
            return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return (hi - lo) * self.total / (t_hi - t_lo)

    def _crossing(self, target: float) -> float | None:
        prev: tuple[float, int] | None = None
        for t, n in self.samples:
            if n >= target:
                if prev is None or n == prev[1]:
                    return t
                t0, n0 = prev
                return t0 + (t - t0) * (target - n0) / (n - n0)
            prev = (t, n)
        return None


def sample_drain(url: str, done_query: str, total: int, procs: list[subprocess.Popen[bytes]], *,
                 timeout: float = 300, interval: float = 0.1, stop_at: int | None = None,
                 rss_of: int | None = None) -> Drain:
    """Poll `done_query` (one integer) until `stop_at` (default: total) jobs are done, every
    process exited, or `timeout`."""
    d = Drain(total if stop_at is None else stop_at)
    target = d.total
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as c:
        while True:
            t = time.monotonic() - start
            n = int(c.execute(done_query).fetchone()[0])  # type: ignore[index]
            d.samples.append((t, n))
            if rss_of is not None:
                r = rss_mb(rss_of)
                if r is not None:
                    d.rss.append((t, r))
            if n >= target or t > timeout or all(p.poll() is not None for p in procs):
                return d
            time.sleep(interval)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
