"""The HTTP server: uvicorn on httptools, with the bounds uvicorn leaves open on that parser.

httptools (llhttp) has no limit on the size of a request's head, and uvicorn none on the time
to send it: one client could stream a 100 MB header for as long as it liked, held in memory
until complete, before any middleware could look at it. `bounded_protocol` adds both bounds,
counted as bytes arrive: a head (request line and headers) over `max_head_bytes` is answered
431, and one not complete within `head_timeout` of its first byte (or of the connection's
opening) is answered 408, each with our JSON error body, and the connection is closed.
Idle keep-alive connections are closed by uvicorn's own timeout_keep_alive."""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

LINGER = 1.0
"""How long a refused connection stays open, not reading, so the client can read the answer
before the close (a close with unread input resets the connection and may destroy it)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size and a time bound on each request's head."""

    max_head_bytes: ClassVar[int] = 32 * 1024
    head_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside a head: bytes count against the bound
        self._head_bytes = 0
        self._heads_done = 0
        self._head_timer: TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_timer is None:
            self._arm_head_timer()
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # More than the head may still hold: parse up to the bound; the head must end within it,
        # and what follows (the body, or further requests) is parsed as usual.
        heads = self._heads_done
        self._head_bytes = self.max_head_bytes
        if room > 0:
            super().data_received(data[:room])
        if self._heads_done == heads:
            self._refuse(431, "request_header_fields_too_large",
                         f"the request line and headers are over {self.max_head_bytes} bytes",
                         {"limit": self.max_head_bytes})
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "request_timeout",
                         f"the request line and headers did not arrive within {self.head_timeout:g} s",
                         {"limit_seconds": self.head_timeout})

    def _refuse(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        """Answer and close, without reading further. An answer is written only when none is
        in progress on this connection (a pipelined request's head came during one)."""
        if self.transport.is_closing():  # the parser already answered 400 and closed
            return
        self._refused = True
        self._cancel_head_timer()
        self.logger.info("refused a request head from %s: %s", self.client, message)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        body = json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        self.transport.write(f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


def bounded_protocol(max_head_bytes: int, head_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), with these bounds."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout})


def serve(app: Any, settings: Settings, *, host: str, port: int) -> None:
    """Run uvicorn with our protocol and timeouts until it is stopped (SIGINT/SIGTERM)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", ws="none", server_header=False,
                http=bounded_protocol(settings.max_header_bytes, settings.header_timeout),
                timeout_keep_alive=settings.keep_alive_timeout)
