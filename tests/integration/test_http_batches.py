"""/batches over HTTP, against the real app and a real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings
from skiplock.queries.loader import q


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def run_all(db_url: str, state: str = "succeeded") -> None:
    """Claim and end every queued job of queue default, as a worker would."""
    with psycopg.connect(db_url, autocommit=True) as c:
        while rows := c.execute(q("claim_batch"), {"worker_id": "w", "queues": ["default"], "limit": 100,
                                                   "lease_seconds": 30, "now": None, "turn": 0}).fetchall():
            c.execute(q("finish_many_if_held"), {
                "worker_id": "w", "ids": [r[0] for r in rows], "attempts": [r[5] for r in rows],
                "states": [state] * len(rows), "results": None, "errors": ["no"] * len(rows) if state == "failed"
                else None, "run_ats": None, "checkpoints": None, "progresses": None, "now": None}).fetchall()


def test_create_watch_and_see_the_completion_job(client: TestClient, db_url: str):
    r = client.post("/batches", json={"jobs": [{"task": "echo", "args": {"message": str(i)}} for i in range(3)],
                                      "on_complete": {"task": "batch_done", "args": {"message": "all done"},
                                                      "queue": "reports"}},
                    headers={"X-Request-ID": "req-b"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["state"], made["total"], made["queued"], made["percent"], len(made["job_ids"])) == \
        ("active", 3, 3, 0.0, 3)
    assert r.headers["location"] == f"/batches/{made['id']}"
    run_all(db_url)
    shown = client.get(f"/batches/{made['id']}").json()
    assert (shown["state"], shown["succeeded"], shown["percent"]) == ("succeeded", 3, 100.0)
    job = shown["completion_job"]
    assert (job["task"], job["queue"], job["id"]) == ("batch_done", "reports", shown["completion_job_id"])
    assert job["args"] == {"message": "all done", "batch": {"id": made["id"], "state": "succeeded", "total": 3,
                                                            "succeeded": 3, "failed": 0, "cancelled": 0}}
    assert client.get(f"/jobs/{job['id']}").json()["history"][0]["correlation_id"] == "req-b"
    jobs = client.get(f"/batches/{made['id']}/jobs", params={"limit": 2}).json()
    assert len(jobs["jobs"]) == 2 and jobs["next_cursor"]
    assert {j["id"] for j in client.get("/jobs", params={"batch": made["id"]}).json()["jobs"]} == \
        set(made["job_ids"])
    assert [b["id"] for b in client.get("/batches", params={"state": "succeeded"}).json()["batches"]] == [made["id"]]


def test_open_fill_seal_cancel_and_retry(client: TestClient, db_url: str):
    made = client.post("/batches", json={"seal": False}).json()
    assert made["state"] == "open"
    r = client.post("/jobs", json={"task": "always_fail", "max_attempts": 1, "batch_id": made["id"]})
    assert r.status_code == 201
    run_all(db_url, "failed")
    assert client.get(f"/batches/{made['id']}").json()["state"] == "open"  # not sealed: never completes
    sealed = client.post(f"/batches/{made['id']}/seal").json()
    assert (sealed["state"], sealed["failed"], sealed["completion_job"]) == ("failed", 1, None)
    r = client.post("/jobs", json={"task": "echo", "args": {"message": "late"}, "batch_id": made["id"]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "batch_sealed")
    retried = client.post(f"/batches/{made['id']}/retry").json()
    assert (retried["retried_now"], retried["state"], retried["queued"]) == (1, "active", 1)
    cancelled = client.post(f"/batches/{made['id']}/cancel").json()
    assert (cancelled["cancelled_now"], cancelled["state"], cancelled["cancelled"]) == (1, "cancelled", 1)


@pytest.mark.parametrize("body,field", [
    ({"jobs": [{"task": "echo", "args": {"message": "x"}}, {"task": "echo", "args": {}}]}, "args.message"),
    ({"jobs": [{"task": "echo", "args": {"message": "x"}, "idempotency_key": "k"}]}, "jobs.0.idempotency_key"),
    ({"on_complete": {"task": "echo", "args": {"message": "x"}}}, "on_complete.args.batch"),
    ({"on_complete": {"task": "batch_done", "args": {"message": 7}}}, "on_complete.args.message"),
    ({"on_complete": {"task": "nope"}}, "on_complete.task"),
])
def test_bad_batches_are_refused_naming_the_field_and_store_nothing(client: TestClient, db_url: str,
                                                                   body: dict[str, Any], field: str):
    r = client.post("/batches", json=body)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert details["field"].startswith(field)
    if field == "args.message":
        assert details["index"] == 1
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM skiplock.batches").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone() == (0,)


def test_unknown_batches_are_404(client: TestClient):
    missing = uuid.uuid4()
    for method, path in [("GET", f"/batches/{missing}"), ("GET", f"/batches/{missing}/jobs"),
                         ("POST", f"/batches/{missing}/cancel"), ("POST", f"/batches/{missing}/retry"),
                         ("POST", f"/batches/{missing}/seal")]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/batches/nope").status_code == 422
    assert client.get("/batches", params={"state": "done"}).status_code == 422
