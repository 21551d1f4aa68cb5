"""Careless handlers (tests/acceptance/careless_runtime_tasks.py) on real worker processes:
whatever a handler does, the worker keeps its other jobs' leases, ends the careless job with
its own error, never runs a job twice at once, and exits on SIGTERM within its grace period
plus watchdog.SHUTDOWN_BOUND.

Each scenario puts an innocent neighbour (`chaos.work`, which records its start and end in the
ledger) on the same worker, and where a lapsed lease would show, a second worker that would
rescue and run whatever the first one lets lapse."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.acceptance.careless_runtime_tasks  # noqa: F401 - registers the tasks enqueue() reads
from skiplock import registry
from skiplock.runtime.watchdog import SHUTDOWN_BOUND
from tests.acceptance.chaos.dbq import create_ledger, rows, scalar
from tests.acceptance.chaos.fleet import Fleet, WorkerProc
from tests.acceptance.chaos.ledger import wait_terminal
from tests.acceptance.procs import wait_for

pytestmark = pytest.mark.slow

TASKS = "app.tasks,tests.acceptance.chaos_tasks,tests.acceptance.careless_runtime_tasks"
LEASE = 5
GRACE = 2
EXIT_WITHIN = GRACE + SHUTDOWN_BOUND + 3  # + the time to notice the exit on a loaded machine


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    create_ledger(db_url)
    f = Fleet(db_url, tmp_path, tasks=TASKS, lease_seconds=LEASE, grace_seconds=GRACE, rescue_interval=0.5,
              poll_interval=0.2, concurrency=4)
    try:
        yield f
    finally:
        f.stop_all(timeout=EXIT_WITHIN)


def enqueue(url: str, task: str, **args: Any) -> uuid.UUID:
    """Submit through SQL with the task's own timeout and max_attempts."""
    t = registry.get(task)
    return scalar(url, "SELECT skiplock.enqueue(%s, %s::jsonb, max_attempts => %s, timeout => %s)",  # type: ignore[no-any-return]
                  (task, json.dumps(args), t.max_attempts, t.timeout))


def started(url: str, job: uuid.UUID) -> bool:
    return bool(scalar(url, "SELECT count(*) FROM chaos.ledger WHERE job_id = %s AND phase = 'start'", (job,)))


def ledger(url: str, job: uuid.UUID) -> list[tuple[str, int, str]]:
    return [(r[0], r[1], r[2]) for r in rows(url, "SELECT phase, attempt, worker_id FROM chaos.ledger"
                                                  " WHERE job_id = %s ORDER BY id", (job,))]


def job(url: str, job_id: uuid.UUID) -> dict[str, Any]:
    r = rows(url, "SELECT state::text, attempt, coalesce(last_error, '') FROM skiplock.jobs WHERE id = %s",
             (job_id,))[0]
    return {"state": r[0], "attempt": r[1], "error": r[2]}


def lease_expiries(url: str) -> list[Any]:
    return rows(url, "SELECT job_id, attempt FROM skiplock.job_timeline WHERE error LIKE 'lease %%'")


def assert_ran_once(url: str, neighbour: uuid.UUID, w: WorkerProc) -> None:
    """The innocent neighbour: one start and one end, both on `w`, succeeded at attempt 1."""
    assert job(url, neighbour) == {"state": "succeeded", "attempt": 1, "error": ""}
    assert ledger(url, neighbour) == [("start", 1, w.worker_id), ("end", 1, w.worker_id)]


def term_and_time(w: WorkerProc) -> float:
    """SIGTERM `w` and return how long it took to exit (fails past EXIT_WITHIN)."""
    w.signal(signal.SIGTERM)
    t = time.monotonic()
    try:
        w.proc.wait(EXIT_WITHIN)
    except Exception:
        raise AssertionError(f"{w.name} still alive {EXIT_WITHIN}s after SIGTERM:\n{w.log_text()[-3000:]}") from None
    took = time.monotonic() - t
    assert "skiplock.worker.stopped" in w.log_text()
    return took


def with_neighbour(fleet: Fleet, seconds: float) -> tuple[WorkerProc, uuid.UUID]:
    w = fleet.start()
    neighbour = enqueue(fleet.url, "chaos.work", seconds=seconds)
    wait_for(lambda: started(fleet.url, neighbour), 20, "the neighbour to start")
    return w, neighbour


@pytest.mark.parametrize(("task", "seconds"), [("careless.block_loop", 14), ("careless.cpu_loop", 20)])
def test_a_handler_blocking_the_event_loop_times_out_and_its_neighbour_keeps_its_lease(
        fleet: Fleet, task: str, seconds: float) -> None:
    url = fleet.url
    w, neighbour = with_neighbour(fleet, 9)
    culprit = enqueue(url, task, seconds=seconds)
    wait_for(lambda: started(url, culprit), 20, "the culprit to start")
    rescuer = fleet.start()  # would run anything whose lease lapses
    wait_terminal(url, [culprit], 30, terminal=("failed",))
    state = job(url, culprit)
    assert state["attempt"] == 1 and "blocked the event loop past its timeout of 2" in state["error"], state
    assert ledger(url, culprit) == [("start", 1, w.worker_id)]  # interrupted: never reached its end
    wait_terminal(url, [neighbour], 30)
    assert_ran_once(url, neighbour, w)
    assert lease_expiries(url) == []
    log = w.log_text()
    assert f"skiplock.worker.loop_blocked worker={w.worker_id}" in log and f"job_id={culprit}" in log
    assert term_and_time(w) < EXIT_WITHIN and term_and_time(rescuer) < EXIT_WITHIN


def test_a_handler_swallowing_cancellation_is_abandoned_at_its_timeout_and_the_process_still_exits(
        fleet: Fleet) -> None:
    url = fleet.url
    w, neighbour = with_neighbour(fleet, 6)
    culprit = enqueue(url, "careless.swallow")
    wait_terminal(url, [culprit], 15, terminal=("failed",))
    state = job(url, culprit)
    assert state["attempt"] == 1 and "ignored its cancellation" in state["error"], state
    assert f"skiplock.job.abandoned job_id={culprit}" in w.log_text()
    wait_terminal(url, [neighbour], 30)
    assert_ran_once(url, neighbour, w)
    assert term_and_time(w) < EXIT_WITHIN


def test_a_never_ending_thread_started_by_a_handler_does_not_keep_the_process_alive(fleet: Fleet) -> None:
    url = fleet.url
    w, neighbour = with_neighbour(fleet, 1)
    leaker = enqueue(url, "careless.leak_thread")
    wait_terminal(url, [leaker, neighbour], 15)
    assert_ran_once(url, neighbour, w)
    assert term_and_time(w) < EXIT_WITHIN


def test_never_returning_sync_handlers_time_out_having_run_and_never_starve_later_jobs(fleet: Fleet) -> None:
    """Issue 10, bug 5: ten sync handlers that never return, on a worker with ten slots."""
    url = fleet.url
    first = fleet.start(concurrency=10)
    stuck = [enqueue(url, "careless.sync_forever") for _ in range(10)]
    wait_terminal(url, stuck, 30, terminal=("failed",))
    later = [enqueue(url, "careless.sync_quick") for _ in range(6)]
    # every slot of `first` is held by a thread that cannot be stopped: it must not take jobs
    # it cannot start; it says so and exits by itself (a supervisor starts a fresh worker)
    try:
        first.proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        pass
    second = fleet.start(concurrency=4)
    wait_terminal(url, later, 30, terminal=("succeeded", "failed"))
    stuck_again = enqueue(url, "careless.sync_forever")
    wait_terminal(url, [stuck_again], 30, terminal=("failed",))
    for j in [*stuck, stuck_again, *later]:  # no job reported as timed out without having started
        assert [e[:2] for e in ledger(url, j)][:1] == [("start", 1)], (j, job(url, j), ledger(url, j))
    for j in [*stuck, stuck_again]:
        assert "TimeoutError" in job(url, j)["error"]
    assert all(ledger(url, j) == [("start", 1, second.worker_id), ("end", 1, second.worker_id)] for j in later)
    assert first.proc.returncode == 70 and "skiplock.worker.wedged" in first.log_text()
    assert term_and_time(second) < EXIT_WITHIN


def test_a_handler_locking_its_own_row_does_not_hold_up_its_neighbours_renewals(fleet: Fleet) -> None:
    url = fleet.url
    w, neighbour = with_neighbour(fleet, 12)
    locker = enqueue(url, "careless.lock_own_row", seconds=8)
    wait_for(lambda: started(url, locker), 20, "the locker to start")
    rescuer = fleet.start()
    wait_terminal(url, [locker, neighbour], 40)
    assert_ran_once(url, neighbour, w)
    assert job(url, locker) == {"state": "succeeded", "attempt": 1, "error": ""}
    assert ledger(url, locker) == [("start", 1, w.worker_id), ("end", 1, w.worker_id)]
    assert lease_expiries(url) == []
    assert f"skiplock.job.lease_blocked job_id={locker}" in w.log_text()
    assert term_and_time(w) < EXIT_WITHIN and term_and_time(rescuer) < EXIT_WITHIN


def test_a_handler_leaving_its_own_row_locked_does_not_hold_up_its_neighbours_acknowledgements(
        fleet: Fleet) -> None:
    """The handler returns with its row still locked by a transaction it left open: its
    outcome cannot be written, but the other jobs' outcomes are (the acknowledgement skips
    the locked row); once the session ends, its own outcome lands too, at attempt 1."""
    url = fleet.url
    w = fleet.start(lease_seconds=60)  # the leaked lock outlasts no lease: nothing is rescued
    locker = enqueue(url, "careless.leak_row_lock")
    wait_for(lambda: ("end", 1, w.worker_id) in ledger(url, locker), 20, "the locker to return")
    neighbours = [enqueue(url, "chaos.work") for _ in range(3)]
    wait_terminal(url, neighbours, 20)
    leaked = rows(url, "SELECT pid, state FROM pg_stat_activity WHERE application_name = 'careless-leak'")
    assert [s for _, s in leaked] == ["idle in transaction"], "the locker's transaction is still open"
    assert job(url, locker)["state"] == "running"
    for n in neighbours:
        assert_ran_once(url, n, w)
    assert f"skiplock.job.ack_blocked job_id={locker}" in w.log_text()
    scalar(url, "SELECT pg_terminate_backend(%s)", (leaked[0][0],))
    wait_terminal(url, [locker], 20)
    assert job(url, locker) == {"state": "succeeded", "attempt": 1, "error": ""}
    assert term_and_time(w) < EXIT_WITHIN


def test_sigterm_during_a_long_sync_handler_never_lets_it_run_twice_at_once(fleet: Fleet) -> None:
    url = fleet.url
    w = fleet.start()
    long = enqueue(url, "careless.sync_long", seconds=25)
    wait_for(lambda: started(url, long), 20, "the sync job to start")
    waiting = fleet.start()  # ready to take whatever is released
    took = term_and_time(w)
    assert took < EXIT_WITHIN
    stopped = [ln for ln in w.log_text().splitlines() if "skiplock.worker.stopped" in ln]
    assert stopped and f"abandoned={long}" in stopped[-1], stopped
    wait_terminal(url, [long], 25 + LEASE + 30)
    entries = rows(url, "SELECT phase, attempt, worker_id, at FROM chaos.ledger WHERE job_id = %s ORDER BY id",
                   (long,))
    # the first run was cut off by the exit of its process; the second started only after it
    assert [(e[0], e[1], e[2]) for e in entries] == [("start", 1, w.worker_id), ("start", 2, waiting.worker_id),
                                                     ("end", 2, waiting.worker_id)]
    assert job(url, long)["state"] == "succeeded"
    assert term_and_time(waiting) < EXIT_WITHIN
