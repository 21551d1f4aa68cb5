"""Careless handlers against a real worker process: whatever a handler returns or raises
becomes that one job's outcome. For each careless act (tests/acceptance/careless_tasks.py),
with a neighbour job running beside it on the same worker:

- the careless job ends with its own error on its timeline (retried or failed by the normal
  rules: an exception is retried, an unstorable result is not);
- the neighbour succeeds, once, well within its lease; no handler ran twice (ledger file);
- the worker stays up, and SIGTERM then ends it promptly, unregistered, holding nothing.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tests.acceptance.careless_tasks  # noqa: F401 - registers the careless tasks here too
from skiplock import enqueue
from skiplock.queries import jobs as job_queries
from tests.acceptance.procs import scalar, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

LEASE = 6
GRACE = 5
NEIGHBOUR_SECONDS = 1.5
MAX_RESULT_BYTES = 4096

RAISES = 2  # an exception is retried by the normal rules: both attempts end with it
REFUSED = 1  # an unstorable result fails the job at once

# act -> (what the job's last error must say, attempts)
CASES: dict[str, tuple[str, int]] = {
    "nan_result": ("contains NaN or Infinity", REFUSED),
    "nul_result": ("contains the NUL character", REFUSED),
    "nul_error": ("ValueError: a message with a NUL \\x00 inside", RAISES),
    "nul_progress": ("the progress report contains the NUL character", RAISES),
    "nan_checkpoint": ("the checkpoint contains NaN or Infinity", RAISES),
    "set_result": ("returned set", REFUSED),
    "bytes_result": ("returned bytes", REFUSED),
    "object_result": ("returned object", REFUSED),
    "coroutine_result": ("returned coroutine (an awaitable: was an async call not awaited?)", REFUSED),
    "generator_result": ("returned generator (a generator, whose body never ran", REFUSED),
    "merged_keys_result": ("stores as the same key '1'", REFUSED),
    "large_result": (f"is 5002 bytes of JSON; the limit is {MAX_RESULT_BYTES}", REFUSED),
    "sys_exit": ("SystemExit: 3", RAISES),
    "sys_exit_0": ("SystemExit: 0", RAISES),
    "keyboard_interrupt": ("KeyboardInterrupt", RAISES),
    "cancelled": ("CancelledError: the handler's own", RAISES),
    "generator_exit": ("GeneratorExit", RAISES),
    "base_exception": ("CarelessError: a BaseException of the handler's own", RAISES),
}
SYNC = ["nan_result", "nul_error", "sys_exit", "keyboard_interrupt", "cancelled", "base_exception"]
PARAMS = [pytest.param("careless.do", act, id=act) for act in CASES] + [
    pytest.param("careless.do_sync", act, id=f"sync-{act}") for act in SYNC]


async def _submit(url: str, task: str, args: dict[str, Any]) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return (await enqueue(conn, task, args)).id


async def _timeline(url: str, job_id: uuid.UUID) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await job_queries.get_job(conn, job_id), await job_queries.get_history(conn, job_id)


def _ledger(path: Path, job_id: uuid.UUID) -> list[tuple[int, str, str]]:
    """(attempt, worker, phase) of every handler start and end of the job."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(a), w, phase) for j, a, w, _pid, phase in (line.split() for line in lines) if j == str(job_id)]


@pytest.mark.parametrize(("task", "act"), PARAMS)
def test_a_careless_handler_ends_its_own_job_and_nothing_else(db_url: str, tmp_path: Path, task: str,
                                                              act: str) -> None:
    expected_error, attempts = CASES[act]
    ledger = tmp_path / "ledger"
    env = skiplock_env(db_url, tasks="app.tasks,tests.acceptance.careless_tasks", lease_seconds=LEASE,
                       grace_seconds=GRACE, concurrency=2, poll_interval=0.2, rescue_interval=0.5,
                       max_result_bytes=MAX_RESULT_BYTES)
    env["CARELESS_LEDGER"] = str(ledger)
    neighbour = asyncio.run(_submit(db_url, "careless.neighbour", {"seconds": NEIGHBOUR_SECONDS}))
    careless = asyncio.run(_submit(db_url, task, {"what": act}))
    log = tmp_path / "worker.log"
    worker = start(["worker"], env, log)
    try:
        def settled() -> bool:
            assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{log.read_text()[-3000:]}"
            return scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE id = ANY(%s)"  # type: ignore[no-any-return]
                                  " AND state IN ('succeeded', 'failed')", ([neighbour, careless],)) == 2
        wait_for(settled, 2 * LEASE + 10, f"both jobs to finish; worker log:\n{log.read_text()[-3000:]}")
        assert worker.poll() is None, "the worker must outlive its careless handler"
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(GRACE + 10)
    text = log.read_text()
    assert code == 0, text[-3000:]
    worker_id = scalar(db_url, "SELECT worker_id FROM skiplock.job_timeline WHERE job_id = %s AND state = 'running'"
                               " LIMIT 1", (careless,))

    # the careless job: its own error, on its timeline, attempt by attempt
    job, history = asyncio.run(_timeline(db_url, careless))
    assert job is not None and job["state"] == "failed" and job["attempt"] == attempts, (job, text[-3000:])
    assert expected_error in job["last_error"], job["last_error"]
    ends = [h for h in history if h["state"] in ("queued", "failed") and h["error"]]
    assert [(h["state"], h["attempt"]) for h in ends] == ([("queued", 1), ("failed", 2)] if attempts == 2
                                                          else [("failed", 1)])
    assert all(expected_error in h["error"] and h["worker_id"] == worker_id for h in ends), ends
    assert not any((h["error"] or "").startswith("lease ") for h in history), history  # never rescued
    assert _ledger(ledger, careless) == [(a, worker_id, p) for a in range(1, attempts + 1) for p in ("start", "end")]

    # the neighbour: succeeded once, within its lease, on the same worker
    job, history = asyncio.run(_timeline(db_url, neighbour))
    assert job is not None and (job["state"], job["attempt"]) == ("succeeded", 1), job
    assert [h["state"] for h in history] == ["queued", "running", "succeeded"]
    assert (job["finished_at"] - job["started_at"]).total_seconds() < LEASE
    assert _ledger(ledger, neighbour) == [(1, worker_id, "start"), (1, worker_id, "end")]

    # the worker let go of everything and unregistered; nothing leaked into its log
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running'") == 0
    assert scalar(db_url, "SELECT count(*) FROM skiplock.workers") == 0
    for leak in ("was never awaited", "Task exception was never retrieved", "during=acknowledge"):
        assert leak not in text, text[-3000:]
