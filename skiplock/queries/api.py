"""sql/api.sql: queries behind the HTTP API that the engine itself does not need (queue limits,
the schema revision), connection first."""

from __future__ import annotations

from typing import Any

from ..db import AsyncConn
from ._run import fetch_all, fetch_one


async def set_max_waiting(conn: AsyncConn, name: str, max_waiting: int | None) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_max_waiting", {"name": name, "max_waiting": max_waiting})


async def lock_limited_queues(conn: AsyncConn, queues: list[str]) -> dict[str, int]:
    """{queue: max_waiting} for those of `queues` with a limit, their rows locked until the
    transaction ends (call inside one)."""
    rows = await fetch_all(conn, "lock_limited_queues", {"queues": queues})
    return {str(r["name"]): int(r["max_waiting"]) for r in rows}


async def count_waiting_in(conn: AsyncConn, queues: list[str]) -> dict[str, int]:
    """{queue: waiting jobs}; a queue with none is absent."""
    rows = await fetch_all(conn, "count_waiting_in", {"queues": queues})
    return {str(r["queue"]): int(r["waiting"]) for r in rows}


async def schema_revision(conn: AsyncConn) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    row = await fetch_one(conn, "schema_revision", {})
    return None if row is None else str(row["version_num"])


async def limited_queues(conn: AsyncConn) -> set[str]:
    """Names of the queues that have a max_waiting."""
    return {str(r["name"]) for r in await fetch_all(conn, "limited_queues", {})}
