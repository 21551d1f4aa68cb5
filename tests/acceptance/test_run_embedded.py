"""`skiplock run` as a newcomer uses it: no DATABASE_URL, an embedded cluster, the API, a
supervised worker; a job submitted with the CLI succeeds within a second; a worker killed
mid-job is replaced and the job runs again."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from app.embedded_pg import Cluster, free_port
from tests.acceptance.procs import cli, scalar, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own loopback server
            return bool(resp.status == 200)
    except OSError:
        return False


def test_make_run_embedded_end_to_end(tmp_path: Path):
    api_port, pg_port = free_port(), free_port()
    env = skiplock_env(None, home=tmp_path / "home", embedded_port=pg_port, port=api_port, lease_seconds=3,
                       rescue_interval=0.5)
    run = start(["run"], env, tmp_path / "run.log")
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{api_port}/health"), 90, "the API to answer /health")
        url = cli(["url"], env).stdout.strip()
        wait_for(lambda: scalar(url, "SELECT count(*) FROM skiplock.workers"), 30, "the worker to register")

        job = json.loads(cli(["enqueue", "echo", "--args", '{"message":"hi"}'], env).stdout)["id"]
        t0 = time.monotonic()
        wait_for(lambda: scalar(url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (job,)) == "succeeded",
                 5, "the echo job to succeed")
        assert time.monotonic() - t0 < 1.0
        assert scalar(url, "SELECT succeeded FROM skiplock.queue_stats WHERE queue = 'default'") == 1
        assert scalar(url, "SELECT array_agg(state::text ORDER BY step) FROM skiplock.job_timeline WHERE job_id = %s",
                      (job,)) == ["queued", "running", "succeeded"]

        slow = json.loads(cli(["enqueue", "sleep", "--args", '{"seconds": 2}'], env).stdout)["id"]
        wait_for(lambda: scalar(url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (slow,)) == "running",
                 10, "the slow job to start")
        pid = scalar(url, "SELECT pid FROM skiplock.workers")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: scalar(url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (slow,)) == "succeeded",
                 30, "the killed worker's job to run again and succeed")
        assert scalar(url, "SELECT attempt FROM skiplock.jobs WHERE id = %s", (slow,)) == 2
        assert scalar(url, "SELECT count(*) FROM skiplock.workers WHERE pid <> %s", (pid,)) == 1  # the new one
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
    cluster = Cluster(tmp_path / "home", port=pg_port)
    assert cluster.initialized() and not cluster.running()  # run stopped the cluster it started
    cluster.destroy()
