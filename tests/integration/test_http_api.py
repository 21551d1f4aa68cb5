"""The HTTP API against the real app and a real database: every endpoint and error status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app, effective_host
from app.settings import Settings

TOKEN = "s3cret-token"
NESTED_500: dict[str, Any] = {}
for _ in range(500):
    NESTED_500 = {"a": NESTED_500}


def make_client(db_url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(database_url=db_url, **settings)), raise_server_exceptions=False)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with make_client(db_url) as c:
        yield c


def err(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_submit_inspect_and_history_with_request_id(client: TestClient):
    r = client.post("/jobs", json={"task": "echo", "args": {"message": "hi"}, "priority": "high"},
                    headers={"X-Request-ID": "req-1"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "req-1"
    job = r.json()
    assert (job["task"], job["state"], job["priority"], job["queue"]) == ("echo", "queued", "high", "default")
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["correlation_id"] == "req-1"
    got = client.get(f"/jobs/{job['id']}").json()
    assert got["args"] == {"message": "hi"}
    assert [(h["state"], h["correlation_id"]) for h in got["history"]] == [("queued", "req-1")]
    assert client.get("/jobs/x").headers["x-request-id"]  # generated when absent


@pytest.mark.parametrize("body,field", [
    ({"task": "nope"}, "task"),
    ({"task": "echo", "args": {}}, "args.message"),
    ({"task": "echo", "args": {"message": "x"}, "priority": "urgent"}, "priority"),
    ({"task": "echo", "args": {"message": "x"}, "delay": -5}, "delay"),
    ({"task": "echo", "args": {"message": "x"}, "max_attempts": 0}, "max_attempts"),
    ({"task": "echo", "args": {"message": "x"}, "queue": "Not A Queue"}, "queue"),
    ({"task": "echo", "args": {"message": "x"}, "surprise": 1}, "surprise"),
    ({"task": "echo", "args": "not an object"}, "args"),
    ({"task": "echo", "args": {"message": "x" * 300_000}}, "args"),
    ([1, 2], "body"),
    # values PostgreSQL cannot hold: refused up front, naming the field, never a 500
    ({"task": "echo", "args": {"message": "nul\x00"}}, "args.message"),
    ({"task": "echo", "args": {"message": "x"}, "idempotency_key": "nul\x00"}, "idempotency_key"),
    ({"task": "echo", "args": {"message": "x"}, "run_at": "0001-01-01T00:00:00+14:00"}, "run_at"),
    ({"task": "webhook", "args": {"url": "http://x", "payload": NESTED_500}}, "body"),
])
def test_bad_input_is_422_naming_the_field_and_stores_nothing(client: TestClient, db_url: str, body: Any, field: str):
    e = err(client.post("/jobs", json=body), 422)
    assert e["details"]["field"] == field, e
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 0  # type: ignore[index]


def test_invalid_json_and_empty_body_are_422(client: TestClient):
    json_type = {"Content-Type": "application/json"}
    assert err(client.post("/jobs", content=b"{nope", headers=json_type), 422)["details"]["field"] == "body"
    assert err(client.post("/jobs", content=b"", headers=json_type), 422)["details"]["field"] == "body"


def test_idempotency_key_201_then_200_same_job_then_409_for_a_different_body(client: TestClient):
    body = {"task": "echo", "args": {"message": "once"}}
    first = client.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    other = client.post("/jobs", json={"task": "echo", "args": {"message": "twice"}},
                        headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert err(other, 409, "idempotency_conflict")["details"]["job_id"] == first.json()["id"]
    field = client.post("/jobs", json={**body, "idempotency_key": "k-1"})
    assert field.status_code == 200 and field.json()["id"] == first.json()["id"]


def test_fifty_concurrent_posts_with_one_key_create_one_job(db_url: str):
    api = create_app(Settings(database_url=db_url))

    async def go() -> list[httpx.Response]:
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*(
                    c.post("/jobs", json={"task": "echo", "args": {"message": "x"}},
                           headers={"Idempotency-Key": "same"}) for _ in range(50)))

    responses = asyncio.run(go())
    assert sorted(r.status_code for r in responses) == [200] * 49 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 1  # type: ignore[index]


def test_bulk_10000_in_one_request_and_one_bad_item_rejects_all_naming_its_index(client: TestClient, db_url: str):
    jobs = [{"task": "echo", "args": {"message": str(i)}} for i in range(10_000)]
    bad = [*jobs[:1234], {"task": "echo", "args": {"oops": 1}}, *jobs[1235:]]
    e = err(client.post("/jobs/bulk", json={"jobs": bad}), 422)
    assert e["details"]["index"] == 1234 and "job 1234" in e["message"]
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 0  # type: ignore[index]
    r = client.post("/jobs/bulk", json={"jobs": jobs})
    assert r.status_code == 201 and r.json()["created"] == 10_000 and len(r.json()["ids"]) == 10_000
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 10_000  # type: ignore[index]


def test_bulk_over_the_configured_count_is_refused(db_url: str):
    with make_client(db_url, max_bulk_jobs=3) as c:
        e = err(c.post("/jobs/bulk", json={"jobs": [{"task": "echo", "args": {"message": "x"}}] * 4}), 422)
        assert e["details"]["field"] == "jobs"
        assert err(c.post("/jobs/bulk", json={"jobs": []}), 422)["details"]["field"] == "jobs"


def test_list_filters_and_cursor_pages_stay_correct_while_jobs_are_inserted(client: TestClient):
    ids = [client.post("/jobs", json={"task": "echo", "args": {"message": str(i)}}).json()["id"] for i in range(7)]
    client.post("/jobs", json={"task": "sleep", "args": {"seconds": 1}, "queue": "slow"})
    page1 = client.get("/jobs", params={"task": "echo", "limit": 3}).json()
    assert [j["id"] for j in page1["jobs"]] == ids[::-1][:3]
    client.post("/jobs", json={"task": "echo", "args": {"message": "late"}})  # newer: must not shift pages
    page2 = client.get("/jobs", params={"task": "echo", "limit": 3, "cursor": page1["next_cursor"]}).json()
    page3 = client.get("/jobs", params={"task": "echo", "limit": 3, "cursor": page2["next_cursor"]}).json()
    assert [j["id"] for j in page2["jobs"] + page3["jobs"]] == ids[::-1][3:]
    assert page3["next_cursor"] is None
    assert [j["queue"] for j in client.get("/jobs", params={"queue": "slow"}).json()["jobs"]] == ["slow"]
    assert len(client.get("/jobs", params={"state": "queued"}).json()["jobs"]) == 9
    for params, field in [({"state": "nope"}, "state"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"cursor": "!!"}, "cursor"), ({"batch": "x"}, "batch"), ({"queue": "A B"}, "queue"),
                          ({"task": "nul\x00"}, "task"),
                          ({"colour": "red"}, "colour")]:
        assert err(client.get("/jobs", params=params), 422)["details"]["field"] == field


def test_cancel_retry_and_409_for_forbidden_transitions(client: TestClient):
    job = client.post("/jobs", json={"task": "echo", "args": {"message": "x"}}).json()
    r = client.post(f"/jobs/{job['id']}/cancel", headers={"X-Request-ID": "cancel-1"})
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    err(client.post(f"/jobs/{job['id']}/cancel"), 409, "invalid_transition")
    r = client.post(f"/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["state"] == "queued"
    err(client.post(f"/jobs/{job['id']}/retry"), 409, "invalid_transition")
    history = client.get(f"/jobs/{job['id']}").json()["history"]
    assert [h["state"] for h in history] == ["queued", "cancelled", "queued"]
    assert history[1]["correlation_id"] == "cancel-1"


def test_unknown_ids_and_routes_are_404_and_bad_ids_422(client: TestClient):
    missing = str(uuid.uuid4())
    err(client.get(f"/jobs/{missing}"), 404, "not_found")
    err(client.post(f"/jobs/{missing}/cancel"), 404, "not_found")
    err(client.post(f"/jobs/{missing}/retry"), 404, "not_found")
    assert err(client.get("/jobs/not-a-uuid"), 422)["details"]["field"] == "id"
    err(client.get("/nowhere"), 404, "not_found")
    err(client.delete("/jobs"), 405, "method_not_allowed")


def test_queues_pause_resume_and_backpressure_429(client: TestClient):
    client.post("/jobs", json={"task": "echo", "args": {"message": "x"}, "queue": "q1"})
    r = client.post("/queues/q1/pause")
    assert r.status_code == 200 and r.json()["paused"] is True
    assert client.post("/jobs", json={"task": "echo", "args": {"message": "y"}, "queue": "q1"}).status_code == 201
    [q1] = [q for q in client.get("/queues").json()["queues"] if q["queue"] == "q1"]
    assert (q1["paused"], q1["ready"], q1["max_waiting"]) == (True, 2, None)
    assert client.post("/queues/q1/resume").json()["paused"] is False
    assert client.put("/queues/q1", json={"max_waiting": 2}).json()["max_waiting"] == 2
    full = client.post("/jobs", json={"task": "echo", "args": {"message": "z"}, "queue": "q1"})
    assert err(full, 429, "queue_full")["details"]["max_waiting"] == 2 and full.headers["retry-after"]
    assert err(client.put("/queues/q1", json={"max_waiting": 0}), 422)["details"]["field"] == "max_waiting"
    assert client.put("/queues/q1", json={"max_waiting": None}).status_code == 200
    assert client.post("/jobs", json={"task": "echo", "args": {"message": "z"}, "queue": "q1"}).status_code == 201
    assert err(client.post("/queues/Bad Name/pause"), 422)["details"]["field"] == "name"


def test_tasks_list_argument_schemas(client: TestClient):
    tasks = {t["name"]: t for t in client.get("/tasks").json()["tasks"]}
    assert tasks["echo"]["args_schema"]["required"] == ["message"]
    assert tasks["webhook"]["queue"] == "webhooks"


def test_health_checks_the_schema_revision(client: TestClient, db_url: str):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE alembic_version SET version_num = 'old'")
    e = err(client.get("/health"), 503, "schema_mismatch")
    assert e["details"]["found"] == "old"


def test_tokens_required_everywhere_but_health(db_url: str):
    with make_client(db_url, api_tokens=f"other,{TOKEN}") as c:
        assert c.get("/health").status_code == 200
        err(c.get("/jobs"), 401, "unauthorized")
        err(c.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401)
        err(c.get("/openapi.json", headers={"Authorization": f"Basic {TOKEN}"}), 401)
        assert c.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_oversized_body_is_413(db_url: str):
    with make_client(db_url, max_body_bytes=1000) as c:
        err(c.post("/jobs", json={"task": "echo", "args": {"message": "x" * 2000}}), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: bounded while streaming
            yield b'{"task": "echo", "args": {"message": "'
            yield b"x" * 5000
            yield b'"}}'

        err(c.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"}), 413,
            "payload_too_large")


def test_without_tokens_the_server_binds_loopback_only():
    assert effective_host(Settings(database_url="postgresql://x/y"), "0.0.0.0") == "127.0.0.1"
    assert effective_host(Settings(database_url="postgresql://x/y", api_tokens="t"), "0.0.0.0") == "0.0.0.0"


def test_openapi_documents_every_route_and_status(client: TestClient):
    spec = client.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    app_routes = {(m, r.path) for r in client.app.routes  # type: ignore[attr-defined]
                  for m in (r.methods or []) if m != "HEAD" and r.include_in_schema}  # the dashboard's pages are not
    assert app_routes - {("GET", "/openapi.json")} == routes
    post_jobs = spec["paths"]["/jobs"]["post"]["responses"]
    assert {"200", "201", "409", "422", "429", "503"} <= set(post_jobs)
    assert "JobIn" in spec["components"]["schemas"]


def _notifications(db_url: str, action: Any, wait: float = 2.0) -> list[str]:
    """Payloads on skiplock_jobs while `action()` runs and for up to `wait` seconds after."""
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN skiplock_jobs")
        action()
        return [n.payload for n in listener.notifies(timeout=wait, stop_after=1)]


def test_insert_trigger_notifies_unless_the_submitter_defers(db_url: str):
    def insert(defer: bool) -> Any:
        def go() -> None:
            with psycopg.connect(db_url, autocommit=True) as c, c.transaction():
                if defer:
                    c.execute("SELECT set_config('skiplock.notify', 'deferred', true)")
                c.execute("INSERT INTO skiplock.jobs (task, queue) VALUES ('echo', 'mail')")
        return go

    assert _notifications(db_url, insert(False)) == ["mail"]
    assert _notifications(db_url, insert(True), wait=0.5) == []


def test_api_submissions_wake_workers_after_their_commit(db_url: str):
    with make_client(db_url) as client:
        got = _notifications(db_url, lambda: client.post("/jobs", json={
            "task": "echo", "args": {"message": "x"}, "queue": "wake-one"}))
        assert got == ["wake-one"]
        got = _notifications(db_url, lambda: client.post("/jobs/bulk", json={"jobs": [
            {"task": "echo", "args": {"message": "x"}, "queue": "wake-bulk"}] * 3}))
        assert got == ["wake-bulk"]
        # A repeated idempotent submission stores nothing and wakes nobody.
        body = {"task": "echo", "args": {"message": "x"}, "queue": "wake-key"}
        assert client.post("/jobs", json=body, headers={"Idempotency-Key": "k1"}).status_code == 201
        got = _notifications(db_url, lambda: client.post("/jobs", json=body, headers={"Idempotency-Key": "k1"}),
                             wait=0.5)
        assert got == []
