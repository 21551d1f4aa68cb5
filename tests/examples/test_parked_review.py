"""A task of the analysis example parked for review, end to end with real processes: a uvicorn
API server and a worker. The parked job is visible in psql, in the API and on the dashboard
(logged in with a session); an operator resumes it over HTTP with data; its next attempt
receives exactly that data (the example's results ledger); and its batch's counts are exact
at every step: before the park, parked, resumed, succeeded."""

from __future__ import annotations

import html
import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from app.embedded_pg import find_bindir, free_port
from examples.analysis_pipeline.ledger import SCHEMA_SQL
from examples.analysis_pipeline.qa import QA_THRESHOLD, REPORT_TASK, verdict
from tests.acceptance.procs import skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

TOKEN = "operator-token"
TASK = "analysis.ocr"
TASKS_ENV = {"tasks": "examples.analysis_pipeline.tasks"}
COUNTS = ("total", "waiting", "queued", "running", "parked", "succeeded", "failed", "cancelled")


def docs_where(check: Any) -> list[int]:
    """Documents whose quality check of TASK goes as `check` says (qa.verdict)."""
    return [d for d in range(1, 1000) if check(verdict(d, TASK))]


NEVER, NEVER_2 = docs_where(lambda v: not v.unreadable and v.passes_on is None)[:2]
AT_ONCE = docs_where(lambda v: v.passes_on == 1)[0]


def call(base: str, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                                          **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(SCHEMA_SQL.encode())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["api", "--port", str(port)], skiplock_env(db_url, api_tokens=TOKEN, **TASKS_ENV),
                 tmp_path / "api.log")
    try:
        wait_for(lambda: _up(base), 30, "the API to answer /health")
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


class Dashboard:
    """A browser's session with the dashboard: log in once with the token, then GET pages."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        with self.http.open(base + "/ui/login", timeout=10) as r:
            form = r.read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        body = urllib.parse.urlencode({"csrf": csrf.group(1), "next": "/", "token": TOKEN}).encode()
        with self.http.open(urllib.request.Request(base + "/ui/login", data=body, method="POST"), timeout=10) as r:
            assert r.status == 200 and r.url == base + "/"  # redirected to the overview, signed in

    def get(self, path: str) -> str:
        with self.http.open(self.base + path, timeout=10) as r:
            assert r.status == 200 and "/ui/login" not in r.url
            return str(r.read().decode())

    def post_form(self, path: str, page: str) -> str:
        """Press the page's button that posts to `path` (its form carries the session's CSRF token)."""
        csrf = re.search(rf'action="{re.escape(path)}"[^>]*><input type="hidden" name="csrf" value="([^"]+)"', page)
        assert csrf is not None, path
        body = urllib.parse.urlencode({"csrf": csrf.group(1)}).encode()
        with self.http.open(urllib.request.Request(self.base + path, data=body, method="POST"), timeout=10) as r:
            assert r.status == 200
            return str(r.read().decode())

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        row = re.search(r'<tr id="counts">(.*?)</tr>', self.get(f"/ui/batches/{batch_id}"))
        assert row is not None
        return dict(zip(COUNTS, map(int, re.findall(r'<td class="n">(\d+)</td>', row.group(1))), strict=True))


def psql(url: str, query: str) -> str:
    """What an operator sees in psql (the real client, as `make psql` runs it)."""
    return subprocess.run([str(find_bindir() / "psql"), url, "-AtXc", query], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def exact_counts(url: str, batch_id: str) -> dict[str, int]:
    """The batch's counts, after checking they equal a count of its jobs by state in the same snapshot."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c, c.transaction():
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        b = c.execute("SELECT * FROM skiplock.batch_progress WHERE id = %s", (batch_id,)).fetchone()
        jobs = c.execute("SELECT CASE WHEN parked IS NOT NULL THEN 'parked' ELSE state::text END AS s, count(*) AS n "
                         "FROM skiplock.jobs WHERE batch_id = %s GROUP BY 1", (batch_id,)).fetchall()
    assert b is not None
    counted = {r["s"]: r["n"] for r in jobs}
    assert {k: b[k] for k in COUNTS[1:]} == {k: counted.get(k, 0) for k in COUNTS[1:]}
    assert b["total"] == sum(counted.values())
    return {k: b[k] for k in COUNTS}


def test_a_parked_task_is_seen_everywhere_resumed_with_data_and_its_next_attempt_gets_it(
        server: str, db_url: str, tmp_path: Path):
    status, batch = call(server, "POST", "/batches", {
        "jobs": [{"task": TASK, "args": {"doc": NEVER}, "max_attempts": 1}, {"task": TASK, "args": {"doc": AT_ONCE}},
                 {"task": TASK, "args": {"doc": NEVER_2}, "max_attempts": 1}],
        "on_complete": {"task": REPORT_TASK}})
    assert status == 201, batch
    bid = batch["id"]
    parked_id, other_id, clicked_id = batch["job_ids"]
    dash = Dashboard(server)
    zero = dict.fromkeys(COUNTS, 0)
    before = {**zero, "total": 3, "queued": 3}
    assert exact_counts(db_url, bid) == before == dash.batch_counts(bid)
    assert {k: call(server, "GET", f"/batches/{bid}")[1][k] for k in COUNTS} == before

    worker = start(["worker", "--queues", f"{TASK},reports"], skiplock_env(db_url, **TASKS_ENV),
                   tmp_path / "worker.log")
    try:
        wait_for(lambda: exact_counts(db_url, bid)["succeeded"] == 1 and exact_counts(db_url, bid)["parked"] == 2,
                 60, "one task to succeed and two to park")
        parked = {**zero, "total": 3, "parked": 2, "succeeded": 1}
        assert exact_counts(db_url, bid) == parked == dash.batch_counts(bid)
        got = call(server, "GET", f"/batches/{bid}")[1]
        assert ({k: got[k] for k in COUNTS}, got["percent"]) == (parked, 33.3)

        v = verdict(NEVER, TASK)
        reason = f"quality check failed on every attempt (1): score {v.score:.2f} < {QA_THRESHOLD}"
        data = {"doc": NEVER, "task": TASK, "score": v.score, "attempts": 1}
        # psql
        seen_in_psql = psql(db_url, "SELECT id, reason, data, parked_attempt, batch_id FROM skiplock.parked_jobs "
                                    f"WHERE id = '{parked_id}'")
        assert seen_in_psql.split("|") == [parked_id, reason, json.dumps(data), "1", f"{bid}\n"]
        # the API: the list of waiting jobs and the job itself, with its park on the timeline
        status, page = call(server, "GET", "/jobs?state=waiting")
        assert status == 200 and sorted(j["id"] for j in page["jobs"]) == sorted([parked_id, clicked_id])
        listed = next(j for j in page["jobs"] if j["id"] == parked_id)
        assert (listed["parked"]["reason"], listed["parked"]["data"]) == (reason, data)
        status, job = call(server, "GET", f"/jobs/{parked_id}")
        assert (job["state"], job["attempt"], job["parked"]["reason"], job["parked"]["data"]) == (
            "waiting", 0, reason, data)
        assert [(h["state"], h["error"]) for h in job["history"]][-1] == ("waiting", reason)
        # the dashboard's job page
        page_html = dash.get(f"/ui/jobs/{parked_id}")
        assert "Parked for review" in page_html and html.escape(reason) in page_html
        assert f"/ui/jobs/{parked_id}/resume" in page_html  # its Resume button

        # the operator resumes one over HTTP with data and the other with the dashboard's button (no
        # data: approved as it is), the queue paused so that the counts can be read in between
        assert call(server, "POST", f"/queues/{TASK}/pause")[0] == 200
        after_click = dash.post_form(f"/ui/jobs/{clicked_id}/resume", dash.get(f"/ui/jobs/{clicked_id}"))
        assert "Parked for review" not in after_click
        assert exact_counts(db_url, bid) == {**parked, "parked": 1, "queued": 1} == dash.batch_counts(bid)
        review = {"approved": True, "by": "ana", "note": "the scan is fine, the check is too strict"}
        status, resumed = call(server, "POST", f"/jobs/{parked_id}/resume", {"data": review},
                               **{"X-Request-ID": "review-42"})
        assert status == 200 and (resumed["state"], resumed["parked"], resumed["review"]) == ("queued", None, review)
        again = {**zero, "total": 3, "queued": 2, "succeeded": 1}
        assert exact_counts(db_url, bid) == again == dash.batch_counts(bid)
        assert psql(db_url, "SELECT count(*) FROM skiplock.parked_jobs") == "0\n"
        assert call(server, "POST", f"/queues/{TASK}/resume")[0] == 200

        wait_for(lambda: call(server, "GET", f"/batches/{bid}")[1]["completion_job_state"] == "succeeded", 60,
                 "the resumed task to succeed and the report to run")
    finally:
        worker.terminate()
        worker.wait(30)

    done = {**zero, "total": 3, "succeeded": 3}
    assert exact_counts(db_url, bid) == done == dash.batch_counts(bid)
    got = call(server, "GET", f"/batches/{bid}")[1]
    assert (got["state"], got["percent"]) == ("succeeded", 100.0)
    # its next attempt received exactly the operator's data (the handler's own ledger), once
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        ledger = c.execute("SELECT job_id::text, attempt, reviewed, review FROM analysis_pipeline.results").fetchall()
        reports = c.execute("SELECT report FROM analysis_pipeline.reports").fetchall()
    assert sorted(ledger, key=lambda r: r["job_id"]) == sorted(
        [{"job_id": parked_id, "attempt": 1, "reviewed": True, "review": review},
         {"job_id": other_id, "attempt": 1, "reviewed": False, "review": None},
         {"job_id": clicked_id, "attempt": 1, "reviewed": True, "review": None}], key=lambda r: r["job_id"])
    assert [r["report"]["approved_at_review"] for r in reports] == [2]
    status, job = call(server, "GET", f"/jobs/{parked_id}")
    assert (job["state"], job["review"], job["result"]["reviewed"]) == ("succeeded", review, True)
    assert [(h["state"], h["correlation_id"] == "review-42") for h in job["history"]] == [
        ("queued", False), ("running", False), ("waiting", False), ("queued", True), ("running", False),
        ("succeeded", False)]
