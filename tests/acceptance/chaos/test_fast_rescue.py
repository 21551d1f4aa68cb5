"""A worker that dies is rescued within a second, not at lease expiry; one that hangs is not.

Each worker holds a session-level advisory lock on its listener's connection. SIGKILL ends the
process, the server ends its session and frees the lock, and the other workers' rescuers take
its jobs back at once: with the default 30 s lease, the jobs run again on another worker within
2 seconds. SIGSTOP freezes the process but not its session: the lock stays held, so the
frozen worker's jobs are rescued only when their lease expires, and the answer it sends when
it wakes is fenced."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb

from tests.acceptance.chaos.conftest import Report
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet, WorkerProc
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.procs import wait_for

WITHIN = 2.0


def submit(url: str, n: int, **args: Any) -> list[uuid.UUID]:
    return [r[0] for r in rows(url, "SELECT skiplock.enqueue('chaos.work', %s) FROM generate_series(1, %s)",
                               (Jsonb(args), n))]


def wait_locked(url: str, w: WorkerProc) -> None:
    wait_for(lambda: scalar(url, "SELECT lock_taken_at IS NOT NULL FROM skiplock.workers WHERE id = %s",
                            (w.worker_id,)), 30, f"{w.name} to take its liveness lock")


def test_a_killed_workers_jobs_run_again_elsewhere_within_2s_with_the_default_lease(
        chaos_url: str, make_fleet: Callable[..., Fleet], chaos_report: Report) -> None:
    fleet = make_fleet(chaos_url, lease_seconds=30, rescue_interval=5)  # the defaults
    a = fleet.start()
    jobs = submit(chaos_url, 3, seconds=60, retry_seconds=0.2)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s",
                            (a.worker_id,)) == 3, 30, "worker A to start all three jobs")
    wait_locked(chaos_url, a)
    b = fleet.start()
    wait_locked(chaos_url, b)
    fleet.kill(a)
    killed_at = time.monotonic()
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s AND attempt = 2"
                                       " AND phase = 'start'", (b.worker_id,)) == 3,
             30, "the killed worker's jobs to start again on worker B", interval=0.01)
    took = time.monotonic() - killed_at
    print(f"\nSIGKILL: {len(jobs)} jobs running again on another worker {took * 1000:.0f} ms after the kill "
          "(lease 30 s)")
    assert took < WITHIN, f"the killed worker's jobs ran again only after {took:.2f}s"
    errors = [r[0] for r in rows(chaos_url, "SELECT error FROM skiplock.job_history WHERE job_id = ANY(%s)"
                                            " AND state = 'queued' AND attempt = 1", (jobs,))]
    assert errors == [f"lease ended: worker {a.worker_id} stopped: its database session closed during attempt 1"] * 3
    # no longer listed as live (GET /health, /metrics, the dashboard read skiplock.workers)
    assert scalar(chaos_url, "SELECT count(*) FROM skiplock.workers WHERE id = %s", (a.worker_id,)) == 0
    wait_terminal(chaos_url, jobs, 30)
    result = audit(chaos_url, jobs, fleet.disrupted)
    result.assert_clean()
    assert fleet.stop_all()["w2"] == 0
    chaos_report(result, took, lease_s=30)


def test_a_frozen_worker_is_rescued_only_at_lease_expiry_and_its_late_answer_is_fenced(
        chaos_url: str, make_fleet: Callable[..., Fleet], chaos_report: Report) -> None:
    lease = 3.0
    fleet = make_fleet(chaos_url, lease_seconds=lease)
    a = fleet.start()
    # attempt 1 sleeps 0.5 s, the rescued attempt 4 s: still running when A wakes and answers
    [job] = submit(chaos_url, 1, seconds=0.5, retry_seconds=4, record_end=False)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s",
                            (a.worker_id,)) == 1, 10, "worker A to start the job", interval=0.005)
    wait_locked(chaos_url, a)
    fleet.freeze(a)
    frozen_at = time.monotonic()
    time.sleep(0.2)  # a renewal A sent just before the freeze has landed
    lease_end = scalar(chaos_url, "SELECT lease_expires_at FROM skiplock.jobs WHERE id = %s", (job,))
    b = fleet.start()
    wait_locked(chaos_url, b)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE id = %s AND state = 'running'"
                                       " AND attempt = 2 AND worker_id = %s", (job, b.worker_id)) == 1,
             lease + 15, "the job to be rescued and running on worker B")
    rescued_after = time.monotonic() - frozen_at
    [(rescued_at, error)] = rows(chaos_url, "SELECT at, error FROM skiplock.job_history WHERE job_id = %s"
                                            " AND state = 'queued' AND attempt = 1", (job,))
    assert error == f"lease expired: worker {a.worker_id} stopped renewing it during attempt 1"
    assert rescued_at >= lease_end, "a frozen worker (its session alive) was rescued before its lease expired"
    fleet.thaw(a)

    def late_ack_arrived() -> bool:
        moved = rows(chaos_url, "SELECT state::text, attempt, worker_id FROM skiplock.jobs WHERE id = %s",
                     (job,))[0] != ("running", 2, b.worker_id)
        return f"skiplock.job.fenced job_id={job}" in a.log_text() or moved
    wait_for(late_ack_arrived, 15, "worker A's late acknowledgement")
    assert rows(chaos_url, "SELECT state::text, attempt, worker_id FROM skiplock.jobs WHERE id = %s",
                (job,))[0] == ("running", 2, b.worker_id), "A's late answer overwrote attempt 2"
    wait_for(lambda: scalar(chaos_url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (job,)) == "succeeded",
             20, "B to finish attempt 2")
    result = rows(chaos_url, "SELECT result FROM skiplock.jobs WHERE id = %s", (job,))[0][0]
    assert (result["attempt"], result["worker"]) == (2, b.worker_id)
    outcome = audit(chaos_url, [job], fleet.disrupted)
    outcome.assert_clean()
    assert fleet.stop_all() == {"w1": 0, "w2": 0}
    chaos_report(outcome, rescued_after, lease_s=lease, late_acks_fenced=1)
