"""The dashboard at `/`: server-rendered pages over the same Operations the API calls.

`/` overview, `/ui/jobs` the job list, `/ui/jobs/{id}` a job, `/ui/login`; actions are forms
posted to `/ui/...` with a CSRF token. Access: app/dashboard/session.py and web.py."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.settings import Settings
from app.tokens import RateLimiter

from . import actions, pages
from .session import Sessions
from .web import Dashboard

__all__ = ["Dashboard", "routes", "state"]

ASSETS = {"live.js": "text/javascript", "style.css": "text/css"}


def state(settings: Settings, limiter: RateLimiter) -> Dashboard:
    return Dashboard(Sessions(settings.session_secret, settings.tokens), limiter)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    body = resources.files("app.dashboard").joinpath("static", name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers={"Cache-Control": "max-age=300",
                                                            "X-Content-Type-Options": "nosniff"})


def routes() -> list[Route]:
    return [
        Route("/", pages.overview, methods=["GET"], include_in_schema=False),
        Route("/ui/jobs", pages.jobs, methods=["GET"], include_in_schema=False),
        Route("/ui/jobs/{job_id}", pages.job, methods=["GET"], include_in_schema=False),
        Route("/ui/batches", pages.batches, methods=["GET"], include_in_schema=False),
        Route("/ui/batches/{batch_id}", pages.batch, methods=["GET"], include_in_schema=False),
        Route("/ui/jobs/{job_id}/retry", actions.retry, methods=["POST"], include_in_schema=False),
        Route("/ui/jobs/{job_id}/cancel", actions.cancel, methods=["POST"], include_in_schema=False),
        Route("/ui/jobs/{job_id}/resume", actions.resume_job, methods=["POST"], include_in_schema=False),
        Route("/ui/jobs/{job_id}/fail", actions.fail_job, methods=["POST"], include_in_schema=False),
        Route("/ui/queues/{name}/pause", actions.pause, methods=["POST"], include_in_schema=False),
        Route("/ui/queues/{name}/resume", actions.resume, methods=["POST"], include_in_schema=False),
        Route("/ui/queues/{name}/retry-failed", actions.retry_failed, methods=["POST"], include_in_schema=False),
        Route("/ui/login", actions.login_form, methods=["GET"], include_in_schema=False),
        Route("/ui/login", actions.login, methods=["POST"], include_in_schema=False),
        Route("/ui/logout", actions.logout, methods=["POST"], include_in_schema=False),
        Route("/ui/static/{name}", asset, methods=["GET"], include_in_schema=False),
    ]
