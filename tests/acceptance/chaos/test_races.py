"""Concurrent races, each decided by the database: identical idempotency keys submitted at
the same instant, cancel against claim (and against a running job's acknowledgement), and a
handler's retry against the rescuer (both at the row level and with a real frozen worker),
plus an operator's retry against the rescue of a last attempt."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

import tests.acceptance.chaos_tasks  # noqa: F401 - registers chaos.work for the in-process enqueue
from skiplock import enqueue
from skiplock.queries.loader import q
from tests.acceptance.chaos.conftest import FORMS, Report
from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.chaos.fleet import ApiProc, Fleet, api_available, worker_env
from tests.acceptance.chaos.ledger import audit, wait_terminal
from tests.acceptance.procs import ROOT, wait_for

THREADS = 8


def test_identical_idempotency_keys_make_one_job_each(chaos_url: str, make_fleet: Callable[..., Fleet],
                                                      chaos_report: Report) -> None:
    """8 connections submit the same 100 keys at the same instant (a barrier per key), half
    through the SQL function, half through the Python engine; then 6 CLI processes race on 3
    more keys. One job per key, every caller gets its id, exactly one caller created it, and
    the job runs once."""
    keys = [f"key-{i}" for i in range(100)]
    barrier = threading.Barrier(THREADS)
    answers: dict[str, list[tuple[uuid.UUID, bool]]] = {k: [] for k in keys}
    lock = threading.Lock()

    def via_sql() -> None:
        with psycopg.connect(chaos_url, autocommit=True) as c:
            for k in keys:
                barrier.wait()
                row = c.execute("SELECT skiplock.enqueue('chaos.work', '{}', idempotency_key => %s)", (k,)).fetchone()
                assert row is not None
                with lock:
                    answers[k].append((row[0], False))

    def via_engine() -> None:
        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(chaos_url, autocommit=True) as c:
                for k in keys:
                    barrier.wait()
                    e = await enqueue(c, "chaos.work", {}, idempotency_key=k)
                    with lock:
                        answers[k].append((e.id, e.created))
        asyncio.run(go())

    with ThreadPoolExecutor(THREADS) as pool:
        for f in [pool.submit(via_sql if i % 2 else via_engine) for i in range(THREADS)]:
            f.result()
    for k, got in answers.items():
        assert len({i for i, _ in got}) == 1, f"{k}: different jobs {got}"
        assert sum(created for _, created in got) <= 1
    assert scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs") == len(keys)

    # real processes: six `skiplock enqueue` commands per key, started together
    env = worker_env(chaos_url)
    cli_keys = ["cli-a", "cli-b", "cli-c"]
    procs = [subprocess.Popen([sys.executable, "-m", "app", "enqueue", "chaos.work", "--args", "{}",
                               "--idempotency-key", k], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in cli_keys for _ in range(6)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    parsed = [json.loads(o[0]) for o in outs]
    for i, k in enumerate(cli_keys):
        group = parsed[i * 6:(i + 1) * 6]
        assert len({g["id"] for g in group}) == 1 and sum(g["created"] for g in group) == 1, group

    ids = [r[0] for r in rows(chaos_url, "SELECT id FROM skiplock.jobs")]
    assert len(ids) == len(keys) + len(cli_keys)
    fleet = make_fleet(chaos_url)
    w = fleet.start(wait=False)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'") == len(ids),
             30, "every job to succeed")
    result = audit(chaos_url, ids, set())
    result.assert_clean()
    assert result.executed == len(ids) and result.reruns == 0
    assert fleet.stop_all() == {w.name: 0}
    chaos_report(result, None, submissions=THREADS * len(keys) + 6 * len(cli_keys), keys=len(ids))


@pytest.mark.skipif(not api_available(), reason="the HTTP API (app/http) is not there yet")
def test_identical_idempotency_keys_over_http(chaos_url: str, make_fleet: Callable[..., Fleet],
                                              chaos_report: Report, tmp_path: Path) -> None:
    """8 clients POST /jobs with the same Idempotency-Key at the same instant, for 30 keys, to a
    real API process: per key exactly one 201, seven 200s naming the same job, never a 5xx;
    one job per key, run once."""
    import httpx2 as httpx

    keys = [f"http-{i}" for i in range(30)]
    barrier = threading.Barrier(THREADS)
    answers: dict[str, list[tuple[int, str]]] = {k: [] for k in keys}
    lock = threading.Lock()
    api = ApiProc(chaos_url, tmp_path)
    try:
        api.wait_ready()

        def client() -> None:
            with httpx.Client(base_url=api.base, timeout=30) as c:
                for k in keys:
                    barrier.wait()
                    resp = c.post("/jobs", json={"task": "chaos.work", "args": {}}, headers={"Idempotency-Key": k})
                    with lock:
                        answers[k].append((resp.status_code, resp.json().get("id", resp.text)))

        with ThreadPoolExecutor(THREADS) as pool:
            for f in [pool.submit(client) for _ in range(THREADS)]:
                f.result()
    finally:
        assert api.stop() == 0
    for k, got in answers.items():
        assert sorted(s for s, _ in got) == [200] * (THREADS - 1) + [201], (k, got)
        assert len({i for _, i in got}) == 1, (k, got)
    ids = [uuid.UUID(got[0][1]) for got in answers.values()]
    fleet = make_fleet(chaos_url)
    fleet.start(wait=False)
    wait_terminal(chaos_url, ids, 30)
    result = audit(chaos_url, ids, set())
    result.assert_clean()
    assert result.executed == len(ids) and result.reruns == 0
    assert set(fleet.stop_all().values()) == {0}
    chaos_report(result, None, requests=THREADS * len(keys), keys=len(keys))


@pytest.mark.parametrize("form", FORMS)
def test_cancel_races_claim_and_acknowledgement(form: str, chaos_url: str, make_fleet: Callable[..., Fleet],
                                                chaos_report: Report) -> None:
    """Two cancellers (one from the head of the queue, in claim order, one at random) race two
    workers claiming the same jobs. A cancel either wins (the job ends `cancelled` and stays so,
    even if its handler finishes afterwards) or is refused because the job already finished;
    a job cancelled while queued never runs at all."""
    n = {"short": 400, "long": 3000}[form]
    ids = [r[0] for r in rows(chaos_url, "SELECT skiplock.enqueue('chaos.work', jsonb_build_object('seconds',"
                                         " round((random() * 0.15)::numeric, 3))) FROM generate_series(1, %s)", (n,))]
    outcome: dict[uuid.UUID, str] = {}
    lock = threading.Lock()

    def cancel(order: list[uuid.UUID]) -> None:
        with psycopg.connect(chaos_url, autocommit=True) as c:
            for j in order:
                try:
                    state = c.execute("SELECT skiplock.cancel(%s)", (j,)).fetchone()[0]  # type: ignore[index]
                except psycopg.errors.CheckViolation as exc:
                    state = "refused:" + str(exc).split(" is ")[1].split(";")[0]
                with lock:
                    outcome.setdefault(j, state) if state.startswith("refused") else outcome.__setitem__(j, state)

    fleet = make_fleet(chaos_url, lease_seconds=1.5)  # renewals every 0.5 s notice cancellations quickly
    workers = [fleet.start(wait=False) for _ in range(2)]
    for w in workers:
        fleet.wait_registered(w)
    rand = random.Random(7)
    head = ids[::2]
    shuffled = ids[1::2] + ids[::4]
    rand.shuffle(shuffled)
    threads = [threading.Thread(target=cancel, args=(o,)) for o in (head, shuffled)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state IN ('queued', 'running')") == 0,
             60, "every job to be terminal")
    codes = fleet.stop_all()
    assert set(codes.values()) == {0}, codes

    states = dict(rows(chaos_url, "SELECT id, state::text FROM skiplock.jobs"))
    histories: dict[uuid.UUID, list[str]] = {}
    for job_id, seq in rows(chaos_url, "SELECT job_id, array_agg(state::text ORDER BY step) FROM skiplock.job_timeline"
                                       " GROUP BY job_id"):
        histories[job_id] = seq
    started = {r[0] for r in rows(chaos_url, "SELECT DISTINCT job_id FROM chaos.ledger")}
    kinds: Counter[str] = Counter()
    for j in ids:
        won = outcome.get(j) == "cancelled"
        if won:
            assert states[j] == "cancelled", f"{j}: cancel returned cancelled but the job is {states[j]}"
            assert histories[j][-1] == "cancelled" and histories[j].count("cancelled") == 1, histories[j]
            if "running" in histories[j]:
                kinds["cancelled_running"] += 1
            else:
                kinds["cancelled_queued"] += 1
                assert j not in started, f"{j} was cancelled while queued but its handler ran"
        else:
            assert outcome[j] == "refused:succeeded" and states[j] == "succeeded", (outcome[j], states[j])
            kinds["finished_first"] += 1
    assert scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'cancelled' AND result IS NOT NULL") == 0
    result = audit(chaos_url, ids, set(), terminal=("succeeded", "cancelled"))
    result.assert_clean()
    assert result.reruns == 0
    assert kinds["cancelled_queued"] and kinds["finished_first"], kinds
    fenced = sum(w.log_text().count("skiplock.job.fenced") for w in fleet.workers)
    chaos_report(result, None, **kinds, late_acks_fenced=fenced)


def test_retry_ack_races_rescue_row_by_row(chaos_url: str) -> None:
    """A worker's retry acknowledgements (running -> queued, fenced by attempt and worker) and a
    rescuer (lease expired -> queued) go through the same 200 expired rows at the same time, in
    batches of 10 and in different orders, 20 times over. Each row changes exactly once: whoever
    locks it first wins and the other changes nothing; their answers agree on who took which."""
    rounds, n, chunk = 20, 200, 10
    seen: Counter[str] = Counter()
    rand = random.Random(3)
    for r in range(rounds):
        worker = f"w-{r}"
        with psycopg.connect(chaos_url, autocommit=True) as c:
            c.execute("SELECT skiplock.enqueue('chaos.work', '{}') FROM generate_series(1, %s)", (n,))
            claimed = c.execute(q("claim_batch"), {"worker_id": worker, "queues": None, "limit": n,
                                                   "lease_seconds": 0.001, "now": None, "turn": 0}).fetchall()
            job_ids = [row[0] for row in claimed]
            assert len(job_ids) == n
            wait_for(lambda c=c, ids=job_ids: c.execute(
                "SELECT count(*) = %s FROM skiplock.jobs WHERE id = ANY(%s) AND lease_expires_at < now()",
                (n, ids)).fetchone()[0], 5, "the 1 ms leases to lapse")  # type: ignore[index]
        order = job_ids[:]
        rand.shuffle(order)
        barrier = threading.Barrier(2)

        def ack(order: list[uuid.UUID] = order, worker: str = worker) -> set[uuid.UUID]:
            took: set[uuid.UUID] = set()
            with psycopg.connect(chaos_url, autocommit=True) as c:
                barrier.wait()
                for i in range(0, n, chunk):
                    ids = order[i:i + chunk]
                    k = len(ids)
                    # (id, done): a row the rescuer has locked is skipped, done = false
                    took |= {g[0] for g in c.execute(q("finish_many_if_held"), {
                        "worker_id": worker, "ids": ids, "attempts": [1] * k, "states": ["queued"] * k,
                        "results": [None] * k, "errors": ["RuntimeError: boom"] * k, "run_ats": [None] * k,
                        "checkpoints": [None] * k, "progresses": [None] * k, "now": None}).fetchall() if g[1]}
            return took

        def rescue() -> set[uuid.UUID]:
            took: set[uuid.UUID] = set()
            with psycopg.connect(chaos_url, autocommit=True) as c:
                barrier.wait()
                while got := c.execute(q("rescue_expired"), {"limit": chunk, "now": None}).fetchall():
                    took |= {g[0] for g in got}
            return took

        with ThreadPoolExecutor(2) as pool:
            acked_f, rescued_f = pool.submit(ack), pool.submit(rescue)
            acked, rescued = acked_f.result(), rescued_f.result()
        assert acked.isdisjoint(rescued), "a row was changed by both the acknowledgement and the rescuer"
        assert acked | rescued == set(job_ids), "a row was changed by neither"
        transitions = rows(chaos_url, "SELECT job_id, count(*) FROM skiplock.job_timeline WHERE job_id = ANY(%s)"
                                      " AND state = 'queued' AND attempt = 1 GROUP BY 1", (job_ids,))
        assert sorted(cnt for _, cnt in transitions) == [1] * n
        by_rescue = scalar(chaos_url, "SELECT count(*) FROM skiplock.job_timeline WHERE job_id = ANY(%s)"
                                      " AND error LIKE 'lease expired%%'", (job_ids,))
        assert by_rescue == len(rescued), "the history disagrees with the rescuer's answer"
        seen["by_ack"] += len(acked)
        seen["by_rescue"] += len(rescued)
        with psycopg.connect(chaos_url, autocommit=True) as c:
            c.execute("SELECT skiplock.cancel(id) FROM skiplock.jobs WHERE state = 'queued'")
    assert seen["by_ack"] and seen["by_rescue"], f"one side never won; the race was not exercised: {seen}"
    print(f"\nretry ack vs rescue over {rounds} rounds of {n} rows: {dict(seen)}")


def test_late_retry_of_a_frozen_worker_loses_to_the_rescue(chaos_url: str, make_fleet: Callable[..., Fleet],
                                                           chaos_report: Report) -> None:
    """Worker A runs five jobs whose first attempt fails; A is frozen before they fail, they are
    rescued and run again on B; when A wakes, its handlers fail and it sends retry
    acknowledgements for attempt 1. Those must not put B's running jobs back in the queue."""
    fleet = make_fleet(chaos_url, lease_seconds=2)
    a = fleet.start()
    ids = [r[0] for r in rows(chaos_url, "SELECT skiplock.enqueue('chaos.work', %s) FROM generate_series(1, 5)",
                              (Jsonb({"seconds": 0.5, "retry_seconds": 6, "fail_attempts": 1}),))]
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s", (a.worker_id,)) == 5,
             10, "A to start all five", interval=0.005)
    fleet.freeze(a)
    t = time.monotonic()
    b = fleet.start()
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND attempt = 2"
                                       " AND worker_id = %s", (b.worker_id,)) == 5, 20, "B to run attempt 2")
    recovered = time.monotonic() - t
    fleet.thaw(a)
    wait_for(lambda: a.log_text().count("skiplock.job.fenced") >= 5
             or scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE attempt = 2 AND state = 'running'") < 5,
             15, "A's late retry acknowledgements")
    assert scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND attempt = 2"
                             " AND worker_id = %s", (b.worker_id,)) == 5, "a stale retry re-queued a running job"
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'") == 5, 20,
             "B to finish")
    result = audit(chaos_url, ids, fleet.disrupted)
    result.assert_clean()
    assert result.executed == 10 and result.completed == 5  # attempt 1 on A (failed late), attempt 2 on B
    assert fleet.stop_all() == {"w1": 0, "w2": 0}
    chaos_report(result, recovered, late_retries_fenced=a.log_text().count("skiplock.job.fenced"))


def test_operator_retry_races_rescue_of_a_last_attempt(chaos_url: str, make_fleet: Callable[..., Fleet],
                                                       chaos_report: Report) -> None:
    """Jobs with max_attempts 1 are held by a worker that is killed. While the rescuer turns
    them into `failed` (their only attempt is lost), an operator hammers `skiplock.retry(id)`.
    Each retry is refused while the job is running and accepted exactly once after the rescue;
    then the job runs again and succeeds. Nothing is stuck in between."""
    fleet = make_fleet(chaos_url, lease_seconds=2)
    a = fleet.start()
    ids = [r[0] for r in rows(chaos_url, "SELECT skiplock.enqueue('chaos.work', %s, max_attempts => 1)"
                                         " FROM generate_series(1, 5)", (Jsonb({"seconds": 1.0}),))]
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM chaos.ledger WHERE worker_id = %s", (a.worker_id,)) == 5,
             10, "A to start all five", interval=0.005)
    fleet.kill(a)
    killed = time.monotonic()
    fleet.start(wait=False)
    verdicts: dict[uuid.UUID, Counter[str]] = {j: Counter() for j in ids}

    def operator() -> None:
        pending = set(ids)
        deadline = time.monotonic() + 30
        with psycopg.connect(chaos_url, autocommit=True) as c:
            while pending and time.monotonic() < deadline:
                for j in list(pending):
                    try:
                        c.execute("SELECT skiplock.retry(%s)", (j,))
                        verdicts[j]["accepted"] += 1
                        pending.discard(j)
                    except psycopg.errors.CheckViolation as exc:
                        verdicts[j]["refused:" + str(exc).split(" is ")[1].split(";")[0]] += 1

    operator()
    wait_for(lambda: scalar(chaos_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'") == 5, 20,
             "the retried jobs to succeed")
    recovered = time.monotonic() - killed
    for j in ids:
        assert verdicts[j]["accepted"] == 1 and set(verdicts[j]) <= {"accepted", "refused:running"}, verdicts[j]
        history = [r[0] for r in rows(chaos_url, "SELECT state::text FROM skiplock.job_timeline WHERE job_id = %s"
                                                 " ORDER BY step", (j,))]
        assert history == ["queued", "running", "failed", "queued", "running", "succeeded"], history
    result = audit(chaos_url, ids, fleet.killed)
    result.assert_clean()
    fleet.stop_all()
    chaos_report(result, recovered, refused_while_running=sum(v["refused:running"] for v in verdicts.values()))
