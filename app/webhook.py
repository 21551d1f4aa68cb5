"""An outbound POST for the example `webhook` task that cannot be pointed inside the network.

Whoever may submit jobs chooses the URL, so without a check the worker would POST wherever
it can reach: 127.0.0.1, the cloud metadata service, private hosts (server-side request
forgery). Every address the host name resolves to must be public, unless
SKIPLOCK_WEBHOOK_ALLOW_PRIVATE=1; the connection then goes to one of those checked addresses
(the URL's host name still goes in the Host header, TLS SNI and the certificate check), so a
DNS answer that changes between the check and the connect (DNS rebinding) is never used.
Redirects are not followed, the response read is bounded, and `timeout` bounds the whole
request, not each read: a server trickling bytes cannot hold a worker thread.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse

from skiplock import NonRetryableError

ALLOW_PRIVATE_ENV = "SKIPLOCK_WEBHOOK_ALLOW_PRIVATE"
MAX_RESPONSE_BYTES = 64 * 1024
"""How much of a response body is read (the task keeps only its status and a snippet)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def allow_private() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def refusal(ip: IPAddress) -> str | None:
    """Why `ip` may not be a webhook target (None: it may). IPv6 forms that embed an IPv4
    address (mapped, 6to4, NAT64) are judged by the address they embed."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            return refusal(embedded)
    checks = [("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("private", ip.is_private), ("reserved", ip.is_reserved),
              ("not globally routable", not ip.is_global)]
    return next((name for name, hit in checks if hit), None)


def checked_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them allowed, or NonRetryableError naming the
    first that is not. A failed lookup raises OSError (the job retries)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if allow_private():
        return addresses
    for address in addresses:
        why = refusal(ipaddress.ip_address(address.split("%", 1)[0]))
        if why is not None:
            raise NonRetryableError(f"webhook refused: {host} resolves to {address} ({why}); set "
                                    f"{ALLOW_PRIVATE_ENV}=1 to allow private addresses")
    return addresses


class PinnedConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS with `tls`, to `address` (never a new lookup of `host`); `host` is what
    the Host header, SNI and the certificate check name. `abort()` may be called from another
    thread: it ends a connect or read in progress."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = tls
        self.aborted = False
        self._raw: socket.socket | None = None

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self._raw = raw
        if self.aborted:  # abort() ran before the socket existed
            raw.close()
            raise TimeoutError("aborted")
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host) if self.tls else raw

    def abort(self) -> None:
        self.aborted = True
        raw = self._raw
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def post_json(url: str, body: bytes, *, timeout: float) -> tuple[int, bytes]:
    """POST `body` as JSON within `timeout` seconds in all (TimeoutError after it); returns
    (status, at most MAX_RESPONSE_BYTES of the response body)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NonRetryableError(f"webhook refused: {url!r} is not an http or https URL")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    too_slow = f"webhook to {host} took longer than {timeout}s"
    ends = time.monotonic() + timeout
    error: OSError = OSError(f"webhook: no address for {host}")
    for address in checked_addresses(host, port):
        left = ends - time.monotonic()
        if left <= 0:
            raise TimeoutError(too_slow) from error
        conn = PinnedConnection(host, port, address=address, timeout=left, tls=tls)
        deadline = threading.Timer(left, conn.abort)
        deadline.daemon = True
        deadline.start()
        try:
            try:
                conn.connect()
            except OSError as exc:  # this address does not answer: try the next one
                error = exc
                continue
            conn.request("POST", target, body=body, headers={
                "Content-Type": "application/json", "User-Agent": "skiplock-webhook"})
            resp = conn.getresponse()
            return resp.status, resp.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            if conn.aborted:
                raise TimeoutError(too_slow) from exc
            raise
        finally:
            deadline.cancel()
            conn.close()
    raise error
