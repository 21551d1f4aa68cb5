"""The API through a PostgreSQL outage, as real processes: 503 while the database is down
(the first request within the pool timeout, every later one within about a second); the same
server accepts jobs again once it is back; no job answered 201 is missing."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from app.embedded_pg import free_port, scratch_database
from tests.acceptance.procs import skiplock_env, start, wait_for

pytestmark = pytest.mark.slow


def post_job(base: str, i: int) -> tuple[int, dict[str, object], float]:
    req = urllib.request.Request(f"{base}/jobs", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"task": "echo", "args": {"message": str(i)}}).encode())
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read()), time.monotonic() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), time.monotonic() - t0


def test_api_answers_503_while_postgres_is_down_and_recovers_without_restart(tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with scratch_database("skiplock-outage-") as (cluster, url):
        api = start(["api", "--port", str(port)], skiplock_env(url), tmp_path / "api.log")
        accepted: list[str] = []
        try:
            wait_for(lambda: post_job(base, -1)[0] == 201 if _up(base) else False, 60, "the API")
            for i in range(20):
                status, body, _ = post_job(base, i)
                assert status == 201
                accepted.append(str(body["id"]))

            cluster.stop("immediate")
            outage = [post_job(base, 100 + i) for i in range(5)]
            assert [s for s, _, _ in outage] == [503] * 5, outage
            assert all(b["error"]["code"] == "database_unavailable" for _, b, _ in outage)  # type: ignore[index]
            waits = [t for _, _, t in outage]
            assert waits[0] < 8, waits  # the first one finds out: up to the 5 s pool timeout
            assert max(waits[1:]) < 2, waits  # the rest know the database is down (OUTAGE_WAIT 1 s)
            health = urllib.request.Request(f"{base}/health")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(health, timeout=10)  # noqa: S310
            assert info.value.code == 503

            cluster.start()
            back = time.monotonic()
            first_ok = wait_for(lambda: (r := post_job(base, 200))[0] == 201 and r, 30, "the API to accept again")
            accepted.append(str(first_ok[1]["id"]))
            recovered = time.monotonic() - back
            for i in range(20):
                status, body, _ = post_job(base, 300 + i)
                assert status == 201
                accepted.append(str(body["id"]))
            assert api.poll() is None, "the API process died"
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(30)
        with psycopg.connect(url) as c:
            stored = {str(r[0]) for r in c.execute("SELECT id FROM skiplock.jobs").fetchall()}
        assert set(accepted) <= stored, "a job answered 201 is missing"
        print(f"\noutage: first 503 in {waits[0]:.2f}s, then <= {max(waits[1:]):.2f}s; accepting again "
              f"{recovered:.2f}s after PostgreSQL was back; {len(accepted)} accepted jobs all stored")


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False
