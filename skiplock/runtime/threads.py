"""Sync handlers, each on a daemon thread of its own, and the job running in the current
context (`current_job`), which the producer sets for every handler.

Why not a thread pool: a pool has a fixed number of threads, and a handler that never
returns keeps one forever; once every pool thread is stuck, later jobs "time out" while
waiting for a thread without having started, and the pool's non-daemon threads keep the
process alive after shutdown. Here every call starts at once on a new daemon thread. A
thread whose caller stopped waiting (timeout, cancellation, shutdown) cannot be stopped:
it is *abandoned*, logged once, and counted until it returns, so the worker can keep its
slot occupied and knows, at exit, whose code is still running.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..events import emit

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobRef:
    """Which job a piece of code runs for (what the watchdog and the logs name)."""

    job_id: uuid.UUID
    attempt: int
    task: str
    worker_id: str
    timeout: float | None = None
    started: float = 0.0  # time.monotonic() when the handler started


current_job: contextvars.ContextVar[JobRef | None] = contextvars.ContextVar("skiplock_current_job", default=None)


@dataclass(eq=False)
class _Call:
    job: JobRef | None
    thread: threading.Thread | None = None
    abandoned: bool = False
    reason: str = ""
    done: threading.Event = field(default_factory=threading.Event)


_lock = threading.Lock()
_live: set[_Call] = set()


async def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call `fn(*args, **kwargs)` on a new daemon thread in a copy of the current context and
    return its result. Whatever it raises (any BaseException, SystemExit included) is raised
    here, as with `asyncio.to_thread`. If the caller is cancelled while the thread runs, the
    thread is abandoned (see the module docstring) and the cancellation proceeds at once."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()
    call = _Call(ctx.get(current_job))

    def settle(outcome: tuple[bool, Any]) -> None:
        if fut.done():
            return
        ok, value = outcome
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        outcome: tuple[bool, Any]
        try:
            outcome = (True, ctx.run(fn, *args, **kwargs))
        except StopIteration as exc:  # a Future refuses StopIteration (as a coroutine would)
            err = RuntimeError(f"sync handler raised StopIteration: {exc!r}")
            err.__cause__ = exc
            outcome = (False, err)
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            outcome = (False, exc)
        finally:
            with _lock:
                _live.discard(call)
            call.done.set()
        if call.abandoned and call.job is not None:
            emit("skiplock.job.abandoned_returned", job_id=call.job.job_id, task=call.job.task,
                 attempt=call.job.attempt, worker=call.job.worker_id, kind="thread")
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is closed: nobody waits for this any more
            pass

    name = f"skiplock-job-{call.job.job_id}" if call.job else "skiplock-sync"
    call.thread = threading.Thread(target=target, name=name, daemon=True)
    with _lock:
        _live.add(call)
    call.thread.start()
    try:
        return await fut
    except asyncio.CancelledError:
        if not call.done.is_set():
            abandon(call)
        raise


def abandon(call: _Call) -> None:
    with _lock:
        if call.abandoned or call.done.is_set():
            return
        call.abandoned = True
    if call.job is not None:
        emit("skiplock.job.abandoned", job_id=call.job.job_id, task=call.job.task, attempt=call.job.attempt,
             worker=call.job.worker_id, kind="thread",
             reason="a sync handler cannot be stopped: its thread runs on and holds its slot until it returns")


def running(worker_id: str) -> list[JobRef]:
    """The jobs of `worker_id` whose sync handler is still running on its thread."""
    with _lock:
        return [c.job for c in _live if c.job is not None and c.job.worker_id == worker_id]


def abandoned(worker_id: str) -> list[JobRef]:
    """The jobs of `worker_id` whose handler thread nobody waits for any more but still runs."""
    with _lock:
        return [c.job for c in _live if c.abandoned and c.job is not None and c.job.worker_id == worker_id]


def any_running() -> bool:
    with _lock:
        return bool(_live)
