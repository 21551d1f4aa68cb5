"""The application's own web endpoint (yours, not Skiplock's): it takes an upload and, in one
transaction on its own connection, stores the upload and enqueues the job that analyses it.
A transaction that rolls back leaves neither.

    DATABASE_URL=... python -m examples.upload_results.webapp     # http://127.0.0.1:8001

POST /uploads?name=N   body: the file's bytes          -> 201 {"upload_id", "job_id", "correlation_id"}
     ...&fail_after_enqueue=1: raise after the enqueue, inside the transaction -> 500, nothing stored
GET  /uploads/{id}     the upload's state, its job and its result rows

The request's X-Request-ID (or a generated one) is the job's correlation id, so Skiplock's
`GET /jobs/{id}` shows it on every transition of the job."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skiplock import QueueFull, enqueue

from .tasks import ANALYSE

SCHEMA = Path(__file__).with_name("schema.sql")
MAX_UPLOAD_BYTES = 1024 * 1024
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")  # what Skiplock's API keeps as a correlation id


class SimulatedFailure(Exception):
    """Raised after the enqueue, inside the upload's transaction (?fail_after_enqueue=1)."""

    def __init__(self, upload_id: int, job_id: uuid.UUID) -> None:
        super().__init__(f"upload {upload_id} and job {job_id} rolled back")
        self.upload_id = upload_id
        self.job_id = job_id


async def apply_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """The application's tables (schema.sql is idempotent; a real application runs its migrations)."""
    await conn.execute(SCHEMA.read_text())


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def pool(request: Request) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    found: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
    return found


async def create_upload(request: Request) -> JSONResponse:
    rid = request_id(request)
    headers = {"X-Request-ID": rid}
    content = await request.body()
    if len(content) > MAX_UPLOAD_BYTES:
        return JSONResponse({"error": f"at most {MAX_UPLOAD_BYTES} bytes"}, 413, headers)
    name = request.query_params.get("name") or "upload"
    fail = request.query_params.get("fail_after_enqueue") == "1"
    try:
        async with pool(request).connection() as conn, conn.transaction():
            cur = await conn.execute("INSERT INTO uploads_app.uploads (name, content, correlation_id)"
                                     " VALUES (%s, %s, %s) RETURNING id", (name, content, rid))
            row = await cur.fetchone()
            assert row is not None
            upload_id = int(row[0])
            # Skiplock's enqueue on this same connection: the job row joins this transaction.
            job = await enqueue(conn, ANALYSE, {"upload_id": upload_id}, correlation_id=rid)
            await conn.execute("UPDATE uploads_app.uploads SET job_id = %s WHERE id = %s", (job.id, upload_id))
            if fail:
                raise SimulatedFailure(upload_id, job.id)
    except SimulatedFailure as exc:
        return JSONResponse({"error": f"simulated failure after the enqueue: {exc}", "rolled_back": True,
                             "upload_id": exc.upload_id, "job_id": str(exc.job_id), "correlation_id": rid},
                            500, headers)
    except QueueFull as exc:
        return JSONResponse({"error": exc.message}, 429, headers)
    return JSONResponse({"upload_id": upload_id, "job_id": str(job.id), "correlation_id": rid}, 201,
                        {**headers, "Location": f"/uploads/{upload_id}"})


async def get_upload(request: Request) -> JSONResponse:
    try:
        upload_id = int(request.path_params["id"])
    except ValueError:
        return JSONResponse({"error": "an upload id is a number"}, 422)
    async with pool(request).connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, name, octet_length(content) AS bytes, state, job_id, correlation_id,"
                          " created_at, analysed_at FROM uploads_app.uploads WHERE id = %s", (upload_id,))
        upload = await cur.fetchone()
        if upload is None:
            return JSONResponse({"error": f"no upload {upload_id}"}, 404)
        await cur.execute("SELECT id, job_id, attempt, bytes, lines, words, sha256, created_at"
                          " FROM uploads_app.results WHERE upload_id = %s ORDER BY id", (upload_id,))
        results = await cur.fetchall()
    return JSONResponse(_plain({**upload, "results": results}))


def _plain(value: Any) -> Any:
    """JSON-ready: ids and times as text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def create_app(url: str | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = url or os.environ.get("DATABASE_URL")
        if not database:
            raise SystemExit("set DATABASE_URL (with `make run`: DATABASE_URL=$(.venv/bin/skiplock url))")
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await apply_schema(conn)
        app.state.pool = AsyncConnectionPool(database, min_size=1, max_size=10, open=False,
                                             kwargs={"autocommit": True})
        await app.state.pool.open()
        try:
            yield
        finally:
            await app.state.pool.close()

    return Starlette(routes=[Route("/uploads", create_upload, methods=["POST"]),
                             Route("/uploads/{id}", get_upload, methods=["GET"])], lifespan=lifespan)


def main() -> None:
    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("UPLOADS_PORT", "8001")),
                log_level="warning")


if __name__ == "__main__":
    main()
