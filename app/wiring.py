"""Wiring: which database is in use (the one in DATABASE_URL, or the embedded cluster),
logging, and the task modules."""

from __future__ import annotations

import logging
import sys

from skiplock import registry

from .embedded_pg import Cluster
from .settings import Settings

log = logging.getLogger("skiplock.app")


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def embedded_cluster(settings: Settings) -> Cluster:
    return Cluster(settings.home, port=settings.embedded_port)


def database_url(settings: Settings, *, start: bool = True) -> tuple[str, Cluster | None]:
    """The URL to use, and the embedded cluster if this call started it.

    With DATABASE_URL set nothing is started. Without it, the embedded cluster under
    SKIPLOCK_HOME (.skiplock/) is initialised once and started if it is not running."""
    if settings.database_url:
        return settings.database_url, None
    cluster = embedded_cluster(settings)
    started = False
    if start and not cluster.running():
        log.info("starting the embedded PostgreSQL in %s on port %s", cluster.base, cluster.port)
        cluster.start()
        started = True
    if start:
        cluster.create_database("skiplock")
    return cluster.url("skiplock"), cluster if started else None


def load_tasks(settings: Settings) -> None:
    registry.import_modules(settings.task_modules)
