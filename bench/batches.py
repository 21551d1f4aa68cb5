"""Batches: what keeping a batch's counts costs. The same drain and the same bulk submission
with and without a batch, alternating in ABBA order (plain, batch, batch, plain, ...) so that
drift in the machine's speed hits both alike; medians."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg

from skiplock import JobSpec, enqueue_batch, enqueue_many

from . import tasks as _tasks  # noqa: F401 - registers the bench's task handlers
from .env import Server, execute, median, sample_drain, scalar, skiplock_worker, stop
from .ours import DONE


def load(url: str, n: int, *, batch: bool) -> None:
    """Queue `n` no-op jobs in one INSERT … SELECT, in one sealed batch when `batch`, then
    VACUUM ANALYZE (as bench.ours.load)."""
    if batch:
        execute(url, "WITH quiet AS (SELECT set_config('skiplock.notify', 'deferred', true)), "
                     "b AS (INSERT INTO skiplock.batches DEFAULT VALUES RETURNING id) "
                     "INSERT INTO skiplock.jobs (task, queue, priority, batch_id) "
                     f"SELECT 'noop', 'default', 1, b.id FROM generate_series(1, {int(n)}) g, quiet, b",
                "SELECT skiplock.seal_batch(id) FROM skiplock.batches",
                "VACUUM ANALYZE skiplock.jobs", "VACUUM ANALYZE skiplock.job_history",
                "VACUUM ANALYZE skiplock.batches")
    else:
        execute(url, "WITH quiet AS (SELECT set_config('skiplock.notify', 'deferred', true)) "
                     "INSERT INTO skiplock.jobs (task, queue, priority) "
                     f"SELECT 'noop', 'default', 1 FROM generate_series(1, {int(n)}) g, quiet",
                "VACUUM ANALYZE skiplock.jobs", "VACUUM ANALYZE skiplock.job_history")


def drain_once(server: Server, logdir: Path, n: int, *, concurrency: int, batch: bool) -> float:
    name = f"bdrain{n}{'b' if batch else 'p'}"
    with server.database(name) as url:
        load(url, n, batch=batch)
        proc = skiplock_worker(url, logdir / f"{name}.log", concurrency=concurrency)
        try:
            d = sample_drain(url, DONE, n, [proc])
        finally:
            stop(proc)
        if batch:
            state = scalar(url, "SELECT state || ' ' || succeeded FROM skiplock.batches")
            if state != f"succeeded {n}":
                raise RuntimeError(f"the batch ended as {state!r}, not 'succeeded {n}'")
        return d.rate()


def drain(server: Server, logdir: Path, n: int, *, concurrency: int, rounds: int) -> dict[str, Any]:
    """Jobs/s of one burst worker draining `n` queued jobs, plain and in one batch."""
    plain: list[float] = []
    batched: list[float] = []
    for i in range(rounds):
        for batch in ((False, True) if i % 2 == 0 else (True, False)):
            (batched if batch else plain).append(drain_once(server, logdir, n, concurrency=concurrency,
                                                            batch=batch))
    return {"jobs": n, "concurrency": concurrency, "plain": median(plain), "batch": median(batched),
            "plain_runs": [round(x) for x in plain], "batch_runs": [round(x) for x in batched]}


def submit(url: str, n: int, *, rounds: int) -> dict[str, Any]:
    """Jobs/s of one call submitting `n` jobs: `enqueue_many` vs `enqueue_batch` (one
    transaction each, autocommit connection)."""
    async def go() -> dict[str, Any]:
        plain: list[float] = []
        batched: list[float] = []
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            await enqueue_many(c, [JobSpec("noop") for _ in range(100)])  # warm
            await enqueue_batch(c, [JobSpec("noop") for _ in range(100)])
            for i in range(rounds):
                for batch in ((False, True) if i % 2 == 0 else (True, False)):
                    specs = [JobSpec("noop") for _ in range(n)]
                    t = time.perf_counter()
                    if batch:
                        await enqueue_batch(c, specs)
                    else:
                        await enqueue_many(c, specs)
                    (batched if batch else plain).append(n / (time.perf_counter() - t))
        return {"jobs": n, "plain": median(plain), "batch": median(batched),
                "plain_runs": [round(x) for x in plain], "batch_runs": [round(x) for x in batched]}

    return asyncio.run(go())


WITHOUT_BATCHES = """
DROP TRIGGER jobs_batch_insert ON skiplock.jobs;
DROP TRIGGER jobs_batch_update ON skiplock.jobs;
DROP TRIGGER jobs_batch_delete ON skiplock.jobs;
DROP INDEX skiplock.jobs_batch_pending_idx;
"""
"""What batches add to every job's path: without it, the schema is what it was before them."""


def plain_cost(server: Server, logdir: Path, n: int, *, concurrency: int, rounds: int) -> dict[str, Any]:
    """Jobs of no batch, on the schema as it is and on the same schema without what batches
    add (their triggers and index): one worker's drain, and the engine's own statements alone
    (claim_batch + finish_many_if_held, insert_jobs 10,000 per statement)."""
    from . import floor

    out: dict[str, list[float]] = {k: [] for k in ("drain_with", "drain_without", "claim_ack_with",
                                                   "claim_ack_without", "insert_with", "insert_without")}
    for i in range(rounds):
        for variant in (("without", "with") if i % 2 == 0 else ("with", "without")):
            name = f"plain{n}{variant}"
            with server.database(name) as url:
                if variant == "without":
                    execute(url, WITHOUT_BATCHES)
                out[f"claim_ack_{variant}"].append(floor.schema_claim_ack(url, n))
                out[f"insert_{variant}"].append(floor.schema_insert_batch(url, n))
                execute(url, "TRUNCATE skiplock.jobs, skiplock.job_history")
                load(url, n, batch=False)
                proc = skiplock_worker(url, logdir / f"{name}.log", concurrency=concurrency)
                try:
                    out[f"drain_{variant}"].append(sample_drain(url, DONE, n, [proc]).rate())
                finally:
                    stop(proc)
    return {"jobs": n, **{k: median(v) for k, v in out.items()}, "runs": {k: [round(x) for x in v]
                                                                          for k, v in out.items()}}
