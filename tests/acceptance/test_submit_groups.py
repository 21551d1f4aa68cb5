"""POST /jobs requests arriving together are stored by one INSERT and one commit, and each
caller still gets its own answer: against a real API server process, over real sockets."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.embedded_pg import free_port
from tests.acceptance.procs import skiplock_env, start, wait_for

pytestmark = pytest.mark.slow


def call(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def pending(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:  # noqa: S310
        for family in text_string_to_metric_families(r.read().decode()):
            for s in family.samples:
                if s.name == "skiplock_http_submissions_pending":
                    return s.value
    return -1.0


def _up(base: str) -> bool:
    try:
        return call(base, "GET", "/health")[0] == 200
    except OSError:
        return False


def test_submissions_arriving_together_share_a_commit_and_each_gets_its_own_answer(db_url: str, tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start(["api", "--port", str(port)], skiplock_env(db_url), tmp_path / "api.log")
    try:
        wait_for(lambda: _up(base), 60, "the API")
        assert call(base, "PUT", "/queues/small", {"max_waiting": 5})[0] == 200
        requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        for i in range(20):
            requests.append((f"plain-{i}", {"task": "echo", "args": {"message": str(i)}}, {}))
        for i in range(2):  # the same job twice under one key: one job
            requests.append((f"same-{i}", {"task": "echo", "args": {"message": "same"}}, {"Idempotency-Key": "same"}))
        for i in range(2):  # two different jobs under one key: one is refused
            requests.append((f"clash-{i}", {"task": "echo", "args": {"message": f"clash {i}"}},
                             {"Idempotency-Key": "clash"}))
        for i in range(8):  # a queue with room for 5
            requests.append((f"small-{i}", {"task": "echo", "args": {"message": str(i)}, "queue": "small"}, {}))
        bad = ("bad", {"task": "echo", "args": {}}, {})  # no message: refused alone, at once

        with psycopg.connect(db_url) as lock, ThreadPoolExecutor(len(requests) + 1) as pool:
            # Inserts wait while this lock is held (reads do not): every request arrives and waits.
            lock.execute("LOCK TABLE skiplock.jobs IN SHARE MODE")
            answers = {rid: pool.submit(call, base, "POST", "/jobs", body, {"X-Request-ID": rid, **h})
                       for rid, body, h in requests}
            bad_answer = pool.submit(call, base, "POST", "/jobs", bad[1], {"X-Request-ID": "bad"}).result()
            wait_for(lambda: pending(base) == len(requests), 30, "every submission waiting to be stored")
            lock.rollback()
            got = {rid: f.result() for rid, f in answers.items()}

        assert bad_answer[0] == 422 and bad_answer[1]["error"]["details"]["field"] == "args.message"
        assert all(got[f"plain-{i}"][0] == 201 for i in range(20)), got
        same = sorted([got["same-0"], got["same-1"]], key=lambda a: a[0])
        assert [s for s, _ in same] == [200, 201] and same[0][1]["id"] == same[1][1]["id"]
        clash = sorted([got["clash-0"], got["clash-1"]], key=lambda a: a[0])
        assert [s for s, _ in clash] == [201, 409], clash
        assert clash[1][1]["error"]["details"]["job_id"] == clash[0][1]["id"]
        small = sorted(got[f"small-{i}"][0] for i in range(8))
        assert small == [201] * 5 + [429] * 3, small

        with psycopg.connect(db_url) as c:
            rows = c.execute("SELECT id::text, correlation_id, xmin::text FROM skiplock.jobs").fetchall()
        assert len(rows) == 20 + 1 + 1 + 5
        by_id = {r[0]: r for r in rows}
        for rid, (status, body) in got.items():  # each job carries its own request's id
            if status == 201:
                assert by_id[body["id"]][1] == rid
        plain_commits = {by_id[got[f"plain-{i}"][1]["id"]][2] for i in range(20)}
        # 20 requests, a handful of commits: the groups that waited for the lock, then one for the rest
        assert len(plain_commits) <= 5, plain_commits
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(30)
