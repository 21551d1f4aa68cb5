"""The example tasks (app/tasks.py) are installed by default, so anyone who may submit jobs
chooses their arguments: bounded at submission, never holding the event loop, and a webhook
that cannot be pointed inside the network. Real sockets against local servers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings
from app.tasks import MAX_COUNT, count_to
from app.webhook import ALLOW_PRIVATE_ENV, PinnedConnection
from skiplock import NonRetryableError, registry
from skiplock.catalog import record_tasks


class Recorder(BaseHTTPRequestHandler):
    """Records every request; /redirect answers 302 to /elsewhere."""

    seen: list[dict[str, Any]]

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"method": self.command, "path": self.path, "host": self.headers["Host"],
                          "body": self.rfile.read(length) if length else b""})
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("H", (Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="test-webhook-server", daemon=True)
    thread.start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


def run_webhook(url: str, payload: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
    """The registered handler, called as the worker calls it (arguments validated first)."""
    t = registry.get("webhook")
    return t.fn(**t.call_kwargs({"url": url, "payload": payload or {}, "timeout_seconds": timeout}))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/hook", "http://localhost:{port}/hook", "http://[::1]:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook", "http://0.0.0.0:{port}/hook", "http://127.1:{port}/hook",
    "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/",
    "http://100.64.0.1/", "http://[fe80::1]/", "http://[fd00::1]/", "http://224.0.0.1/", "http://240.0.0.1/",
    "http://[2002:7f00:1::]/", "http://[64:ff9b::7f00:1]/",
])
def test_webhook_refuses_internal_addresses_and_sends_nothing(server: tuple[int, list[dict[str, Any]]],
                                                              monkeypatch: pytest.MonkeyPatch, url: str):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    port, seen = server
    with pytest.raises(NonRetryableError, match="webhook refused"):
        run_webhook(url.format(port=port), timeout=1.0)
    assert seen == []


def test_webhook_reaches_private_addresses_when_allowed_and_never_follows_redirects(
        server: tuple[int, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    port, seen = server
    assert run_webhook(f"http://localhost:{port}/hook?x=1", {"order": 42}) == {"status": 200}
    assert seen == [{"method": "POST", "path": "/hook?x=1", "host": f"localhost:{port}",
                     "body": json.dumps({"order": 42}).encode()}]
    # A redirect's target was never checked: the job fails instead of following it.
    with pytest.raises(NonRetryableError, match="302"):
        run_webhook(f"http://127.0.0.1:{port}/redirect")
    assert [s["path"] for s in seen] == ["/hook?x=1", "/redirect"]


def test_the_connection_goes_to_the_checked_address_without_looking_the_name_up_again(
        server: tuple[int, list[dict[str, Any]]]):
    port, seen = server
    # `.invalid` never resolves: the request arrives only because the address is used as given.
    conn = PinnedConnection("rebound.invalid", port, address="127.0.0.1", timeout=5)
    conn.request("POST", "/x", body=b"{}", headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    assert seen[0]["host"] == f"rebound.invalid:{port}"


def test_webhook_timeout_bounds_the_whole_request_not_each_read(monkeypatch: pytest.MonkeyPatch):
    """A server that trickles its answer a byte at a time never trips a per-read timeout."""
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    listener = socket.create_server(("127.0.0.1", 0))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"a" * 60 + b"\r\n\r\n"
    outcome: list[str] = []
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                for byte in answer:
                    conn.sendall(bytes([byte]))
                    if stop.wait(0.1):
                        break
                outcome.append("sent it all")
            except OSError:
                outcome.append("cut off")

    thread = threading.Thread(target=trickle, name="test-trickle", daemon=True)
    thread.start()
    try:
        with pytest.raises(TimeoutError):
            run_webhook(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=1.0)
        thread.join(15)
        assert outcome == ["cut off"]
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("task,args,field", [
    ("count_to", {"total": 10**6}, "args.total"),
    ("count_to", {"total": 10, "fail_at": -1}, "args.fail_at"),
    ("sleep", {"seconds": 10**6}, "args.seconds"),
    ("sleep", {"seconds": -1}, "args.seconds"),
    ("sleep_sync", {"seconds": 86_400}, "args.seconds"),
    ("fail_n_times", {"n": 10**9}, "args.n"),
    ("always_fail", {"reason": "x" * 5_000}, "args.reason"),
])
def test_example_arguments_are_bounded_at_submission(db_url: str, task: str, args: dict[str, Any], field: str):
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        r = c.post("/jobs", json={"task": task, "args": args})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["field"] == field


def test_count_to_at_its_largest_lets_the_event_loop_run_other_work():
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> dict[str, int]:
        nonlocal done
        other = asyncio.create_task(ticker(), name="ticker")
        try:
            return await count_to(total=MAX_COUNT)
        finally:
            done = True
            await other

    assert asyncio.run(main()) == {"counted": MAX_COUNT, "resumed_from": 0}
    assert ticks >= MAX_COUNT // 100  # the ticker ran throughout, not once before and once after


def test_the_example_tasks_can_be_recorded_in_the_task_catalog(db_url: str):
    """Their timeouts mix ints and floats (130, 660.0); a worker records them all at start."""
    async def record() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await record_tasks(conn, registry)
            cur = await conn.execute("SELECT name, timeout FROM skiplock.tasks")
            return [{"name": name, "timeout": timeout} for name, timeout in await cur.fetchall()]

    recorded = {r["name"]: r for r in asyncio.run(record())}
    assert recorded["sleep"]["timeout"] == 660.0 and recorded["webhook"]["timeout"] == 130.0
