"""Worker lives for the transactional-completion kill test: `python -m
tests.acceptance.txn_kill_worker URL MAX_LIVES`. Each life is a real worker process (forked from
this one after the imports, so a life costs milliseconds, not an interpreter start) whose
handler writes its row with ctx.transaction() and, on a job's first attempt, SIGKILLs its own
process: after the handler's write, before the acknowledgement. Lives follow each other until
no job is left to run. Prints `kills=N lives=M`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psycopg

from skiplock import JobContext, TaskRegistry, Worker, task

registry = TaskRegistry()


@task(name="txn.store", max_attempts=5, registry=registry)
async def store(ctx: JobContext) -> int:
    conn = await ctx.transaction()
    await conn.execute("INSERT INTO app_results (job_id, attempt) VALUES (%s, %s)", (ctx.job_id, ctx.attempt))
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the write is in the transaction; the acknowledgement is not
    return ctx.attempt


def left(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM skiplock.jobs WHERE state NOT IN ('succeeded', 'failed')").fetchone()
        return int(row[0]) if row else 0


def life(url: str) -> None:
    worker = Worker(url, registry=registry, concurrency=1, poll_interval=0.05, burst=True, lease_seconds=30)
    asyncio.run(worker.run())


def main(url: str, max_lives: int) -> None:
    kills = lives = 0
    while left(url) and lives < max_lives:
        lives += 1
        pid = os.fork()
        if pid == 0:
            try:
                life(url)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            kills += 1
    print(f"kills={kills} lives={lives}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
