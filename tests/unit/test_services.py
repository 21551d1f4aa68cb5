"""The one lifecycle of the background pieces and the one retry delay, without a database."""

from __future__ import annotations

import asyncio
import inspect
import random

import pytest

from skiplock.backoff import retry_delay
from skiplock.runtime.completer import Completer
from skiplock.runtime.heartbeat import Heartbeat
from skiplock.runtime.listener import Listener
from skiplock.runtime.producer import Producer
from skiplock.runtime.pruner import Pruner
from skiplock.runtime.rescuer import DeadWorkerRescuer, Rescuer
from skiplock.runtime.scheduler import Scheduler
from skiplock.runtime.service import PeriodicService, Service, ThreadService
from skiplock.runtime.summary import Summary
from skiplock.runtime.watchdog import Watchdog
from skiplock.wakeup import Wakeups

PIECES = [Producer, Completer, Listener, Wakeups, Heartbeat, Watchdog, Rescuer, DeadWorkerRescuer, Pruner, Summary,
          Scheduler]


@pytest.mark.parametrize("piece", PIECES, ids=lambda p: p.__name__)
def test_every_background_piece_has_the_one_lifecycle(piece: type) -> None:
    assert issubclass(piece, Service | ThreadService)
    assert callable(piece.start) and not inspect.iscoroutinefunction(piece.start)
    assert inspect.iscoroutinefunction(piece.stop)
    assert piece.run_once is not Service.run_once and piece.run_once is not ThreadService.run_once
    assert piece.name != "service"


class Counting(PeriodicService):
    name = "counting"

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(interval=0.001)
        self.runs = 0
        self.fail_first = fail_first

    async def run_once(self) -> int:
        self.runs += 1
        if self.runs <= self.fail_first:
            raise RuntimeError("down")
        return self.runs


def test_start_and_stop_are_idempotent_and_the_loop_runs_run_once() -> None:
    async def go() -> None:
        s = Counting()
        assert await s.run_once() == 1  # callable directly, without start()
        s.start()
        task = s._task
        s.start()
        assert s._task is task  # one loop, whatever the number of starts
        while s.runs < 5:
            await asyncio.sleep(0.001)
        await s.stop()
        await s.stop()
        runs = s.runs
        await asyncio.sleep(0.01)
        assert s.runs == runs and s._task is None and task is not None and task.done()
        s.start()  # and it starts again after a stop
        while s.runs == runs:
            await asyncio.sleep(0.001)
        await s.stop()

    asyncio.run(go())


def test_a_failing_round_does_not_end_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> Counting:
        s = Counting(fail_first=2)
        s.start()
        while s.runs < 3:
            await asyncio.sleep(0.001)
        await s.stop()
        return s

    s = asyncio.run(go())
    assert s.runs >= 3 and s.failures == 0
    assert sum("skiplock.counting failed (RuntimeError: down)" in r.getMessage() for r in caplog.records) == 2


def test_retry_delay_doubles_up_to_its_cap_jittered_down_to_half() -> None:
    rnd = random.Random(7)
    for failures, raw in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 6.4), (7, 6.4), (10**6, 6.4)]:
        samples = [retry_delay(failures, base=0.1, cap=100.0, rand=rnd) for _ in range(500)]
        assert raw / 2 <= min(samples) < raw * 0.55 and raw * 0.95 < max(samples) <= raw, (failures, raw)
    assert max(retry_delay(n, base=1.0, cap=5.0, rand=rnd) for n in range(1, 10**4, 97)) <= 5.0
