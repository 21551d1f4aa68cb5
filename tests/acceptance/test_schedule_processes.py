"""Real worker processes run the scheduler: a schedule every second fires once per tick with
two workers alive, and goes on firing after one of them is killed."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.procs import scalar, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow


def ticks(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as c:
        return [(str(r[0]), r[1]) for r in c.execute(
            "SELECT run_at, state::text FROM skiplock.jobs WHERE task = 'cron.tick' ORDER BY run_at").fetchall()]


def test_two_worker_processes_fire_a_per_second_schedule_once_per_tick_and_one_survives_a_kill(db_url,
                                                                                               tmp_path: Path):
    env = skiplock_env(db_url, tasks="tests.acceptance.schedule_tasks", poll_interval=0.2)
    first = start(["worker"], env, tmp_path / "first.log")
    second = start(["worker"], env, tmp_path / "second.log")
    try:
        wait_for(lambda: len(ticks(db_url)) >= 3, 30, "three ticks enqueued by the workers")
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = scalar(db_url, "SELECT now()")
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE task = 'cron.tick' "
                                        "AND state = 'succeeded' AND run_at > %s", (killed_at,)) >= 3,
                 30, "three more ticks run after one worker was killed")
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    got = ticks(db_url)
    runs = [r for r, _ in got]
    assert len(runs) == len(set(runs)) >= 6  # one job per tick, never two
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE task = 'cron.tick' "
                          "AND extract(microseconds FROM run_at)::int % 1000000 <> 0") == 0  # whole seconds
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE task = 'cron.tick' AND queue <> 'cron'") == 0
    assert scalar(db_url, "SELECT last_job_id IS NOT NULL FROM skiplock.schedules WHERE name = 'cron.tick'")
