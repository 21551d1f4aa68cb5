"""sql/api.sql: queries behind the operations API that the engine itself does not need (setting
a queue's limits, the schema revision), connection first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..db import AsyncConn
from ._run import fetch_one


async def set_queue_limits(conn: AsyncConn, name: str, fields: Sequence[str], *, max_waiting: int | None = None,
                           max_running: int | None = None, key_arg: str | None = None,
                           max_running_per_key: int | None = None, rate_limit: int | None = None,
                           rate_period: float | None = None) -> dict[str, Any] | None:
    """Set the limits named in `fields` (max_waiting, max_running, per_key, rate); the others
    keep their value."""
    return await fetch_one(conn, "set_queue_limits", {
        "name": name, "fields": list(fields), "max_waiting": max_waiting, "max_running": max_running,
        "key_arg": key_arg, "max_running_per_key": max_running_per_key, "rate_limit": rate_limit,
        "rate_period": rate_period})


async def schema_revision(conn: AsyncConn) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    row = await fetch_one(conn, "schema_revision", {})
    return None if row is None else str(row["version_num"])
