"""A worker that hangs (SIGSTOP: frozen, its database connections silent) loses its lease; the
job is rescued and run by another worker; when the hung worker wakes (SIGCONT) and
acknowledges its old attempt, that late answer must change nothing.

Proves fencing with real processes: the stale acknowledgement reaches the database while the
newer attempt is still running (the handler has no await left after its sleep, so it finishes
before the woken worker's heartbeat can notice the lost lease), and the row stays `running`
under attempt 2 until the worker that holds it finishes. Remove the `j.attempt = o.attempt`
and `j.worker_id = %(worker_id)s` guard from finish_many_if_held and this test fails."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.acceptance.chaos.api import submitter, via
from tests.acceptance.chaos.conftest import FORMS, Report
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.chaos.load import Load
from tests.acceptance.procs import wait_for

LEASE = 2.0


def submit(url: str, n: int, **args: Any) -> list[uuid.UUID]:
    return [r[0] for r in rows(url, "SELECT skiplock.enqueue('chaos.work', %s) FROM generate_series(1, %s)",
                               (Jsonb(args), n))]


def job_row(url: str, job_id: uuid.UUID) -> tuple[Any, ...]:
    return rows(url, "SELECT state::text, attempt, worker_id, result FROM skiplock.jobs WHERE id = %s", (job_id,))[0]


def test_late_ack_of_a_frozen_worker_is_fenced(chaos_url: str, make_fleet: Callable[..., Fleet],
                                               chaos_report: Report) -> None:
    fleet = make_fleet(chaos_url, lease_seconds=LEASE)
    a = fleet.start()
    # attempt 1 sleeps 0.5 s, a rescued attempt 6 s: long enough to still be running when A wakes
    jobs = submit(chaos_url, 3, seconds=0.5, retry_seconds=6, record_end=False)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s", (a.worker_id,)) == 3,
             10, "worker A to start all three jobs", interval=0.005)
    fleet.freeze(a)
    frozen_at = time.monotonic()
    b = fleet.start()
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running'"
                                       " AND attempt = 2 AND worker_id = %s", (b.worker_id,)) == 3,
             LEASE + 15, "the jobs to be rescued and running on worker B as attempt 2")
    rescued_after = time.monotonic() - frozen_at
    # the row says running from the claim on; the handler writes its ledger row a moment later
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s AND attempt = 2",
                            (b.worker_id,)) == 3, 10, "worker B's handlers to start attempt 2")
    fleet.thaw(a)

    def late_acks_arrived() -> bool:
        log = a.log_text()
        fenced = all(f"skiplock.job.fenced job_id={j}" in log for j in jobs)
        overwritten = any(job_row(chaos_url, j)[:3] != ("running", 2, b.worker_id) for j in jobs)
        return fenced or overwritten
    wait_for(late_acks_arrived, 15, "worker A's late acknowledgements")
    # the stale answers changed nothing: still running, attempt 2, held by B
    for j in jobs:
        assert job_row(chaos_url, j)[:3] == ("running", 2, b.worker_id), \
            f"a late acknowledgement from the frozen worker overwrote attempt 2 of job {j}"
    assert "skiplock.job.lost" not in a.log_text(), "the heartbeat cancelled the handler first: no late ack was sent"

    wait_for(lambda: all(job_row(chaos_url, j)[0] == "succeeded" for j in jobs), 20, "B to finish attempt 2")
    for j in jobs:
        state, attempt, _, result = job_row(chaos_url, j)
        assert (state, attempt, result["attempt"], result["worker"]) == ("succeeded", 2, 2, b.worker_id)
        history = rows(chaos_url, "SELECT state::text, attempt, worker_id FROM skiplock.job_timeline"
                                  " WHERE job_id = %s ORDER BY step", (j,))
        assert history == [("queued", 0, None), ("running", 1, a.worker_id), ("queued", 1, a.worker_id),
                           ("running", 2, b.worker_id), ("succeeded", 2, b.worker_id)]
    assert a.alive(), "the woken worker should carry on"
    result = audit(chaos_url, jobs, fleet.disrupted)
    result.assert_clean()
    assert fleet.stop_all() == {"w1": 0, "w2": 0}
    chaos_report(result, rescued_after, late_acks_fenced=len(jobs))


def job_args(rand: random.Random) -> dict[str, Any]:
    return {"seconds": round(rand.uniform(0.1, 0.6), 3), "record_end": False}


@pytest.mark.parametrize("form", FORMS)
def test_frozen_workers_under_load_never_overwrite_newer_attempts(form: str, chaos_url: str,
                                                                  make_fleet: Callable[..., Fleet],
                                                                  chaos_report: Report, tmp_path: Path) -> None:
    """Freeze a busy worker past its lease, again and again under load; wake it up. Every job
    still ends with the result of its last claim, and only frozen workers' jobs run twice."""
    freezes = {"short": 2, "long": 8}[form]
    fleet = make_fleet(chaos_url, lease_seconds=LEASE)
    for w in [fleet.start(wait=False) for _ in range(3)]:
        fleet.wait_registered(w)
    recover: list[float] = []
    with submitter(chaos_url, tmp_path) as (submit, _, _), Load(submit, 40, job_args) as load:
        for k in range(freezes):
            victim = fleet.live()[k % 3]
            held = wait_for(lambda v=victim: h if len(h := fleet.held(v)) >= 2 else None, 30,
                            f"{victim.name} to hold 2+ jobs")
            fleet.freeze(victim)
            t = time.monotonic()
            # Taken back: no longer running under the victim. A finished row keeps the worker of
            # its last claim, so one the victim finished just before the freeze counts too.
            wait_for(lambda h=held: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE id = ANY(%s)"
                                                      " AND NOT (state = 'running' AND worker_id = %s)",
                                           (h, victim.worker_id)) == len(h),
                     LEASE + 15, "the frozen worker's jobs to be taken back")
            recover.append(time.monotonic() - t)
            fleet.thaw(victim)
    wait_terminal(chaos_url, load.accepted, 60)
    fenced = sum(w.log_text().count("skiplock.job.fenced") for w in fleet.workers)
    codes = fleet.stop_all()
    result = audit(chaos_url, load.accepted, fleet.disrupted)
    result.assert_clean()
    assert set(codes.values()) == {0}, codes
    assert not load.errors and not load.refused
    chaos_report(result, max(recover), freezes=freezes, late_acks_fenced=fenced, via=via())
