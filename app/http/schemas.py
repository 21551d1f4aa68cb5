"""Request and response bodies. /openapi.json is generated from these models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from skiplock.job import PRIORITY_NAMES

Priority = Literal["high", "normal", "low"]
StateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobIn(Strict):
    """A job to submit. Unset options take the task's defaults."""

    task: str = Field(min_length=1, max_length=128, description="Registered task name (GET /tasks)")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments, checked against the task")
    queue: str | None = Field(default=None, min_length=1, max_length=63)
    priority: Priority | None = None
    run_at: AwareDatetime | None = Field(default=None, description="When to run; give run_at or delay")
    delay: float | None = Field(default=None, ge=0, le=366 * 86400, description="Seconds from now")
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400, description="Seconds per attempt")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255,
                                        description="Same as the Idempotency-Key header")
    batch_id: uuid.UUID | None = None


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


class QueueOut(BaseModel):
    queue: str
    paused: bool
    ready: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_ready_seconds: float
    max_waiting: int | None
    finished_last_minute: int


class QueueList(BaseModel):
    queues: list[QueueOut]


class QueueLimits(Strict):
    max_waiting: int | None = Field(ge=1, le=1_000_000_000, description="Most waiting jobs; null = no limit")


class QueueState(BaseModel):
    name: str
    paused: bool
    max_waiting: int | None


class TaskOut(BaseModel):
    name: str
    queue: str
    priority: Priority
    max_attempts: int
    timeout: float | None
    args_schema: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskOut]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    schema_revision: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(BaseModel):
    error: ErrorDetail
