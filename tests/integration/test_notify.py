"""Workers are woken once per queue per statement, and the HTTP API wakes them once per burst
of concurrent submissions, not once per job."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings
from skiplock import JobSpec, enqueue_many


def drain_notifies(conn: psycopg.Connection[Any]) -> list[str]:
    """Every notification delivered so far (a round trip first, so pending ones have arrived)."""
    conn.execute("SELECT 1")
    return [n.payload for n in conn.notifies(timeout=0.5)]


def listener(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("LISTEN skiplock_jobs")
    return conn


def test_one_statement_wakes_each_queue_once_and_future_jobs_wake_nobody(db_url):
    with listener(db_url) as listen:
        async def submit() -> None:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                specs = [JobSpec(task="echo", args={"message": str(i)}, queue=q)
                         for i in range(100) for q in ("a", "b", "c")]
                await enqueue_many(conn, specs)
                later = datetime.now(UTC) + timedelta(hours=1)
                await enqueue_many(conn, [JobSpec(task="echo", args={"message": "x"}, queue="d", run_at=later)])

        asyncio.run(submit())
        assert sorted(drain_notifies(listen)) == ["a", "b", "c"]


def test_a_burst_of_concurrent_http_submissions_sends_fewer_notifies_than_jobs(db_url):
    with listener(db_url) as listen, TestClient(create_app(Settings(database_url=db_url))) as client:
        def post(i: int) -> int:
            return client.post("/jobs", json={"task": "echo", "args": {"message": str(i)}}).status_code

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(post, range(80))) == [201] * 80
        got = drain_notifies(listen)  # waits 0.5 s: the last burst's NOTIFY has gone out
        sent = client.app.state.api.wakeups.sent  # type: ignore[attr-defined]
    # every notification names the queue; each NOTIFY statement covers a burst of commits
    assert set(got) == {"default"}
    assert 1 <= len(got) == sent < 80
