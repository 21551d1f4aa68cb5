"""Queue size limits (`max_waiting`) around a submission.

A submission to a limited queue runs its insert in one transaction with the queue's row
locked while it counts the waiting jobs, so concurrent submitters cannot both see room for
the last slot. Which queues have a limit is cached for LIMITS_TTL seconds, so submissions to
queues without one pay nothing: no transaction, no lock, no count."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from . import db
from .errors import QueueFull
from .queries import api

LIMITS_TTL = 2.0
"""How long the set of limited queues is cached (seconds): a new limit takes effect within it."""


class QueueLimits:
    def __init__(self, ttl: float = LIMITS_TTL) -> None:
        self.ttl = ttl
        self._limited: set[str] = set()
        self._at = -1e9

    async def limited(self, conn: db.AsyncConn) -> set[str]:
        """Queues that have a max_waiting (cached)."""
        if time.monotonic() - self._at > self.ttl:
            self._limited = await api.limited_queues(conn)
            self._at = time.monotonic()
        return self._limited

    def forget(self) -> None:
        """A limit changed here: read them again on the next submission."""
        self._at = -1e9

    @contextlib.asynccontextmanager
    async def reserve(self, conn: db.AsyncConn, wanted: dict[str, int]) -> AsyncIterator[None]:
        """Run the body (the insert) only if every limited queue has room for `wanted[queue]`
        more waiting jobs, else raise QueueFull. For limited queues the check and the body
        share one transaction holding the queues' rows; unlimited queues get no transaction."""
        known = await self.limited(conn)
        limited = sorted(q for q in wanted if q in known)
        if not limited:
            yield
            return
        async with conn.transaction():
            limits = await api.lock_limited_queues(conn, limited)
            waiting = await api.count_waiting_in(conn, list(limits)) if limits else {}
            for queue, limit in limits.items():
                now = waiting.get(queue, 0)
                if now + wanted[queue] > limit:
                    raise QueueFull(f"queue {queue!r} holds {now} waiting jobs; its limit is {limit}",
                                    field="queue", details={"queue": queue, "waiting": now, "max_waiting": limit})
            yield
