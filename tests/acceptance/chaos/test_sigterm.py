"""SIGTERM a busy worker (the graceful path) while jobs keep arriving and other workers work.

Proves: the worker exits 0 within its grace period plus a margin; of the jobs it held, each
either finished on it or was released back to `queued` (attempt given back, no error), none
was left to a lease expiry, none ran to completion twice; released jobs then run elsewhere."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.chaos.api import submitter, via
from tests.acceptance.chaos.conftest import FORMS, Report
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.chaos.load import Load
from tests.acceptance.procs import wait_for

GRACE = 1.5
SPEC: dict[str, dict[str, Any]] = {"short": {"terms": 2, "rate": 30}, "long": {"terms": 8, "rate": 50}}


def job_args(rand: random.Random) -> dict[str, Any]:
    """Mostly short jobs; one in five outlives the grace period and must be released."""
    return {"seconds": 3.0 if rand.random() < 0.2 else round(rand.uniform(0.05, 0.3), 3)}


def holds_long_and_more(fleet: Fleet, url: str, w: Any) -> list[Any] | None:
    held = fleet.held(w)
    long = scalar(url, "SELECT count(*) FROM skiplock.jobs WHERE id = ANY(%s) AND (args->>'seconds')::float >= 3",
                  (held,))
    return held if len(held) >= 3 and long >= 1 else None


@pytest.mark.parametrize("form", FORMS)
def test_sigterm_under_load_finishes_or_releases(form: str, chaos_url: str, make_fleet: Callable[..., Fleet],
                                                 chaos_report: Report, tmp_path: Path) -> None:
    spec = SPEC[form]
    fleet = make_fleet(chaos_url, grace_seconds=GRACE, lease_seconds=10)  # a rescue would take 10 s: not needed
    for w in [fleet.start(wait=False) for _ in range(3)]:
        fleet.wait_registered(w)
    recover: list[float] = []
    released_total = finished_total = 0
    with submitter(chaos_url, tmp_path) as (submit, _, _), Load(submit, spec["rate"], job_args) as load:
        for k in range(spec["terms"]):
            victim = fleet.live()[0]
            held = wait_for(lambda v=victim: holds_long_and_more(fleet, chaos_url, v), 30,
                            f"{victim.name} to hold 3+ jobs, one of them long")
            fleet.start(wait=False)  # its successor, as a rolling deploy would
            fleet.term(victim)
            t = time.monotonic()
            assert victim.proc.wait(GRACE + 15) == 0, victim.log_text()[-3000:]
            shutdown = time.monotonic() - t
            assert shutdown < GRACE + 10, f"shutdown took {shutdown:.1f}s"
            assert fleet.held(victim) == [], "a stopped worker still holds jobs"
            assert scalar(chaos_url, "SELECT count(*) FROM skiplock.workers WHERE id = %s", (victim.worker_id,)) == 0
            # what happened to each job it held, right after its claim: finished or released
            after = dict(rows(chaos_url, """
                SELECT DISTINCT ON (h.job_id) h.job_id, h.state::text || coalesce(':' || h.error, '')
                  FROM skiplock.job_timeline h
                  JOIN skiplock.job_timeline c ON c.job_id = h.job_id AND c.state = 'running' AND c.worker_id = %s
                                              AND h.step > c.step
                 WHERE h.job_id = ANY(%s) ORDER BY h.job_id, h.step""", (victim.worker_id, held)))
            assert set(after) == set(held) and set(after.values()) <= {"succeeded", "queued"}, after
            released = [j for j, s in after.items() if s == "queued"]
            released_total += len(released)
            finished_total += len(held) - len(released)
            assert released, "the long job should have been released"
            wait_for(lambda r=released: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE id = ANY(%s)"
                                                          " AND state = 'succeeded'", (r,)) == len(r),
                     30, "the released jobs to run elsewhere")
            recover.append(time.monotonic() - t)
    wait_terminal(chaos_url, load.accepted, 60)
    codes = fleet.stop_all()
    assert set(codes.values()) == {0}, codes
    assert not load.errors and not load.refused
    result = audit(chaos_url, load.accepted, fleet.termed)
    result.assert_clean()
    assert result.duplicated == 0
    assert scalar(chaos_url, "SELECT count(*) FROM skiplock.job_timeline WHERE error LIKE 'lease %%'") == 0
    chaos_report(result, max(recover), terms=spec["terms"], released=released_total, finished_in_grace=finished_total,
                 via=via())
