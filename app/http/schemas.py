"""Request and response bodies. /openapi.json is generated from these models."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from skiplock.job import PRIORITY_NAMES

Priority = Literal["high", "normal", "low"]
StateName = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]


NO_NUL = r"^[^\x00]*$"
"""PostgreSQL cannot store NUL characters in text or jsonb (bodies.py refuses them anywhere
in a body; the pattern says so in /openapi.json)."""

RFC3339 = re.compile(r"^(?!0000-|0001-|9999-)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3])"
                     r":[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
"""run_at's form: RFC 3339 with a time zone, in years 0002-9998 (a time zone can carry years 1
and 9999 outside what Python and PostgreSQL both hold, so they are refused whole)."""


class Strict(BaseModel):
    """A request body: unknown fields refused, and no coercion between JSON types (`true` or
    `"7"` is not a number, `7` is not a string)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _rfc3339(v: Any) -> Any:
    """Only an RFC 3339 string is a time: not a number of seconds, nor a bare date."""
    if not isinstance(v, str) or not RFC3339.match(v):
        raise ValueError("must be an RFC 3339 date-time with a time zone in years 0002-9998, "
                         "e.g. 2030-01-01T09:00:00Z")
    return v


def _json_number(v: Any) -> Any:
    """A JSON number only: `true` and `"7"` are not numbers. 7.0 is the integer 7 (as in JSON
    Schema), 7.5 is not an integer."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("must be a JSON number")
    return v


def _uuid_text(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError("must be a UUID string")
    return v


# JSON has no date or UUID type: these fields take strings, parsed (strict=False) from text only.
Rfc3339 = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339)]
UuidText = Annotated[uuid.UUID, Field(strict=False), BeforeValidator(_uuid_text)]

# Integers given as JSON numbers (bounds and strict=False in one Field, so that the JSON
# schema keeps the bounds as minimum and maximum).
Attempts = Annotated[int, Field(strict=False, ge=1, le=1000), BeforeValidator(_json_number)]
WaitingLimit = Annotated[int, Field(strict=False, ge=1, le=1_000_000_000), BeforeValidator(_json_number)]
MAX_JOB_INDEX = 100_000
RateCount = Annotated[int, Field(strict=False, ge=1, le=1_000_000), BeforeValidator(_json_number)]
Seconds = Annotated[float, Field(strict=False, ge=0.001, le=86_400), BeforeValidator(_json_number)]


def _dependency(v: Any) -> Any:
    """A job id (UUID text) or the index of a job of the same request (a JSON integer)."""
    if isinstance(v, str):
        try:
            return uuid.UUID(v)
        except ValueError:
            raise ValueError("must be a job id (a UUID string) or the index of a job of this request") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or not 0 <= v <= MAX_JOB_INDEX:
        raise ValueError(f"must be a job id (a UUID string) or the index of a job of this request "
                         f"(an integer from 0 to {MAX_JOB_INDEX})")
    return int(v)


Dependency = Annotated[Annotated[uuid.UUID, Field(strict=False)] | Annotated[int, Field(ge=0, le=MAX_JOB_INDEX)],
                       BeforeValidator(_dependency)]


class JobFields(Strict):
    """A job to submit. Unset options take the task's defaults."""

    task: str = Field(min_length=1, max_length=128, description="Registered task name (GET /tasks)")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments, checked against the task")
    queue: str | None = Field(default=None, min_length=1, max_length=63)
    priority: Priority | None = None
    run_at: Rfc3339 | None = Field(default=None, description="When to run; give run_at or delay")
    delay: float | None = Field(default=None, ge=0, le=366 * 86400, description="Seconds from now")
    max_attempts: Attempts | None = None
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400, description="Seconds per attempt")

    @field_validator("run_at")
    @classmethod
    def _run_at_in_range(cls, v: datetime | None) -> datetime | None:
        # Years 1-9999 in UTC: what both Python and PostgreSQL can hold.
        try:
            return None if v is None else v.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range (years 1-9999 in UTC)") from None


class JobIn(JobFields):
    """A job to submit. Unset options take the task's defaults."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255, pattern=NO_NUL,
                                        description="Same as the Idempotency-Key header")
    batch_id: UuidText | None = Field(default=None, description="Joins this batch while it is open (409 once "
                                                                "sealed); an id naming no batch is only a label")
    depends_on: list[Dependency] | None = Field(
        default=None, max_length=1000,
        description="Jobs to wait for: ids of stored jobs, or (in /jobs/bulk) indexes of jobs of the same "
                    "request. The job stays `waiting` until all have succeeded; it is cancelled if one fails "
                    "or is cancelled. An unknown, failed or cancelled job, or a cycle, is refused (422)")


class BatchJobIn(JobFields):
    """A job of a new batch (no idempotency key or batch_id: the batch is its own)."""


class CompletionIn(Strict):
    """The completion job: enqueued once when the batch ends, with `batch` ({id, state, total,
    succeeded, failed, cancelled}) added to its args. Its task must take a `batch` argument."""

    task: str = Field(min_length=1, max_length=128, description="Registered task name (GET /tasks)")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments but `batch`")
    queue: str | None = Field(default=None, min_length=1, max_length=63)
    priority: Priority | None = None
    max_attempts: Attempts | None = None
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400, description="Seconds per attempt")


class BatchIn(Strict):
    jobs: list[BatchJobIn] = Field(default_factory=list, description="Stored with the batch in one transaction")
    on_complete: CompletionIn | None = None
    seal: bool = Field(default=True, description="false: the batch stays open; add jobs with POST /jobs "
                                                 "(batch_id) and seal it with POST /batches/{id}/seal")


class BulkIn(Strict):
    jobs: list[JobIn] = Field(min_length=1, description="Stored in one transaction: all or none")


class HistoryEntry(BaseModel):
    state: StateName
    at: datetime
    attempt: int
    worker_id: str | None
    error: str | None
    correlation_id: str | None


class JobOut(BaseModel):
    id: uuid.UUID
    task: str
    args: dict[str, Any]
    queue: str
    priority: Priority
    state: StateName
    attempt: int = Field(description="Claims so far over the job's life (never reset)")
    max_attempts: int = Field(description="Attempts allowed per round; a retry starts a new round")
    attempt_base: int = Field(description="Attempts used before the last retry; the job fails once "
                                          "attempt - attempt_base reaches max_attempts")
    run_at: datetime
    timeout: float | None
    idempotency_key: str | None
    batch_id: uuid.UUID | None
    parked: dict[str, Any] | None = Field(None, description="While parked for a person (state waiting): "
                                                            "reason, data, at, attempt, worker_id")
    review: Any = Field(None, description="What the operator who resumed it from a park gave its next attempt")
    correlation_id: str | None = Field(None, description="The id of the request that submitted the job "
                                                         "(its X-Request-ID); also on every transition")
    depends_on: list[uuid.UUID] | None = Field(default=None, description="The jobs it waits (or waited) for")
    result: Any = None
    last_error: str | None
    progress: dict[str, Any] | None
    checkpoint: Any = None
    worker_id: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobOut:
        data = dict(row)
        data["priority"] = PRIORITY_NAMES[int(data["priority"])]
        return cls.model_validate(data)


class JobDetail(JobOut):
    history: list[HistoryEntry]


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end")


class BulkOut(BaseModel):
    ids: list[uuid.UUID] = Field(description="The jobs' ids, in the order submitted")
    created: int = Field(description="How many were new (the rest matched an idempotency key)")


BatchStateName = Literal["open", "active", "succeeded", "failed", "cancelled"]


class BatchOut(BaseModel):
    id: uuid.UUID
    state: BatchStateName = Field(description="open: takes jobs, never completes; active: sealed, jobs left; "
                                              "then cancelled (a job was cancelled), failed (a job failed) or "
                                              "succeeded")
    total: int
    waiting: int = Field(description="Jobs waiting on their dependencies")
    queued: int
    running: int
    parked: int = Field(description="Jobs parked for review (see POST /jobs/{id}/resume)")
    succeeded: int
    failed: int
    cancelled: int
    percent: float = Field(description="Share of its jobs finished (succeeded, failed or cancelled), 0-100")
    on_complete_task: str | None
    completion_job_id: uuid.UUID | None = Field(description="Enqueued in the transaction that ended the batch")
    completion_job_state: StateName | None
    created_at: datetime
    sealed_at: datetime | None
    started_at: datetime | None = Field(description="When a job of it first started")
    finished_at: datetime | None


class BatchCreated(BatchOut):
    job_ids: list[uuid.UUID] = Field(description="The jobs' ids, in the order submitted")


class BatchDetail(BatchOut):
    completion_job: JobOut | None


class BatchCancelled(BatchDetail):
    cancelled_now: int = Field(description="Jobs this call cancelled")


class BatchRetried(BatchDetail):
    retried_now: int = Field(description="Failed jobs this call put back in their queues")


class BatchPage(BaseModel):
    batches: list[BatchOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end")


class PerKey(Strict):
    arg: str = Field(min_length=1, max_length=255, pattern=NO_NUL,
                     description="The argument whose value is the key (jobs without it share one key)")
    max_running: WaitingLimit = Field(description="Most running jobs with the same value")


class Rate(Strict):
    limit: RateCount = Field(description="Most jobs started in any window of `period`")
    period: Seconds = Field(description="The window, in seconds")


class FlowLimits(BaseModel):
    """A queue's flow limits, as stored in skiplock.queues."""

    max_running: int | None = Field(description="Most jobs of the queue running at once, over every worker; "
                                                "null = no limit")
    per_key: PerKey | None = Field(description="Most running jobs per value of one argument; null = no limit")
    rate: Rate | None = Field(description="Most jobs started per period; null = no limit")

    @staticmethod
    def nested(row: dict[str, Any]) -> dict[str, Any]:
        """A row's flat limit columns (key_arg, rate_limit, ...) as this model's fields."""
        data = {k: v for k, v in row.items()
                if k not in ("key_arg", "max_running_per_key", "rate_limit", "rate_period")}
        data["per_key"] = (None if row.get("key_arg") is None
                           else {"arg": row["key_arg"], "max_running": row["max_running_per_key"]})
        data["rate"] = (None if row.get("rate_limit") is None
                        else {"limit": row["rate_limit"], "period": row["rate_period"]})
        return data


class QueueOut(FlowLimits):
    queue: str
    paused: bool
    ready: int
    scheduled: int
    waiting: int = Field(description="Jobs waiting for their dependencies")
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_ready_seconds: float
    max_waiting: int | None
    finished_last_minute: int


class QueuePage(BaseModel):
    queues: list[QueueOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page (queues in name order); "
                                                "null at the end")


class ResumeIn(Strict):
    data: dict[str, Any] | None = Field(default=None, description="A JSON object the job's next attempt receives as "
                                                                 "ctx.review")


class FailIn(Strict):
    reason: str | None = Field(default=None, min_length=1, max_length=2000, pattern=NO_NUL,
                               description="The job's last error (default: the park's reason)")


class QueueLimits(Strict):
    """The limits to change; those left out keep their value, null removes one."""

    max_waiting: WaitingLimit | None = Field(default=None, description="Most waiting jobs; null = no limit")
    max_running: WaitingLimit | None = Field(
        default=None, description="Most jobs of the queue running at once, over every worker; null = no limit")
    per_key: PerKey | None = Field(default=None, description="Most running jobs per value of one argument; "
                                                             "null = no limit")
    rate: Rate | None = Field(default=None, description="Most jobs started in any window of a period; "
                                                        "null = no limit")


class QueueState(FlowLimits):
    name: str
    paused: bool
    max_waiting: int | None


class ScheduleOut(BaseModel):
    name: str
    task: str
    cron: str = Field(description="5 fields (minute hour day month weekday) or 6 with seconds first")
    timezone: str = Field(description="IANA time zone the cron expression is read in")
    args: dict[str, Any]
    queue: str | None = Field(description="null: the task's queue")
    priority: Priority | None = Field(description="null: the task's priority")
    paused: bool
    defined_in: Literal["code", "sql"] = Field(description="code: written by workers from @task(schedule=...) "
                                                           "or skiplock.schedule(); sql: a row inserted by hand")
    next_run_at: datetime | None = Field(description="The next tick; null while paused or while its definition is "
                                                     "broken (see error)")
    last_tick_at: datetime | None = Field(description="The last tick a job was enqueued for")
    last_job_id: uuid.UUID | None
    error: str | None = Field(description="Why no scheduler can run it (bad cron expression or time zone)")
    since: datetime = Field(description="Ticks count from here: creation, the last change of cron or time zone, "
                                        "the last resume")
    created_at: datetime


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


class TaskOut(BaseModel):
    name: str
    queue: str
    priority: Priority
    max_attempts: int
    timeout: float | None
    args_schema: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskOut]


class WorkersHealth(BaseModel):
    live: int = Field(description="Workers whose heartbeat is within one lease (SKIPLOCK_LEASE_SECONDS)")
    slots: int = Field(description="Jobs the live workers may run at once")
    oldest_heartbeat_seconds: float | None = Field(description="Age of the oldest live worker's last heartbeat; "
                                                               "null when none is live")


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    schema_revision: str
    workers: WorkersHealth


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(BaseModel):
    error: ErrorDetail
