"""The dashboard against the real app and database, in process: what each page shows, who may
do what (session cookie, CSRF, read-only tokens), and that the actions change the jobs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings

TOKENS = "admintok,readtok:read,subtok:submit"
MakeJob = Callable[..., uuid.UUID]


def make_client(db_url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(database_url=db_url, **settings)), base_url="http://localhost:8000",
                      raise_server_exceptions=False, follow_redirects=False)


@pytest.fixture
def open_client(db_url: str) -> Iterator[TestClient]:
    with make_client(db_url) as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m[1]


def state_of(db_url: str, job_id: uuid.UUID) -> str:
    with psycopg.connect(db_url) as c:
        return str(c.execute("SELECT state FROM skiplock.jobs WHERE id = %s", (job_id,)).fetchone()[0])  # type: ignore[index]


def login(c: TestClient, token: str) -> str:
    form = c.get("/ui/login")
    assert form.status_code == 200
    r = c.post("/ui/login", data={"csrf": csrf_of(form.text), "token": token, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return csrf_of(c.get("/").text)


def test_overview_shows_every_queue_with_counts_workers_and_charts(open_client: TestClient, make_job: MakeJob,
                                                                    pg_conn: psycopg.Connection[Any]):
    for state in ("queued", "running", "succeeded", "succeeded", "failed", "cancelled"):
        make_job(queue="mail", state=state,
                 finished_at=None if state in ("queued", "running") else datetime.now(UTC))
    pg_conn.execute("INSERT INTO skiplock.workers (id, hostname, pid, queues, concurrency) "
                    "VALUES ('w-1', 'host-a', 42, '{mail}', 7)")
    pg_conn.commit()
    html = open_client.get("/").text
    row = re.search(r'<tr data-queue="mail">(.*?)</tr>', html, re.S)
    assert row, html
    assert [int(n) for n in re.findall(r'<td class="n">(?:<a [^>]*>)?(\d+)', row[1])][:6] == [1, 0, 1, 2, 1, 1]
    assert "w-1" in html and "host-a" in html and ">7<" in html
    assert html.count("<svg") == 2 and "3 succeeded" not in html  # 2 succeeded, 1 failed in the charts
    assert "2 succeeded, 1 failed" in html


def test_jobs_list_filters_searches_and_pages(open_client: TestClient, make_job: MakeJob):
    a = make_job(task="echo", queue="q1", args={"message": "needle-in-args"})
    b = make_job(task="echo", queue="q2", state="failed", last_error="ValueError: needle-in-error")
    c = make_job(task="add", queue="q1")
    def ids(url: str) -> list[str]:
        r = open_client.get(url)
        assert r.status_code == 200, r.text
        return re.findall(r'<tr data-job="([^"]+)"', r.text)
    assert ids("/ui/jobs") == [str(c), str(b), str(a)]
    assert ids("/ui/jobs?queue=q1") == [str(c), str(a)]
    assert ids("/ui/jobs?state=failed") == [str(b)]
    assert ids("/ui/jobs?task=add") == [str(c)]
    assert ids("/ui/jobs?q=NEEDLE-IN-ARGS") == [str(a)]
    assert ids("/ui/jobs?q=needle-in-error") == [str(b)]
    assert ids("/ui/jobs?since=2000-01-01T00:00&until=2001-01-01T00:00") == []
    assert ids("/ui/jobs?since=2000-01-01T00:00") == [str(c), str(b), str(a)]
    r = open_client.get(f"/ui/jobs?q={b}")
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{b}"
    assert open_client.get("/ui/jobs?state=nope").status_code == 422


def test_a_short_page_continues_below_the_last_row_read(db_url: str, make_job: MakeJob,
                                                        monkeypatch: pytest.MonkeyPatch):
    import skiplock.insight
    monkeypatch.setattr(skiplock.insight, "SCAN_ROWS", 3)
    monkeypatch.setattr(skiplock.insight.search_jobs, "__kwdefaults__", {"scan": 3})
    target = make_job(task="add")
    for _ in range(4):
        make_job(task="echo")
    with make_client(db_url) as c:
        first = c.get("/ui/jobs?task=add").text
        assert 'data-job="' not in first and "older jobs may match" in first
        older = re.search(r'href="([^"]+)" id="older"', first)
        assert older
        second = c.get(older[1].replace("&amp;", "&")).text
        assert re.findall(r'<tr data-job="([^"]+)"', second) == [str(target)]


def test_job_page_shows_args_timeline_progress_checkpoint_and_every_error(open_client: TestClient, make_job: MakeJob,
                                                                         pg_conn: psycopg.Connection[Any]):
    job = make_job(state="running", args={"message": "hello <b>"}, correlation_id="req-123")
    pg_conn.execute("UPDATE skiplock.jobs SET state = 'queued', lease_expires_at = NULL, "
                    "last_error = 'Traceback (most recent call last):\n  boom\nRuntimeError: first' WHERE id = %s",
                    (job,))
    pg_conn.execute("UPDATE skiplock.jobs SET progress = '{\"percent\": 40, \"message\": \"step 2\"}', "
                    "checkpoint = '{\"page\": 3}' WHERE id = %s", (job,))
    pg_conn.commit()
    html = open_client.get(f"/ui/jobs/{job}").text
    assert "hello &lt;b&gt;" in html  # escaped
    assert 'value="40"' in html and "step 2" in html and "&#34;page&#34;: 3" in html
    assert "req-123" in html and "RuntimeError: first" in html and "Traceback (most recent call last):" in html
    assert len(re.findall(r"<tr><td class=\"n\">\d+</td>", html)) >= 2  # submission and the failed run


def test_without_tokens_actions_need_the_session_csrf_token(open_client: TestClient, make_job: MakeJob, db_url: str):
    job = make_job(state="failed")
    page = open_client.get(f"/ui/jobs/{job}")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert open_client.post(f"/ui/jobs/{job}/retry", data={"csrf": "forged"}).status_code == 403
    assert open_client.post(f"/ui/jobs/{job}/retry", data={}).status_code == 403
    assert state_of(db_url, job) == "failed"
    r = open_client.post(f"/ui/jobs/{job}/retry", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and state_of(db_url, job) == "queued"


def test_a_form_from_another_site_or_a_json_body_is_refused(open_client: TestClient, make_job: MakeJob, db_url: str):
    job = make_job(state="failed")
    csrf = csrf_of(open_client.get(f"/ui/jobs/{job}").text)
    r = open_client.post(f"/ui/jobs/{job}/retry", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = open_client.post(f"/ui/jobs/{job}/retry", json={"csrf": csrf})
    assert r.status_code == 415
    assert state_of(db_url, job) == "failed"


def test_with_tokens_pages_ask_for_a_login_and_a_read_token_changes_nothing(db_url: str, make_job: MakeJob):
    job = make_job(state="failed", queue="mail")
    with make_client(db_url, api_tokens=TOKENS) as c:
        r = c.get(f"/ui/jobs/{job}")
        assert r.status_code == 303 and r.headers["location"] == f"/ui/login?next=/ui/jobs/{job}"
        form = c.get("/ui/login").text
        assert c.post("/ui/login", data={"csrf": csrf_of(form), "token": "wrong"}).status_code == 401
        csrf = login(c, "readtok")
        html = c.get(f"/ui/jobs/{job}").text
        assert "role: <strong id=\"role\">read</strong>" in html and "/retry" not in html
        assert c.post(f"/ui/jobs/{job}/retry", data={"csrf": csrf}).status_code == 403
        assert c.post("/ui/queues/mail/pause", data={"csrf": csrf}).status_code == 403
        assert c.post("/ui/queues/mail/retry-failed", data={"csrf": csrf}).status_code == 403
        assert state_of(db_url, job) == "failed"
    with make_client(db_url, api_tokens=TOKENS) as c:
        csrf = login(c, "subtok")  # submit may not act on jobs either
        assert c.post(f"/ui/jobs/{job}/retry", data={"csrf": csrf}).status_code == 403
    with make_client(db_url, api_tokens=TOKENS) as c:
        csrf = login(c, "admintok")
        assert c.post(f"/ui/jobs/{job}/retry", data={"csrf": "x" + csrf}).status_code == 403
        assert c.post(f"/ui/jobs/{job}/retry", data={"csrf": csrf}).status_code == 303
        assert state_of(db_url, job) == "queued"


def test_a_session_ends_when_its_token_is_removed_and_a_forged_cookie_is_no_session(db_url: str):
    with make_client(db_url, api_tokens=TOKENS, session_secret="k") as c:
        login(c, "admintok")
        cookie = c.cookies["skiplock_session"]
        assert c.get("/").status_code == 200
    with make_client(db_url, api_tokens="readtok:read", session_secret="k") as c:
        c.cookies.set("skiplock_session", cookie)
        assert c.get("/").status_code == 303
    with make_client(db_url, api_tokens=TOKENS, session_secret="k") as c:
        payload, mac = cookie.split(".")
        c.cookies.set("skiplock_session", payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"))
        assert c.get("/").status_code == 303
        c.cookies.set("skiplock_session", cookie)
        assert c.get("/").status_code == 200


def test_pause_resume_and_retry_all_failed_of_a_queue(open_client: TestClient, make_job: MakeJob, db_url: str):
    failed = [make_job(queue="mail", state="failed") for _ in range(3)]
    other = make_job(queue="other", state="failed")
    csrf = csrf_of(open_client.get("/").text)
    assert open_client.post("/ui/queues/mail/pause", data={"csrf": csrf}).status_code == 303
    assert '<span class="paused">paused</span>' in open_client.get("/").text
    assert open_client.post("/ui/queues/mail/resume", data={"csrf": csrf}).status_code == 303
    r = open_client.post("/ui/queues/mail/retry-failed", data={"csrf": csrf})
    assert r.status_code == 303 and "3%20failed" in r.headers["location"]
    assert [state_of(db_url, j) for j in failed] == ["queued"] * 3 and state_of(db_url, other) == "failed"


def test_without_tokens_the_dashboard_answers_only_to_loopback_names(db_url: str):
    with make_client(db_url, allowed_hosts="") as c:
        assert c.get("/", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/", headers={"Host": "evil.example"}).status_code == 421  # DNS rebinding
        assert c.get("/ui/jobs", headers={"Host": "evil.example"}).status_code == 421


def test_a_dashboard_session_keeps_its_tokens_request_rate(db_url: str):
    with make_client(db_url, api_tokens="admintok,slow:read:2/m") as c:
        login(c, "slow")  # the login itself reads the overview once
        assert c.get("/ui/jobs").status_code == 200
        r = c.get("/")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30


def test_batches_page_shows_progress_and_counts_and_a_batch_page_its_jobs(open_client: TestClient, db_url: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        b = c.execute("SELECT skiplock.open_batch('batch_done', '{\"message\": \"end\"}')").fetchone()[0]  # type: ignore[index]
        ids = [c.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text), batch_id => %s)",
                         (str(i), b)).fetchone()[0] for i in range(4)]  # type: ignore[index]
        c.execute("UPDATE skiplock.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s", (ids[0],))
        c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                  "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (ids[1],))
        c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                  "parked = '{\"reason\": \"look\"}' WHERE id = %s", (ids[1],))
    listing = open_client.get("/ui/batches")
    assert listing.status_code == 200
    row = re.search(rf'<tr data-batch="{b}">(.*?)</tr>', listing.text, re.S)
    assert row, listing.text
    cells = re.findall(r'<td class="n">(\d+)</td>', row[1])
    # total, waiting, queued, running, in review, succeeded, failed, cancelled
    assert cells == ["4", "0", "2", "0", "1", "0", "0", "1"]
    assert 'value="25.0"' in row[1]
    detail = open_client.get(f"/ui/batches/{b}")
    assert detail.status_code == 200 and "25.0%" in detail.text
    assert all(f'data-job="{j}"' in detail.text for j in ids)
    assert "batch_done, enqueued when the batch ends" in detail.text
    assert open_client.get(f"/ui/batches/{uuid.uuid4()}").status_code == 404


def test_a_parked_job_shows_its_reason_and_data_and_is_resumed_or_failed_with_a_click(open_client: TestClient,
                                                                                       db_url: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        ids = [c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}')").fetchone()[0]  # type: ignore[index]
               for _ in range(2)]
        for j in ids:  # parked, as the worker's park_many_if_held leaves it
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                      "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (j,))
            c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                      "last_error = 'score too low', parked = jsonb_build_object('reason', 'score too low', "
                      "'data', jsonb_build_object('score', 0.4), 'at', now()) WHERE id = %s", (j,))
    page = open_client.get(f"/ui/jobs/{ids[0]}")
    assert page.status_code == 200 and "Parked for review" in page.text and "score too low" in page.text
    assert "&#34;score&#34;: 0.4" in page.text or '"score": 0.4' in page.text
    csrf = csrf_of(page.text)
    assert open_client.post(f"/ui/jobs/{ids[0]}/resume", data={"csrf": "forged"}).status_code == 403
    bad = open_client.post(f"/ui/jobs/{ids[0]}/resume", data={"csrf": csrf, "data": "{approved"})
    assert bad.status_code == 422 and "data is not valid JSON" in bad.text and state_of(db_url, ids[0]) == "waiting"
    done = open_client.post(f"/ui/jobs/{ids[0]}/resume", data={"csrf": csrf, "data": ' {"approved": true} '})
    assert done.status_code == 303 and "with%20data" in done.headers["location"]
    assert state_of(db_url, ids[0]) == "queued"
    with psycopg.connect(db_url, autocommit=True) as c:  # what the next attempt gets as ctx.review
        review = c.execute("SELECT review FROM skiplock.jobs WHERE id = %s", (ids[0],)).fetchone()
    assert review == ({"approved": True},)
    assert 'name="data"' in open_client.get(f"/ui/jobs/{ids[1]}").text  # the resume-with-data form
    assert open_client.post(f"/ui/jobs/{ids[1]}/fail", data={"csrf": csrf}).status_code == 303
    assert state_of(db_url, ids[1]) == "failed"
    assert open_client.post(f"/ui/jobs/{ids[1]}/resume", data={"csrf": csrf}).status_code == 409
