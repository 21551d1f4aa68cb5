"""examples/upload_results end to end, with real processes: the example's web app (uploads
over HTTP), real worker processes SIGKILLed at random points, Skiplock's API server, the curl
client, and `make example-uploads`' one command against an embedded cluster of its own."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.embedded_pg import Cluster, free_port
from tests.acceptance.procs import ROOT, skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "upload_results"
UPLOADS = 300
KILLS = 30


def post(url: str, body: bytes, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/octet-stream", **({"X-Request-ID": request_id} if request_id else {})}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own loopback server
            return int(resp.status), json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/uploads/0", timeout=1)  # noqa: S310
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    except OSError:
        return False
    return False


@pytest.fixture
def webapp(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The example's web app as a process of its own; its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "examples.upload_results.webapp"], cwd=ROOT,
                            env={**skiplock_env(db_url), "UPLOADS_PORT": str(port)},
                            stdout=open(tmp_path / "webapp.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        wait_for(lambda: answers(port), 60, "the example's web app")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def kill_workers(db_url: str, kills: int, variant: str = "transaction") -> str:
    done = subprocess.run([sys.executable, "-m", "tests.examples.upload_kill_worker", db_url, str(kills),
                           str(int.from_bytes(os.urandom(4))), variant],
                          cwd=ROOT, env=skiplock_env(db_url), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def upload_all(app: str, n: int) -> dict[int, str]:
    """n uploads through the app, four at a time: upload id -> request id."""
    def one(i: int) -> tuple[int, str]:
        rid = f"kill-test-{i}"
        status, body = post(f"{app}/uploads?name=doc-{i}.txt", f"document {i}\n".encode() * (i % 7 + 1), rid)
        assert status == 201, body
        return int(body["upload_id"]), rid

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, range(n)))


def check(db_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every upload with its job and its results: (all rows, the wrong ones). Right is: analysed,
    its job succeeded, exactly one result row, written by the attempt that succeeded (the job's
    result names that row), for that job."""
    with psycopg.connect(db_url, autocommit=True) as c:
        rows = c.execute("""
            SELECT u.id, u.correlation_id, u.state, j.state::text, j.attempt, j.result->'result_id',
                   count(r.id), min(r.id), min(r.attempt), bool_and(r.job_id = u.job_id)
              FROM uploads_app.uploads u JOIN skiplock.jobs j ON j.id = u.job_id
              LEFT JOIN uploads_app.results r ON r.upload_id = u.id
             GROUP BY u.id, j.id ORDER BY u.id""").fetchall()
    wrong = [r for r in rows if r[2:4] != ("analysed", "succeeded") or r[6] != 1 or r[8] != r[4] or r[5] != r[7]
             or not r[9]]
    return rows, wrong


def test_workers_killed_at_random_points_leave_one_result_per_upload(db_url: str, webapp: str):
    sent = upload_all(webapp, UPLOADS)
    report = kill_workers(db_url, KILLS)
    rows, wrong = check(db_url)
    assert {r[0]: r[1] for r in rows} == sent  # every upload the app answered 201 for, with its job
    assert not wrong, (report, wrong[:5])
    interrupted = sum(1 for r in rows if r[4] > 1)
    assert interrupted >= KILLS // 2, report  # the kills landed among running jobs, not between them
    with psycopg.connect(db_url, autocommit=True) as c:  # every transition carries its upload's request id
        assert c.execute("SELECT count(*) FROM uploads_app.uploads u JOIN skiplock.job_timeline t"
                         " ON t.job_id = u.job_id WHERE t.correlation_id IS DISTINCT FROM u.correlation_id"
                         ).fetchone() == (0,)
    print(f"\nupload kills: {report} interrupted={interrupted}")


def test_the_check_finds_duplicates_when_the_handler_writes_outside_its_jobs_transaction(db_url: str, webapp: str):
    """The negative control: the same writes on an autocommit connection of the handler's own
    (not ctx.transaction()) and the same kills leave uploads with two results."""
    upload_all(webapp, 100)
    report = kill_workers(db_url, 10, "autocommit")
    rows, wrong = check(db_url)
    duplicated = [r for r in rows if r[6] > 1]
    assert duplicated, (report, wrong[:5])
    print(f"\nautocommit handler: {report} duplicated={len(duplicated)} wrong={len(wrong)}")
