"""Real worker processes: SIGKILL mid-job, SIGTERM, and two workers sharing a backlog."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.procs import cli, counts, scalar, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

LEASE = 5


def enqueue_sql(url: str, task: str, args_sql: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"SELECT skiplock.enqueue('{task}', {args_sql}) FROM generate_series(1, %s) g", (n,))


def test_sigkill_mid_job_a_second_worker_finishes_every_job_within_the_lease(db_url, tmp_path: Path):
    enqueue_sql(db_url, "sleep", "jsonb_build_object('seconds', 2)", 100)
    env = skiplock_env(db_url, lease_seconds=LEASE, rescue_interval=0.5, concurrency=100, poll_interval=0.2)
    first = start(["worker"], env, tmp_path / "first.log")
    try:
        wait_for(lambda: counts(db_url).get("running") == 100, 30, "100 running jobs")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = time.monotonic()
    assert counts(db_url) == {"running": 100}
    second = start(["worker"], env, tmp_path / "second.log")
    try:
        wait_for(lambda: counts(db_url).get("succeeded") == 100, LEASE + 2 + 10, "all 100 jobs to succeed")
        took = time.monotonic() - killed_at
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert counts(db_url) == {"succeeded": 100}
    # every job: claimed by the killed worker, rescued (counted as an attempt), run again
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE attempt = 2") == 100
    assert scalar(db_url, "SELECT count(*) FROM skiplock.job_timeline WHERE error LIKE 'lease %%'") == 100
    assert took < LEASE + 2 + 10, took
    print(f"\nsigkill: 100 jobs recovered {took:.1f}s after the kill (lease {LEASE}s, job 2s)")


def test_sigterm_lets_running_jobs_finish_within_the_grace_period(db_url, tmp_path: Path):
    enqueue_sql(db_url, "sleep", "jsonb_build_object('seconds', 1)", 10)
    enqueue_sql(db_url, "sleep", "jsonb_build_object('seconds', 60)", 2)
    env = skiplock_env(db_url, concurrency=20, grace_seconds=3, poll_interval=0.2)
    worker = start(["worker"], env, tmp_path / "w.log")
    wait_for(lambda: counts(db_url).get("running") == 12, 30, "12 running jobs")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    # the short jobs finished; the long ones went back to queued with their attempt given back
    assert counts(db_url) == {"succeeded": 10, "queued": 2}
    assert scalar(db_url, "SELECT max(attempt) FROM skiplock.jobs WHERE state = 'queued'") == 0
    assert scalar(db_url, "SELECT count(*) FROM skiplock.workers") == 0


def test_two_workers_drain_10000_jobs_and_each_runs_exactly_once(db_url, tmp_path: Path):
    enqueue_sql(db_url, "echo", "jsonb_build_object('message', g::text)", 10_000)
    env = skiplock_env(db_url, concurrency=50, poll_interval=0.2)
    started = time.monotonic()
    workers = [start(["worker", "--burst"], env, tmp_path / f"w{i}.log") for i in range(2)]
    for w in workers:
        assert w.wait(300) == 0
    took = time.monotonic() - started
    assert counts(db_url) == {"succeeded": 10_000}
    # the history is the ledger: one 'running' row per execution
    with psycopg.connect(db_url, autocommit=True) as c:
        per_job = c.execute("SELECT count(*) FILTER (WHERE state = 'running') AS runs FROM skiplock.job_timeline"
                            " GROUP BY job_id HAVING count(*) FILTER (WHERE state = 'running') <> 1").fetchall()
        by_worker = c.execute("SELECT worker_id, count(*) FROM skiplock.job_timeline WHERE state = 'running'"
                              " GROUP BY 1").fetchall()
    assert per_job == []
    assert len(by_worker) == 2 and sum(n for _, n in by_worker) == 10_000
    print(f"\ntwo workers: 10,000 jobs in {took:.1f}s, split {sorted(n for _, n in by_worker)}")


def test_cli_enqueue_status_cancel_retry(db_url):
    env = skiplock_env(db_url)
    out = cli(["enqueue", "echo", "--args", '{"message": "hi"}', "--delay", "3600"], env).stdout
    job_id = __import__("json").loads(out)["id"]
    assert "default" in cli(["status"], env).stdout
    assert "cancelled" in cli(["cancel", job_id], env).stdout
    assert "queued" in cli(["retry", job_id], env).stdout
    bad = cli(["enqueue", "echo", "--args", '{"nope": 1}'], env, check=False)
    assert bad.returncode == 2 and "args.message" in bad.stderr
    assert cli(["enqueue", "nope"], env, check=False).stderr.startswith("skiplock: unknown task 'nope'")
    again = cli(["retry", job_id], env, check=False)
    assert again.returncode == 2 and "only failed or cancelled" in again.stderr
    assert counts(db_url) == {"queued": 1}


def test_health_with_worker_is_healthy_only_while_a_worker_of_this_host_heartbeats(db_url, tmp_path: Path):
    env = skiplock_env(db_url, lease_seconds=LEASE, poll_interval=0.2)
    assert cli(["health"], env).returncode == 0
    alone = cli(["health", "--worker"], env, check=False)
    assert alone.returncode == 1 and "no worker on" in alone.stderr
    worker = start(["worker"], env, tmp_path / "w.log")
    try:
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM skiplock.workers"), 30, "the worker to register")
        assert cli(["health", "--worker"], env).returncode == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert cli(["health", "--worker"], env, check=False).returncode == 1  # unregistered on exit


def test_a_worker_frozen_longer_than_its_lease_carries_on_when_resumed(db_url, tmp_path: Path):
    """SIGSTOP stops the watchdog's thread too: a paused process is not a blocked loop."""
    enqueue_sql(db_url, "sleep", "jsonb_build_object('seconds', 1)", 3)
    env = skiplock_env(db_url, lease_seconds=3, poll_interval=0.2, grace_seconds=2)
    worker = start(["worker"], env, tmp_path / "w.log")
    try:
        wait_for(lambda: counts(db_url).get("running") == 3, 30, "3 running jobs")
        worker.send_signal(signal.SIGSTOP)
        time.sleep(3 * 2)  # two leases
        worker.send_signal(signal.SIGCONT)
        time.sleep(3)
        assert worker.poll() is None, (tmp_path / "w.log").read_text()[-2000:]
        enqueue_sql(db_url, "echo", "jsonb_build_object('message', 'after')", 1)
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE task = 'echo' "
                                        "AND state = 'succeeded'") == 1, 30, "a job submitted after the pause")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    assert code == 0, (tmp_path / "w.log").read_text()[-2000:]
    assert "wedged" not in (tmp_path / "w.log").read_text()


def test_cli_enqueue_holds_the_queue_limit_and_checks_json_types(db_url):
    env = skiplock_env(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO skiplock.queues (name, max_waiting) VALUES ('mail', 1)")
    assert cli(["enqueue", "echo", "--args", '{"message": "a"}', "--queue", "mail"], env).returncode == 0
    full = cli(["enqueue", "echo", "--args", '{"message": "b"}', "--queue", "mail"], env, check=False)
    assert full.returncode == 2 and "its limit is 1" in full.stderr
    typed = cli(["enqueue", "echo", "--args", '{"message": 7}'], env, check=False)
    assert typed.returncode == 2 and "args.message" in typed.stderr
    assert counts(db_url) == {"queued": 1}
