"""The one lifecycle every background piece shares: idempotent `start()` and `stop()`, and a
`run_once()` that does one round of its work, which tests call directly.

- `Service`: a piece on the event loop (an asyncio task running `_run()`). `stop()` asks it
  to finish, waits up to `stop_timeout` for it (None: as long as it takes; 0: not at all),
  then cancels it and releases what it holds (`_closed()`).
- `PeriodicService`: `run_once()` every `interval` seconds; an error is logged and the round
  retried after `retry_delay`, never ending the loop.
- `ThreadService`: a piece that must go on while the event loop is blocked (the heartbeat,
  the watchdog), on a daemon thread of its own, with the same outward shape.

A failing round waits `skiplock.backoff.retry_delay(failures, ...)`: the one retry delay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Protocol

from ..backoff import retry_delay

log = logging.getLogger("skiplock")


class Lifecycle(Protocol):
    """What the worker starts and stops (in reverse order)."""

    name: str

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Service:
    """A background piece on the event loop; subclasses write `_run()` (the loop) and `run_once()`."""

    name = "service"
    stop_timeout: float | None = None

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # errors in a row, for the retry delay

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"skiplock.{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            if self.stop_timeout != 0:
                await asyncio.wait([task], timeout=self.stop_timeout)
            if not task.done():
                self._stop_timed_out()
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._closed()

    async def wait(self) -> None:
        """Until `_run()` ends on its own (or is stopped)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def run_once(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stop_timed_out(self) -> None:
        """`_run()` did not finish within stop_timeout; it is cancelled next."""

    async def _closed(self) -> None:
        """Release what `_run()` held (a connection of its own)."""

    async def _wait_for(self, *events: asyncio.Event, within: float | None = None) -> None:
        """Until one of `events` is set, stop() is called, or `within` seconds pass."""
        waits = [asyncio.ensure_future(e.wait()) for e in (*events, self._stopping)]
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _failed(self, *, base: float, cap: float) -> float:
        """Count an error in a row; the seconds to wait before the next try."""
        self.failures += 1
        return retry_delay(self.failures, base=base, cap=cap)


class PeriodicService(Service):
    """Runs `run_once()` every `interval` seconds until stopped."""

    retry_cap = 30.0

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"{type(self).__name__}: interval must be > 0, not {interval}")
        super().__init__()
        self.interval = interval

    def next_delay(self, result: Any) -> float:
        """Seconds until the next round after one that returned `result`: the interval, unless
        a service knows better (the scheduler wakes when its next schedule is due)."""
        return self.interval

    async def _run(self) -> None:
        while not self.stopping:
            try:
                delay = self.next_delay(await self.run_once())
                self.failures = 0
            except Exception as exc:  # noqa: BLE001 - a background loop must survive anything
                delay = self._failed(base=self.interval, cap=self.retry_cap)
                log.warning("skiplock.%s failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__, exc,
                            delay)
            await self._wait_for(within=delay)


class ThreadService:
    """A background piece on a daemon thread of its own; subclasses write `_run()` (the
    thread's loop, ending when `_halted` is set) and a blocking `run_once()`."""

    name = "service"

    def __init__(self) -> None:
        self._halted = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the worker's, to hand results back
        self.failures = 0

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._loop = asyncio.get_running_loop()
            self._halted.clear()
            self._thread = threading.Thread(target=self._run, name=f"skiplock-{self.name}", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._halted.set()
        thread, self._thread = self._thread, None
        while thread is not None and thread.is_alive():  # noqa: ASYNC110 - a thread is awaited
            await asyncio.sleep(0.02)

    def run_once(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _failed(self, *, base: float, cap: float) -> float:
        self.failures += 1
        return retry_delay(self.failures, base=base, cap=cap)
