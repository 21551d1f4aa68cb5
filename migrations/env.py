"""Alembic environment. The URL comes from config.attributes["url"] (app/migrate.py),
`-x url=...`, or DATABASE_URL, in that order."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from migrations.metadata import metadata

config = context.config


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url") \
        or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("migrations: no database URL (set DATABASE_URL or use `skiplock migrate`)")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("migrations: offline mode is not supported; run against a database")
run_migrations_online()
