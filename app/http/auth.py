"""The guard in front of every route (a plain ASGI middleware): correlation id, bearer-token
auth compared in constant time, and the request-size bound."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

OPEN_PATHS = frozenset({"/health"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")


def token_ok(presented: str, tokens: Sequence[bytes]) -> bool:
    """Compare against every configured token, always all of them, in constant time."""
    candidate = presented.encode()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(candidate, t)
    return ok


class Guard:
    def __init__(self, app: ASGIApp, *, tokens: Sequence[str], max_body_bytes: int) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if self.tokens and scope["path"] not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, presented = auth.partition(" ")
            if scheme.lower() != "bearer" or not token_ok(presented.strip(), self.tokens):
                response = error_response(401, "unauthorized", "a valid bearer token is required "
                                          "(Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_with_id)
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = error_response(413, "payload_too_large",
                                      f"the request body is over {self.max_body_bytes} bytes",
                                      {"limit": self.max_body_bytes})
            await response(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)
