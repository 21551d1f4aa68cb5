"""The SkiplockError family. Each error's docstring is its default message; the bad value
travels with it, and app/http/errors.py maps each type to one HTTP status."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import psycopg
import psycopg.errors


class SkiplockError(Exception):
    """Skiplock error."""

    code = "skiplock_error"

    def __init__(self, message: str | None = None, *, field: str | None = None, value: Any = None,
                 details: dict[str, Any] | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.field = field
        self.value = value
        self.details = dict(details or {})
        if field is not None:
            self.details.setdefault("field", field)
        super().__init__(self.message)


class InvalidInput(SkiplockError):
    """Invalid input."""

    code = "invalid_input"


class UnknownTask(InvalidInput):
    """Unknown task."""

    code = "unknown_task"


class InvalidArguments(InvalidInput):
    """The arguments do not match the task's signature."""

    code = "invalid_arguments"


class JobNotFound(SkiplockError):
    """No such job."""

    code = "not_found"


class InvalidTransition(SkiplockError):
    """The job's state does not allow this."""

    code = "invalid_transition"


class IdempotencyConflict(SkiplockError):
    """The idempotency key was already used for a different job."""

    code = "idempotency_conflict"


class QueueFull(SkiplockError):
    """The queue holds its maximum of waiting jobs."""

    code = "queue_full"


class QueueNotFound(SkiplockError):
    """No such queue: it has neither jobs nor settings."""

    code = "not_found"


class QueueNotEmpty(SkiplockError):
    """The queue still has jobs; it can be deleted once they are finished and pruned."""

    code = "queue_not_empty"


class ScheduleNotFound(SkiplockError):
    """No such schedule."""

    code = "not_found"


class BatchNotFound(SkiplockError):
    """No such batch."""

    code = "not_found"


class BatchSealed(InvalidTransition):
    """The batch is sealed: it takes no new jobs."""

    code = "batch_sealed"


class DatabaseUnavailable(SkiplockError):
    """The database is unreachable."""

    code = "database_unavailable"


class NonRetryableError(Exception):
    """Raise from a task handler to fail the job at once, without further attempts."""


class Park(Exception):
    """Raise from a task handler (or call ctx.park) to park the job for a person: it leaves the
    queue in state `waiting`, without failing and with this attempt given back, until an
    operator resumes it (its next attempt gets the operator's data as ctx.review), fails it or
    cancels it. `reason` (text) and `data` (JSON) are what the operator sees."""

    def __init__(self, reason: str, data: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class JobCancelled(Exception):
    """Raised inside a handler (via the context) when its job was cancelled."""


# Constraint name -> (error type, field at fault). The one place psycopg errors become ours.
_CONSTRAINTS: dict[str, tuple[type[SkiplockError], str | None]] = {
    "jobs_task_format": (InvalidInput, "task"),
    "jobs_queue_format": (InvalidInput, "queue"),
    "queues_name_format": (InvalidInput, "queue"),
    "jobs_priority_range": (InvalidInput, "priority"),
    "jobs_max_attempts_positive": (InvalidInput, "max_attempts"),
    "jobs_timeout_positive": (InvalidInput, "timeout"),
    "jobs_idempotency_key_length": (InvalidInput, "idempotency_key"),
    "jobs_state_transition": (InvalidTransition, None),
    "jobs_insert_queued": (InvalidTransition, "state"),
    "jobs_delete_running": (InvalidTransition, None),
    "schedules_name_format": (InvalidInput, "name"),
    "jobs_depends_on_known": (InvalidInput, "depends_on"),
    "jobs_depends_on_ended": (InvalidInput, "depends_on"),
    "jobs_depends_on_cycle": (InvalidInput, "depends_on"),
    "jobs_depends_on_size": (InvalidInput, "depends_on"),
    "jobs_waiting_has_a_reason": (InvalidTransition, "state"),
    "jobs_parked_waiting": (InvalidTransition, "state"),
    "batches_sealed": (BatchSealed, "batch_id"),
    "batches_on_complete_valid": (InvalidInput, "on_complete"),
}

# Refusals whose DETAIL is JSON to pass on as the error's details (the job at fault).
_JSON_DETAILS = {"jobs_depends_on_known", "jobs_depends_on_ended", "jobs_depends_on_cycle", "jobs_state_transition"}


def translate(exc: psycopg.Error) -> SkiplockError:
    """A psycopg error as a SkiplockError (by constraint name or SQLSTATE)."""
    diag = getattr(exc, "diag", None)
    constraint = diag.constraint_name if diag else None
    primary = (diag.message_primary if diag else None) or str(exc)
    if constraint == "queues_max_waiting":  # skiplock.reserve_room_v1: the numbers come as JSON
        try:
            details = json.loads(diag.message_detail or "{}") if diag else {}
        except ValueError:
            details = {}
        return QueueFull(primary.removeprefix("skiplock: "), field="queue", details=details)
    if constraint in _CONSTRAINTS:
        kind, field = _CONSTRAINTS[constraint]
        about: dict[str, Any] = {}
        if constraint in _JSON_DETAILS and diag and diag.message_detail:
            with contextlib.suppress(ValueError, TypeError):
                about = dict(json.loads(diag.message_detail))
        return kind(primary.removeprefix("skiplock: "), field=field, details=about)
    if isinstance(exc, psycopg.errors.NoDataFound):
        return JobNotFound(primary.removeprefix("skiplock: "))
    if isinstance(exc, psycopg.errors.InvalidParameterValue | psycopg.DataError):
        # SQLSTATE class 22 (bad text, numbers out of range, NUL characters...): the input's fault
        return InvalidInput(primary.removeprefix("skiplock: "))
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"database unavailable: {primary}")
    return SkiplockError(primary)
