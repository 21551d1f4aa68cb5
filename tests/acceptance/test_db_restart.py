"""Losing the database does not kill a worker: it backs off, reconnects and goes on."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from app.embedded_pg import scratch_database
from tests.acceptance.procs import counts, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow


def test_worker_survives_a_postgres_restart(tmp_path: Path):
    with scratch_database("skiplock-restart-") as (cluster, url):

        def submit(n: int) -> None:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', g::text))"
                          " FROM generate_series(1, %s) g", (n,))

        worker = start(["worker"], skiplock_env(url, poll_interval=0.2), tmp_path / "worker.log")
        try:
            submit(20)
            wait_for(lambda: counts(url).get("succeeded") == 20, 30, "the first 20 jobs")
            cluster.restart(mode="immediate")
            submit(20)
            wait_for(lambda: counts(url).get("succeeded") == 40, 60, "the 20 jobs submitted after the restart")
            assert worker.poll() is None, "the worker died with the database"
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        assert counts(url) == {"succeeded": 40}
        log = (tmp_path / "worker.log").read_text()
        assert "skiplock.worker.db_error" in log  # it noticed, and carried on
