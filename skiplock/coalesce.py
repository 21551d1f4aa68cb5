"""Group commit for submissions of one job each from many concurrent callers (the HTTP API's
POST /jobs): the submissions that arrive while a group is being stored form the next group,
which one INSERT stores and one commit makes durable. There is no timer: a lone submission is
stored at once, and a group is only what arrived meanwhile, so waiting callers are served
sooner, not later (32 concurrent requests cost a few statements instead of 32 commits).

Each caller still gets its own answer, as if it had submitted alone:
- its input is checked before it joins a group (Operations.check_submission), so a bad job is
  refused alone and never fails, nor slows, the others;
- a refusal the database makes for one job of a group takes it out of the group: an
  idempotency key used for a different job takes that job out, a full queue takes out that
  queue's jobs. The rest are stored together; each job taken out is then submitted alone, in
  arrival order, so its answer (201, 200 for its key's job, 409, 429) is the one it would get
  alone, and a queue's `max_waiting` holds exactly;
- two submissions with one idempotency key make one job: the first is created, the other
  gets it back (or 409 when it asks for a different job);
- a database outage (or a statement timeout) fails the whole group at once with that error;
- a job with dependencies is not grouped: it is stored alone.
A caller that goes away (its task cancelled) before its group forms is left out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass

from .enqueue import CheckedSpec, Enqueued, JobSpec
from .errors import DatabaseUnavailable, QueueFull, SkiplockError
from .ops import Operations
from .runtime.service import Service

MAX_GROUP = 500
"""Most submissions stored by one statement."""

STORES = 2
"""Groups stored at once (each on a connection of its own): while one commits, the next forms
and is inserted."""


@dataclass(eq=False)
class _Pending:
    spec: CheckedSpec
    queue: str
    correlation_id: str | None
    answer: asyncio.Future[Enqueued]
    seq: int  # arrival order


class SubmitCoalescer(Service):
    """Stores concurrent single-job submissions in groups (see the module docstring). Until
    started, and after it stops, `submit` stores each job alone."""

    name = "submit-coalescer"
    stop_timeout = 10.0

    def __init__(self, ops: Operations, *, max_group: int = MAX_GROUP, stores: int = STORES) -> None:
        super().__init__()
        if max_group < 1 or stores < 1:
            raise ValueError(f"SubmitCoalescer: max_group and stores must be >= 1, got {max_group}, {stores}")
        self.ops = ops
        self.max_group = max_group
        self.stores = stores
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._arrivals = itertools.count()
        self.pending = 0
        """Submissions accepted and not answered yet."""
        self.statements = 0
        """Group inserts that stored every job of their group (each one statement, one commit)."""

    async def submit(self, spec: JobSpec, *, correlation_id: str | None = None, json_args: bool = False) -> Enqueued:
        """Store one job (what `Operations.submit([spec])` does, answered the same way)."""
        checked = await self.ops.check_submission(spec, json_args=json_args)
        # A job with dependencies is stored alone: the database checks that they exist, and
        # one unknown id must fail its own submission, not a group's statement.
        if self._task is None or self.stopping or spec.depends_on:
            [job] = await self.ops.submit([checked], correlation_id=correlation_id)
            return job
        answer: asyncio.Future[Enqueued] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(checked, checked.values["queue"], correlation_id, answer, next(self._arrivals)))
        self._arrived.set()
        self.pending += 1
        try:
            return await answer
        finally:
            self.pending -= 1

    async def stop(self) -> None:
        self._arrived.set()  # wake idle stores: they store what is queued, then end
        await super().stop()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(self.stores):
                group.create_task(self._store_loop(), name=f"skiplock.{self.name}.{i}")

    async def _store_loop(self) -> None:
        while True:
            while not self._queue:
                if self.stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                # Requests already read are runnable now: let them reach the queue and join this
                # group, instead of each waiting a round trip for the next one.
                for _ in range(4):
                    before = len(self._queue)
                    await asyncio.sleep(0)
                    if len(self._queue) == before:
                        break
            await self.run_once()

    async def _closed(self) -> None:
        left = list(self._queue)
        self._queue.clear()
        _fail(left, DatabaseUnavailable("the API stopped before the job was stored"))

    async def run_once(self) -> int:
        """Store the submissions queued now (up to max_group) as one group and answer each
        caller; how many were taken."""
        group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_group))]
        try:
            await self._store(group)
        except BaseException:  # cancelled (stop timed out): nobody may wait for ever
            _fail(group, DatabaseUnavailable("the API stopped before the job was stored"))
            raise
        return len(group)

    async def _store(self, group: list[_Pending]) -> None:
        group = [p for p in group if not p.answer.done()]  # callers gone: left out
        alone: list[_Pending] = []
        while len(group) > 1:
            try:
                stored = await self.ops.submit([p.spec for p in group],
                                               correlation_ids=[p.correlation_id for p in group])
            except QueueFull as exc:  # that queue's jobs go one by one: each gets room or 429, exactly
                full = [p for p in group if p.queue == exc.details.get("queue")] or group
                alone += full
                group = [p for p in group if p not in full]
                continue
            except DatabaseUnavailable as exc:
                _fail(group, exc)
                group = []
                break
            except SkiplockError as exc:  # one job's refusal (an idempotency conflict): out of the group
                index = exc.details.get("index")
                if isinstance(index, int) and 0 <= index < len(group):
                    alone.append(group.pop(index))
                    continue
                alone += group
                group = []
                break
            except Exception as exc:  # noqa: BLE001 - an outage (PoolTimeout, OperationalError): every caller's answer
                _fail(group, exc)
                group = []
                break
            self.statements += 1
            for p, job in zip(group, stored, strict=True):
                if not p.answer.done():
                    p.answer.set_result(job)
            group = []
        for p in sorted([*alone, *group], key=lambda p: p.seq):
            try:
                [job] = await self.ops.submit([p.spec], correlation_id=p.correlation_id)
            except Exception as exc:  # noqa: BLE001 - handed to its caller
                _fail([p], exc)
            else:
                if not p.answer.done():
                    p.answer.set_result(job)


def _fail(pending: list[_Pending], exc: BaseException) -> None:
    for p in pending:
        if not p.answer.done():
            with contextlib.suppress(asyncio.InvalidStateError):
                p.answer.set_exception(exc)
