"""sql/session.sql: settings of the current session or transaction, and the liveness probe."""

from __future__ import annotations

from typing import Any

import psycopg

from ..db import AsyncConn
from ._run import execute
from .loader import q


async def set_correlation_id(conn: AsyncConn, correlation_id: str | None) -> None:
    """Tag the history rows this transaction writes (transaction-local; nothing when None)."""
    if correlation_id:
        await execute(conn, "set_correlation_id", {"correlation_id": correlation_id[:200]})


def set_timeouts(conn: psycopg.Connection[Any], *, statement_ms: int, lock_ms: int = 0) -> None:
    """Bound every later statement of this session (0: no bound). Blocking, for the heartbeat."""
    conn.execute(q("set_timeouts"), {"statement_timeout": f"{statement_ms}ms", "lock_timeout": f"{lock_ms}ms"})


async def ping(conn: AsyncConn) -> None:
    """One round trip: raises if the connection is gone."""
    await execute(conn, "ping", {})
