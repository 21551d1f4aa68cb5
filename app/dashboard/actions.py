"""The dashboard's actions: forms posted with the session's CSRF token, each one call of the
same Operations method the API's route makes. Login and logout."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.http.auth import find_token
from skiplock.errors import InvalidInput
from skiplock.ops import Operations

from .session import csrf_ok
from .web import HEADERS, Viewer, api, back, dashboard, error_page, local_path, page, set_cookie, view, viewer

FORM_BYTES = 16 * 1024
"""The dashboard's forms are a few short fields; a bigger body is no form of ours."""


async def _form(request: Request) -> dict[str, str]:
    """The fields of a url-encoded form (the Guard lets only that type through); the first
    value of each; {} when it is larger than any of ours."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20, keep_blank_values=True)
    except ValueError:  # more fields than any of our forms
        return {}
    return {k: v[0] for k, v in fields.items()}


def _refused(request: Request, v: Viewer, form: dict[str, str]) -> Response | None:
    """403 unless the form carries this session's CSRF token (a fresh session has none yet)."""
    if v.fresh or not csrf_ok(v.session, form.get("csrf")):
        return error_page(request, v, 403, "this form has expired or did not come from this dashboard "
                          "(CSRF token missing or wrong); reload the page and try again")
    return None


def _cid(request: Request) -> str:
    return str(request.state.request_id)


ActionBody = Callable[[Request, Operations, str], Awaitable[tuple[str, str]]]


def action(body: ActionBody) -> Callable[[Request], Awaitable[Response]]:
    """An admin action: a form that carries this session's CSRF token, then `body`, one call of
    the Operations the API uses (with the request's id as correlation id), which says where to
    go back to and what was done."""

    @functools.wraps(body)
    async def run(request: Request, v: Viewer) -> Response:
        form = await _form(request)
        if (refusal := _refused(request, v, form)) is not None:
            return refusal
        request.state.form = form
        url, done = await body(request, api(request).ops, _cid(request))
        return back(url, done)

    return view("admin")(run)


@action
async def retry(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    row = await ops.retry(request.path_params["job_id"], correlation_id=cid)
    return f"/ui/jobs/{row['id']}", "Job queued again"


@action
async def cancel(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    row = await ops.cancel(request.path_params["job_id"], correlation_id=cid)
    return f"/ui/jobs/{row['id']}", "Job cancelled"


@action
async def resume_job(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    """The form's optional `data` (JSON) is what the job's next attempt gets as ctx.review."""
    raw = request.state.form.get("data", "").strip()
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"data is not valid JSON: {exc}", field="data") from None
    row = await ops.resume(request.path_params["job_id"], data, correlation_id=cid)
    return f"/ui/jobs/{row['id']}", "Parked job queued again" + (" with data" if data is not None else "")


@action
async def fail_job(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    row = await ops.fail(request.path_params["job_id"], correlation_id=cid)
    return f"/ui/jobs/{row['id']}", "Parked job failed"


@action
async def pause(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    row = await ops.pause_queue(request.path_params["name"])
    return "/", f"Queue {row['name']} paused"


@action
async def resume(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    row = await ops.resume_queue(request.path_params["name"])
    return "/", f"Queue {row['name']} resumed"


@action
async def retry_failed(request: Request, ops: Operations, cid: str) -> tuple[str, str]:
    name = request.path_params["name"]
    n = await ops.retry_failed(name, correlation_id=cid)
    return "/", f"{n} failed jobs of {name} queued again"


async def login_form(request: Request) -> Response:
    v = viewer(request)
    if not dashboard(request).sessions.tokens:
        return RedirectResponse("/", status_code=303, headers=HEADERS)
    return page(request, v, "login.html", next=local_path(request.query_params.get("next")), failed=False)


async def login(request: Request) -> Response:
    """Exchange an API token for a session: a new cookie and a new CSRF token."""
    v = viewer(request)
    form = await _form(request)
    if (refusal := _refused(request, v, form)) is not None:
        return refusal
    sessions = dashboard(request).sessions
    token = find_token(form.get("token", "").strip(), list(sessions.tokens.values()))
    target = local_path(form.get("next"))
    if token is None:
        return page(request, v, "login.html", 401, next=target, failed=True)
    signed_in = Viewer(sessions.new(token), token.role, True)
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    set_cookie(response, request, signed_in)
    return response


async def logout(request: Request) -> Response:
    v = viewer(request)
    form = await _form(request)
    if (refusal := _refused(request, v, form)) is not None:
        return refusal
    response = RedirectResponse("/ui/login" if dashboard(request).sessions.tokens else "/", status_code=303,
                                headers=HEADERS)
    set_cookie(response, request, Viewer(dashboard(request).sessions.new(), None, True))
    return response
