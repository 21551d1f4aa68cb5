"""Property tests of the HTTP API (hypothesis) against the real app and database: whatever
arrives, the answer is never a 5xx, its status is one /openapi.json documents for the
operation that was called, and its body matches the schema documented for that status."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app, queues, schemas
from app.http.openapi import spec
from app.settings import Settings
from skiplock.tasks import registry

# The app's connection pool draws jitter from the global `random` on its own threads, which
# hypothesis, seeing the state move while it draws, reports as a strategy using `random`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning")

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

maybe = lambda s: st.none() | s  # noqa: E731

job_bodies = st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["echo", "sleep", "fail_n_times", "webhook", "nope", ""]) | st.text(max_size=10),
    "args": st.one_of(st.fixed_dictionaries({}, optional={"message": json_values, "seconds": json_values,
                                                          "n": json_values, "url": json_values}), json_values),
    "queue": maybe(st.sampled_from(["default", "a-b", "UPPER", "x" * 70]) | st.text(max_size=10)),
    "priority": maybe(st.sampled_from(["high", "normal", "low", "HIGH", 1])),
    "delay": maybe(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10**12)),
    "run_at": maybe(st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "yesterday", 5])),
    "max_attempts": maybe(st.integers(-5, 5000) | st.text(max_size=3)),
    "timeout": maybe(st.floats(allow_nan=True) | st.integers(-1, 10**9)),
    "idempotency_key": maybe(st.text(max_size=300)),
    "batch_id": maybe(st.uuids().map(str) | st.text(max_size=5)),
    "extra": json_values,
}) | json_values


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False,
                    headers={"Content-Type": "application/json"}) as c:
        yield c


def raw(body: Any) -> bytes:
    """As a careless client would send it: NaN and Infinity included."""
    return json.dumps(body, allow_nan=True).encode()


MODELS = {name: m for mod in (schemas, queues) for name, m in vars(mod).items()
          if isinstance(m, type) and issubclass(m, BaseModel)}
OPERATIONS = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path, ops)
              for path, ops in spec(Settings(database_url="postgresql://unused"), registry)["paths"].items()]


def documented(method: str, path: str) -> dict[str, Any] | None:
    """The documented responses of the operation the router picks: the path's own, a fixed
    path before a parameter path that also matches (GET /jobs/bulk is 405, not GET /jobs/{id});
    None when the path has no such method (405) or matches nothing (404)."""
    for pattern, _, ops in sorted(OPERATIONS, key=lambda op: "{" in op[1]):
        if pattern.match(path):
            return dict(ops[method.lower()]["responses"]) if method.lower() in ops else None
    return None


def check(resp: Any) -> None:
    assert resp.status_code < 500, resp.text
    path = unquote(urlsplit(str(resp.request.url)).path)  # the router sees the decoded path
    responses = documented(resp.request.method, path)
    answer = (responses or {}).get(str(resp.status_code))
    if answer is not None and "content" not in answer:  # documented without a body (204)
        assert resp.content == b"", (path, resp.status_code)
        return
    body = resp.json()
    if responses is None:  # the path matched no operation: the router's own answer
        assert resp.status_code in (404, 405), (path, resp.status_code)
        schemas.ErrorBody.model_validate(body)
        return
    assert str(resp.status_code) in responses, (resp.request.method, path, resp.status_code, body)
    ref = responses[str(resp.status_code)]["content"]["application/json"]["schema"]["$ref"]
    MODELS[ref.rsplit("/", 1)[1]].model_validate(body)


def test_every_documented_schema_is_a_model() -> None:
    refs = {r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            for _, _, ops in OPERATIONS for op in ops.values() for r in op["responses"].values() if "content" in r}
    assert refs <= set(MODELS) and "ErrorBody" in refs


@FUZZ
@given(body=job_bodies, key=maybe(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)))
def test_post_jobs_never_5xx(client: TestClient, body: Any, key: str | None) -> None:
    headers = {"Idempotency-Key": key} if key is not None else {}
    check(client.post("/jobs", content=raw(body), headers=headers))


@FUZZ
@given(jobs=st.lists(job_bodies, max_size=5) | json_values)
def test_post_bulk_never_5xx(client: TestClient, jobs: Any) -> None:
    check(client.post("/jobs/bulk", content=raw({"jobs": jobs})))


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["queue", "state", "task", "batch", "limit", "cursor", "x"]),
                              st.text(max_size=30), max_size=4))
def test_list_jobs_never_5xx(client: TestClient, params: dict[str, str]) -> None:
    check(client.get("/jobs", params=params))


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["limit", "cursor", "x"]), st.text(max_size=30), max_size=3))
def test_list_queues_never_5xx(client: TestClient, params: dict[str, str]) -> None:
    check(client.get("/queues", params=params))


@FUZZ
@given(segment=st.text(min_size=1, max_size=40) | st.uuids().map(str),
       action=st.sampled_from(["", "/cancel", "/retry"]))
def test_job_paths_never_5xx(client: TestClient, segment: str, action: str) -> None:
    path = f"/jobs/{quote(segment, safe='')}{action}"
    resp = client.get(path) if not action else client.post(path)
    check(resp)


@FUZZ
@given(name=st.text(min_size=1, max_size=70), body=json_values,
       verb=st.sampled_from(["pause", "resume", "put", "delete"]))
def test_queue_paths_never_5xx(client: TestClient, name: str, body: Any, verb: str) -> None:
    path = f"/queues/{quote(name, safe='')}"
    if verb == "delete":
        resp = client.delete(path)
    else:
        resp = client.put(path, content=raw(body)) if verb == "put" else client.post(f"{path}/{verb}")
    check(resp)
