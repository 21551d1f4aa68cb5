"""Short synchronous queries for the scenarios (each on its own autocommit connection)."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.acceptance.chaos_tasks import LEDGER_DDL


def rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        return c.execute(query, params).fetchall()


def scalar(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        row = c.execute(query, params).fetchone()
        return row[0] if row else None


def create_ledger(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(LEDGER_DDL)
