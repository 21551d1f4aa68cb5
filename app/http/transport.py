"""A request body as the routes receive it: each part must arrive within the body timeout
(else 408, and the connection is closed, since its framing is lost), and a client that goes
away before its body is read is a line at INFO, not an error with a traceback."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive

from .errors import error_response

log = logging.getLogger("skiplock.http")


class BodyTimeout(Exception):
    """The next part of the request body did not arrive in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no part of the request body arrived for {seconds:g} s")
        self.seconds = seconds


def bounded_receive(receive: Receive, seconds: float) -> Receive:
    """`receive`, with each wait for a part of the body bounded by `seconds` (BodyTimeout).
    Once the body is complete, waits (for a disconnect) are not bounded."""
    body_done = False

    async def receive_bounded() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout(seconds):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(seconds) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_bounded


async def body_timeout(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTimeout)
    log.info("request body timed out on %s %s: %s", request.method, request.url.path, exc)
    return error_response(408, "request_timeout", str(exc), {"limit_seconds": exc.seconds},
                          headers={"Connection": "close"})


async def client_gone(request: Request, exc: Exception) -> Response:
    """Starlette's ClientDisconnect: nobody is left to answer."""
    log.info("client went away before its request was read: %s %s", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client went away before its request was read")
