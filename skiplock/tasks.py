"""Task handlers: the @task decorator, the registry, and argument validation.

A handler's arguments are validated before a job is stored: from its type hints (each
parameter becomes a field of a generated pydantic model that forbids unknown keys), or
from a pydantic model when the handler takes exactly one model-typed parameter.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    PydanticSchemaGenerationError,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticSerializationError

from .backoff import DEFAULT_BACKOFF, Backoff
from .context import JobContext
from .cron import Schedule
from .errors import InvalidArguments, InvalidInput, UnknownTask
from .job import check_queue, check_task_name, priority_value
from .storable import InvalidResult, merged_key


@dataclass
class Task:
    """A registered handler and its defaults."""

    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    priority: str = "normal"
    max_attempts: int = 3
    timeout: float | None = None
    retry: Backoff = DEFAULT_BACKOFF
    model: type[BaseModel] = field(init=False)
    wraps_model: bool = field(init=False, default=False)
    context_param: str | None = field(init=False, default=None)
    is_async: bool = field(init=False, default=False)
    result_adapter: TypeAdapter[Any] | None = field(init=False, default=None, repr=False)
    """Validates results against the handler's return annotation (None: untyped, today's rules)."""
    localns: dict[str, Any] | None = field(default=None, repr=False)
    result_type: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        check_task_name(self.name)
        check_queue(self.queue)
        priority_value(self.priority)
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInput(f"max_attempts must be an integer >= 1, not {self.max_attempts!r}",
                               field="max_attempts", value=self.max_attempts)
        if self.timeout is not None and not self.timeout > 0:
            raise InvalidInput(f"timeout must be > 0 seconds, not {self.timeout!r}", field="timeout")
        if self.timeout is not None:  # one type whatever was written (30 or 1.5): stored as an array of floats
            self.timeout = float(self.timeout)
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self._build_model()

    def _build_model(self) -> None:
        # localns: names visible where @task was applied (a model defined in a function body)
        hints = typing.get_type_hints(self.fn, localns=self.localns, include_extras=True)
        self._build_result_adapter(hints)
        fields: dict[str, Any] = {}
        params = list(inspect.signature(self.fn).parameters.values())
        for p in params:
            ann = hints.get(p.name, Any)
            if ann is JobContext or JobContext in typing.get_args(ann) or (
                    p.name in ("ctx", "context") and p.name not in hints):
                self.context_param = p.name
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise InvalidInput(f"task {self.name!r}: parameter {p.name!r} must be a plain keyword parameter")
            fields[p.name] = (ann, ... if p.default is p.empty else p.default)
        if len(fields) == 1:
            (only, (ann, _)), = fields.items()
            # A model that says it is one argument (skiplock.BatchOutcome) is never the whole args.
            if inspect.isclass(ann) and issubclass(ann, BaseModel) and getattr(ann, "skiplock_whole_args", True):
                self.model, self.wraps_model, self._model_param = ann, True, only
                return
        config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)
        self.model = pydantic.create_model(f"{self.name}_args", __config__=config, **fields)

    def _build_result_adapter(self, hints: dict[str, Any]) -> None:
        """A return annotation pydantic can validate types the result; none, `Any` or `object`
        leave it untyped, and so does a class pydantic knows nothing of (its instances are no
        JSON, so today's rules refuse them anyway)."""
        ann = hints.get("return", Any)
        if ann is Any or ann is object:
            return
        try:
            self.result_adapter = TypeAdapter(ann)
        except PydanticSchemaGenerationError:
            return
        except PydanticUserError as exc:  # e.g. typing.TypedDict before Python 3.12
            raise InvalidInput(f"task {self.name!r}: its return annotation cannot be validated: {exc.message}",
                               field="return") from None
        self.result_type = _type_name(ann)

    def result_data(self, result: Any) -> Any:
        """A typed handler's result, validated against its return annotation (strictly: the
        handler returns what it says, nothing is converted but a dict into a model) and
        serialised as pydantic does for JSON; InvalidResult saying why not."""
        assert self.result_adapter is not None
        try:
            value = self.result_adapter.validate_python(result, strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise InvalidResult(f"returned {type(result).__name__}, which does not match its return annotation "
                                f"{self.result_type}: {where + ': ' if where else ''}{first['msg']}") from None
        try:
            # Python keys first: JSON would merge 1 and "1" into one key and lose a value.
            clash = merged_key(self.result_adapter.dump_python(value, warnings="error"))
            if clash is not None:
                raise InvalidResult(f"returned an object with two keys that JSON stores as the same key {clash!r}; "
                                    "one value would be lost")
            return self.result_adapter.dump_python(value, mode="json", warnings="error")
        except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidResult(f"returned {type(result).__name__}, which cannot be serialised as its return "
                                f"annotation {self.result_type}: {str(exc).strip()}") from None

    def validate(self, args: Any) -> dict[str, Any]:
        """Check `args` and return them as JSON-ready data (what is stored)."""
        instance = self.model_instance(args)
        try:
            return instance.model_dump(mode="json")
        except ValueError as exc:  # e.g. "Maximum serialization depth exceeded"
            raise InvalidArguments(f"args of task {self.name!r} cannot be stored: {exc}", field="args") from None

    def model_instance(self, args: Any) -> BaseModel:
        if not isinstance(args, dict):
            raise InvalidArguments(f"args of task {self.name!r} must be a JSON object", field="args")
        try:
            return self.model.model_validate(args)
        except ValidationError as exc:
            errors = [{"field": ".".join(str(x) for x in ("args", *e["loc"])), "message": e["msg"]}
                      for e in exc.errors()]
            first = errors[0]
            raise InvalidArguments(f"invalid arguments for task {self.name!r}: {first['field']}: {first['message']}",
                                   field=first["field"], details={"errors": errors}) from None

    def check_json_args(self, args: Any) -> None:
        """Check arguments that arrived as JSON strictly: `true` or `"7"` is not a number and
        `7` is not a string (`validate`, which stores them, would convert); `7.0` is the
        integer 7, as in JSON Schema. For submitters speaking JSON (HTTP, the CLI), whose
        values mean what they wrote."""
        if not isinstance(args, dict):
            raise InvalidArguments(f"args of task {self.name!r} must be a JSON object", field="args")
        try:
            self.model.model_validate_json(json.dumps(_integral_as_int(args)), strict=True)
        except ValidationError as exc:
            errors = [{"field": ".".join(str(x) for x in ("args", *e["loc"])), "message": e["msg"]}
                      for e in exc.errors()]
            first = errors[0]
            raise InvalidArguments(f"invalid arguments for task {self.name!r}: {first['field']}: "
                                   f"{first['message']}", field=first["field"], details={"errors": errors}) from None
        except (TypeError, ValueError, RecursionError) as exc:  # not JSON, or nested beyond any use
            raise InvalidArguments(f"args of task {self.name!r} are not storable JSON: {exc}", field="args") from None

    def call_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the handler, validated from the stored args."""
        instance = self.model_instance(args)
        if self.wraps_model:
            return {self._model_param: instance}
        return {name: getattr(instance, name) for name in type(instance).model_fields}

    def json_schema(self) -> dict[str, Any]:
        return self.model.model_json_schema()


def _type_name(ann: Any) -> str:
    """`list[int]`, `Report`: a return annotation as written."""
    if ann is type(None):
        return "None"
    if isinstance(ann, type) and not typing.get_args(ann):
        return ann.__name__
    return repr(ann).replace("typing.", "")


def _integral_as_int(value: Any) -> Any:
    """A copy with integral floats as ints (JSON Schema's integer includes 7.0), for the check only."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_as_int(v) for v in value]
    return value


class TaskRegistry:
    """Name -> Task. One default registry (`registry`) serves the @task decorator."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.schedules: dict[str, Schedule] = {}
        """Schedules defined in code (name -> Schedule): each worker writes them to skiplock.schedules."""

    def add(self, t: Task) -> Task:
        existing = self._tasks.get(t.name)
        if existing is not None and existing.fn is not t.fn:
            raise InvalidInput(f"task {t.name!r} is registered twice", field="name", value=t.name)
        self._tasks[t.name] = t
        return t

    def add_schedule(self, s: Schedule) -> Schedule:
        existing = self.schedules.get(s.name)
        if existing is not None and existing != s:
            raise InvalidInput(f"schedule {s.name!r} is defined twice", field="name", value=s.name)
        self.schedules[s.name] = s
        return s

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(f"unknown task {name!r}; registered: {', '.join(sorted(self._tasks)) or 'none'}",
                              field="task", value=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> typing.Iterator[Task]:
        return iter(sorted(self._tasks.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tasks)

    def import_modules(self, modules: Iterable[str]) -> None:
        """Import the modules that define handlers (SKIPLOCK_TASKS)."""
        for mod in modules:
            mod = mod.strip()
            if mod:
                importlib.import_module(mod)


registry = TaskRegistry()


def task(
    name: str | None = None,
    *,
    queue: str = "default",
    priority: str = "normal",
    max_attempts: int = 3,
    timeout: float | None = None,
    retry: Backoff | None = None,
    schedule: str | None = None,
    timezone: str = "UTC",
    registry: TaskRegistry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an async or sync function as a task handler.

    `retry` sets the backoff between attempts; raise NonRetryableError to fail at once.
    `schedule` (a cron expression, read in `timezone`) also enqueues one job of this task,
    without arguments, per tick: a schedule named after the task (see `skiplock.schedule`).
    The function stays callable as before; its Task is on `fn.task`.
    """
    target = registry if registry is not None else globals()["registry"]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        t = Task(name=name or fn.__name__, fn=fn, queue=queue, priority=priority, max_attempts=max_attempts,
                 timeout=timeout, retry=retry or DEFAULT_BACKOFF, localns=dict(sys._getframe(1).f_locals))
        if schedule is not None:
            t.validate({})  # a scheduled job has no arguments: every parameter needs a default
            target.add_schedule(Schedule(name=t.name, task=t.name, cron=schedule, timezone=timezone))
        target.add(t)
        fn.task = t  # type: ignore[attr-defined]
        return fn

    return decorate


def schedule(name: str, task: str | Task | Callable[..., Any], cron: str, *, args: dict[str, Any] | None = None,
             timezone: str = "UTC", queue: str | None = None, priority: str | None = None,
             registry: TaskRegistry | None = None) -> Schedule:
    """Enqueue one job of `task` with `args` per tick of `cron` (5 fields, or 6 with seconds
    first) in `timezone`. Every worker runs the scheduler and writes the schedules of its code
    to skiplock.schedules; exactly one job is enqueued per tick, and after downtime one
    catch-up job for the ticks missed. Arguments are checked against the task when the worker
    that writes the schedule has it."""
    target = registry if registry is not None else globals()["registry"]
    if isinstance(task, Task):
        task_name = task.name
    elif callable(task):
        found = getattr(task, "task", None)
        if not isinstance(found, Task):
            raise InvalidInput(f"schedule {name!r}: {task!r} is not a @task handler", field="task")
        task_name = found.name
    else:
        task_name = task
    s = Schedule(name=name, task=task_name, cron=cron, timezone=timezone, args=dict(args or {}), queue=queue,
                 priority=priority)
    if task_name in target:  # else checked by the worker that has the task, when it writes the schedule
        try:
            target.get(task_name).validate(s.args)
        except InvalidInput as exc:
            raise type(exc)(f"schedule {name!r}: {exc.message}", field=exc.field, details=exc.details) from None
    return target.add_schedule(s)
