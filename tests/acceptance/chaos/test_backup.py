"""Backup -> restore -> resume. `pg_dump` a live database (a worker is running jobs while the
dump is taken; the dump is one consistent snapshot) holding jobs in every state, `pg_restore`
it into a new database, and start workers on the copy.

Proves: every job and its history come back exactly; the schema is at the head migration
(`migrate` is a no-op); jobs that were running in the snapshot are rescued once their leases
expire and run to success; queued and scheduled jobs run; finished jobs keep their results;
triggers, functions and the history's identity keep working (new rows do not collide)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from app import migrate
from app.embedded_pg import Cluster
from tests.acceptance.chaos.conftest import Report
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import audit
from tests.acceptance.procs import wait_for

LEASE = 3.0


def enqueue(url: str, n: int, args: dict[str, Any], **options: Any) -> list[uuid.UUID]:
    named = "".join(f", {k} => %({k})s" for k in options)
    return [r[0] for r in rows(url, f"SELECT skiplock.enqueue('chaos.work', %(args)s{named})"
                                    " FROM generate_series(1, %(n)s)", {"args": Jsonb(args), "n": n, **options})]


def states(url: str) -> dict[str, int]:
    return dict(rows(url, "SELECT state::text || CASE WHEN state = 'queued' AND run_at > now() THEN '/scheduled'"
                          " ELSE '' END, count(*) FROM skiplock.jobs GROUP BY 1"))


def fingerprint(url: str, ids: list[uuid.UUID]) -> str:
    """Everything about these jobs and their history, as one hash."""
    return str(scalar(url, """
        SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
          SELECT concat_ws(',', j.id, j.state, j.attempt, j.result, j.last_error, j.finished_at, j.run_at) AS x
            FROM skiplock.jobs j WHERE j.id = ANY(%(ids)s)
          UNION ALL
          SELECT concat_ws(',', h.step, h.job_id, h.state, h.at, h.attempt, h.worker_id, h.error)
            FROM skiplock.job_timeline h WHERE h.job_id = ANY(%(ids)s)) t""", {"ids": ids}))


@pytest.fixture
def restored_url(pg_cluster: Cluster) -> Iterator[str]:
    name = f"restored_{uuid.uuid4().hex[:10]}"
    admin = pg_cluster.url("postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    yield pg_cluster.url(name)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_dump_restore_and_workers_carry_on(chaos_url: str, restored_url: str, pg_cluster: Cluster, tmp_path: Path,
                                           make_fleet: Callable[..., Fleet], chaos_report: Report) -> None:
    source = make_fleet(chaos_url, lease_seconds=LEASE, concurrency=5)
    a = source.start()
    done = enqueue(chaos_url, 20, {}) + enqueue(chaos_url, 3, {"fail_attempts": 99}, max_attempts=1)
    wait_for(lambda: states(chaos_url) == {"succeeded": 20, "failed": 3}, 30, "20 succeeded and 3 failed jobs")
    cancelled = [r[0] for r in rows(chaos_url, "SELECT skiplock.enqueue('chaos.work', '{}', run_at =>"
                                               " now() + interval '1 hour') FROM generate_series(1, 3)")]
    rows(chaos_url, "SELECT skiplock.cancel(id) FROM skiplock.jobs WHERE id = ANY(%s)", (cancelled,))
    running = enqueue(chaos_url, 5, {"seconds": 60, "retry_seconds": 0.1})  # fills A's 5 slots
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE job_id = ANY(%s)", (running,)) == 5,
             20, "A to be running five long jobs")
    ready = enqueue(chaos_url, 10, {})  # no free slot: they wait
    scheduled = [r[0] for r in rows(chaos_url, "SELECT skiplock.enqueue('chaos.work', '{}', run_at =>"
                                               " now() + interval '8 seconds') FROM generate_series(1, 4)")]
    expected = {"succeeded": 20, "failed": 3, "cancelled": 3, "running": 5, "queued": 10, "queued/scheduled": 4}
    assert states(chaos_url) == expected
    finished = done + cancelled
    before = fingerprint(chaos_url, finished)

    dump = tmp_path / "skiplock.dump"
    t0 = time.monotonic()
    subprocess.run([str(pg_cluster.bindir / "pg_dump"), "--format=custom", "--file", str(dump), chaos_url],
                   check=True, capture_output=True, timeout=120)
    dumped = time.monotonic() - t0
    source.stop_all()  # the source goes on its way; the copy must not care
    t1 = time.monotonic()
    subprocess.run([str(pg_cluster.bindir / "pg_restore"), "--exit-on-error", "--no-owner", "--dbname", restored_url,
                    str(dump)], check=True, capture_output=True, timeout=120)
    restored = time.monotonic() - t1

    assert states(restored_url) == expected
    assert fingerprint(restored_url, finished) == before
    migrate.upgrade(restored_url)  # already at head: a no-op
    assert scalar(restored_url, "SELECT version_num FROM alembic_version") == migrate.head_revision()

    copy = make_fleet(restored_url, lease_seconds=LEASE)
    resumed_at = time.monotonic()
    for w in [copy.start(wait=False) for _ in range(2)]:
        copy.wait_registered(w)
    late = enqueue(restored_url, 5, {})  # triggers, functions and the history identity work in the copy
    all_ids = finished + running + ready + scheduled + late
    wait_for(lambda: states(restored_url) == {"succeeded": 20 + 5 + 10 + 4 + 5, "failed": 3, "cancelled": 3},
             LEASE + 30, "the copy to finish every job")
    recover = time.monotonic() - resumed_at
    assert fingerprint(restored_url, finished) == before, "finished jobs changed after the restore"
    rescued = scalar(restored_url, "SELECT count(*) FROM skiplock.job_timeline WHERE job_id = ANY(%s)"
                                   " AND error LIKE %s", (running, f"lease %: worker {a.worker_id} stopped%"))
    assert rescued == 5, "the snapshot's running jobs should be rescued from the worker that held them"
    assert rows(restored_url, "SELECT DISTINCT attempt FROM skiplock.jobs WHERE id = ANY(%s)", (running,)) == [(2,)]
    assert scalar(restored_url, "SELECT count(*) FROM skiplock.job_history h WHERE NOT EXISTS"
                                " (SELECT 1 FROM skiplock.jobs j WHERE j.id = h.job_id)") == 0
    assert set(copy.stop_all().values()) == {0}
    result = audit(restored_url, all_ids, {a.worker_id}, terminal=("succeeded", "failed", "cancelled"))
    result.assert_clean()
    chaos_report(result, recover, dump_s=f"{dumped:.1f}", restore_s=f"{restored:.1f}",
                 dump_kb=dump.stat().st_size // 1024)
