"""sql/api.sql: queries behind the HTTP API that the engine itself does not need (setting a
queue limit, the schema revision), connection first."""

from __future__ import annotations

from typing import Any

from ..db import AsyncConn
from ._run import fetch_one


async def set_max_waiting(conn: AsyncConn, name: str, max_waiting: int | None) -> dict[str, Any] | None:
    return await fetch_one(conn, "set_max_waiting", {"name": name, "max_waiting": max_waiting})


async def schema_revision(conn: AsyncConn) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    row = await fetch_one(conn, "schema_revision", {})
    return None if row is None else str(row["version_num"])
