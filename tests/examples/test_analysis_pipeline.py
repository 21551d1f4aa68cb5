"""The document analysis example (examples/analysis_pipeline) run as a user runs it: the real
runnable with 8 real worker processes, one of them SIGKILLed while it holds jobs. Every task
ends in the state its quality-check schedule (examples/analysis_pipeline/qa.py) and the kill
predict, run by run; the batch's counts equal a count of its jobs by state at every sample;
the report job runs exactly once, with the final counts. And the priority queue is served first."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from examples.analysis_pipeline.ledger import SCHEMA_SQL
from examples.analysis_pipeline.qa import (
    ALL_QUEUES,
    ANALYSIS_QUEUES,
    QA_ATTEMPTS,
    REPORT_TASK,
    URGENT_TASK,
    WORK_TASKS,
    plan,
    verdict,
)
from tests.acceptance.procs import ROOT, scalar, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

TASKS = 240
COUNTED = ("queued", "running", "succeeded", "failed", "cancelled", "parked", "waiting")


def batch_and_counts(conn: psycopg.Connection[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The batch's counts and a count of its jobs by state, read in one snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        b = conn.execute("SELECT * FROM skiplock.batch_progress ORDER BY id DESC LIMIT 1").fetchone()
        if b is None:
            return None, {}
        rows = conn.execute(
            "SELECT CASE WHEN parked IS NOT NULL THEN 'parked' ELSE state::text END AS state, count(*) AS n "
            "  FROM skiplock.jobs WHERE batch_id = %s GROUP BY 1", (b["id"],)).fetchall()
    return b, {r["state"]: r["n"] for r in rows}


def assert_exact(b: dict[str, Any], counted: dict[str, int]) -> None:
    assert {s: b[s] for s in COUNTED} == {s: counted.get(s, 0) for s in COUNTED}
    assert b["total"] == sum(counted.values())


def expected_end(task: str, doc: int, attempt: int, reviewed: bool) -> tuple[str, str]:
    """How a run the worker finished ends, by the QA schedule: (state after it, its error's mark)."""
    v = verdict(doc, task)
    if v.unreadable:
        return "failed", "cannot be read"
    if reviewed or (v.passes_on is not None and attempt >= v.passes_on):
        return "succeeded", ""
    if attempt == QA_ATTEMPTS:
        return "waiting", f"quality check failed on every attempt ({QA_ATTEMPTS})"
    return "queued", f"QualityCheckFailed: quality check failed: {task} of document {doc}"


def check_runs(job: dict[str, Any], timeline: list[dict[str, Any]], killed: str) -> dict[str, int]:
    """Walks one job's timeline run by run against the schedule; returns what happened to it."""
    seen = {"kills": 0, "qa_errors": 0, "parks": 0, "reviewed": 0}
    reviewed = False
    steps = iter(timeline[1:])  # the first step is the submission
    for step in steps:
        if step["state"] == "queued":  # a resume after a park (the only transition to queued not ending a run)
            assert reviewed is False and seen["parks"] == 1
            reviewed = True
            continue
        assert step["state"] == "running", timeline
        attempt, end = step["attempt"], next(steps)
        error = end["error"] or ""
        if error.startswith("lease "):  # the run was on the killed worker: rescued, the attempt lost
            assert step["worker_id"] == killed and "stopped" in error
            assert end["state"] == ("failed" if attempt == QA_ATTEMPTS else "queued")
            seen["kills"] += 1
            continue
        state, mark = expected_end(job["task"], job["doc"], attempt, reviewed)
        assert (end["state"], mark in error) == (state, True), (job, step, end)
        seen["qa_errors"] += state == "queued"
        seen["parks"] += state == "waiting"
    assert end["state"] == job["state"]
    seen["reviewed"] = int(reviewed and job["state"] == "succeeded")
    return seen


def test_the_pipeline_survives_a_killed_worker_with_exact_counts_and_one_report(db_url: str, tmp_path: Path):
    out = tmp_path / "pipeline.out"
    env = skiplock_env(db_url)
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "examples.analysis_pipeline", "--tasks", str(TASKS), "--work-ms", "150",
             "--auto-review", "0.3", "--worker-log", str(tmp_path / "workers.log")],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    killed = ""
    samples = 0
    try:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
            deadline = time.monotonic() + 150
            while proc.poll() is None:
                assert time.monotonic() < deadline, out.read_text()
                b, counted = batch_and_counts(conn)
                if b is not None:
                    assert_exact(b, counted)
                    samples += 1
                if not killed:
                    killed = kill_a_busy_worker(conn, out)
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert proc.returncode == 0, text
    assert killed and samples > 20

    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        b, counted = batch_and_counts(conn)
        assert b is not None
        assert_exact(b, counted)
        jobs = conn.execute("SELECT id, task, (args->>'doc')::int AS doc, state::text, attempt FROM skiplock.jobs "
                            "WHERE batch_id = %s", (b["id"],)).fetchall()
        assert sorted((j["task"], j["doc"]) for j in jobs) == sorted(plan(TASKS))
        timelines: dict[Any, list[dict[str, Any]]] = {}
        for row in conn.execute("SELECT t.* FROM skiplock.job_timeline t JOIN skiplock.jobs j ON j.id = t.job_id "
                                "WHERE j.batch_id = %s ORDER BY t.job_id, t.step", (b["id"],)):
            timelines.setdefault(row["job_id"], []).append(row)
        results = conn.execute("SELECT job_id, attempt, reviewed, review FROM analysis_pipeline.results").fetchall()
        reports = conn.execute("SELECT job_id, report FROM analysis_pipeline.reports").fetchall()
        completion = conn.execute("SELECT id, state::text, result FROM skiplock.jobs WHERE task = %s",
                                  (REPORT_TASK,)).fetchall()
        limits = conn.execute("SELECT name, max_waiting FROM skiplock.queues WHERE name LIKE 'analysis.%%'").fetchall()
        timeouts = conn.execute("SELECT name, timeout FROM skiplock.tasks WHERE name <> %s", (REPORT_TASK,)).fetchall()

    # every task ended, in the state its schedule and the kill predict, run by run
    assert b["state"] == "failed" and b["percent"] == 100 and b["parked"] == 0 and b["total"] == TASKS
    seen = {j["id"]: check_runs(j, timelines[j["id"]], killed) for j in jobs}
    assert sum(s["kills"] for s in seen.values()) >= 1  # the kill took jobs with it
    never = {j["id"] for j in jobs if not verdict(j["doc"], j["task"]).unreadable
             and verdict(j["doc"], j["task"]).passes_on is None}
    parked = {i for i, s in seen.items() if s["parks"]}
    assert parked <= never and all(seen[i]["kills"] for i in never - parked)
    assert len(parked) >= 5
    assert sum(s["qa_errors"] for s in seen.values()) > 20  # QA errors are on the timelines
    # the ledger: one result per succeeded job, written by its last attempt; reviews as given
    succeeded = {j["id"]: j for j in jobs if j["state"] == "succeeded"}
    assert sorted(r["job_id"] for r in results) == sorted(succeeded)
    for r in results:
        assert r["attempt"] == succeeded[r["job_id"]]["attempt"]
        assert r["reviewed"] == (r["review"] is not None) == bool(seen[r["job_id"]]["reviewed"])
        if r["review"] is not None:
            assert r["review"]["approved"] is True and r["review"]["by"] == "auto-review"
    # the report job ran exactly once, with the final counts
    assert len(completion) == 1 and completion[0]["state"] == "succeeded"
    assert [r["job_id"] for r in reports] == [completion[0]["id"]]
    report = reports[0]["report"]
    assert {k: report[k] for k in ("total", "succeeded", "failed", "cancelled", "state")} == {
        "total": TASKS, "succeeded": counted.get("succeeded"), "failed": counted.get("failed"), "cancelled": 0,
        "state": "failed"}
    assert report["approved_at_review"] == sum(s["reviewed"] for s in seen.values())
    assert completion[0]["result"] == report
    # the queues and tasks as the example sets them up
    assert sorted(limits, key=lambda r: r["name"]) == sorted(
        ({"name": q, "max_waiting": 10000} for q in ANALYSIS_QUEUES), key=lambda r: r["name"])
    assert {r["name"]: r["timeout"] for r in timeouts} == {name: 300.0 for name in WORK_TASKS}
    # what the user saw: progress lines with tasks in review, then 100 % and the report
    lines = re.findall(r"total (\d+) \| completed (\d+) \| failed (\d+) \| in review (\d+) .*\| ([\d.]+)%", text)
    assert lines and any(int(line[3]) > 0 for line in lines)
    assert f"report: batch {b['id']} failed: {TASKS} tasks" in text


def kill_a_busy_worker(conn: psycopg.Connection[dict[str, Any]], out: Path) -> str:
    """SIGKILL one of the pipeline's workers that holds at least two running jobs; its id, or ''."""
    started = re.search(r"workers started \(pids ([\d ]+)\)", out.read_text())
    if started is None:
        return ""
    pids = {int(p) for p in started.group(1).split()}
    row = conn.execute("SELECT worker_id FROM skiplock.jobs WHERE state = 'running' AND batch_id IS NOT NULL "
                       "GROUP BY worker_id HAVING count(*) >= 2 LIMIT 1").fetchone()
    if row is None:
        return ""
    pid = int(row["worker_id"].rsplit(":", 2)[1])
    assert pid in pids
    os.kill(pid, signal.SIGKILL)
    return str(row["worker_id"])


def test_urgent_tasks_are_claimed_before_analyses_submitted_earlier(db_url: str, tmp_path: Path):
    """The priority queue is served first: with one slot, every urgent task runs before the
    analyses queued before it, whatever queue the fair turn starts from."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.encode())
        conn.execute("INSERT INTO skiplock.queues (name, paused) SELECT unnest(%s::text[]), true", (list(ALL_QUEUES),))
    worker = start(["worker", "--concurrency", "1"], skiplock_env(
        db_url, tasks="examples.analysis_pipeline.tasks", queues=",".join(ALL_QUEUES)), tmp_path / "worker.log")
    try:
        # the task defaults (queue, priority) come from what the worker recorded in skiplock.tasks
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM skiplock.tasks") == len(WORK_TASKS) + 1, 60,
                 "the worker to record its tasks")
        passing = [(name, d) for name in WORK_TASKS for d in range(200)
                   if verdict(d, name).passes_on == 1 and not verdict(d, name).unreadable]
        analyses = [next(p for p in passing if p[0] == queue) for queue in ANALYSIS_QUEUES[:12]]
        urgent = [p for p in passing if p[0] == URGENT_TASK][:3]
        with psycopg.connect(db_url, autocommit=True) as conn:
            for name, doc in [*analyses, *urgent]:
                conn.execute("SELECT skiplock.enqueue(%s, jsonb_build_object('doc', %s::int))", (name, doc))
            assert conn.execute("SELECT array_agg(DISTINCT queue) FROM skiplock.jobs WHERE task = %s",
                                (URGENT_TASK,)).fetchone() == (["priority"],)
            conn.execute("UPDATE skiplock.queues SET paused = false")
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'") == 15, 60,
                 "every task to run")
    finally:
        worker.terminate()
        worker.wait(30)
    with psycopg.connect(db_url, autocommit=True) as conn:
        order = [t for t, in conn.execute("SELECT task FROM skiplock.jobs ORDER BY started_at")]
    assert order[:3] == [URGENT_TASK] * 3
