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


def test_an_upload_rolled_back_after_its_enqueue_leaves_no_job_and_no_upload(db_url: str, webapp: str):
    status, body = post(f"{webapp}/uploads?name=a.txt&fail_after_enqueue=1", b"some text", "rolled-back-upload")
    assert status == 500 and body["rolled_back"] is True, body
    with psycopg.connect(db_url, autocommit=True) as c:
        def stored(upload_id: int, job_id: str, rid: str) -> tuple[Any, ...] | None:
            return c.execute("""
                SELECT (SELECT count(*) FROM uploads_app.uploads WHERE id = %(u)s OR correlation_id = %(r)s),
                       (SELECT count(*) FROM skiplock.jobs WHERE id = %(j)s OR correlation_id = %(r)s),
                       (SELECT count(*) FROM skiplock.job_history WHERE job_id = %(j)s)""",
                             {"u": upload_id, "j": job_id, "r": rid}).fetchone()

        assert stored(body["upload_id"], body["job_id"], "rolled-back-upload") == (0, 0, 0)
        # The same upload without the failure stores both, so the check above sees what exists.
        status, kept = post(f"{webapp}/uploads?name=a.txt", b"some text", "kept-upload")
        assert status == 201, kept
        assert stored(kept["upload_id"], kept["job_id"], "kept-upload") == (1, 1, 0)


TIMELINE = re.compile(r"^  (\w+) +(\S+)  attempt (\d+)  worker (\S+)  correlation_id=(\S+)$", re.MULTILINE)


def test_the_curl_client_follows_an_upload_through_skiplocks_api_with_its_request_id(db_url: str, webapp: str,
                                                                                       tmp_path: Path):
    port = free_port()
    env = skiplock_env(db_url, api_tokens="ops-secret,viewer:read", tasks="examples.upload_results.tasks")
    procs = [start(["api", "--port", str(port)], env, tmp_path / "api.log"), start(["worker"], env, tmp_path / "w.log")]
    try:
        wait_for(lambda: live_workers(port) > 0, 60, "the API and a live worker")
        doc = tmp_path / "notes.txt"
        doc.write_bytes(b"first line of notes\nsecond line\n")
        client_env = {**env, "SKIPLOCK_API": f"http://127.0.0.1:{port}", "UPLOADS_APP": webapp,
                      "SKIPLOCK_TOKEN": "viewer", "REQUEST_ID": "curl-client-42"}
        done = subprocess.run(["sh", str(EXAMPLE / "client.sh"), str(doc)], env=client_env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        steps = TIMELINE.findall(done.stdout)
        assert [s[0] for s in steps] == ["queued", "running", "succeeded"], done.stdout
        assert {s[4] for s in steps} == {"curl-client-42"}, done.stdout
        assert f"analysed, 1 result row(s): 6 words, 2 lines, sha256 {hashlib.sha256(doc.read_bytes()).hexdigest()}" \
            in done.stdout, done.stdout

        failed = subprocess.run(["sh", str(EXAMPLE / "client.sh"), "--fail", str(doc)], env=client_env,
                                capture_output=True, text=True, timeout=120)
        assert failed.returncode == 0, failed.stdout + failed.stderr
        assert re.search(r"rolled back: GET \S+/jobs/\S+ -> 404, GET \S+/uploads/\d+ -> 404", failed.stdout), \
            failed.stdout
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def live_workers(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:  # noqa: S310
            return int(json.load(resp)["workers"]["live"])
    except OSError:
        return 0


def test_the_example_runs_with_one_command_against_an_embedded_cluster_it_starts_and_stops(tmp_path: Path):
    pg_port = free_port()
    env = {**skiplock_env(None, home=tmp_path / "home", embedded_port=pg_port, port=free_port()),
           "UPLOADS_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "examples.upload_results"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    out = done.stdout
    blocks = out.split("\n$ examples/upload_results/client.sh ")[1:]
    assert len(blocks) == 4, out
    for block in blocks[:3]:
        rid = re.search(r"\(X-Request-ID: (\S+)\)", block)
        assert rid, block
        steps = TIMELINE.findall(block)
        assert [s[0] for s in steps] == ["queued", "running", "succeeded"], block
        assert {s[4] for s in steps} == {rid[1]}, block
        assert "analysed, 1 result row(s)" in block, block
    assert re.search(r"rolled back: \S+ \S+ -> 404, \S+ \S+ -> 404", blocks[3]), blocks[3]
    assert len(re.findall(r"^\d+ +\S+ +analysed +\d+ +1 +succeeded +upload-\w+$", out, re.MULTILINE)) == 3, out
    cluster = Cluster(tmp_path / "home", port=pg_port)
    assert cluster.initialized() and not cluster.running()  # stopped again: it started it
    cluster.destroy()
