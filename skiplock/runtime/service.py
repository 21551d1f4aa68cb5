"""The shape every background piece shares: idempotent start()/stop() and a run_once()
that tests call directly. A failing run_once is logged and retried after a jittered backoff;
it never ends the loop."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

log = logging.getLogger("skiplock")


class PeriodicService:
    """Runs `run_once()` every `interval` seconds until stopped."""

    name = "service"

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"{type(self).__name__}: interval must be > 0, not {interval}")
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    async def run_once(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name=f"skiplock.{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            delay = self.interval
            try:
                await self.run_once()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a background loop must survive anything
                self.failures += 1
                delay = min(self.interval * 2 ** min(self.failures, 6), 30.0) * random.uniform(0.5, 1.0)
                log.warning("skiplock.%s failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__, exc,
                            delay)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except TimeoutError:
                pass
