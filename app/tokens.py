"""API tokens with roles and request rates (SKIPLOCK_API_TOKENS), and the rate limiter.

    SKIPLOCK_API_TOKENS="tokA,tokB:read,tokC:submit:10/s,tokD:600/m"

Tokens are separated by commas. After a token, `:role` and `:rate` may follow, in either
order: a role is `read`, `submit` or `admin`; a rate is `N/s`, `N/m` or `N/h`. A bare token is
`admin` with no rate. A token that itself contains `:` followed by one of those words must
carry its role explicitly (`ab:read:admin` is the token `ab:read` as admin).

- `read`: every GET (the API and the dashboard); no change at all.
- `submit`: what `read` may, plus submitting jobs (POST /jobs, POST /jobs/bulk, POST /batches).
  It may not cancel or retry any job, nor pause, limit or delete queues or schedules: those
  act on other clients' work.
- `admin`: everything.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Role = Literal["read", "submit", "admin"]
ROLES: tuple[Role, ...] = ("read", "submit", "admin")
_RATE = re.compile(r"^([1-9][0-9]{0,8})/(s|m|h)$")
_PERIOD = {"s": 1.0, "m": 60.0, "h": 3600.0}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SUBMIT_PATHS = frozenset({"/jobs", "/jobs/bulk", "/batches"})
"""POST paths that submit work: a `submit` token's whole extra right."""


@dataclass(frozen=True)
class Rate:
    """At most `count` requests per `period` seconds, `count` of them back to back."""

    count: int
    period: float
    text: str

    @property
    def interval(self) -> float:
        return self.period / self.count


@dataclass(frozen=True)
class ApiToken:
    secret: bytes
    role: Role = "admin"
    rate: Rate | None = None


def parse_rate(text: str) -> Rate | None:
    m = _RATE.match(text)
    return Rate(int(m[1]), _PERIOD[m[2]], text) if m else None


def parse_one(item: str) -> ApiToken:
    """One entry of the list: the token, then up to two of `:role` and `:rate` at its end."""
    parts = item.split(":")
    role: Role | None = None
    rate: Rate | None = None
    while len(parts) > 1:
        last = parts[-1]
        found_rate = parse_rate(last)
        if last in ROLES and role is None:
            role = last  # one of ROLES
        elif found_rate is not None and rate is None:
            rate = found_rate
        else:
            break
        parts.pop()
    secret = ":".join(parts).strip()
    if not secret:
        raise ValueError(f"SKIPLOCK_API_TOKENS: an entry has an empty token ({item!r} without its secret)")
    return ApiToken(secret.encode(), role or "admin", rate)


def parse_tokens(raw: str) -> list[ApiToken]:
    """Every token of SKIPLOCK_API_TOKENS; ValueError names a bad entry (a token twice)."""
    tokens = [parse_one(t.strip()) for t in raw.split(",") if t.strip()]
    seen: set[bytes] = set()
    for t in tokens:
        if t.secret in seen:
            raise ValueError("SKIPLOCK_API_TOKENS: a token is listed twice (with one role and rate each)")
        seen.add(t.secret)
    return tokens


def role_needed(method: str, path: str) -> Role:
    """The least role that may make this request."""
    if method in SAFE_METHODS:
        return "read"
    if method == "POST" and path in SUBMIT_PATHS:
        return "submit"
    return "admin"


def may(role: Role, needed: Role) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


class RateLimiter:
    """Per-token request rates, as a generic cell rate algorithm (a token bucket that holds
    `count` requests and refills one every `period / count` seconds).

    `take` serves a request or answers how many seconds until one would be served. Each
    token's state is one number, the time its bucket is next full (`tat`); it is read and
    written without an await between, so concurrent requests on the event loop cannot both
    take the last place. The state lives in this process: each API process limits on its own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tat: dict[bytes, float] = {}

    def take(self, key: bytes, rate: Rate) -> float:
        """0.0: served (counted); otherwise the seconds until a request would be served."""
        now = self.clock()
        tat = max(self._tat.get(key, now), now)
        allowance = rate.period - rate.interval  # how far ahead of `now` the bucket may run
        if tat - now > allowance:
            return tat - allowance - now
        self._tat[key] = tat + rate.interval
        return 0.0


def retry_after(wait: float) -> str:
    """Whole seconds for a Retry-After header: rounded up, so a request then is served."""
    return str(max(1, math.ceil(wait)))
