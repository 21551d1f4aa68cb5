"""Run the document analysis process: `python -m examples.analysis_pipeline --tasks 300`.

Sets up the queues (max_waiting 10000 on each analysis queue) and the example's own tables,
starts worker processes (`python -m app worker`) that share every queue, submits one batch of
tasks with a report job that runs when all of them have ended, prints the batch's progress
every second and, at the end, the report. With DATABASE_URL unset it uses the embedded
database exactly as `skiplock run` does (started if needed, and left running afterwards).
See README.md beside this file."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg

from app import migrate
from app.settings import Settings
from app.wiring import database_url
from skiplock import InvalidTransition, JobNotFound, JobSpec, Operations

from . import tasks  # noqa: F401 - registers the tasks this process submits
from .ledger import SCHEMA_SQL
from .qa import ALL_QUEUES, ANALYSIS_QUEUES, REPORT_TASK, plan

ROOT = Path(__file__).resolve().parents[2]
TASK_MODULE = "examples.analysis_pipeline.tasks"
MAX_WAITING = 10_000


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {n}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="analysis_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=_positive, default=300, help="how many tasks to submit (default 300)")
    p.add_argument("--workers", type=_positive, default=8, help="worker processes (default 8)")
    p.add_argument("--concurrency", type=_positive, default=4, help="jobs each worker runs at once (default 4)")
    p.add_argument("--work-ms", type=int, default=300, help="mean time one simulated analysis takes (default 300)")
    p.add_argument("--auto-review", type=float, metavar="SECONDS",
                   help="act as the reviewer: approve each parked task after it has waited SECONDS "
                        "(default: leave them to you: dashboard, CLI `resume`, or psql)")
    p.add_argument("--worker-log", type=Path, help="where the workers' logs go (default: a temporary file)")
    return p


def database() -> str:
    """The URL in use: DATABASE_URL, or the embedded cluster started and migrated as `skiplock run` does."""
    url, started = database_url(Settings())
    migrate.upgrade(url)
    if started is not None:
        say("started the embedded PostgreSQL; it keeps running after this run (`make stop-db` stops it)")
    return url


def prepare(url: str) -> None:
    """The example's own tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.encode())


def start_workers(url: str, n: int, concurrency: int, log: IO[bytes]) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, DATABASE_URL=url, SKIPLOCK_TASKS=TASK_MODULE, SKIPLOCK_QUEUES=",".join(ALL_QUEUES),
               SKIPLOCK_CONCURRENCY=str(concurrency),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return [subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT) for _ in range(n)]


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for w in workers:
        try:
            w.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def say(text: str) -> None:
    print(f"analysis: {text}", flush=True)


def progress_line(b: dict[str, Any], elapsed: float) -> str:
    return (f"[{elapsed:5.1f}s] total {b['total']} | completed {b['succeeded']} | failed {b['failed']} | "
            f"in review {b['parked']} | queued {b['queued']} | running {b['running']} | {b['percent']:.1f}%")


def report_text(r: dict[str, Any]) -> str:
    """The report job's result, for people."""
    lines = [f"report: batch {r['batch']} {r['state']}: {r['total']} tasks, {r['succeeded']} completed "
             f"({r['passed_after_qa_retry']} after a QA retry, {r['approved_at_review']} approved at review), "
             f"{r['failed']} failed, {r['cancelled']} cancelled"]
    for kind, states in sorted(r["by_kind"].items()):
        lines.append(f"  {kind:<11} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    if r["failed_examples"]:
        lines.append("  failed: " + ", ".join(r["failed_examples"]))
    return "\n".join(lines)


async def review_parked(ops: Operations, batch_id: uuid.UUID, after: float) -> None:
    """What a reviewer does: approve each task of the batch parked for at least `after` seconds,
    through the operations the API, the CLI and the dashboard call."""
    cutoff = datetime.now(UTC) - timedelta(seconds=after)
    approved: list[str] = []
    cursor: str | None = None
    while True:
        page = await ops.list_jobs(state="waiting", batch=batch_id, limit=500, cursor=cursor)
        for job in page.jobs:
            parked = job.get("parked")
            if parked and datetime.fromisoformat(parked["at"]) <= cutoff:
                try:
                    await ops.resume(job["id"], {"approved": True, "by": "auto-review"}, correlation_id="auto-review")
                except (InvalidTransition, JobNotFound):
                    continue  # someone else decided first
                approved.append(f"{job['task']} doc {job['args']['doc']}")
        cursor = page.next_cursor
        if cursor is None:
            break
    if approved:
        more = f" and {len(approved) - 3} more" if len(approved) > 3 else ""
        say(f"review: approved {', '.join(approved[:3])}{more} (in review for {after:g} s)")


async def drive(url: str, args: argparse.Namespace, workers: list[subprocess.Popen[bytes]]) -> int:
    async with Operations.connect(url) as ops:
        for queue in ANALYSIS_QUEUES:
            await ops.set_queue_limits(queue, max_waiting=MAX_WAITING)
        return await watch(ops, args, workers)


async def watch(ops: Operations, args: argparse.Namespace, workers: list[subprocess.Popen[bytes]]) -> int:
    """Submit the batch, then print its progress every second until its report job has run."""
    specs = [JobSpec(name, {"doc": doc, "work_ms": args.work_ms}) for name, doc in plan(args.tasks)]
    batch = await ops.submit_batch(specs, on_complete=JobSpec(REPORT_TASK), correlation_id="analysis-pipeline")
    batch_id = batch["id"]
    say(f"batch {batch_id}: {batch['total']} tasks submitted; report job `{REPORT_TASK}` when all have ended")
    started = time.monotonic()
    alive = set(range(len(workers)))
    hinted = False
    while True:
        b = await ops.get_batch(batch_id)
        print(progress_line(b, time.monotonic() - started), flush=True)
        for i in sorted(alive):
            code = workers[i].poll()
            if code is not None:
                alive.discard(i)
                say(f"worker pid {workers[i].pid} exited ({code}); the others rescue its jobs")
        if not alive:
            say("every worker has exited")
            return 1
        report = b["completion_job"]
        if report is not None and report["state"] in ("succeeded", "failed", "cancelled"):
            if report["state"] != "succeeded":
                say(f"the report job {report['id']} ended {report['state']}: {report['last_error']}")
                return 1
            print(report_text(report["result"]), flush=True)
            say(f"to look closer: `make psql`, or `make run` and http://127.0.0.1:8000/ui/batches/{batch_id} "
                "(examples/analysis_pipeline/README.md)")
            return 0
        if args.auto_review is not None:
            await review_parked(ops, batch_id, args.auto_review)
        elif b["parked"] and not hinted:
            hinted = True
            say(f"{b['parked']} in review: resume them from the dashboard, `skiplock resume ID --data '{{...}}'` "
                f"or psql `SELECT skiplock.resume(id, '{{\"approved\": true}}') FROM skiplock.parked_jobs`")
        await asyncio.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = database()
    prepare(url)
    log_path = args.worker_log
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="analysis-workers-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with open(log_path, "ab") as log:
        workers = start_workers(url, args.workers, args.concurrency, log)
    say(f"{len(workers)} workers started (pids {' '.join(str(w.pid) for w in workers)}); their logs: {log_path}")
    try:
        return asyncio.run(drive(url, args, workers))
    except KeyboardInterrupt:
        return 130
    finally:
        stop_workers(workers)


if __name__ == "__main__":
    sys.exit(main())
