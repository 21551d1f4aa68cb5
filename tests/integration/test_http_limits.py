"""Queue limits and idempotency under concurrency, against the real app and database: many
requests at once on one pool, so the database sees them interleaved."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings

ECHO = {"task": "echo", "args": {"message": "x"}}


def run(db_url: str, calls: list[tuple[str, str, dict[str, Any], dict[str, str]]]) -> list[httpx.Response]:
    """Send the calls all at once through one app (pool of 10 connections)."""
    api = create_app(Settings(database_url=db_url))

    async def go() -> list[httpx.Response]:
        async with api.router.lifespan_context(api):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
                return await asyncio.gather(*(c.request(m, p, json=b, headers=h) for m, p, b, h in calls))

    return asyncio.run(go())


def stored(db_url: str, queue: str) -> int:
    with psycopg.connect(db_url) as c:
        return int(c.execute("SELECT count(*) FROM skiplock.jobs WHERE queue = %s", (queue,)).fetchone()[0])  # type: ignore[index]


def limit(db_url: str, queue: str, n: int) -> None:
    [r] = run(db_url, [("PUT", f"/queues/{queue}", {"max_waiting": n}, {})])
    assert r.status_code == 200


def test_concurrent_submissions_never_overshoot_max_waiting(db_url: str):
    limit(db_url, "lim", 5)
    responses = run(db_url, [("POST", "/jobs", {**ECHO, "queue": "lim"}, {})] * 40)
    assert Counter(r.status_code for r in responses) == {201: 5, 429: 35}
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 429)
    assert stored(db_url, "lim") == 5


def test_concurrent_bulks_never_overshoot_max_waiting(db_url: str):
    limit(db_url, "lim", 10)
    bulk = {"jobs": [{**ECHO, "queue": "lim"}] * 3}
    responses = run(db_url, [("POST", "/jobs/bulk", bulk, {})] * 8)
    assert Counter(r.status_code for r in responses) == {201: 3, 429: 5}
    assert stored(db_url, "lim") == 9


def test_a_repeated_idempotent_request_gets_its_job_even_when_the_queue_is_full(db_url: str):
    limit(db_url, "lim", 1)
    key = {"Idempotency-Key": "k"}
    [first] = run(db_url, [("POST", "/jobs", {**ECHO, "queue": "lim"}, key)])
    [again, other, fresh] = run(db_url, [
        ("POST", "/jobs", {**ECHO, "queue": "lim"}, key),
        ("POST", "/jobs", {"task": "echo", "args": {"message": "other"}, "queue": "lim"}, key),
        ("POST", "/jobs", {**ECHO, "queue": "lim"}, {"Idempotency-Key": "new"}),
    ])
    assert (first.status_code, again.status_code, other.status_code, fresh.status_code) == (201, 200, 409, 429)
    assert again.json()["id"] == first.json()["id"]
    assert stored(db_url, "lim") == 1


@pytest.mark.parametrize("change", [
    {"batch_id": "0190a0b0-0000-7000-8000-000000000001"},
    {"run_at": "2031-01-01T00:00:00Z"},
    {"priority": "low"},
    {"queue": "default", "max_attempts": 9},
])
def test_a_key_reused_with_a_different_option_is_409(db_url: str, change: dict[str, Any]):
    base = {**ECHO, "batch_id": "0190a0b0-0000-7000-8000-000000000000", "run_at": "2030-01-01T00:00:00Z"}
    key = {"Idempotency-Key": "k"}
    [first] = run(db_url, [("POST", "/jobs", base, key)])
    [same, different] = run(db_url, [("POST", "/jobs", {**base, "run_at": "2030-01-01T01:00:00+01:00"}, key),
                                     ("POST", "/jobs", {**base, **change}, key)])
    assert (first.status_code, same.status_code, different.status_code) == (201, 200, 409)
    assert different.json()["error"]["details"]["job_id"] == first.json()["id"]
