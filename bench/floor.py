"""The raw-SQL floor: the same work done with plain SQL on a bare table in the same database,
from the same Python driver (psycopg 3, prepared statements). Every Skiplock figure is
reported as a fraction of the floor measured in the same run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS floor_jobs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task       text        NOT NULL,
    args       jsonb       NOT NULL DEFAULT '{}',
    state      text        NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS floor_jobs_queued ON floor_jobs (id) WHERE state = 'queued';
"""

INSERT_ONE = "INSERT INTO floor_jobs (task, args) VALUES (%s, %s::jsonb)"
INSERT_MANY = "INSERT INTO floor_jobs (task, args) SELECT * FROM unnest(%s::text[], %s::jsonb[])"
CLAIM_FINISH = """
WITH c AS (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
UPDATE floor_jobs f SET state = 'done' FROM c WHERE f.id = c.id
"""


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(FLOOR_TABLE)
        c.execute("TRUNCATE floor_jobs")


def insert_one_per_tx(url: str, n: int) -> float:
    """Rows/s: one INSERT per transaction (autocommit), one connection."""
    setup(url)
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        t = time.perf_counter()
        for _ in range(n):
            c.execute(INSERT_ONE, ("noop", "{}"))
        return n / (time.perf_counter() - t)


def insert_batches(url: str, n: int, batch: int = 1000) -> float:
    """Rows/s: INSERT of `batch` rows per statement (and transaction), one connection."""
    setup(url)
    tasks, args = ["noop"] * batch, ["{}"] * batch
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        t = time.perf_counter()
        for _ in range(n // batch):
            c.execute(INSERT_MANY, (tasks, args))
        return n // batch * batch / (time.perf_counter() - t)


def claim_and_finish(url: str, n: int) -> float:
    """Jobs/s: claim 100 queued rows and mark them done, one statement each, one connection."""
    setup(url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO floor_jobs (task) SELECT 'noop' FROM generate_series(1, %s)", (n,))
        c.execute("VACUUM ANALYZE floor_jobs")
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        done = 0
        t = time.perf_counter()
        while True:
            k = c.execute(CLAIM_FINISH).rowcount
            if k <= 0:
                break
            done += k
        return done / (time.perf_counter() - t)


def insert_concurrent(url: str, n: int, clients: int = 32) -> float:
    """Rows/s: single-row INSERTs from `clients` connections at once (the HTTP floor)."""
    setup(url)

    async def client(per: int) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0) as c:
            for _ in range(per):
                await c.execute(INSERT_ONE, ("noop", "{}"))

    async def main() -> float:
        per = n // clients
        t = time.perf_counter()
        await asyncio.gather(*(client(per) for _ in range(clients)))
        return per * clients / (time.perf_counter() - t)

    return asyncio.run(main())


def run_all(url: str, *, repeat: int = 3, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    s = {"one": 3000, "batch": 100_000, "claim": 50_000, **(sizes or {})}
    from .env import median

    out: dict[str, Any] = {}
    out["insert_one"] = median([insert_one_per_tx(url, s["one"]) for _ in range(repeat)])
    out["insert_batch"] = median([insert_batches(url, s["batch"]) for _ in range(repeat)])
    out["claim_finish"] = median([claim_and_finish(url, s["claim"]) for _ in range(repeat)])
    return out


# -- Skiplock's own statements, without the Python engine --------------------------------
# Not a floor: the same statements the engine sends (sql/jobs.sql), on the real schema with
# its constraints, indexes and history trigger, from a bare psycopg loop. Beside the floor and
# the engine they split a gap in two: what the schema costs, and what the Python around it costs.

def _timed_statements(url: str, name: str, params: list[dict[str, Any]], jobs_each: int) -> float:
    """Jobs/s: the named query once per params, each its own transaction, on emptied tables."""
    from skiplock.queries.loader import q

    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        c.execute("TRUNCATE skiplock.jobs, skiplock.job_history")
        query = q(name)
        t = time.perf_counter()
        for p in params:
            c.execute(query, p).fetchall()
        return len(params) * jobs_each / (time.perf_counter() - t)


def schema_insert_one(url: str, n: int) -> float:
    """Jobs/s: the insert_job statement, one per transaction (autocommit), one connection."""
    from skiplock.job import uuid7

    base = {"task": "noop", "args": "{}", "queue": "default", "priority": 1, "run_at": None, "max_attempts": 3,
            "timeout": None, "idempotency_key": None, "batch_id": None, "depends_on": None, "correlation_id": None,
            "defer_notify": False}
    return _timed_statements(url, "insert_job", [{**base, "id": uuid7()} for _ in range(n)], 1)


def schema_insert_batch(url: str, n: int, batch: int = 10_000) -> float:
    """Jobs/s: the insert_jobs statement with `batch` jobs per statement, one connection."""
    from skiplock.job import uuid7

    none = [None] * batch
    cols = {"tasks": ["noop"] * batch, "args": ["{}"] * batch, "queues": ["default"] * batch,
            "priorities": [1] * batch, "run_ats": none, "max_attempts": [3] * batch, "timeouts": none,
            "idempotency_keys": none, "batch_ids": none, "correlation_ids": none, "depends_on": none,
            "correlation_id": None,
            "defer_notify": False}
    params = [{**cols, "ids": [uuid7() for _ in range(batch)]} for _ in range(n // batch)]
    return _timed_statements(url, "insert_jobs", params, batch)


def schema_claim_ack(url: str, n: int, batch: int = 200) -> float:
    """Jobs/s: claim_batch of `batch` rows then finish_many_if_held of the same rows, one after
    the other on one connection, until `n` queued jobs are done."""
    from skiplock.queries.loader import q

    from .ours import load

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE skiplock.jobs, skiplock.job_history")
    load(url, n)  # queued as for the engine's drain
    claim, ack = q("claim_batch"), q("finish_many_if_held")
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        done = 0
        t = time.perf_counter()
        while True:
            rows = c.execute(claim, {"worker_id": "bench", "queues": None, "limit": batch, "lease_seconds": 60,
                                     "now": None, "turn": 0}).fetchall()
            if not rows:
                break
            # claim_batch returns id first and attempt sixth (the ClaimedJob field order)
            c.execute(ack, {"worker_id": "bench", "ids": [r[0] for r in rows], "attempts": [r[5] for r in rows],
                            "states": ["succeeded"] * len(rows), "results": None, "errors": None, "run_ats": None,
                            "checkpoints": None, "progresses": None, "now": None}).fetchall()
            done += len(rows)
        return done / (time.perf_counter() - t)


def claim_isolation(url: str, backlog: int, rounds: int = 200) -> dict[str, float]:
    """Milliseconds per claim_batch (LIMIT 10) taking the one job of queue `urgent`, medians of
    `rounds` (fewer if they take more than ~5 s): with nothing else waiting; while `backlog`
    jobs wait in queue `bulk` (the worker serves `urgent` only); and once `bulk` is paused (a
    worker serving `urgent`, and one serving every queue). Each round inserts one `urgent` job,
    times its claim, then acknowledges it."""
    import statistics

    from skiplock.job import uuid7
    from skiplock.queries.loader import q

    from .ours import load

    claim, ack = q("claim_batch"), q("finish_many_if_held")
    base = {"task": "noop", "args": "{}", "queue": "urgent", "priority": 1, "run_at": None, "max_attempts": 3,
            "timeout": None, "idempotency_key": None, "batch_id": None, "depends_on": None, "correlation_id": None,
            "defer_notify": True}

    def rounds_ms(c: psycopg.Connection[Any], queues: list[str] | None) -> float:
        times: list[float] = []
        while len(times) < rounds and (len(times) < 10 or sum(times) < 5000):  # at most ~5 s when slow
            c.execute(q("insert_job"), {**base, "id": uuid7()}).fetchall()
            t = time.perf_counter()
            rows = c.execute(claim, {"worker_id": "bench", "queues": queues, "limit": 10, "lease_seconds": 60,
                                     "now": None, "turn": 0}).fetchall()
            times.append((time.perf_counter() - t) * 1000)
            assert [r[3] for r in rows] == ["urgent"], rows
            c.execute(ack, {"worker_id": "bench", "ids": [r[0] for r in rows], "attempts": [r[5] for r in rows],
                            "states": ["succeeded"] * len(rows), "results": None, "errors": None, "run_ats": None,
                            "checkpoints": None, "progresses": None, "now": None}).fetchall()
        return statistics.median(times)

    out: dict[str, float] = {"backlog": backlog}
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        c.execute("TRUNCATE skiplock.jobs, skiplock.job_history, skiplock.queues")
        out["alone_ms"] = rounds_ms(c, ["urgent"])
        out["alone_all_ms"] = rounds_ms(c, None)
    load(url, backlog, queue="bulk")
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as c:
        out["other_waiting_ms"] = rounds_ms(c, ["urgent"])
        c.execute("INSERT INTO skiplock.queues (name, paused) VALUES ('bulk', true)")
        out["other_paused_ms"] = rounds_ms(c, ["urgent"])
        out["other_paused_all_ms"] = rounds_ms(c, None)
    return out
