"""The task catalog in the database (skiplock.tasks): what workers serve, with each task's
defaults and argument schema, for submitters that do not import the task's code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator

from .db import AsyncConn, jsonb
from .errors import InvalidArguments
from .job import PRIORITY_NAMES, priority_value
from .queries import tasks as catalog_queries
from .tasks import Task, TaskRegistry


async def record_tasks(conn: AsyncConn, tasks: Iterable[Task], *, worker_id: str | None = None) -> int:
    """Record (or update) these tasks' defaults and argument schemas."""
    ts = list(tasks)
    if not ts:
        return 0
    return await catalog_queries.record_tasks(
        conn, worker_id=worker_id, names=[t.name for t in ts], queues=[t.queue for t in ts],
        priorities=[priority_value(t.priority) for t in ts], max_attempts=[t.max_attempts for t in ts],
        timeouts=[None if t.timeout is None else float(t.timeout) for t in ts],
        schemas=[jsonb(t.json_schema()) for t in ts])


def _not_here(**_: Any) -> None:
    raise RuntimeError("a recorded task runs on the workers that serve it, not here")


class RecordedTask(Task):
    """A task known from the catalog only (a submitter that does not import its code): its
    defaults, and its arguments checked against the JSON schema its workers recorded. The
    handler's own validation runs again on the worker."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.args_schema: dict[str, Any] = row["args_schema"] or {}
        self._validator = Draft202012Validator(self.args_schema)
        super().__init__(name=row["name"], fn=_not_here, queue=row["queue"],
                         priority=PRIORITY_NAMES[int(row["priority"])], max_attempts=row["max_attempts"],
                         timeout=row["timeout"])

    def _build_model(self) -> None:  # no code here to build a model from: the schema decides
        pass

    def validate(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise InvalidArguments(f"args of task {self.name!r} must be a JSON object", field="args")
        errors = sorted(self._validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            found = [{"field": ".".join(["args", *map(str, e.absolute_path)]), "message": e.message} for e in errors]
            first = found[0]
            raise InvalidArguments(f"invalid arguments for task {self.name!r}: {first['field']}: {first['message']}",
                                   field=first["field"], details={"errors": found})
        return args

    def check_json_args(self, args: Any) -> None:
        self.validate(args)

    def json_schema(self) -> dict[str, Any]:
        return self.args_schema


class WithRecorded(TaskRegistry):
    """A registry that also knows some recorded tasks (this process imports only the others)."""

    def __init__(self, base: TaskRegistry, recorded: dict[str, RecordedTask]) -> None:
        super().__init__()
        self._tasks = {**recorded, **base._tasks}
