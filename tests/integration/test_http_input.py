"""What the HTTP API accepts as input, against the real app and database: idempotency in
bulk submissions, JSON the server refuses (duplicate keys, lax types, numbers and strings it
cannot store), sizes counted as stored, and bodies too big to parse cheaply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings

ECHO = {"task": "echo", "args": {"message": "x"}}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def err(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    e: dict[str, Any] = resp.json()["error"]
    if code:
        assert e["code"] == code, e
    return e


def stored(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as c:
        return c.execute("SELECT args->>'message', idempotency_key FROM skiplock.jobs ORDER BY id").fetchall()


# -- idempotency in bulk submissions ---------------------------------------------------------

def test_bulk_reusing_a_stored_key_for_a_different_job_is_409_naming_the_index(client: TestClient, db_url: str):
    first = client.post("/jobs", json={**ECHO, "idempotency_key": "k"})
    assert first.status_code == 201
    bulk = {"jobs": [{"task": "echo", "args": {"message": "new"}},
                     {"task": "echo", "args": {"message": "other"}, "idempotency_key": "k"}]}
    e = err(client.post("/jobs/bulk", json=bulk), 409, "idempotency_conflict")
    assert (e["details"]["index"], e["details"]["job_id"]) == (1, first.json()["id"])
    assert e["details"]["field"] == "idempotency_key" and "job 1" in e["message"]
    assert stored(db_url) == [("x", "k")]  # the new job of the refused bulk was not stored


def test_bulk_with_one_key_on_two_different_jobs_is_409_and_stores_nothing(client: TestClient, db_url: str):
    bulk = {"jobs": [{"task": "echo", "args": {"message": "free"}},
                     {**ECHO, "idempotency_key": "k"},
                     {"task": "echo", "args": {"message": "y"}, "idempotency_key": "k"}]}
    e = err(client.post("/jobs/bulk", json=bulk), 409, "idempotency_conflict")
    assert (e["details"]["index"], e["details"]["same_key_as_index"]) == (2, 1)
    assert stored(db_url) == []


def test_bulk_repeats_of_the_same_job_stay_idempotent(client: TestClient, db_url: str):
    first = client.post("/jobs", json={**ECHO, "idempotency_key": "k"}).json()
    bulk = {"jobs": [{**ECHO, "idempotency_key": "k"}, {**ECHO, "idempotency_key": "k", "queue": "default"},
                     {"task": "echo", "args": {"message": "y"}, "idempotency_key": "j"},
                     {"task": "echo", "args": {"message": "y"}, "idempotency_key": "j"}]}
    r = client.post("/jobs/bulk", json=bulk)
    assert r.status_code == 201 and r.json()["created"] == 1, r.text
    ids = r.json()["ids"]
    assert ids[0] == ids[1] == first["id"] and ids[2] == ids[3] != ids[0]
    assert stored(db_url) == [("x", "k"), ("y", "j")]
    again = client.post("/jobs/bulk", json=bulk)
    assert again.status_code == 201 and again.json() == {"ids": ids, "created": 0}


def test_bulk_key_conflict_on_an_option_it_states_is_409(client: TestClient):
    client.post("/jobs", json={**ECHO, "idempotency_key": "k", "priority": "high"})
    for change in ({"priority": "low"}, {"max_attempts": 9}, {"queue": "elsewhere-not"}):
        r = client.post("/jobs/bulk", json={"jobs": [{**ECHO, "idempotency_key": "k", **change}]})
        if "queue" in change:  # a key names one job per queue: another queue is another job
            assert r.status_code == 201
        else:
            assert err(r, 409, "idempotency_conflict")["details"]["index"] == 0
