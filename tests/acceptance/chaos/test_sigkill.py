"""SIGKILL a worker in the middle of a claimed batch, again and again, while the other workers
keep working and jobs keep arriving.

Proves: nothing accepted is lost; every job the killed worker held is rescued once its lease
expires and runs to success on another worker; the others go on completing jobs meanwhile;
the only jobs that ever run twice are jobs a killed worker had started."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.chaos.api import submitter, via
from tests.acceptance.chaos.conftest import FORMS, Report
from tests.acceptance.chaos.dbq import scalar
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.chaos.load import Load
from tests.acceptance.procs import wait_for

LEASE = 2.0
SPEC: dict[str, dict[str, Any]] = {"short": {"kills": 3, "rate": 40}, "long": {"kills": 12, "rate": 60}}


def job_args(rand: random.Random) -> dict[str, Any]:
    return {"seconds": round(rand.uniform(0.05, 0.5), 3)}


def succeeded(url: str, ids: list[Any]) -> bool:
    return scalar(url, "SELECT count(*) FROM skiplock.jobs WHERE id = ANY(%s) AND state = 'succeeded'",
                  (ids,)) == len(ids)


@pytest.mark.parametrize("form", FORMS)
def test_sigkill_mid_batch_repeatedly(form: str, chaos_url: str, make_fleet: Callable[..., Fleet],
                                      chaos_report: Report, tmp_path: Path) -> None:
    spec = SPEC[form]
    fleet = make_fleet(chaos_url, lease_seconds=LEASE, concurrency=10)
    for w in [fleet.start(wait=False) for _ in range(3)]:
        fleet.wait_registered(w)
    recover: list[float] = []
    held_total = 0
    with submitter(chaos_url, tmp_path) as (submit, _, _), Load(submit, spec["rate"], job_args) as load:
        for k in range(spec["kills"]):
            victim = fleet.live()[0]
            held = wait_for(lambda v=victim: h if len(h := fleet.held(v)) >= 3 else None,
                            30, f"worker {victim.name} to hold a batch of 3+ jobs")
            db_time = scalar(chaos_url, "SELECT clock_timestamp()")
            fleet.kill(victim)
            killed_at = time.monotonic()
            held_total += len(held)
            fleet.start(wait=False)  # a replacement, as a supervisor would
            wait_for(lambda h=held: succeeded(chaos_url, h), LEASE + 20,
                     f"kill {k + 1}: the {len(held)} jobs {victim.name} held to succeed elsewhere")
            recover.append(time.monotonic() - killed_at)
            others = scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE phase = 'end' AND at > %s"
                                       " AND worker_id <> %s", (db_time, victim.worker_id))
            assert others > 0, "the other workers stopped working while one was being killed"
    wait_terminal(chaos_url, load.accepted, 60)
    codes = fleet.stop_all()

    assert load.errors == [] and not load.refused
    a = audit(chaos_url, load.accepted, fleet.disrupted)
    a.assert_clean()
    assert a.states == {"succeeded": len(load.accepted)}
    for wid in fleet.killed:  # each killed worker's batch really was taken back by a rescuer
        rescued = scalar(chaos_url, "SELECT count(*) FROM skiplock.job_timeline WHERE error LIKE %s",
                         (f"lease %: worker {wid} stopped%",))
        assert rescued >= 1, f"nothing of killed worker {wid} was rescued"
    survivors = {w.name for w in fleet.workers if w.worker_id not in fleet.killed}
    assert all(codes[n] == 0 for n in survivors), codes
    chaos_report(a, max(recover), kills=len(fleet.killed), held_at_kill=held_total, via=via())
