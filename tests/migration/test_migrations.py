"""Migrations are the only way the schema changes: they reproduce sql/schema.sql exactly,
and go up, down and up again on a database that holds jobs."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app import migrate
from app.embedded_pg import Cluster
from skiplock.queries.loader import schema_sql


def dump_schema(cluster: Cluster, dbname: str) -> str:
    out = subprocess.run([str(cluster.bindir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                          "-n", "skiplock", cluster.url(dbname)], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("--")
             and not re.match(r"^(SET|SELECT pg_catalog\.set_config)", ln) and not ln.startswith("\\")]
    return "\n".join(lines)


def fresh_db(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.url(name)


@pytest.fixture(scope="module")
def reference_dump(pg_cluster: Cluster) -> str:
    """The schema as sql/schema.sql builds it."""
    with psycopg.connect(fresh_db(pg_cluster, "mig_from_file"), autocommit=True) as c:
        c.execute(schema_sql())  # type: ignore[arg-type]
    return dump_schema(pg_cluster, "mig_from_file")


def test_migrations_reproduce_schema_sql(pg_cluster, reference_dump):
    migrate.upgrade(fresh_db(pg_cluster, "mig_migrated"))
    assert "CREATE TABLE skiplock.jobs" in reference_dump
    assert dump_schema(pg_cluster, "mig_migrated") == reference_dump


def test_up_down_up_on_a_database_with_jobs(pg_cluster, reference_dump):
    url = fresh_db(pg_cluster, "mig_cycle")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as c:
        for i in range(50):
            c.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text))", (str(i),))
    migrate.downgrade(url, "base")
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'skiplock'").fetchone()[0] == 0
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT skiplock.enqueue('echo', '{}')")
        row: Any = c.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row[0] == migrate.head_revision()
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 1
    assert dump_schema(pg_cluster, "mig_cycle") == reference_dump
