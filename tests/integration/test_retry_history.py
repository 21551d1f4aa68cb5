"""Operator retries cannot grow a job's history without bound: a retry keeps the submission
(on the job row) and the latest history rows, a timeline of at most 100 entries after it
(skiplock.retry, so HTTP, CLI and psql alike)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings

KEPT = 100


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def test_retry_and_cancel_in_a_loop_keep_the_history_bounded(client: TestClient):
    # Retry and cancel alternate with no worker at all: two history rows per pair.
    job = client.post("/jobs", json={"task": "echo", "args": {"message": "x"}},
                      headers={"X-Request-ID": "submit-1"}).json()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    for i in range(150):
        assert client.post(f"/jobs/{job['id']}/retry", headers={"X-Request-ID": f"retry-{i}"}).status_code == 200
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    history = client.get(f"/jobs/{job['id']}").json()["history"]
    assert len(history) <= KEPT + 1  # the last retry trimmed to 100; its cancel added one
    assert (history[0]["state"], history[0]["correlation_id"]) == ("queued", "submit-1")
    # the rest is the latest, without a gap: ... queued (retry-149), cancelled
    assert [h["state"] for h in history[-4:]] == ["queued", "cancelled", "queued", "cancelled"]
    assert history[-2]["correlation_id"] == "retry-149" and history[-4]["correlation_id"] == "retry-148"
    ats = [h["at"] for h in history]
    assert ats == sorted(ats)


def test_retry_from_psql_trims_too_and_leaves_other_jobs_alone(pg_conn: psycopg.Connection[object]):
    c = pg_conn
    [[job]] = c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"a\"}')").fetchall()
    [[other]] = c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"b\"}')").fetchall()
    c.execute("SELECT skiplock.cancel(%s)", (other,))
    for _ in range(80):
        c.execute("SELECT skiplock.cancel(%s)", (job,))
        c.execute("SELECT skiplock.retry(%s)", (job,))
    c.commit()
    count = "SELECT count(*) FROM skiplock.job_timeline WHERE job_id = %s"
    assert c.execute(count, (job,)).fetchone() == (KEPT,)
    assert c.execute(count, (other,)).fetchone() == (2,)
