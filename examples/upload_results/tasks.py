"""The example's task: analyse one upload and record its result in the application's own
tables, in the transaction that acknowledges the job (transactional completion).

A worker runs it with `SKIPLOCK_TASKS=examples.upload_results.tasks` (the web app imports it
too, so that `enqueue` checks the arguments before storing the job)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg

from skiplock import JobContext, NonRetryableError, task

ANALYSE = "uploads.analyse"


@task(name=ANALYSE, queue="uploads", max_attempts=10, timeout=60)
async def analyse_upload(upload_id: int, ctx: JobContext) -> dict[str, Any]:
    """Writes one `uploads_app.results` row and marks the upload analysed. Both writes commit
    with the job's `succeeded`, or not at all: a worker killed before that commit leaves
    nothing behind and the job runs again, so each upload gets exactly one result."""
    conn: psycopg.AsyncConnection[Any] = await ctx.transaction()
    return await record_result(conn, upload_id, job_id=ctx.job_id, attempt=ctx.attempt)


async def record_result(conn: psycopg.AsyncConnection[Any], upload_id: int, *, job_id: uuid.UUID,
                        attempt: int) -> dict[str, Any]:
    """Read the upload, summarise it, write the result and the upload's new state on `conn`
    (whose transaction the caller owns). Returns the summary, stored as the job's result."""
    cur = await conn.execute("SELECT content FROM uploads_app.uploads WHERE id = %s", (upload_id,))
    row = await cur.fetchone()
    if row is None:  # retrying cannot make it appear
        raise NonRetryableError(f"upload {upload_id} does not exist")
    summary = summarise(bytes(row[0]))
    cur = await conn.execute(
        "INSERT INTO uploads_app.results (upload_id, job_id, attempt, bytes, lines, words, sha256)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (upload_id, job_id, attempt, summary["bytes"], summary["lines"], summary["words"], summary["sha256"]))
    inserted = await cur.fetchone()
    assert inserted is not None
    await conn.execute("UPDATE uploads_app.uploads SET state = 'analysed', analysed_at = now() WHERE id = %s",
                       (upload_id,))
    return {"result_id": inserted[0], **summary}


def summarise(content: bytes) -> dict[str, Any]:
    text = content.decode("utf-8", errors="replace")
    return {"bytes": len(content), "lines": text.count("\n"), "words": len(text.split()),
            "sha256": hashlib.sha256(content).hexdigest()}
