"""GET /metrics and the job metrics behind it, against the real app and a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import app.tasks  # noqa: F401 - registers the example tasks
from app.http import create_app
from app.settings import Settings
from skiplock import db
from skiplock.metrics import JobMetrics
from tests.fix_factory import insert_job


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by the Prometheus client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        yield c


def run(url: str, sql: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql, params)


CLAIM = ("UPDATE skiplock.jobs SET state = 'running', attempt = attempt + 1, worker_id = 'w1', "
         "lease_expires_at = now() + interval '30 s', started_at = now() - make_interval(secs => %(ran)s) "
         "WHERE id = %(id)s")


def claimed(url: str, *, ran: float = 0.3, due_before: float = 2.0, task: str = "echo",
            queue: str = "default") -> uuid.UUID:
    """A job due `due_before` seconds ago, claimed (started) `ran` seconds ago."""
    with psycopg.connect(url) as c:
        job = insert_job(c, task=task, queue=queue, run_at=None)
    run(url, "UPDATE skiplock.jobs SET run_at = now() - make_interval(secs => %(s)s) WHERE id = %(id)s",
        {"s": due_before, "id": job})
    run(url, CLAIM, {"id": job, "ran": ran})
    return job


def test_counters_count_each_kind_of_outcome_once_from_the_first_collect(db_url: str):
    with psycopg.connect(db_url) as c:  # before the first collect: not counted
        insert_job(c, state="succeeded", finished_at=datetime.now(UTC), started_at=datetime.now(UTC))

    async def main() -> None:
        pool = db.make_pool(db_url, max_size=2)
        await pool.open(wait=True)
        try:
            metrics = JobMetrics(pool.connection, live_seconds=30, settle_seconds=0)
            first = await metrics.collect()
            assert first.finished == {} and first.retried == {} and first.rescued == {}

            ok = claimed(db_url, ran=0.3, due_before=2.0)  # run 0.3 s (bucket le=0.5), pickup 1.7 s (le=2.5)
            run(db_url, "UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() "
                        "WHERE id = %s", (ok,))
            retried = claimed(db_url)  # a handler raised: back to queued with its traceback
            run(db_url, "UPDATE skiplock.jobs SET state = 'queued', lease_expires_at = NULL, "
                        "last_error = 'Traceback: boom' WHERE id = %s", (retried,))
            rescued = claimed(db_url, queue="mail")  # its lease expired (what rescue_expired writes)
            run(db_url, "UPDATE skiplock.jobs SET state = 'queued', lease_expires_at = NULL, "
                        "last_error = 'lease expired: worker w1 stopped renewing it during attempt 1' WHERE id = %s",
                (rescued,))
            released = claimed(db_url)  # shutdown: attempt given back, neither retried nor rescued
            run(db_url, "UPDATE skiplock.jobs SET last_error = 'Traceback: earlier' WHERE id = %s", (released,))
            run(db_url, "UPDATE skiplock.jobs SET state = 'queued', attempt = attempt - 1, lease_expires_at = NULL "
                        "WHERE id = %s", (released,))
            dead = claimed(db_url, ran=20)  # last attempt lost its lease: failed, and rescued
            run(db_url, "UPDATE skiplock.jobs SET state = 'failed', lease_expires_at = NULL, finished_at = now(), "
                        "last_error = 'lease ended: worker w1 stopped: its database session closed during attempt 1' "
                        "WHERE id = %s", (dead,))
            with psycopg.connect(db_url) as c:
                gone = insert_job(c)
            run(db_url, "SELECT skiplock.cancel(%s)", (gone,))

            snap = await metrics.collect()
            assert snap.finished == {("echo", "default", "succeeded"): 1, ("echo", "default", "failed"): 1,
                                     ("echo", "default", "cancelled"): 1}
            assert snap.retried == {("echo", "default"): 1}
            assert snap.rescued == {("echo", "mail"): 1, ("echo", "default"): 1}
            bounds = list(snap.bounds)
            assert snap.run_seconds["echo"].cumulative()[bounds.index(0.25)] == 0
            assert snap.run_seconds["echo"].cumulative()[bounds.index(0.5)] == 1  # the success
            assert snap.run_seconds["echo"].cumulative()[bounds.index(30.0)] == 2  # and the 20 s failure
            assert snap.pickup_seconds["echo"].cumulative()[bounds.index(1.0)] == 0
            assert snap.pickup_seconds["echo"].cumulative()[-1] == snap.pickup_seconds["echo"].cumulative()[
                bounds.index(2.5)] == 1  # succeeded jobs only
            assert snap.run_seconds["echo"].total == pytest.approx(20.3, abs=0.2)

            again = await metrics.collect()  # nothing new: the same totals, nothing counted twice
            assert (again.finished, again.retried, again.rescued) == (snap.finished, snap.retried, snap.rescued)
            assert again.run_seconds["echo"].counts == snap.run_seconds["echo"].counts
        finally:
            await pool.close()

    asyncio.run(main())


def test_a_window_ends_settle_seconds_ago_and_counts_what_settles_later(db_url: str):
    async def main() -> None:
        pool = db.make_pool(db_url, max_size=2)
        await pool.open(wait=True)
        try:
            metrics = JobMetrics(pool.connection, live_seconds=30, settle_seconds=3600)
            await metrics.collect()
            now = datetime.now(UTC)
            with psycopg.connect(db_url) as c:
                insert_job(c, state="succeeded", finished_at=now - timedelta(minutes=30))
                # finished two hours ago: before the first window's start, never counted
                insert_job(c, state="succeeded", finished_at=now - timedelta(hours=2), task="sleep")
            assert (await metrics.collect()).finished == {}  # within the last hour: not settled yet
            later = await metrics.collect(now=datetime.now(UTC) + timedelta(hours=1))
            assert later.finished == {("echo", "default", "succeeded"): 1}
        finally:
            await pool.close()

    asyncio.run(main())


def test_metrics_endpoint_is_prometheus_text_with_depth_workers_and_requests(client: TestClient, db_url: str):
    with psycopg.connect(db_url) as c:
        for _ in range(3):
            insert_job(c, queue="mail")
        insert_job(c, queue="mail", state="running")
        c.execute("INSERT INTO skiplock.workers (id, hostname, pid, concurrency) VALUES ('w1', 'h', 1, 4), "
                  "('w-old', 'h', 2, 8)")
        c.execute("UPDATE skiplock.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'w-old'")
        c.execute("UPDATE skiplock.jobs SET run_at = now() - interval '90 s' WHERE state = 'queued'")
        c.commit()
    assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("skiplock_queue_jobs", (("queue", "mail"), ("state", "ready")))] == 3
    assert got[("skiplock_queue_jobs", (("queue", "mail"), ("state", "running")))] == 1
    assert got[("skiplock_queue_jobs", (("queue", "mail"), ("state", "scheduled")))] == 0
    assert 90 <= got[("skiplock_queue_oldest_ready_seconds", (("queue", "mail"),))] < 200
    assert got[("skiplock_workers_live", ())] == 1 and got[("skiplock_workers_slots", ())] == 4
    assert got[("skiplock_http_requests_total", (("method", "GET"), ("route", "/jobs/{job_id}"),
                                                 ("status", "404")))] == 1
    assert got[("skiplock_http_request_duration_seconds_count", (("method", "GET"), ("route", "/jobs/{job_id}")))] == 1
    # the drained queue keeps its series, at zero
    run(db_url, "DELETE FROM skiplock.jobs WHERE state = 'queued'")
    got = samples(client.get("/metrics").text)
    assert got[("skiplock_queue_jobs", (("queue", "mail"), ("state", "ready")))] == 0


def test_metrics_need_the_token_like_every_route_but_health(db_url: str):
    with TestClient(create_app(Settings(database_url=db_url, api_tokens="t0ken")), raise_server_exceptions=False) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_health_reports_the_live_workers_and_200_without_any(client: TestClient, db_url: str):
    body = client.get("/health").json()
    assert body["workers"] == {"live": 0, "slots": 0, "oldest_heartbeat_seconds": None}
    run(db_url, "INSERT INTO skiplock.workers (id, hostname, pid, concurrency, heartbeat_at) VALUES "
                "('w1', 'h', 1, 4, now() - interval '5 s'), ('w2', 'h', 2, 2, now()), "
                "('gone', 'h', 3, 9, now() - interval '1 hour')")
    r = client.get("/health")
    assert r.status_code == 200
    w = r.json()["workers"]
    assert (w["live"], w["slots"]) == (2, 6) and 5 <= w["oldest_heartbeat_seconds"] < 60


@pytest.mark.parametrize("path", ["/jobs/{id}", "/health", "/metrics", "/queues", "POST /jobs"])
def test_a_query_blocked_by_a_lock_answers_503_within_the_statement_timeout(db_url: str, path: str):
    """Another session holds a lock every query of the request needs: the request answers 503
    once the statement timeout passes, instead of waiting for the lock."""
    with psycopg.connect(db_url) as c:
        job = insert_job(c)

    method, _, path = path.rpartition(" ")
    body = {"task": "echo", "args": {"message": "x"}} if method == "POST" else None
    ok = 201 if method == "POST" else 200

    async def main() -> None:
        application = create_app(Settings(database_url=db_url, statement_timeout=0.5))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                def request() -> Any:
                    return http.request(method or "GET", path.format(id=job), json=body)

                assert (await request()).status_code == ok
                with psycopg.connect(db_url) as locker:
                    locker.execute("LOCK TABLE skiplock.jobs, skiplock.workers, public.alembic_version "
                                   "IN ACCESS EXCLUSIVE MODE")
                    start = time.monotonic()
                    r = await asyncio.wait_for(request(), 10)
                    took = time.monotonic() - start
                    locker.rollback()
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                assert took < 5
                assert (await request()).status_code == ok  # the lock gone, served again

    asyncio.run(main())
