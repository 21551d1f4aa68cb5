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
