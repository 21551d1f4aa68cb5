"""The server's edge through real sockets against a real `skiplock api` process: a request's
head is bounded in size and time before any of our code runs, a stalled body is answered
408, a client that goes away mid-body is a line at INFO, and ordinary traffic (large bodies,
pipelined requests) is untouched by the bounds."""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.embedded_pg import free_port
from tests.acceptance.procs import skiplock_env, start, wait_for

pytestmark = pytest.mark.slow

HEAD_LIMIT = 32 * 1024  # the default SKIPLOCK_MAX_HEADER_BYTES


@dataclass
class Server:
    port: int
    pid: int
    log: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock

    def health(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=30) as r:  # noqa: S310
            return int(r.status)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "api.log"
    proc = start(["api", "--port", str(port)], skiplock_env(db_url, header_timeout=2, body_timeout=1), log)
    srv = Server(port, proc.pid, log)
    try:
        wait_for(lambda: _answers(srv), 60, "the API")
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _answers(srv: Server) -> bool:
    try:
        return srv.health() == 200
    except OSError:
        return False


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body), read until its Content-Length or EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed without a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_huge_header_is_refused_before_it_is_all_sent(server: Server):
    total = 64 * 1024 * 1024
    chunk = b"a" * 65536
    before = server.rss_kb()
    sock = server.connect()
    sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + chunk[:8192])
    health: list[int] = []
    probe = threading.Thread(target=lambda: health.append(server.health()))
    probe.start()  # another client, while this head is still open
    sent, answer = 8192, None
    sock.setblocking(False)
    while sent < total:
        readable, writable, _ = select.select([sock], [sock], [], 30)
        if readable or not writable:  # an answer, or a server that stopped reading (for 30 s)
            break
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    sock.settimeout(10)
    try:
        answer = read_response(sock)
    except (ConnectionResetError, AssertionError, TimeoutError):
        pass
    probe.join(30)
    assert sent < total, "the whole 64 MB head was read"
    assert answer is not None and answer[0] == 431, answer
    assert error_code(answer[2]) == "request_header_fields_too_large"
    assert health == [200]
    assert server.rss_kb() - before < 16 * 1024, "the server's memory grew with the header"
    assert server.health() == 200


def test_a_head_that_does_not_arrive_in_time_is_answered_408(server: Server):
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        status, headers, body = read_response(sock)
        assert (status, error_code(body), headers["connection"]) == (408, "request_timeout", "close")
        assert closed_by_server(sock)
    with server.connect() as silent:  # a connection that never sends a byte is closed as well
        status, _, body = read_response(silent)
        assert (status, error_code(body)) == (408, "request_timeout")


def test_a_body_shorter_than_its_content_length_is_answered_408(server: Server):
    with server.connect() as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"task\": ")
        status, headers, body = read_response(sock)
        assert (status, error_code(body), headers["connection"]) == (408, "request_timeout", "close")
        assert closed_by_server(sock)
    assert server.health() == 200


def test_an_upload_abandoned_mid_body_is_logged_at_info_without_a_traceback(server: Server):
    with server.connect() as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"[" * 1000)
    wait_for(lambda: "client went away" in server.log.read_text(), 30, "the disconnect to be logged")
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_large_bodies_and_pipelined_requests_pass_the_head_bound(server: Server):
    body = json.dumps({"task": "echo", "args": {"message": "x" * (4 * HEAD_LIMIT)}}).encode()
    post = (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body
    get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(post + get + post)  # one write: head, body and further requests together
        assert [read_response(sock)[0] for _ in range(3)] == [201, 200, 201]
