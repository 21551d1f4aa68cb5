"""What the HTTP API accepts as input, against the real app and database: idempotency in
bulk submissions, JSON the server refuses (duplicate keys, lax types, numbers and strings it
cannot store), sizes counted as stored, and bodies too big to parse cheaply."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.embedded_pg import free_port
from app.http import create_app
from app.settings import Settings
from tests.acceptance.procs import skiplock_env, start, wait_for

JSON = {"Content-Type": "application/json"}

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


# -- JSON the server refuses -------------------------------------------------------------------

@pytest.mark.parametrize("raw,field", [
    (b'{"task": "echo", "task": "always_fail", "args": {"message": "x"}}', "task"),
    (b'{"task": "echo", "args": {"message": "x", "message": "y"}}', "args.message"),
    (b'{"task": "webhook", "args": {"url": "http://x", "payload": {"a": [{"k": 1, "k": 2}]}}}', "args.payload.a.0.k"),
])
def test_duplicate_keys_are_refused_at_any_depth_naming_the_key(client: TestClient, db_url: str, raw: bytes,
                                                                field: str):
    e = err(client.post("/jobs", content=raw, headers=JSON), 422)
    assert e["details"]["field"] == field and "duplicate key" in e["message"], e
    bulk = b'{"jobs": [{"task": "echo", "args": {"message": "ok"}}, ' + raw + b"]}"
    e = err(client.post("/jobs/bulk", content=bulk, headers=JSON), 422)
    assert (e["details"]["field"], e["details"]["index"]) == (f"jobs.1.{field}", 1), e
    assert stored(db_url) == []


@pytest.mark.parametrize("change,field", [
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": "7"}, "max_attempts"),
    ({"max_attempts": 7.5}, "max_attempts"),
    ({"delay": "5"}, "delay"),
    ({"timeout": False}, "timeout"),
    ({"run_at": 1893456000}, "run_at"),  # seconds are not a time: only an RFC 3339 string is
    ({"run_at": "2030-01-01"}, "run_at"),
    ({"batch_id": 7}, "batch_id"),
    ({"task": "fail_n_times", "args": {"n": "3"}}, "args.n"),
    ({"task": "fail_n_times", "args": {"n": True}}, "args.n"),
    ({"task": "sleep", "args": {"seconds": "1"}}, "args.seconds"),
    ({"args": {"message": 5}}, "args.message"),
])
def test_values_of_the_wrong_json_type_are_refused_not_converted(client: TestClient, db_url: str,
                                                                 change: dict[str, Any], field: str):
    e = err(client.post("/jobs", json={**ECHO, **change}), 422)
    assert e["details"]["field"] == field, e
    assert stored(db_url) == []


def test_numbers_are_taken_as_numbers_an_integral_float_as_an_integer(client: TestClient, db_url: str):
    r = client.post("/jobs", json={"task": "fail_n_times", "args": {"n": 2.0}, "max_attempts": 7.0, "delay": 1})
    assert r.status_code == 201, r.text
    assert (r.json()["max_attempts"], r.json()["args"]) == (7, {"n": 2})


def test_queue_limits_take_numbers_only(client: TestClient):
    assert err(client.put("/queues/q", json={"max_waiting": True}), 422)["details"]["field"] == "max_waiting"
    assert err(client.put("/queues/q", json={"max_waiting": "3"}), 422)["details"]["field"] == "max_waiting"
    assert client.put("/queues/q", json={"max_waiting": 3.0}).json()["max_waiting"] == 3


@pytest.mark.parametrize("raw,field", [
    (b'{"task": "webhook", "args": {"url": "http://x", "payload": {"a": [1, 1e400]}}}', "args.payload.a.1"),
    (b'{"task": "sleep", "args": {"seconds": 1e400}}', "args.seconds"),
    (b'{"task": "sleep", "args": {"seconds": 1}, "delay": -1e400}', "delay"),
    (b'{"task": "echo", "args": {"message": "\\ud800"}}', "args.message"),
    (b'{"task": "echo", "args": {"message": "x"}, "idempotency_key": "a\\udfffb"}', "idempotency_key"),
    (b'{"task": "webhook", "args": {"url": "http://x", "payload": {"\\ud83d": 1}}}', "args.payload.\\ud83d"),
])
def test_numbers_and_strings_that_cannot_be_stored_are_refused_naming_where(client: TestClient, db_url: str,
                                                                            raw: bytes, field: str):
    e = err(client.post("/jobs", content=raw, headers=JSON), 422)
    assert e["details"]["field"] == field, e
    assert stored(db_url) == []


def test_the_args_limit_counts_the_utf8_bytes_stored(client: TestClient, db_url: str):
    fits = "é" * 100_000  # 200,000 bytes in UTF-8; 600,000 as \u00e9 escapes
    r = client.post("/jobs", json={"task": "echo", "args": {"message": fits}})
    assert r.status_code == 201, r.text[:300]
    with psycopg.connect(db_url) as c:
        size = c.execute("SELECT octet_length(args::text) FROM skiplock.jobs").fetchone()[0]  # type: ignore[index]
    assert 200_000 < size < 200_100
    e = err(client.post("/jobs", json={"task": "echo", "args": {"message": "é" * 132_000}}), 422)
    assert e["details"]["field"] == "args" and "264014 bytes" in e["message"], e


# -- bodies too big to parse cheaply ---------------------------------------------------------

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def test_a_32_mib_body_of_empty_objects_is_refused_in_memory_bounded_by_the_body_limit(db_url: str,
                                                                                        tmp_path: Path):
    """The real server process: its peak memory grows by less than 4x the 32 MiB body limit
    (json.loads alone would build 11 million dicts: 1.7 GB)."""
    port = free_port()
    api = start(["api", "--port", str(port)], skiplock_env(db_url), tmp_path / "api.log")
    try:
        wait_for(lambda: _health(port) == 200, 30, "the API to answer /health")
        before = peak_rss(api.pid)
        body = b'{"jobs": [' + b"{}," * ((32 * MIB - 20) // 3) + b"{}]}"
        assert len(body) <= 32 * MIB
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/jobs/bulk", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        error = json.loads(resp.read())["error"]
        conn.close()
        grew = peak_rss(api.pid) - before
        assert grew < 4 * 32 * MIB, f"peak memory grew by {grew / MIB:.0f} MiB"
        assert resp.status == 422 and error["details"]["field"] == "body", error
    finally:
        api.terminate()
        api.wait(30)


def test_other_requests_are_served_while_a_large_body_is_parsed(db_url: str):
    """A body under the item limit that takes a while to parse (262,000 objects): the event loop
    keeps answering /health meanwhile, because the parse runs in a thread. Before, the loop
    was blocked for the whole parse and answered at most the request already under way."""
    api = create_app(Settings(database_url=db_url))
    body = b'{"jobs": [' + b'{"a": {}},' * 262_000 + b"{}]}"

    async def go() -> tuple[httpx.Response, int]:
        async with api.router.lifespan_context(api):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
                assert (await c.get("/health")).status_code == 200
                big = asyncio.create_task(c.post("/jobs/bulk", content=body, headers=JSON))
                answered = 0
                while not big.done():
                    assert (await c.get("/health")).status_code == 200
                    answered += 1
                return await big, answered

    resp, answered = asyncio.run(go())
    assert resp.status_code == 422 and resp.json()["error"]["details"]["field"] == "jobs"
    # blocked, the loop answers at most the request already under way (1); how many more it
    # answers depends on the machine's speed, so the test asks only for more than that
    assert answered >= 2, answered


# -- the description states what the server checks --------------------------------------------

def test_openapi_states_the_rules_the_server_checks(client: TestClient):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    tasks = [t["name"] for t in client.get("/tasks").json()["tasks"]]
    variants = [schemas[v["$ref"].rsplit("/", 1)[1]] for v in schemas["JobIn"]["oneOf"]]
    assert [v["properties"]["task"]["const"] for v in variants] == tasks
    echo = schemas["JobIn_echo"]
    assert echo["required"] == ["task", "args"] and echo["additionalProperties"] is False
    assert schemas[echo["properties"]["args"]["$ref"].rsplit("/", 1)[1]]["required"] == ["message"]
    assert echo["properties"]["queue"]["anyOf"][0]["pattern"] == "^[a-z0-9_][a-z0-9_.-]{0,62}$"
    assert echo["properties"]["max_attempts"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert schemas["BulkIn"]["properties"]["jobs"]["maxItems"] == 10_000
    assert schemas["QueueLimits"]["properties"]["max_waiting"]["anyOf"][0]["minimum"] == 1
    post = doc["paths"]["/jobs"]["post"]
    assert {"200", "201", "405", "409", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert post["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["schema"]["pattern"] and "X-Request-ID" in headers
    params = {p["name"]: p["schema"] for p in doc["paths"]["/jobs"]["get"]["parameters"]}
    assert params["cursor"]["pattern"] == "^[A-Za-z0-9_-]{22}$" and params["limit"]["maximum"] == 500
    assert "1048576 JSON items" in doc["info"]["description"]
