"""The pipeline's task handlers (`SKIPLOCK_TASKS=examples.analysis_pipeline.tasks`).

One handler, `analyse`, registered under 25 task names: one per analysis queue
(`analysis.ocr`, ... 21 of them), one per correction queue (`correction.spelling`, ...) and
`urgent` on the queue `priority` (priority high, so it is claimed before anything else). Each
runs a simulated analysis and a quality check (qa.py); a failed check raises, so the job
retries and the error is on its timeline; after the last attempt's failed check the job is
parked for a person, whose resume data the next attempt reads as `ctx.review`. A task's result
row is written in the transaction that marks its job succeeded (`ctx.transaction()`), so it
exists exactly once per job. `analysis_report` is the batch's completion job: it runs once,
when every task has ended, and writes the report the same way."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from psycopg.types.json import Jsonb
from pydantic import Field

from skiplock import Backoff, BatchOutcome, JobContext, NonRetryableError, task

from .qa import QA_ATTEMPTS, QA_THRESHOLD, REPORT_QUEUE, REPORT_TASK, URGENT_TASK, WORK_TASKS, verdict, work_seconds

TASK_TIMEOUT = 300.0
"""Seconds an analysis may take before its attempt is ended (and retried)."""
QA_RETRY = Backoff(base_seconds=1.0, factor=2.0, max_seconds=30.0)
"""A failed quality check runs again about 1 s, then 2 s later."""

Doc = Annotated[int, Field(ge=0, le=2**31 - 1)]
WorkMs = Annotated[int, Field(ge=0, le=60_000)]


class QualityCheckFailed(Exception):
    """The analysis' result did not pass its quality check; the attempt fails and is retried."""


async def analyse(doc: Doc, ctx: JobContext, work_ms: WorkMs = 0) -> dict[str, Any]:
    """Analyse document `doc` the way the task's name says, then check the result's quality."""
    await asyncio.sleep(work_seconds(doc, ctx.task, work_ms))
    v = verdict(doc, ctx.task)
    if v.unreadable:
        raise NonRetryableError(f"document {doc} cannot be read ({ctx.task})")
    # A person resumed it from a park (with data, or with the dashboard's Resume button, which
    # gives none): their decision stands. {"approved": false} rejects it.
    review = ctx.review
    reviewed = review is not None or (isinstance(ctx.checkpoint, dict) and "parked_on_attempt" in ctx.checkpoint)
    if reviewed:
        if isinstance(review, dict) and review.get("approved") is False:
            raise NonRetryableError(f"{ctx.task} of document {doc} rejected at review: {review.get('note', '')}")
        score = 1.0
    elif v.passes_on is not None and ctx.attempt >= v.passes_on:
        score = 0.9
    elif ctx.attempt >= ctx.max_attempts:
        ctx.save_checkpoint({"parked_on_attempt": ctx.attempt})
        ctx.park(f"quality check failed on every attempt ({ctx.attempt}): score {v.score:.2f} < {QA_THRESHOLD}",
                 {"doc": doc, "task": ctx.task, "score": v.score, "attempts": ctx.attempt})
    else:
        raise QualityCheckFailed(f"quality check failed: {ctx.task} of document {doc} scored {v.score:.2f} "
                                 f"< {QA_THRESHOLD} (attempt {ctx.attempt} of {ctx.max_attempts})")
    conn = await ctx.transaction()
    await conn.execute(
        "INSERT INTO analysis_pipeline.results (job_id, task, doc, attempt, score, reviewed, review) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (ctx.job_id, ctx.task, doc, ctx.attempt, score, reviewed, None if review is None else Jsonb(review)))
    return {"doc": doc, "task": ctx.task, "score": score, "reviewed": reviewed}


for _name, _queue in WORK_TASKS.items():
    task(name=_name, queue=_queue, priority="high" if _name == URGENT_TASK else "normal",
         max_attempts=QA_ATTEMPTS, timeout=TASK_TIMEOUT, retry=QA_RETRY)(analyse)


@task(name=REPORT_TASK, queue=REPORT_QUEUE, max_attempts=5, timeout=120)
async def analysis_report(batch: BatchOutcome, ctx: JobContext) -> dict[str, Any]:
    """The batch's completion job: how the run ended, per kind of task, written once."""
    conn = await ctx.transaction()
    cur = await conn.execute(
        "SELECT split_part(j.task, '.', 1) AS family, j.state::text AS state, count(*) AS n, "
        "       count(*) FILTER (WHERE r.reviewed) AS reviewed, "
        "       count(*) FILTER (WHERE NOT r.reviewed AND r.attempt > 1) AS retried "
        "  FROM skiplock.jobs j LEFT JOIN analysis_pipeline.results r ON r.job_id = j.id "
        " WHERE j.batch_id = %s GROUP BY 1, 2 ORDER BY 1, 2", (batch.id,))
    by_family: dict[str, dict[str, int]] = {}
    reviewed = retried = 0
    for family, state, n, rev, ret in await cur.fetchall():
        by_family.setdefault(str(family), {})[str(state)] = int(n)
        reviewed += int(rev)
        retried += int(ret)
    cur = await conn.execute(
        "SELECT task, args->>'doc' FROM skiplock.jobs WHERE batch_id = %s AND state = 'failed' ORDER BY id LIMIT 10",
        (batch.id,))
    report = {"batch": str(batch.id), "state": batch.state, "total": batch.total, "succeeded": batch.succeeded,
              "failed": batch.failed, "cancelled": batch.cancelled, "passed_after_qa_retry": retried,
              "approved_at_review": reviewed, "by_kind": by_family,
              "failed_examples": [f"{t} doc {d}" for t, d in await cur.fetchall()]}
    await conn.execute("INSERT INTO analysis_pipeline.reports (batch_id, job_id, report) VALUES (%s, %s, %s)",
                       (batch.id, ctx.job_id, Jsonb(report)))
    return report
