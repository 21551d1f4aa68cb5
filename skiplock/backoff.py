"""How long to wait after a failure: exponential backoff with jitter. `Backoff` is a task's
retry policy (when a failed attempt runs again, a pure function of time); `retry_delay` is
what every background piece of the engine waits before trying again after an error."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number `attempt` (1-based): base * factor**(attempt-1), capped at
    `max_seconds`, then spread by +/- `jitter` (a fraction) so failed jobs do not retry in step."""

    base_seconds: float = 2.0
    factor: float = 2.0
    max_seconds: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for field in ("base_seconds", "factor", "max_seconds"):
            if getattr(self, field) < 0:
                raise InvalidInput(f"{field} must be >= 0, not {getattr(self, field)}", field=field)
        if not 0 <= self.jitter < 1:
            raise InvalidInput(f"jitter must be in [0, 1), not {self.jitter}", field="jitter")

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        exp = min(max(attempt - 1, 0), 64)
        raw = min(self.base_seconds * self.factor**exp, self.max_seconds)
        spread = (rand or random).uniform(-self.jitter, self.jitter)
        return max(0.0, raw * (1 + spread))

    def next_run_at(self, attempt: int, now: datetime, rand: random.Random | None = None) -> datetime:
        return now + timedelta(seconds=self.delay(attempt, rand))


DEFAULT_BACKOFF = Backoff()


def retry_delay(failures: int, *, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Seconds a background piece waits after `failures` (>= 1) errors in a row: base * 2**failures
    (doubling at most six times), at most `cap`, scaled by a random factor from 0.5 to 1 so
    that pieces that failed together (a database restart) do not retry in step."""
    raw = min(base * 2.0 ** min(max(failures, 1), 6), cap)
    return raw * (rand or random).uniform(0.5, 1.0)
