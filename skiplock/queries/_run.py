"""Run a named query by name: for the wrapper modules beside this one only, so that every
other module reaches a query through a function named after it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..db import AsyncConn
from .loader import q


async def fetch_all(conn: AsyncConn, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q(name), params)
        return await cur.fetchall()


async def fetch_one(conn: AsyncConn, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q(name), params)
        return await cur.fetchone()


async def execute(conn: AsyncConn, name: str, params: dict[str, Any]) -> int:
    """Run it; the number of rows it changed."""
    async with conn.cursor() as cur:
        await cur.execute(q(name), params)
        return cur.rowcount


def fetch_all_sync(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """For the heartbeat, which runs on a thread and a blocking connection of its own."""
    return conn.execute(q(name), params).fetchall()
