"""The HTTP API: a Starlette app over one psycopg pool opened in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app import dashboard
from app.settings import Settings
from app.tokens import RateLimiter
from skiplock import db
from skiplock.coalesce import SubmitCoalescer
from skiplock.tasks import TaskRegistry
from skiplock.tasks import registry as default_registry
from skiplock.wakeup import Wakeups

from . import access, batches, jobs, metrics, queues, schedules, system
from .auth import Guard
from .context import ApiState
from .errors import HANDLERS
from .transport import BodyTimeout, body_timeout, client_gone

log = logging.getLogger("skiplock.http")

__all__ = ["create_app", "effective_host"]


def create_app(settings: Settings, *, registry: TaskRegistry | None = None, pool_size: int = 10,
               pool_timeout: float = 5.0) -> Starlette:
    if not settings.database_url:
        raise ValueError("create_app: settings.database_url is required")
    pool = db.make_pool(settings.database_url, min_size=1, max_size=pool_size, name="skiplock-api",
                        timeout=pool_timeout, check="passive", statement_timeout=settings.statement_timeout)
    wakeups = Wakeups(settings.database_url)
    state = ApiState(pool=pool, settings=settings, registry=registry if registry is not None else default_registry,
                     wakeups=wakeups)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)  # start even while the database is away; requests answer 503
        wakeups.start()
        state.submitter = SubmitCoalescer(state.ops)
        state.submitter.start()
        try:
            yield
        finally:
            await state.submitter.stop()  # stores what was submitted, then submissions go alone
            state.submitter = None
            await wakeups.stop()
            await pool.close()

    routes = [
        Route("/jobs", jobs.submit, methods=["POST"]),
        Route("/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/jobs/bulk", jobs.submit_bulk, methods=["POST"]),
        Route("/jobs/{job_id}", jobs.get_job, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", jobs.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/retry", jobs.retry, methods=["POST"]),
        Route("/jobs/{job_id}/resume", jobs.resume, methods=["POST"]),
        Route("/jobs/{job_id}/fail", jobs.fail, methods=["POST"]),
        Route("/batches", batches.create, methods=["POST"]),
        Route("/batches", batches.list_batches, methods=["GET"]),
        Route("/batches/{id}", batches.get_batch, methods=["GET"]),
        Route("/batches/{id}/jobs", batches.list_jobs, methods=["GET"]),
        Route("/batches/{id}/cancel", batches.cancel, methods=["POST"]),
        Route("/batches/{id}/retry", batches.retry, methods=["POST"]),
        Route("/batches/{id}/seal", batches.seal, methods=["POST"]),
        Route("/queues", queues.list_queues, methods=["GET"]),
        Route("/queues/{name}", queues.set_limits, methods=["PUT"]),
        Route("/queues/{name}", queues.delete, methods=["DELETE"]),
        Route("/queues/{name}/pause", queues.pause, methods=["POST"]),
        Route("/queues/{name}/resume", queues.resume, methods=["POST"]),
        Route("/schedules", schedules.list_schedules, methods=["GET"]),
        Route("/schedules/{name}/pause", schedules.pause, methods=["POST"]),
        Route("/schedules/{name}/resume", schedules.resume, methods=["POST"]),
        Route("/tasks", system.tasks, methods=["GET"]),
        Route("/health", system.health, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/openapi.json", system.openapi, methods=["GET"]),
        *dashboard.routes(),
    ]
    limiter = RateLimiter()
    guard = Middleware(Guard, tokens=settings.tokens, max_body_bytes=settings.max_body_bytes,
                       allowed_hosts=access.allowed_hosts(settings), body_timeout=settings.body_timeout,
                       limiter=limiter)
    counted = Middleware(metrics.RequestMetrics, registry=state.metrics_registry)  # outermost: refusals count too
    metrics.count_submissions(state)
    app = Starlette(routes=with_405(routes), lifespan=lifespan, middleware=[counted, guard],
                    exception_handlers={**HANDLERS, BodyTimeout: body_timeout, ClientDisconnect: client_gone})
    app.state.api = state
    app.state.dashboard = dashboard.state(settings, limiter)
    return app


class MethodNotAllowed:
    """An endpoint answering 405 (with Allow) to every method."""

    def __init__(self, allowed: list[str]) -> None:
        self.allow = ", ".join(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(405, f"{scope['method']} is not allowed here; allowed: {self.allow}",
                            headers={"Allow": self.allow})


def with_405(routes: list[Route]) -> list[Route]:
    """The routes, plus for each path a catch-all answering its other methods 405 with the
    whole Allow list (Starlette alone names only the first route's methods).

    Starlette takes a route matching path and method over an earlier one matching the path
    only, so GET /jobs/bulk would reach GET /jobs/{job_id} (422 "not a job id"): the
    catch-all of a fixed path that a parameter route also matches comes right after that
    path's last route; the others come after every route."""
    methods: dict[str, set[str]] = {}
    for r in routes:
        methods.setdefault(r.path, set()).update(r.methods or ())
    last = {r.path: i for i, r in enumerate(routes)}
    inline: list[Route] = []
    after: list[Route] = []
    for i, r in enumerate(routes):
        inline.append(r)
        if last[r.path] != i:
            continue
        catch_all = Route(r.path, MethodNotAllowed(sorted(methods[r.path])), include_in_schema=False)
        shadowed = "{" not in r.path and any("{" in p.path and p.path_regex.match(r.path) for p in routes)
        (inline if shadowed else after).append(catch_all)
    return inline + after


def effective_host(settings: Settings, host: str) -> str:
    """Without API tokens the API serves 127.0.0.1 only, whatever was asked, and says so."""
    if settings.token_list:
        log.info("API tokens configured (%d); serving %s", len(settings.token_list), host)
        if not settings.allowed_hosts and access.normalize_host(host) in access.WILDCARD_ADDRESSES:
            log.warning("serving %s with SKIPLOCK_ALLOWED_HOSTS unset: requests naming a host other than "
                        "localhost, 127.0.0.1 or [::1] are refused (421); list the names clients use", host)
        return host
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no SKIPLOCK_API_TOKENS set: refusing to serve %s; serving 127.0.0.1 only", host)
    else:
        log.warning("no SKIPLOCK_API_TOKENS set: the API has no authentication and serves 127.0.0.1 only")
    return "127.0.0.1"
