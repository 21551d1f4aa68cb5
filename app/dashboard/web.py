"""What every dashboard page and action shares: who is asking (the session and its role), the
templates, the security headers, and errors rendered as pages."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jinja2
import psycopg
import psycopg_pool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.http.context import api
from app.http.errors import status_of
from app.tokens import RateLimiter, Role, may, retry_after
from skiplock.errors import SkiplockError
from skiplock.insight import Bucket
from skiplock.ops import Operations

from .session import COOKIE, MAX_AGE, Session, Sessions

log = logging.getLogger("skiplock.dashboard")

HEADERS = {
    # Scripts and styles from this server only (no inline script runs), never framed.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = jinja2.Environment(loader=jinja2.PackageLoader("app.dashboard", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)


CHARTS_TTL = 10.0
"""Seconds the charts' counts are reused: they read every job finished in the last day (about
0.8 s per million), and each open overview refreshes every few seconds."""


class ChartCache:
    def __init__(self, ttl: float = CHARTS_TTL) -> None:
        self.ttl = ttl
        self._value: tuple[list[Bucket], list[Bucket]] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, ops: Operations) -> tuple[list[Bucket], list[Bucket]]:
        async with self._lock:  # one query at a time, however many viewers
            if self._value is None or time.monotonic() - self._at > self.ttl:
                self._value = await ops.throughput()
                self._at = time.monotonic()
            return self._value


@dataclass
class Dashboard:
    """The dashboard's state on app.state.dashboard."""

    sessions: Sessions
    limiter: RateLimiter
    charts: ChartCache = field(default_factory=ChartCache)


@dataclass
class Viewer:
    session: Session
    role: Role | None
    fresh: bool  # the cookie must be (re)sent

    def can(self, needed: Role) -> bool:
        return self.role is not None and may(self.role, needed)


def dashboard(request: Request) -> Dashboard:
    d: Dashboard = request.app.state.dashboard
    return d


def viewer(request: Request) -> Viewer:
    sessions = dashboard(request).sessions
    s = sessions.decode(request.cookies.get(COOKIE))
    if s is None:
        s = sessions.new()
        return Viewer(s, sessions.role_of(s), True)
    return Viewer(s, sessions.role_of(s), False)


def set_cookie(response: Response, request: Request, v: Viewer) -> None:
    response.set_cookie(COOKIE, dashboard(request).sessions.encode(v.session), max_age=MAX_AGE, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")


def page(request: Request, v: Viewer, template: str, status: int = 200, **context: Any) -> Response:
    html = templates.get_template(template).render(
        v=v, csrf=v.session.csrf, path=request.url.path, logins=bool(dashboard(request).sessions.tokens),
        flash=request.query_params.get("done"), **context)
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if v.fresh:
        set_cookie(response, request, v)
    return response


def error_page(request: Request, v: Viewer, status: int, message: str,
               headers: dict[str, str] | None = None) -> Response:
    response = page(request, v, "error.html", status, status_code=status, message=message)
    response.headers.update(headers or {})
    return response


def back(path: str, done: str) -> Response:
    """303 to a page of the dashboard, saying what was done."""
    return RedirectResponse(f"{path}?done={quote(done)}", status_code=303, headers=HEADERS)


def local_path(value: str | None, default: str = "/") -> str:
    """A path on this server to return to; anything else (another host, //host) is `default`."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


Handler = Callable[[Request, Viewer], Awaitable[Response]]


def view(needed: Role) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A dashboard endpoint needing `needed`: without a session that may, a page goes to the
    login form and an action is refused (403); the token's request rate applies; errors of
    the engine and the database become pages with their status."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            v = viewer(request)
            token = dashboard(request).sessions.token_of(v.session)
            if token is not None and token.rate is not None:
                wait = dashboard(request).limiter.take(token.secret, token.rate)
                if wait > 0:
                    after = retry_after(wait)
                    return error_page(request, v, 429, f"this token may make {token.rate.text} requests; "
                                      f"retry in {after} s", {"Retry-After": after})
            if v.role is None and request.method == "GET":
                return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303,
                                        headers=HEADERS)
            if not v.can(needed):
                return error_page(request, v, 403, f"your token's role ({v.role or 'none'}) may not do this; "
                                  f"it needs {needed}")
            try:
                return await handler(request, v)
            except SkiplockError as exc:
                return error_page(request, v, status_of(exc), exc.message)
            except (psycopg_pool.PoolTimeout, psycopg.OperationalError) as exc:
                log.warning("database unavailable: %s", exc)
                return error_page(request, v, 503, "the database is unavailable; retry later", {"Retry-After": "5"})

        return endpoint

    return wrap


__all__ = ["Dashboard", "Viewer", "api", "back", "error_page", "local_path", "page", "view"]
