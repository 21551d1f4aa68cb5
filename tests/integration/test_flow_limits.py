"""Flow limits in the claim (skiplock.claim_room_v1 + claim_batch): max_running exact under
concurrent claims, per key, rate windows with time as a parameter, fair turns across queues,
and the settings through Operations, HTTP and the CLI's parser."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from app.cli import _limit_options, parser
from app.http import create_app
from app.settings import Settings
from skiplock import InvalidInput, Operations
from skiplock.limits import parse_rate
from skiplock.queries import queues as queue_queries
from skiplock.queries.loader import q


def fill(pg_conn: psycopg.Connection[Any], queue: str, n: int, args: dict[str, Any] | None = None,
         priority: int = 1) -> None:
    pg_conn.execute("INSERT INTO skiplock.jobs (task, queue, args, priority) "
                    "SELECT 'noop', %s, %s, %s FROM generate_series(1, %s)", (queue, Jsonb(args or {}), priority, n))
    pg_conn.commit()


def settings(pg_conn: psycopg.Connection[Any], queue: str, **cols: Any) -> None:
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    pg_conn.execute(f"INSERT INTO skiplock.queues (name, {names}) VALUES (%s, {marks})",  # test-only columns
                    (queue, *cols.values()))
    pg_conn.commit()


def claim(url: str, queues: list[str] | None, limit: int, now: datetime | None = None, turn: int = 0) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(q("claim_batch_limited"), {"worker_id": "w", "queues": queues, "limit": limit,
                                                    "lease_seconds": 30, "now": now, "turn": turn}).fetchall()


def running(pg_conn: psycopg.Connection[Any], queue: str) -> int:
    n = pg_conn.execute("SELECT count(*) FROM skiplock.jobs WHERE queue = %s AND state = 'running'",
                        (queue,)).fetchone()[0]  # type: ignore[index]
    pg_conn.commit()
    return int(n)


@pytest.mark.parametrize("served", [["lim"], ["lim", "other"], None], ids=["its-queue", "its-queues", "all"])
def test_concurrent_claims_never_run_more_than_max_running(db_url, pg_conn, served):
    """12 claimers at once, each asking for 5, three rounds with finishes in between: the queue
    never has more than 3 running (READ COMMITTED, each claim on its own connection)."""
    settings(pg_conn, "lim", max_running=3)
    fill(pg_conn, "lim", 100)
    fill(pg_conn, "other", 5)
    for _ in range(3):
        start = threading.Barrier(12)
        got: list[int] = []

        def one() -> None:
            with psycopg.connect(db_url, autocommit=True) as c:
                start.wait()
                rows = c.execute(q("claim_batch_limited"), {"worker_id": "w", "queues": served, "limit": 5,
                                                    "lease_seconds": 30, "now": None, "turn": 0}).fetchall()
                got.append(sum(1 for r in rows if r[3] == "lim"))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(got) == 3 and running(pg_conn, "lim") == 3
        pg_conn.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() "
                        "WHERE id IN (SELECT id FROM skiplock.jobs WHERE queue = 'lim' AND state = 'running' LIMIT 2)")
        pg_conn.commit()
        assert running(pg_conn, "lim") == 1
        claim(db_url, ["lim"], 10)
        assert running(pg_conn, "lim") == 3
        pg_conn.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() "
                        "WHERE queue = 'lim' AND state = 'running'")
        pg_conn.commit()


def test_a_rescued_job_frees_its_slot_and_a_lowered_limit_holds_new_claims_back(db_url, pg_conn):
    settings(pg_conn, "lim", max_running=4)
    fill(pg_conn, "lim", 20)
    assert len(claim(db_url, ["lim"], 10)) == 4
    pg_conn.execute("UPDATE skiplock.queues SET max_running = 2 WHERE name = 'lim'")
    pg_conn.commit()
    assert claim(db_url, ["lim"], 10) == []  # 4 running, limit 2: none may start
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE skiplock.jobs SET lease_expires_at = now() - interval '1 second' "
                  "WHERE queue = 'lim' AND state = 'running'")
        assert len(c.execute(q("rescue_expired"), {"limit": 100, "now": None}).fetchall()) == 4
    assert len(claim(db_url, ["lim"], 10)) == 2


def test_per_key_limit_shares_the_queue_between_customers(db_url, pg_conn):
    """At most 2 running per args.customer_id; jobs without the argument share one key."""
    settings(pg_conn, "tenants", key_arg="customer_id", max_running_per_key=2)
    fill(pg_conn, "tenants", 30, {"customer_id": "big"})
    fill(pg_conn, "tenants", 3, {"customer_id": "small"})
    fill(pg_conn, "tenants", 3, {"other": 1})
    fill(pg_conn, "tenants", 3, {"customer_id": 7})  # a number: its text form is the key
    claimed = claim(db_url, ["tenants"], 100)
    keys = Counter(r[2].get("customer_id", "-") for r in claimed)
    assert keys == {"big": 2, "small": 2, "-": 2, 7: 2}
    assert claim(db_url, None, 100) == []  # a worker of every queue is held to it too
    pg_conn.execute("UPDATE skiplock.jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = now() "
                    "WHERE id = %s", (next(r[0] for r in claimed if r[2].get("customer_id") == "big"),))
    pg_conn.commit()
    assert [r[2] for r in claim(db_url, ["tenants"], 100)] == [{"customer_id": "big"}]


def test_per_key_and_max_running_together(db_url, pg_conn):
    settings(pg_conn, "tenants", max_running=3, key_arg="customer_id", max_running_per_key=2)
    for c in "abc":
        fill(pg_conn, "tenants", 5, {"customer_id": c})
    claimed = claim(db_url, ["tenants"], 100)
    assert len(claimed) == 3 and max(Counter(r[2]["customer_id"] for r in claimed).values()) <= 2


def test_rate_limit_counts_starts_in_a_sliding_window(db_url, pg_conn):
    """5 per 10 s: a claim at `now` counts the starts in (now - 10 s, now], whatever the batch
    sizes, so no half-open window of 10 s ever holds more than 5."""
    settings(pg_conn, "api", rate_limit=5, rate_period=timedelta(seconds=10))
    fill(pg_conn, "api", 50)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)  # the jobs are due: they were queued before it

    def at(seconds: float, limit: int = 100) -> int:
        return len(claim(db_url, ["api"], limit, now=t0 + timedelta(seconds=seconds)))

    async def wait_at(seconds: float) -> float | None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            return await queue_queries.next_rate_room(c, ["api"], now=t0 + timedelta(seconds=seconds))

    assert at(0, limit=2) == 2
    assert at(4) == 3
    assert at(5) == 0
    assert asyncio.run(wait_at(5)) == pytest.approx(5.0)  # the first start leaves the window at 10 s
    assert at(9.999) == 0
    assert at(10) == 2  # the window is (0, 10]: the starts at 0 are out
    assert at(13.9) == 0
    assert asyncio.run(wait_at(13.9)) == pytest.approx(0.1)
    assert at(14.001) == 3
    assert asyncio.run(wait_at(14.5)) == pytest.approx(5.5)
    starts = sorted(r[0] for r in pg_conn.execute("SELECT started_at FROM skiplock.jobs WHERE started_at IS NOT NULL"))
    assert all(sum(1 for s in starts if t <= s < t + timedelta(seconds=10)) <= 5 for t in starts)
    # the window keeps one entry per claim still in it: those at 10 and 14.001
    assert pg_conn.execute("SELECT rate_counts FROM skiplock.queues").fetchone() == ([2, 3],)


def test_concurrent_claims_never_start_more_than_the_rate(db_url, pg_conn):
    settings(pg_conn, "api", rate_limit=7, rate_period=timedelta(hours=1))
    fill(pg_conn, "api", 50)
    start = threading.Barrier(10)
    got: list[int] = []

    def one() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            start.wait()
            got.append(len(c.execute(q("claim_batch_limited"), {"worker_id": "w", "queues": None, "limit": 3,
                                                        "lease_seconds": 30, "now": None, "turn": 0}).fetchall()))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 7


def test_queues_take_turns_within_a_priority_but_priority_comes_first(db_url, pg_conn):
    """The big queue's 1,000 older jobs do not hold back the small queue's: claims of 4 take two
    of each; a high-priority job of either queue still goes first."""
    fill(pg_conn, "big", 1000)
    fill(pg_conn, "small", 10)
    fill(pg_conn, "small", 1, priority=0)
    first = claim(db_url, ["big", "small"], 5)
    assert Counter(r[3] for r in first) == {"big": 2, "small": 3}
    assert any(r[4] == 0 for r in first)
    for turn in range(4):  # a claim of one at a time alternates
        assert [r[3] for r in claim(db_url, ["big", "small"], 1, turn=turn)] == [["big", "small"][turn % 2]]


def test_limits_through_operations_http_and_cli_parser(db_url):
    async def ops_part() -> None:
        async with Operations.connect(db_url) as ops:
            row = await ops.set_queue_limits("mail", max_running=5, rate=(100, 60.0))
            assert (row["max_running"], row["rate_limit"], row["rate_period"]) == (5, 100, 60.0)
            row = await ops.set_queue_limits("mail", per_key=("customer_id", 2))  # the others stay
            assert (row["max_running"], row["key_arg"], row["max_running_per_key"]) == (5, "customer_id", 2)
            row = await ops.set_queue_limits("mail", rate=None, max_running=None)
            assert (row["max_running"], row["rate_limit"], row["key_arg"]) == (None, None, "customer_id")
            with pytest.raises(InvalidInput) as e:
                await ops.set_queue_limits("mail", rate=(0, 1.0))
            assert e.value.field == "rate.limit"

    asyncio.run(ops_part())
    api = create_app(Settings(database_url=db_url))

    async def http_part() -> list[httpx.Response]:
        async with api.router.lifespan_context(api):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
                return [await c.put("/queues/mail", json={"max_running": 3, "rate": {"limit": 20, "period": 2}}),
                        await c.put("/queues/mail", json={"per_key": None}),
                        await c.put("/queues/mail", json={"rate": {"limit": 20}}),
                        await c.get("/queues")]

    put, clear, bad, listing = asyncio.run(http_part())
    assert put.status_code == 200, put.text
    body = put.json()
    assert (body["max_running"], body["rate"], body["per_key"]) == (
        3, {"limit": 20, "period": 2.0}, {"arg": "customer_id", "max_running": 2})
    assert clear.json()["per_key"] is None and clear.json()["max_running"] == 3
    assert bad.status_code == 422
    [mail] = [x for x in listing.json()["queues"] if x["queue"] == "mail"]
    assert mail["max_running"] == 3 and mail["rate"] == {"limit": 20, "period": 2.0} and mail["per_key"] is None
    args = parser().parse_args(["queue", "limits", "mail", "--max-running", "none", "--rate", "100/1m",
                                "--per-key", "customer_id=2"])
    assert _limit_options(args) == {"max_running": None, "rate": (100, 60.0), "per_key": ("customer_id", 2)}
    assert parse_rate("10/s") == (10, 1.0) and parse_rate("5/250ms") == (5, 0.25)


def test_a_claim_from_queues_without_limits_locks_no_queue_row(db_url, pg_conn):
    """A queue with limits is locked by claims; one without is not even read for them."""
    settings(pg_conn, "free", max_waiting=100)
    settings(pg_conn, "lim", max_running=10)
    fill(pg_conn, "free", 5)
    fill(pg_conn, "lim", 5)
    with psycopg.connect(db_url) as c:  # a transaction that claims and stays open
        c.execute(q("claim_batch"), {"worker_id": "w", "queues": ["free"], "limit": 1, "lease_seconds": 30,
                                     "now": None, "turn": 0})
        locks = c.execute("SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
                          "WHERE r.relname = 'queues' AND l.mode = 'RowShareLock' AND l.pid = pg_backend_pid()"
                          ).fetchone()[0]  # type: ignore[index]
        assert locks == 0
        c.execute(q("claim_batch_limited"), {"worker_id": "w", "queues": ["lim"], "limit": 1, "lease_seconds": 30,
                                     "now": None, "turn": 0})
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '100ms'")
            other.execute("SELECT 1 FROM skiplock.queues WHERE name = 'free' FOR UPDATE")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SELECT 1 FROM skiplock.queues WHERE name = 'lim' FOR UPDATE")
        c.rollback()


def test_the_plain_claim_takes_nothing_while_a_queue_it_reads_has_a_flow_limit(db_url, pg_conn):
    """A worker whose cached view says no limit applies claims with claim_batch: it must not
    overshoot a limit set since; it takes nothing until it switches to claim_batch_limited."""
    fill(pg_conn, "lim", 5)
    fill(pg_conn, "free", 5)
    settings(pg_conn, "lim", max_running=1)

    def plain(queues: list[str] | None) -> list[Any]:
        with psycopg.connect(db_url, autocommit=True) as c:
            return c.execute(q("claim_batch"), {"worker_id": "w", "queues": queues, "limit": 10, "lease_seconds": 30,
                                                "now": None, "turn": 0}).fetchall()

    assert plain(["lim"]) == [] and plain(["lim", "free"]) == [] and plain(None) == []
    assert len(plain(["free"])) == 5
