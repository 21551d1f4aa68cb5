"""The guard in front of every route (a plain ASGI middleware): correlation id, then, before
any route runs, the access rules (app/http/access.py), bearer-token auth compared in
constant time, the token's request rate and role (app/tokens.py), the content type and size
of a body, and a bound on the wait for each part of a body (app/http/transport.py).

The dashboard's pages (`/` and `/ui/...`) get the same host, origin and size rules, but no
bearer token: a browser keeps the token in a signed session cookie that the dashboard
checks itself, with its own CSRF token on every form (app/dashboard/session.py)."""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.tokens import ApiToken, RateLimiter, may, retry_after, role_needed

from . import access
from .errors import error_response
from .transport import bounded_receive

OPEN_PATHS = frozenset({"/health"})
"""Paths served without a token and to any Host: probes (a container's, a load balancer's)
name whatever address they reach the server by, and /health reveals nothing."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")
FORM = "application/x-www-form-urlencoded"


def is_dashboard(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def find_token(presented: str, tokens: Sequence[ApiToken]) -> ApiToken | None:
    """The configured token equal to `presented`: compared with every one, always all of them,
    in constant time."""
    candidate = presented.encode()
    found: ApiToken | None = None
    for t in tokens:
        if hmac.compare_digest(candidate, t.secret):
            found = t
    return found


class Guard:
    def __init__(self, app: ASGIApp, *, tokens: Sequence[ApiToken], max_body_bytes: int,
                 allowed_hosts: frozenset[str] | None, body_timeout: float, limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.tokens = list(tokens)
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()  # a uuid4's randomness, cheaper
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
        dashboard = is_dashboard(path)
        if self.tokens and path not in OPEN_PATHS and not dashboard:
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            token = find_token(presented.strip(), self.tokens) if scheme.lower() == "bearer" else None
            if token is None:
                return (401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)",
                        {}, {"WWW-Authenticate": "Bearer"})
            # Every request counts against the rate, refused ones too: a client cannot probe
            # faster than its rate by asking for what its role forbids.
            rate = token.rate
            wait = self.limiter.take(token.secret, rate) if rate is not None else 0.0
            if rate is not None and wait > 0:
                after = retry_after(wait)
                return (429, "rate_limited", f"this token may make {rate.text} requests (that many back to "
                        f"back at most); retry in {after} s", {"limit": rate.text, "retry_after_seconds": int(after)},
                        {"Retry-After": after})
            needed = role_needed(method, path)
            if not may(token.role, needed):
                return (403, "forbidden", f"this token's role is {token.role}; {method} {path} needs {needed}",
                        {"role": token.role, "needed": needed}, {})
        why = access.cross_origin(method, headers)
        if why is not None:
            return 403, "cross_origin", f"a request from another site's page is refused: {why}", {}, {}
        if not access.has_body(headers):
            return None
        content_type = headers.get("content-type")
        if dashboard:  # the dashboard's forms; a JSON body is not one of them
            if method in access.BODY_METHODS and (content_type or "").partition(";")[0].strip().lower() != FORM:
                return (415, "unsupported_media_type", f"the dashboard takes forms ({FORM})",
                        {"content_type": content_type, "expected": FORM}, {})
        elif method in access.BODY_METHODS and not access.is_json(content_type):
            return (415, "unsupported_media_type", f"the request body must be sent as {access.JSON}",
                    {"content_type": content_type, "expected": access.JSON}, {})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return (413, "payload_too_large", f"the request body is over {self.max_body_bytes} bytes",
                    {"limit": self.max_body_bytes}, {})
        return None
