"""Schema migrations (Alembic), run programmatically: `skiplock migrate`, `make migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """Built in code (not from alembic.ini) so it works the same from a checkout and a wheel."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def current_revision_sync(conn: object) -> str | None:
    """The revision a database is at, from a SQLAlchemy connection."""
    return MigrationContext.configure(conn).get_current_revision()  # type: ignore[arg-type]
