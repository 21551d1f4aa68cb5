"""Queue size limits (`max_waiting`) on the Python submission paths.

The rule lives in the database (skiplock.reserve_room_v1, which skiplock.enqueue in SQL calls
too): inside the transaction that inserts, the row of each limited queue is locked while its
waiting jobs are counted, so concurrent submitters cannot both see room for the last slot.
Which queues have a limit is cached per database for LIMITS_TTL seconds, so submissions to
queues without one pay nothing: no extra statement, no transaction, no lock."""

from __future__ import annotations

import time
from collections.abc import Mapping

from . import db
from .queries import queues

LIMITS_TTL = 2.0
"""How long the set of limited queues is cached (seconds): a new limit takes effect within it
for Python submitters (at once in SQL)."""


def _database(conn: db.AsyncConn) -> tuple[str, int, str]:
    info = conn.info
    return info.host, info.port, info.dbname


class QueueLimits:
    """The cached set of limited queues, per database, and the reservation of room in them."""

    def __init__(self, ttl: float = LIMITS_TTL) -> None:
        self.ttl = ttl
        self._limited: dict[tuple[str, int, str], tuple[float, frozenset[str]]] = {}

    async def limited(self, conn: db.AsyncConn) -> frozenset[str]:
        """Queues of `conn`'s database that have a max_waiting (cached)."""
        key = _database(conn)
        at, names = self._limited.get(key, (-1e9, frozenset()))
        if time.monotonic() - at > self.ttl:
            names = frozenset(await queues.limited_queues(conn))
            self._limited[key] = (time.monotonic(), names)
        return names

    def forget(self) -> None:
        """A limit changed here: read them again on the next submission."""
        self._limited.clear()

    async def needed(self, conn: db.AsyncConn, wanted: Mapping[str, int]) -> bool:
        """Whether a submission of `wanted[queue]` jobs per queue must reserve room."""
        known = await self.limited(conn)
        return any(q in known for q in wanted)

    async def reserve(self, conn: db.AsyncConn, wanted: Mapping[str, int]) -> None:
        """Lock the limited queues among `wanted` until the transaction ends (call inside the one
        that inserts); raises psycopg's CheckViolation (queues_max_waiting) for a queue without
        room for `wanted[queue]` more waiting jobs (skiplock.errors.translate makes it QueueFull)."""
        known = await self.limited(conn)
        limited = sorted(q for q in wanted if q in known)
        if limited:
            await queues.reserve_queue_room(conn, limited, [wanted[q] for q in limited])


default_limits = QueueLimits()
"""The cache Python submitters share unless given their own (Operations has one)."""
