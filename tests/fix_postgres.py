"""The PostgreSQL the tests start themselves (as the `postgres` OS user when we are root),
and pytest-postgresql fixtures on top of it: a template database migrated once per session
and a fresh clone of it per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql import factories

from app.embedded_pg import Cluster, PostgresNotFound, free_port

PORT = int(os.environ.get("SKIPLOCK_TEST_PG_PORT") or free_port())


def url_for(host: str, port: int | str, user: str, dbname: str) -> str:
    return f"postgresql://{user}@{host}:{port}/{dbname}"


def load_schema(host: str, port: int, user: str, dbname: str, password: str | None = None, **_: object) -> None:
    """Template loader: run the Alembic migrations, exactly as production does."""
    from app import migrate

    migrate.upgrade(url_for(host, port, user, dbname))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="skiplock-test-")), port=PORT)
    except PostgresNotFound as exc:
        pytest.exit(str(exc), returncode=3)
    cluster.start()
    yield cluster
    cluster.destroy()


_noproc = factories.postgresql_noproc(host="127.0.0.1", port=PORT, user="postgres", dbname="skiplock_test",
                                      load=[load_schema])


@pytest.fixture(scope="session")
def pg_proc(pg_cluster: Cluster, request: pytest.FixtureRequest) -> object:
    """The noproc executor, created only once our server is up."""
    return request.getfixturevalue("_pg_noproc")


_pg_noproc = _noproc
pg_conn = factories.postgresql("pg_proc")


@pytest.fixture
def db_url(pg_conn: object) -> str:
    """URL of this test's own database (a clone of the migrated template)."""
    info = pg_conn.info  # type: ignore[attr-defined]
    return url_for(info.host, info.port, info.user, info.dbname)
