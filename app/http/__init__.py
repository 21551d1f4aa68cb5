"""The HTTP API: a Starlette app over one psycopg pool opened in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from app.settings import Settings
from skiplock import db
from skiplock.tasks import TaskRegistry
from skiplock.tasks import registry as default_registry
from skiplock.wakeup import Wakeups

from . import jobs, queues, system
from .auth import Guard
from .context import ApiState
from .errors import HANDLERS

log = logging.getLogger("skiplock.http")

__all__ = ["create_app", "effective_host"]


def create_app(settings: Settings, *, registry: TaskRegistry | None = None, pool_size: int = 10,
               pool_timeout: float = 5.0) -> Starlette:
    if not settings.database_url:
        raise ValueError("create_app: settings.database_url is required")
    pool = db.make_pool(settings.database_url, min_size=1, max_size=pool_size, name="skiplock-api",
                        timeout=pool_timeout)
    wakeups = Wakeups(settings.database_url)
    state = ApiState(pool=pool, settings=settings, registry=registry if registry is not None else default_registry,
                     wakeups=wakeups)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)  # start even while the database is away; requests answer 503
        wakeups.start()
        try:
            yield
        finally:
            await wakeups.stop()
            await pool.close()

    routes = [
        Route("/jobs", jobs.submit, methods=["POST"]),
        Route("/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/jobs/bulk", jobs.submit_bulk, methods=["POST"]),
        Route("/jobs/{job_id}", jobs.get_job, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", jobs.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/retry", jobs.retry, methods=["POST"]),
        Route("/queues", queues.list_queues, methods=["GET"]),
        Route("/queues/{name}", queues.set_limits, methods=["PUT"]),
        Route("/queues/{name}", queues.delete, methods=["DELETE"]),
        Route("/queues/{name}/pause", queues.pause, methods=["POST"]),
        Route("/queues/{name}/resume", queues.resume, methods=["POST"]),
        Route("/tasks", system.tasks, methods=["GET"]),
        Route("/health", system.health, methods=["GET"]),
        Route("/openapi.json", system.openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=HANDLERS,
                    middleware=[Middleware(Guard, tokens=settings.token_list, max_body_bytes=settings.max_body_bytes)])
    app.state.api = state
    return app


def effective_host(settings: Settings, host: str) -> str:
    """Without API tokens the API serves 127.0.0.1 only, whatever was asked, and says so."""
    if settings.token_list:
        log.info("API tokens configured (%d); serving %s", len(settings.token_list), host)
        return host
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no SKIPLOCK_API_TOKENS set: refusing to serve %s; serving 127.0.0.1 only", host)
    else:
        log.warning("no SKIPLOCK_API_TOKENS set: the API has no authentication and serves 127.0.0.1 only")
    return "127.0.0.1"
