"""`make example-uploads` (`python -m examples.upload_results`): the whole example with one
command. The database is the one `make run` uses (DATABASE_URL, or the embedded cluster,
started here if it is not running and stopped again at the end); then Skiplock's API and a
worker (`skiplock run`, with this example's tasks), the example's web app, a few uploads by
client.sh (one of them rolled back), and everything stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

from app import migrate as migrations
from app.embedded_pg import PostgresNotFound
from app.settings import ROOT, Settings
from app.wiring import configure_logging, database_url

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "client.sh"
TASKS = "app.tasks,examples.upload_results.tasks"
SAMPLES = [HERE / "README.md", HERE / "schema.sql", CLIENT]


def main() -> int:
    settings = Settings()
    configure_logging(settings)
    app_port = int(os.environ.get("UPLOADS_PORT", "8001"))
    for port, what in ((settings.port, "Skiplock's API (SKIPLOCK_PORT)"), (app_port, "the app (UPLOADS_PORT)")):
        if not _port_free(port):
            print(f"example: port {port} for {what} is in use (is `make run` running? then follow "
                  "examples/upload_results/README.md by hand)", file=sys.stderr)
            return 2
    try:
        url, started = database_url(settings)
    except PostgresNotFound as exc:
        print(f"example: {exc}", file=sys.stderr)
        return 3
    settings.home.mkdir(parents=True, exist_ok=True)
    log = settings.home / "example-uploads.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrations.upgrade(url)
        env = dict(os.environ, DATABASE_URL=url, SKIPLOCK_TASKS=TASKS, UPLOADS_PORT=str(app_port),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(log, "ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "app", "run"], cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen([sys.executable, "-m", "examples.upload_results.webapp"], cwd=ROOT,
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
        api, app = f"http://127.0.0.1:{settings.port}", f"http://127.0.0.1:{app_port}"
        print(f"example: database {url}; Skiplock's API and a worker on {api}, the app on {app} (logs: {log})")
        _wait(lambda: _live_workers(api) > 0, procs, "Skiplock's API and its worker")
        _wait(lambda: not _port_free(app_port), procs, "the example's app")
        client_env = dict(env, SKIPLOCK_API=api, UPLOADS_APP=app)
        ok = True
        for sample in SAMPLES:
            print(f"\n$ examples/upload_results/client.sh {sample.relative_to(ROOT)}", flush=True)
            ok = subprocess.run(["sh", str(CLIENT), str(sample)], env=client_env, check=False).returncode == 0 and ok
        print(f"\n$ examples/upload_results/client.sh --fail {SAMPLES[0].relative_to(ROOT)}", flush=True)
        ok = subprocess.run(["sh", str(CLIENT), "--fail", str(SAMPLES[0])], env=client_env,
                            check=False).returncode == 0 and ok
        _show_tables(url)
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(settings.grace_seconds + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if started is not None:
            started.stop()


JOINED = """SELECT u.id AS upload, u.name, u.state, r.words, r.attempt, j.state AS job, j.correlation_id
  FROM uploads_app.uploads u JOIN uploads_app.results r ON r.upload_id = u.id JOIN skiplock.jobs j ON j.id = u.job_id
 ORDER BY u.id DESC LIMIT 10"""


def _show_tables(url: str) -> None:
    """What psql shows: each upload, its result row and its job."""
    print(f"\nmake psql, then:\n{JOINED};\n")
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(JOINED)
        names = [c.name for c in cur.description or []]
        rows = [[str(v) for v in row] for row in cur.fetchall()]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    for row in [names, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _live_workers(api: str) -> int:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:  # noqa: S310 - our own loopback server
            return int(json.load(resp)["workers"]["live"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait(ready: Callable[[], bool], procs: list[subprocess.Popen[bytes]], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"example: a process exited before {what} was ready (see the log)")
        if time.monotonic() > deadline:
            raise SystemExit(f"example: {what} not ready after {timeout:g}s (see the log)")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
