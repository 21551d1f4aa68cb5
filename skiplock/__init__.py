"""Skiplock: a job queue that lives entirely in PostgreSQL.

    from skiplock import task, JobContext

    @task(name="resize", queue="images", max_attempts=5, timeout=60)
    async def resize(url: str, width: int, ctx: JobContext) -> dict:
        ctx.progress(50, "downloaded")
        ...
"""

from .backoff import Backoff
from .batches import BATCH_STATES, Batch, BatchOutcome, enqueue_batch, open_batch, seal_batch
from .context import JobContext
from .cron import Schedule
from .enqueue import Enqueued, JobSpec, enqueue, enqueue_many
from .errors import (
    BatchNotFound,
    BatchSealed,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidArguments,
    InvalidInput,
    InvalidTransition,
    JobCancelled,
    JobNotFound,
    NonRetryableError,
    Park,
    QueueFull,
    ScheduleNotFound,
    SkiplockError,
    UnknownTask,
)
from .job import PRIORITIES, STATES, uuid7
from .ops import BatchPage, JobPage, Operations
from .runtime.worker import Worker
from .tasks import Task, TaskRegistry, registry, schedule, task

__all__ = [
    "BATCH_STATES", "Batch", "BatchNotFound", "BatchOutcome", "BatchPage", "BatchSealed", "enqueue_batch", "open_batch",
    "seal_batch",
    "PRIORITIES", "STATES", "Backoff", "DatabaseUnavailable", "Enqueued", "IdempotencyConflict",
    "InvalidArguments", "InvalidInput", "InvalidTransition", "JobCancelled", "JobContext", "JobNotFound",
    "JobPage", "JobSpec", "NonRetryableError", "Operations", "Park", "QueueFull", "Schedule", "ScheduleNotFound",
    "SkiplockError", "Task", "TaskRegistry", "UnknownTask", "Worker", "enqueue", "enqueue_many", "registry",
    "schedule", "task", "uuid7",
]
