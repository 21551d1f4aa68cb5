"""Queues as an operator sees them: a paged list, and deleting a queue no job names, over the
real app (HTTP) and the CLI, on a real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app import cli
from app.http import create_app
from app.settings import Settings
from skiplock.queries.loader import q


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def err(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


def names_in(page: dict[str, Any]) -> list[str]:
    return [q["queue"] for q in page["queues"]]


def test_pausing_many_unknown_names_gives_a_paged_list_not_one_huge_answer(client: TestClient):
    # Pre-configuring a queue before its first job is allowed: any valid name may be paused.
    names = [f"q-{i:03d}" for i in range(230)]
    for n in names:
        assert client.post(f"/queues/{n}/pause").status_code == 200
    client.post("/jobs", json={"task": "echo", "args": {"message": "x"}, "queue": "q-100"})

    first = client.get("/queues").json()
    assert len(first["queues"]) == 100 and first["next_cursor"] == "q-099"  # bounded default page

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = client.get("/queues", params={"limit": 70, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["queues"]) <= 70
        seen += names_in(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(names)  # every queue once, in name order
    [q100] = [q for q in client.get("/queues", params={"cursor": "q-099", "limit": 1}).json()["queues"]]
    assert (q100["queue"], q100["paused"], q100["ready"]) == ("q-100", True, 1)


@pytest.mark.parametrize("params,field", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"cursor": "Not A Queue"}, "cursor"), ({"page": "2"}, "page"),
])
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, str], field: str):
    assert err(client.get("/queues", params=params), 422)["details"]["field"] == field


def test_delete_forgets_an_empty_queue_and_refuses_one_that_jobs_name(client: TestClient, db_url: str):
    assert client.post("/queues/ghost/pause").status_code == 200
    assert client.delete("/queues/ghost").status_code == 204
    assert "ghost" not in names_in(client.get("/queues").json())
    err(client.delete("/queues/ghost"), 404, "not_found")
    err(client.delete("/queues/never-seen"), 404, "not_found")
    assert err(client.delete("/queues/Bad Name"), 422)["details"]["field"] == "name"

    # Jobs in any state keep their queue, until the pruner deletes the finished ones.
    ids = [client.post("/jobs", json={"task": "echo", "args": {"message": str(i)}, "queue": "busy"}).json()["id"]
           for i in range(3)]
    e = err(client.delete("/queues/busy"), 409, "queue_not_empty")
    assert e["details"]["jobs"] == 3 and e["details"]["queue"] == "busy"
    for job_id in ids:
        client.post(f"/jobs/{job_id}/cancel")
    assert err(client.delete("/queues/busy"), 409)["details"]["jobs"] == 3
    with psycopg.connect(db_url, autocommit=True) as c:  # the pruner's own query, a day later
        c.execute(q("prune_finished"), {"older_than_seconds": 3600, "limit": 100,
                                        "now": datetime.now(UTC) + timedelta(days=1)})
    err(client.delete("/queues/busy"), 404)  # no jobs left, and it never had settings
    assert "busy" not in names_in(client.get("/queues").json())


def test_deleting_a_limited_queue_drops_its_limit(client: TestClient):
    assert client.put("/queues/capped", json={"max_waiting": 1}).status_code == 200
    assert client.delete("/queues/capped").status_code == 204
    for i in range(2):
        r = client.post("/jobs", json={"task": "echo", "args": {"message": str(i)}, "queue": "capped"})
        assert r.status_code == 201, r.text
    [capped] = [q for q in client.get("/queues").json()["queues"] if q["queue"] == "capped"]
    assert (capped["ready"], capped["max_waiting"], capped["paused"]) == (2, None, False)


def test_cli_queue_delete(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DATABASE_URL", db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO skiplock.queues (name, paused) VALUES ('old', true)")
        c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}', queue => 'kept')")
    assert cli.main(["queue", "delete", "old"]) == 0
    assert cli.main(["queue", "delete", "old"]) == 2
    assert cli.main(["queue", "delete", "kept"]) == 2
    err_text = capsys.readouterr().err
    assert "no queue 'old'" in err_text and "still has 1 jobs" in err_text
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT name FROM skiplock.queues").fetchall() == []
