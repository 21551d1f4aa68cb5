"""Token roles and request rates over real HTTP, against a uvicorn server process: what each
role may do, and that a client over its rate gets 429 with a Retry-After after which it is
served, while no request over the rate is served."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from app.embedded_pg import free_port
from tests.acceptance.procs import scalar, skiplock_env, start, wait_for

TOKENS = "admintok,readtok:read,subtok:submit,slowtok:submit:5/m,fasttok:read:2/s"


def call(base: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["api", "--port", str(port)], skiplock_env(db_url, api_tokens=TOKENS), tmp_path / "api.log")
    try:
        wait_for(lambda: _up(base), 30, "the API to answer /health")
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


JOB = {"task": "echo", "args": {"message": "hi"}}


def test_read_tokens_read_submit_tokens_submit_and_only_admin_acts(server: str, db_url: str):
    assert call(server, "GET", "/jobs", "readtok")[0] == 200
    status, _, body = call(server, "POST", "/jobs", "readtok", JOB)
    assert status == 403 and body["error"]["code"] == "forbidden" and body["error"]["details"] == {
        "role": "read", "needed": "submit"}
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs") == 0
    status, _, job = call(server, "POST", "/jobs", "subtok", JOB)
    assert status == 201
    for token in ("readtok", "subtok"):
        assert call(server, "POST", f"/jobs/{job['id']}/cancel", token)[0] == 403
        assert call(server, "POST", "/queues/default/pause", token)[0] == 403
        assert call(server, "PUT", "/queues/default", token, {"max_waiting": 5})[0] == 403
    assert scalar(db_url, "SELECT state::text FROM skiplock.jobs") == "queued"
    assert scalar(db_url, "SELECT count(*) FROM skiplock.queues") == 0
    assert call(server, "POST", f"/jobs/{job['id']}/cancel", "admintok")[0] == 200
    assert call(server, "POST", "/queues/default/pause", "admintok")[0] == 200
    assert call(server, "GET", "/jobs", "nobody")[0] == 401


def test_no_request_over_the_rate_is_served_and_retry_after_says_when(server: str, db_url: str):
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: call(server, "POST", "/jobs", "slowtok", JOB), range(12)))
    elapsed = time.monotonic() - started
    assert sorted(a[0] for a in answers) == [201] * 5 + [429] * 7
    assert scalar(db_url, "SELECT count(*) FROM skiplock.jobs") == 5
    for status, headers, body in answers:
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
            # 5/m: the next place opens 12 s after the first request was served
            assert 12 - elapsed - 1 <= int(headers["Retry-After"]) <= 12
    assert call(server, "POST", "/jobs", "admintok", JOB)[0] == 201  # another token is not limited by it


def test_after_retry_after_seconds_the_next_request_is_served(server: str):
    assert [call(server, "GET", "/jobs", "fasttok")[0] for _ in range(2)] == [200, 200]
    status, headers, _ = call(server, "GET", "/jobs", "fasttok")
    assert status == 429 and headers["Retry-After"] == "1"  # 2/s: a place opens within 0.5 s
    time.sleep(int(headers["Retry-After"]))
    assert call(server, "GET", "/jobs", "fasttok")[0] == 200
