"""Who may drive the API from where, against the real app and database: the host names it
answers to, state changes from other sites' pages, JSON-only bodies, duplicated headers, and
405 (not 404/422) for a wrong method on any route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings

ECHO = {"task": "echo", "args": {"message": "x"}}
JSON = {"Content-Type": "application/json"}
EVIL = {"Origin": "http://evil.example"}


def make_client(db_url: str, base_url: str = "http://localhost:8000", **settings: Any) -> TestClient:
    # allowed_hosts="" is the default an operator gets (tests/conftest.py sets one for other tests)
    options: dict[str, Any] = {"allowed_hosts": "", **settings}
    return TestClient(create_app(Settings(database_url=db_url, **options)), base_url=base_url,
                      raise_server_exceptions=False)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with make_client(db_url) as c:
        yield c


def err(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def jobs_stored(db_url: str) -> int:
    with psycopg.connect(db_url) as c:
        return int(c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0])  # type: ignore[index]


def paused(db_url: str, queue: str) -> bool | None:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT paused FROM skiplock.queues WHERE name = %s", (queue,)).fetchone()
        return None if row is None else bool(row[0])


# -- host names (DNS rebinding) ---------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "localhost."])
def test_loopback_names_are_answered_by_default(client: TestClient, host: str):
    assert client.get("/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "127.0.0.1.attacker.example",
                                  "localhost:8000@attacker.example", "", "10.0.0.1"])
def test_other_host_names_are_421_before_any_data_is_read(client: TestClient, host: str):
    e = err(client.get("/jobs", headers={"Host": host}), 421, "misdirected_request")
    assert "SKIPLOCK_ALLOWED_HOSTS" in e["message"]
    err(client.post("/jobs", json=ECHO, headers={"Host": host}), 421, "misdirected_request")


def test_health_answers_a_probe_by_any_host_name(client: TestClient):
    assert client.get("/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_the_served_host_and_the_setting_extend_or_disable_the_list(db_url: str):
    with make_client(db_url, host="api.internal") as c:
        assert c.get("/jobs", headers={"Host": "api.internal:8000"}).status_code == 200
        assert c.get("/jobs", headers={"Host": "other.internal"}).status_code == 421
    with make_client(db_url, allowed_hosts="Jobs.Example.com, 10.0.0.1") as c:
        assert c.get("/jobs", headers={"Host": "jobs.example.com"}).status_code == 200
        assert c.get("/jobs", headers={"Host": "10.0.0.1:8000"}).status_code == 200
        assert c.get("/jobs", headers={"Host": "localhost"}).status_code == 421  # the list replaces the default
    with make_client(db_url, allowed_hosts="*") as c:
        assert c.get("/jobs", headers={"Host": "anything.example"}).status_code == 200


# -- other sites' pages -----------------------------------------------------------------------

def test_a_cross_origin_submission_is_refused_and_stores_nothing(client: TestClient, db_url: str):
    err(client.post("/jobs", json=ECHO, headers=EVIL), 403, "cross_origin")
    err(client.post("/jobs/bulk", json={"jobs": [ECHO]}, headers={"Sec-Fetch-Site": "cross-site"}), 403,
        "cross_origin")
    err(client.post("/jobs", json=ECHO, headers={"Origin": "null"}), 403, "cross_origin")
    err(client.post("/jobs", json=ECHO, headers={"Origin": "http://localhost:9999"}), 403, "cross_origin")
    assert jobs_stored(db_url) == 0


def test_a_cross_origin_pause_with_no_body_is_refused(client: TestClient, db_url: str):
    err(client.post("/queues/x/pause", headers=EVIL), 403, "cross_origin")
    err(client.put("/queues/x", json={"max_waiting": 1}, headers={"Sec-Fetch-Site": "same-site"}), 403,
        "cross_origin")
    assert paused(db_url, "x") is not True


def test_same_origin_and_non_browser_clients_pass(client: TestClient, db_url: str):
    assert client.post("/jobs", json=ECHO, headers={"Origin": "http://localhost:8000"}).status_code == 201
    assert client.post("/jobs", json=ECHO, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 201
    assert client.post("/jobs", json=ECHO, headers={"Sec-Fetch-Site": "none"}).status_code == 201
    assert client.post("/jobs", json=ECHO).status_code == 201  # curl, scripts: neither header
    assert client.get("/jobs", headers=EVIL).status_code == 200  # reads: the browser keeps the answer
    assert jobs_stored(db_url) == 4


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None, "application/jsonp"])
def test_a_body_not_declared_json_is_415_before_any_route(client: TestClient, db_url: str,
                                                          content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"task": "echo", "args": {"message": "x"}}'
    e = err(client.post("/jobs", content=body, headers=headers), 415, "unsupported_media_type")
    assert e["details"] == {"content_type": content_type, "expected": "application/json"}
    err(client.put("/queues/x", content=b'{"max_waiting": 1}', headers=headers), 415, "unsupported_media_type")
    assert jobs_stored(db_url) == 0


def test_json_with_parameters_and_requests_without_a_body_pass(client: TestClient):
    body = b'{"task": "echo", "args": {"message": "x"}}'
    assert client.post("/jobs", content=body,
                       headers={"Content-Type": "Application/JSON; charset=utf-8"}).status_code == 201
    assert client.post("/queues/x/pause").status_code == 200  # no body: nothing to declare


# -- duplicated headers -----------------------------------------------------------------------

@pytest.mark.parametrize("name,values", [
    ("Authorization", ["Bearer wrong", "Bearer s3cret"]),
    ("Content-Type", ["text/plain", "application/json"]),
    ("Idempotency-Key", ["a", "b"]),
    ("Host", ["attacker.example", "localhost"]),
    ("Content-Length", ["42", "42"]),
])
def test_a_header_given_twice_is_400_naming_it(db_url: str, name: str, values: list[str]):
    body = b'{"task": "echo", "args": {"message": "x"}}'
    with make_client(db_url, api_tokens="s3cret") as c:
        request = c.build_request("POST", "/jobs", content=body, headers=[
            ("Authorization", "Bearer s3cret"), ("Content-Type", "application/json")])
        request.headers = httpx.Headers([(k, v) for k, v in request.headers.multi_items() if k.lower() != name.lower()]
                                        + [(name, v) for v in values])
        e = err(c.send(request), 400, "duplicate_header")
        assert e["details"] == {"header": name.lower()}
    assert jobs_stored(db_url) == 0


# -- methods ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/jobs/bulk", "POST"),
    ("DELETE", "/jobs/bulk", "POST"),
    ("DELETE", "/jobs", "GET, POST"),
    ("PATCH", "/jobs/0190a0b0-0000-7000-8000-000000000000", "GET"),
    ("GET", "/jobs/0190a0b0-0000-7000-8000-000000000000/cancel", "POST"),
    ("POST", "/queues", "GET"),
    ("GET", "/queues/x/pause", "POST"),
    ("POST", "/health", "GET"),
])
def test_a_wrong_method_is_405_with_allow_and_our_error_body(client: TestClient, method: str, path: str,
                                                              allow: str):
    resp = client.request(method, path)
    err(resp, 405, "method_not_allowed")
    assert sorted(resp.headers["allow"].split(", ")) == sorted(allow.split(", ") + (["HEAD"] if "GET" in allow
                                                                                   else []))
