"""A Prometheus scrape of a real API process while a real worker process drains a backlog:
depth falls and the counters rise, read from the database (the API runs no job)."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.embedded_pg import free_port
from tests.acceptance.procs import skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

JOBS = 300


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(text):  # the client library's own parser accepts it
        for s in family.samples:
            if s.name == "skiplock_queue_jobs" and s.labels["queue"] == "default":
                got[s.labels["state"]] = s.value
            elif s.name == "skiplock_jobs_finished_total" and s.labels["task"] == "sleep":
                got[s.labels["state"]] = s.value
            elif s.name in ("skiplock_workers_live", "skiplock_job_run_seconds_count"):
                got[s.name] = s.value
    return got


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


def test_a_scrape_during_a_drain_shows_depth_falling_and_counters_rising(db_url: str, tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start(["api", "--port", str(port)], skiplock_env(db_url), tmp_path / "api.log")
    worker = None
    try:
        wait_for(lambda: _up(base), 60, "the API")
        scrape(base)  # the first scrape starts the counters
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("SELECT skiplock.enqueue('sleep', '{\"seconds\": 0.1}') FROM generate_series(1, %s)", (JOBS,))
        before = scrape(base)
        assert before["ready"] == JOBS and before.get("succeeded", 0) == 0
        worker = start(["worker", "--concurrency", "5"], skiplock_env(db_url, poll_interval=0.2),
                       tmp_path / "worker.log")
        seen = [before]

        def drained() -> bool:
            seen.append(scrape(base))
            return seen[-1].get("succeeded") == JOBS and seen[-1]["ready"] + seen[-1]["running"] == 0

        wait_for(drained, 120, "the scrape to show every job succeeded", interval=0.3)
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    depth = [s["ready"] + s["running"] for s in seen]
    done = [s.get("succeeded", 0) for s in seen]
    assert all(a >= b for a, b in zip(depth, depth[1:], strict=False)), depth  # depth only falls
    assert all(a <= b for a, b in zip(done, done[1:], strict=False)), done  # counters only rise
    assert any(0 < d < JOBS for d in depth) and any(0 < n < JOBS for n in done), (depth, done)  # seen mid-drain
    assert any(s.get("skiplock_workers_live") == 1 for s in seen)
    assert seen[-1]["skiplock_job_run_seconds_count"] == JOBS
    print(f"\nmetrics drain: {len(seen)} scrapes; depth {depth[0]:.0f} -> {depth[-1]:.0f}, "
          f"succeeded {done[0]:.0f} -> {done[-1]:.0f}")
