"""What the routes share: the pool, settings, registry, and a short cache of queue limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from app.settings import Settings
from skiplock import admin, db
from skiplock.errors import QueueFull
from skiplock.tasks import TaskRegistry


@dataclass
class ApiState:
    pool: AsyncConnectionPool
    settings: Settings
    registry: TaskRegistry
    _limited: set[str] = field(default_factory=set)
    _limited_at: float = -1e9

    async def limited_queues(self, conn: db.AsyncConn) -> set[str]:
        """Queues that have a max_waiting, refreshed at most every 2 s: the hot path pays one
        extra query only for queues that are actually limited."""
        if time.monotonic() - self._limited_at > 2.0:
            self._limited = await admin.limited_queues(conn)
            self._limited_at = time.monotonic()
        return self._limited

    def forget_limits(self) -> None:
        self._limited_at = -1e9

    async def check_room(self, conn: db.AsyncConn, wanted: dict[str, int]) -> None:
        """Refuse (429) if a limited queue cannot take `wanted[queue]` more waiting jobs."""
        limited = await self.limited_queues(conn)
        for queue, n in wanted.items():
            if queue not in limited:
                continue
            room = await admin.queue_room(conn, queue)
            if room is not None and room[1] + n > room[0]:
                raise QueueFull(f"queue {queue!r} holds {room[1]} waiting jobs; its limit is {room[0]}",
                                field="queue", details={"queue": queue, "waiting": room[1], "max_waiting": room[0]})


def api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def request_id(request: Request) -> str:
    return str(request.state.request_id)
