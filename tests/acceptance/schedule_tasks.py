"""A task on a schedule for the real-process schedule test: load it in a worker with
`SKIPLOCK_TASKS=tests.acceptance.schedule_tasks`."""

from __future__ import annotations

from skiplock import task


@task(name="cron.tick", queue="cron", schedule="* * * * * *")  # every second (6 fields: seconds first)
async def tick() -> None:
    return None
