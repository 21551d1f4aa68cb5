"""The guard in front of every route (a plain ASGI middleware): correlation id, then, before
any route runs, the access rules (app/http/access.py), bearer-token auth compared in
constant time, the content type and size of a body, and a bound on the wait for each part
of a body (app/http/transport.py)."""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import access
from .errors import error_response
from .transport import bounded_receive

OPEN_PATHS = frozenset({"/health"})
"""Paths served without a token and to any Host: probes (a container's, a load balancer's)
name whatever address they reach the server by, and /health reveals nothing."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")


def token_ok(presented: str, tokens: Sequence[bytes]) -> bool:
    """Compare against every configured token, always all of them, in constant time."""
    candidate = presented.encode()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(candidate, t)
    return ok


class Guard:
    def __init__(self, app: ASGIApp, *, tokens: Sequence[str], max_body_bytes: int,
                 allowed_hosts: frozenset[str] | None, body_timeout: float) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()  # a uuid4's randomness, cheaper
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, code, message, details, extra = refusal
            if access.has_body(headers):  # not read: the connection cannot carry another request
                extra = {**extra, "Connection": "close"}
            await error_response(status, code, message, details, extra or None)(scope, receive, send_with_id)
            return
        await self.app(scope, bounded_receive(receive, self.body_timeout), send_with_id)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str, dict[str, Any],
                                                                      dict[str, str]] | None:
        """Why this request is refused before any route sees it (status, code, message,
        details, headers), or None."""
        method, path = scope["method"], scope["path"]
        twice = access.duplicated(scope["headers"])
        if twice is not None:
            return 400, "duplicate_header", f"the {twice} header appears more than once", {"header": twice}, {}
        host = access.normalize_host(headers.get("host", ""))
        if self.allowed_hosts is not None and path not in OPEN_PATHS and host not in self.allowed_hosts:
            return (421, "misdirected_request", f"this server does not answer to the host {host!r}; "
                    "SKIPLOCK_ALLOWED_HOSTS lists the names it does", {"host": host}, {})
        if self.tokens and path not in OPEN_PATHS:
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token_ok(presented.strip(), self.tokens):
                return (401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)",
                        {}, {"WWW-Authenticate": "Bearer"})
        why = access.cross_origin(method, headers)
        if why is not None:
            return 403, "cross_origin", f"a request from another site's page is refused: {why}", {}, {}
        if not access.has_body(headers):
            return None
        content_type = headers.get("content-type")
        if method in access.BODY_METHODS and not access.is_json(content_type):
            return (415, "unsupported_media_type", f"the request body must be sent as {access.JSON}",
                    {"content_type": content_type, "expected": access.JSON}, {})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return (413, "payload_too_large", f"the request body is over {self.max_body_bytes} bytes",
                    {"limit": self.max_body_bytes}, {})
        return None
