"""Worker lives for the upload example's kill test: `python -m tests.examples.upload_kill_worker
URL MAX_KILLS SEED [autocommit]`. Each life is a real worker process (forked from this one
after the imports) running the example's task; once the life has analysed its first upload it
is SIGKILLed 0-50 ms later, wherever its jobs are: claimed, reading, writing, acknowledging,
committing (SEED makes the delays repeatable). After MAX_KILLS kills a last life runs until
every job has ended. Prints `kills=N lives=M seed=S`.

`autocommit` swaps in a broken handler, used only to show the test can fail: the same writes
on an autocommit connection of its own instead of ctx.transaction(), so a kill after the
write and before the acknowledgement leaves a result whose job then runs again."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from typing import Any

import psycopg

from examples.upload_results import tasks
from skiplock import JobContext, TaskRegistry, Worker, registry, task

broken = TaskRegistry()


def autocommit_handler(url: str) -> None:
    @task(name=tasks.ANALYSE, queue="uploads", max_attempts=10, registry=broken)
    async def analyse_outside_the_ack(upload_id: int, ctx: JobContext) -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await tasks.record_result(conn, upload_id, job_id=ctx.job_id, attempt=ctx.attempt)


def analysed(url: str) -> tuple[int, int]:
    """(analysed, total) uploads."""
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FILTER (WHERE state = 'analysed'), count(*) FROM uploads_app.uploads"
                        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def unfinished_jobs(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM skiplock.jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"
                        ).fetchone()
        return int(row[0]) if row else 0


def life(url: str, reg: TaskRegistry) -> None:
    worker = Worker(url, registry=reg, concurrency=8, poll_interval=0.05, lease_seconds=30, grace_seconds=0)
    asyncio.run(worker.run())


def fork_life(url: str, reg: TaskRegistry) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            life(url, reg)
        finally:
            os._exit(0)
    return pid


def main(url: str, max_kills: int, seed: int, variant: str) -> None:
    rng = random.Random(seed)
    reg = registry
    if variant == "autocommit":
        autocommit_handler(url)
        reg = broken
    kills = lives = 0
    while kills < max_kills:
        before, total = analysed(url)
        if before == total:
            break
        lives += 1
        pid = fork_life(url, reg)
        deadline = time.monotonic() + 30
        while analysed(url)[0] == before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
    lives += 1
    pid = fork_life(url, reg)  # the last life, left to finish
    deadline = time.monotonic() + 60
    while unfinished_jobs(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    print(f"kills={kills} lives={lives} seed={seed}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "transaction")
