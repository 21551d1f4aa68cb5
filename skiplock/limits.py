"""Queue size limits (`max_waiting`) on the Python submission paths, and which queues have flow
limits (`max_running`, per key, rate) for the claim loop.

The rule lives in the database (skiplock.reserve_room_v1, which skiplock.enqueue in SQL calls
too): inside the transaction that inserts, the row of each limited queue is locked while its
waiting jobs are counted, so concurrent submitters cannot both see room for the last slot.
Which queues have a limit is cached per database for LIMITS_TTL seconds, so submissions to
queues without one pay nothing: no extra statement, no transaction, no lock."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from . import db
from .errors import InvalidInput
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
        self._flow: dict[tuple[str, int, str], tuple[float, frozenset[str]]] = {}

    async def limited(self, conn: db.AsyncConn) -> frozenset[str]:
        """Queues of `conn`'s database that have a max_waiting (cached)."""
        key = _database(conn)
        at, names = self._limited.get(key, (-1e9, frozenset()))
        if time.monotonic() - at > self.ttl:
            names = frozenset(await queues.limited_queues(conn))
            self._limited[key] = (time.monotonic(), names)
        return names

    async def flow_limited(self, conn: db.AsyncConn) -> frozenset[str]:
        """Queues of `conn`'s database whose claims are limited (cached): a worker that serves
        one claims with claim_batch_limited, and after a short claim looks again when room may
        have come back. A limit set meanwhile holds at once (the plain claim takes nothing
        while one applies to it) and is applied within `ttl`."""
        key = _database(conn)
        at, names = self._flow.get(key, (-1e9, frozenset()))
        if time.monotonic() - at > self.ttl:
            names = frozenset(await queues.flow_limited_queues(conn))
            self._flow[key] = (time.monotonic(), names)
        return names

    def forget(self) -> None:
        """A limit changed here: read them again on the next submission."""
        self._limited.clear()
        self._flow.clear()

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


class Unset:
    """A limit left out of a change (keeps its value); None removes one."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()

MAX_LIMIT = 1_000_000_000
MAX_RATE = 1_000_000
MAX_RATE_PERIOD = 86_400.0


def _count(field: str, v: Any, most: int = MAX_LIMIT) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
        raise InvalidInput(f"{field} must be an integer from 1 to {most:,}", field=field, value=v)
    return v


def check_limits(given: Mapping[str, Any]) -> dict[str, Any]:
    """The query parameters for a change of limits (skiplock.queries.api.set_queue_limits), from
    max_waiting / max_running (int | None), per_key ((arg, n) | None), rate ((n, seconds) | None);
    InvalidInput names the field at fault."""
    out: dict[str, Any] = {}
    for field in ("max_waiting", "max_running"):
        if given.get(field) is not None:
            out[field] = _count(field, given[field])
    per_key = given.get("per_key")
    if per_key is not None:
        if not isinstance(per_key, tuple | list) or len(per_key) != 2:
            raise InvalidInput("per_key must be (argument name, most running per value)", field="per_key")
        arg, n = per_key
        if not isinstance(arg, str) or not 1 <= len(arg) <= 255 or "\x00" in arg:
            raise InvalidInput("per_key's argument name must be 1-255 characters", field="per_key.arg", value=arg)
        out["key_arg"], out["max_running_per_key"] = arg, _count("per_key.max_running", n)
    rate = given.get("rate")
    if rate is not None:
        if not isinstance(rate, tuple | list) or len(rate) != 2:
            raise InvalidInput("rate must be (jobs, period in seconds)", field="rate")
        n, period = rate
        out["rate_limit"] = _count("rate.limit", n, MAX_RATE)
        if (isinstance(period, bool) or not isinstance(period, int | float) or not math.isfinite(period)
                or not 0.001 <= period <= MAX_RATE_PERIOD):
            raise InvalidInput(f"rate.period must be a number of seconds from 0.001 to {MAX_RATE_PERIOD:g}",
                               field="rate.period", value=period)
        out["rate_period"] = float(period)
    return out


def parse_rate(text: str) -> tuple[int, float]:
    """"100/60s", "100/1m", "5/1.5s", "100/h" -> (jobs, period in seconds); InvalidInput otherwise."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    try:
        n, _, per = text.strip().partition("/")
        unit = next((u for u in ("ms", "s", "m", "h", "d") if per.endswith(u)), "s")
        number = per[: len(per) - len(unit)] if per.endswith(unit) else per
        return int(n), (float(number) if number else 1.0) * units[unit]
    except ValueError:
        raise InvalidInput(f"rate {text!r} is not N/PERIOD (e.g. 100/60s, 100/1m, 10/s)", field="rate") from None
