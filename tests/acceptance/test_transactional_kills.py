"""Transactional completion under SIGKILL: a worker killed between its handler's own write and
the job's acknowledgement, 100 times; every job's effect is present exactly once."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from tests.acceptance.procs import ROOT, skiplock_env

pytestmark = pytest.mark.slow

JOBS = 100


def test_a_worker_killed_between_the_handlers_write_and_the_ack_100_times_leaves_each_effect_once(db_url: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("CREATE TABLE app_results (job_id uuid NOT NULL, attempt int NOT NULL)")
        c.execute("SELECT skiplock.enqueue('txn.store', '{}'::jsonb) FROM generate_series(1, %s)", (JOBS,))
    done = subprocess.run([sys.executable, "-m", "tests.acceptance.txn_kill_worker", db_url, str(JOBS * 4)],
                          cwd=ROOT, env=skiplock_env(db_url), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kills = int(done.stdout.split("kills=")[1].split()[0])
    assert kills == JOBS, done.stdout  # each job's first attempt died after its write
    with psycopg.connect(db_url, autocommit=True) as c:
        jobs = c.execute("SELECT state::text, attempt, count(*) FROM skiplock.jobs GROUP BY 1, 2").fetchall()
        effects = c.execute("SELECT j.id, count(r.job_id), min(r.attempt) FROM skiplock.jobs j"
                            " LEFT JOIN app_results r ON r.job_id = j.id GROUP BY j.id").fetchall()
    assert jobs == [("succeeded", 2, JOBS)]
    assert all(n == 1 and attempt == 2 for _, n, attempt in effects), \
        [e for e in effects if e[1] != 1 or e[2] != 2][:5]
    print(f"\ntransactional kills: {done.stdout.strip()}")
