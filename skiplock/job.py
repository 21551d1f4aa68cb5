"""What a job is: its id, priority, states and the row as Python sees it."""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .errors import InvalidInput

State = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[State, ...] = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
"""waiting: the job waits for jobs it depends on (depends_on) that have not succeeded yet."""

PriorityName = Literal["high", "normal", "low"]
PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
PRIORITY_NAMES: dict[int, PriorityName] = {0: "high", 1: "normal", 2: "low"}

QUEUE_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,62}$")
TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


def uuid7(ms: int | None = None) -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), same layout as skiplock.uuid_v7()."""
    ms = time.time_ns() // 1_000_000 if ms is None else ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
             | 0b10 << 62 | (rand & ((1 << 62) - 1)))
    return uuid.UUID(int=value)


def priority_value(priority: str | int) -> int:
    """`high`/`normal`/`low` (or 0/1/2) as the stored number."""
    if isinstance(priority, int) and not isinstance(priority, bool) and priority in PRIORITY_NAMES:
        return priority
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise InvalidInput(f"priority must be high, normal or low, not {priority!r}", field="priority", value=priority)


def check_queue(name: str, field: str = "queue") -> str:
    if not isinstance(name, str) or not QUEUE_RE.fullmatch(name):
        raise InvalidInput(
            f"queue name {name!r} is invalid: use 1-63 characters from a-z, 0-9, '_', '.', '-', "
            "starting with a letter, digit or '_'", field=field, value=name)
    return name


def check_task_name(name: str, field: str = "task") -> str:
    if not isinstance(name, str) or not TASK_RE.fullmatch(name):
        raise InvalidInput(
            f"task name {name!r} is invalid: use 1-128 characters from letters, digits, '_', '.', ':', '-', "
            "starting with a letter or '_'", field=field, value=name)
    return name


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job as a worker holds it: what the handler needs, plus the fence (attempt)."""

    id: uuid.UUID
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None
    checkpoint: Any
    run_at: datetime
    created_at: datetime
    correlation_id: str | None
    review: Any = None  # what the operator who resumed it from a park gave this attempt
