"""A 10,000-job batch run by three real worker processes, one of them SIGKILLed midway, with
some jobs failing once and succeeding on their retry.

Proves: at every instant a reader looks, the batch's counts equal a count of its jobs by
state (both read in one snapshot) through claims, acknowledgements, retries and the rescue of
the killed worker's jobs; the completion job is enqueued once and runs once, with the final
counts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from skiplock import JobSpec, enqueue_batch
from tests.acceptance.chaos.conftest import FORMS
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.procs import wait_for

SPEC: dict[str, dict[str, Any]] = {"short": {"jobs": 10_000, "kills": 1}, "long": {"jobs": 50_000, "kills": 3}}
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FAIL_EVERY = 25  # every 25th job fails its first attempt


def create(url: str, n: int) -> uuid.UUID:
    """The batch, created in one transaction; every FAIL_EVERY-th job fails its first attempt."""
    specs = [JobSpec("chaos.flaky", {"seconds": 0.001, "fail_first": i % FAIL_EVERY == 0}) for i in range(n)]

    async def go() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            return (await enqueue_batch(c, specs, on_complete=JobSpec("chaos.batch_done"))).id
    import tests.acceptance.chaos_tasks  # noqa: F401 - registers the tasks the specs name
    return asyncio.run(go())


class Sampler(threading.Thread):
    """Reads the batch's counts and its jobs counted by state in one REPEATABLE READ snapshot,
    again and again, until stopped; keeps every pair that differs."""

    def __init__(self, url: str, batch: uuid.UUID) -> None:
        super().__init__(name="batch-sampler", daemon=True)
        self.url, self.batch = url, batch
        self.samples = 0
        self.moving = 0  # samples with jobs running
        self.wrong: list[tuple[dict[str, int], dict[str, int]]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as c:
                while not self.stop.is_set():
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    row = c.execute("SELECT total, queued, running, succeeded, failed, cancelled "
                                    "FROM skiplock.batch_progress WHERE id = %s", (self.batch,)).fetchone()
                    real = dict.fromkeys(STATES, 0) | {s: n for s, n in c.execute(
                        "SELECT state::text, count(*) FROM skiplock.jobs WHERE batch_id = %s GROUP BY 1",
                        (self.batch,)).fetchall()}
                    c.rollback()
                    assert row is not None
                    stored = dict(zip(("total", *STATES), row, strict=True))
                    real = {"total": sum(real.values()), **real}
                    self.samples += 1
                    self.moving += stored["running"] > 0
                    if stored != real:
                        self.wrong.append((stored, real))
                    self.stop.wait(0.02)  # ~50 samples a second leave the two cores to the workers
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("form", FORMS)
def test_batch_counts_stay_exact_through_a_sigkill_and_retries(form: str, chaos_url: str,
                                                               make_fleet: Callable[..., Fleet]) -> None:
    spec = SPEC[form]
    n = spec["jobs"]
    fleet = make_fleet(chaos_url, lease_seconds=2, concurrency=20)
    batch = create(chaos_url, n)
    sampler = Sampler(chaos_url, batch)
    sampler.start()
    try:
        workers = [fleet.start(wait=False) for _ in range(3)]
        for w in workers:
            fleet.wait_registered(w)
        for k in range(spec["kills"]):
            wait_for(lambda k=k: scalar(chaos_url, "SELECT succeeded FROM skiplock.batches WHERE id = %s",
                                        (batch,)) >= n * (k + 1) // (spec["kills"] + 2),
                     120, f"the batch to be {100 * (k + 1) // (spec['kills'] + 2)}% done")
            victim = fleet.live()[0]
            wait_for(lambda v=victim: fleet.held(v), 30, f"worker {victim.name} to hold jobs")
            fleet.kill(victim)
            if k + 1 < spec["kills"]:
                fleet.start(wait=False)  # a replacement, as a supervisor would
        done = wait_for(lambda: scalar(chaos_url, "SELECT j.state = 'succeeded' FROM skiplock.batches b "
                                                  "JOIN skiplock.jobs j ON j.id = b.completion_job_id "
                                                  "WHERE b.id = %s", (batch,)), 180,
                        "the batch's completion job to succeed")
        assert done
    finally:
        sampler.stop.set()
        sampler.join(30)
    fleet.stop_all()

    assert sampler.error is None, sampler.error
    assert sampler.wrong == []
    assert sampler.samples >= 20 and sampler.moving >= 5, (sampler.samples, sampler.moving)
    [final] = rows(chaos_url, "SELECT state, total, queued, running, succeeded, failed, cancelled, "
                              "completion_job_id FROM skiplock.batch_progress WHERE id = %s", (batch,))
    assert final[:7] == ("succeeded", n, 0, 0, n, 0, 0)
    retried = scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE batch_id = %s AND attempt - attempt_base "
                                ">= 2", (batch,))
    assert retried >= n // FAIL_EVERY  # the jobs that failed once, and those the kill interrupted
    rescued = scalar(chaos_url, "SELECT count(DISTINCT h.job_id) FROM skiplock.job_history h "
                                "JOIN skiplock.jobs j ON j.id = h.job_id WHERE j.batch_id = %s "
                                "AND h.error LIKE 'lease %%stopped%%'", (batch,))
    assert rescued >= 1, "no job of the killed worker was rescued"
    completions = rows(chaos_url, "SELECT id, state::text, result FROM skiplock.jobs "
                                  "WHERE task = 'chaos.batch_done' AND args->'batch'->>'id' = %s", (str(batch),))
    assert [(c[0], c[1]) for c in completions] == [(final[7], "succeeded")]
    assert completions[0][2] == {"id": str(batch), "state": "succeeded", "total": n, "succeeded": n, "failed": 0,
                                 "cancelled": 0}
    runs = scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE job_id = %s AND phase = 'start'", (final[7],))
    assert runs == 1, f"the completion job ran {runs} times"
