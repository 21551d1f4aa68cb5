"""Job metrics computed from the database, so one reader sees every worker on every host.

Gauges (depth by queue, oldest ready age, live workers) are read as they are at each call.
Counters and histograms (jobs finished, retried, rescued; run duration and pickup latency)
accumulate in this object from the first call on: each call counts what happened in the
window since the previous one, ending `settle_seconds` ago, so that a transaction that wrote
a finish or a retry has committed before its window is read. The reads are bounded by indexes
(sql/metrics.sql), whatever the size of the finished backlog.

Format-free: GET /metrics (app/http/metrics.py) renders a snapshot as Prometheus text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import db
from .queries import metrics as q

Connect = Callable[[], AbstractAsyncContextManager[db.AsyncConn]]

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                              900.0, 3600.0)
"""Upper bounds (seconds) of the run duration and pickup latency histograms; +Inf is added."""

SETTLE_SECONDS = 3.0
"""How far behind now a counting window ends: a finish is stamped with its statement's start
and becomes visible at its commit, which must come within this many seconds to be counted."""


@dataclass
class Histogram:
    """Observations per bucket (not cumulative); the last bucket is +Inf."""

    counts: list[int]
    total: float = 0.0

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass(frozen=True)
class Snapshot:
    """What one call read: gauges as of now, counters since the first call."""

    queues: list[dict[str, Any]]
    workers: dict[str, Any]
    finished: dict[tuple[str, str, str], int]  # (task, queue, state)
    retried: dict[tuple[str, str], int]  # (task, queue)
    rescued: dict[tuple[str, str], int]
    run_seconds: dict[str, Histogram]  # by task
    pickup_seconds: dict[str, Histogram]
    bounds: tuple[float, ...]
    counting_since: datetime | None  # the start of the first window (None before the first call)


@dataclass
class _Totals:
    finished: dict[tuple[str, str, str], int] = field(default_factory=dict)
    retried: dict[tuple[str, str], int] = field(default_factory=dict)
    rescued: dict[tuple[str, str], int] = field(default_factory=dict)
    run_seconds: dict[str, Histogram] = field(default_factory=dict)
    pickup_seconds: dict[str, Histogram] = field(default_factory=dict)


class JobMetrics:
    """Reads job metrics from the database (see the module docstring). One per process: the
    counters start at its first `collect()`."""

    def __init__(self, connect: Connect, *, live_seconds: float, settle_seconds: float = SETTLE_SECONDS,
                 bounds: Sequence[float] = BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"JobMetrics: bounds must be increasing, got {list(bounds)!r}")
        self._connect = connect
        self.live_seconds = live_seconds
        self.settle_seconds = settle_seconds
        self.bounds = tuple(float(b) for b in bounds)
        self._lock = asyncio.Lock()  # two scrapes at once must not count one window twice
        self._until: datetime | None = None
        self._since: datetime | None = None
        self._history_id = 0
        self._totals = _Totals()
        self._queues_seen: set[str] = set()

    async def collect(self, *, now: datetime | None = None) -> Snapshot:
        async with self._lock, self._connect() as conn:
            depth = await q.metrics_depth(conn, now=now)
            workers = await q.metrics_workers(conn, live_seconds=self.live_seconds, now=now)
            settled = await q.metrics_settled_until(conn, settle_seconds=self.settle_seconds, now=now)
            until: datetime = settled["until"]
            if self._until is None:
                self._since = self._until = until
                self._history_id = int(settled["history_id"])
            elif until > self._until:
                finished = await q.metrics_finished(conn, since=self._until, until=until, bounds=self.bounds)
                ended = await q.metrics_runs_ended(conn, after_id=self._history_id, since=self._until, until=until)
                self._add(finished, ended)  # only once both reads succeeded: no window counted twice
                self._until = until
        # A queue seen once keeps its series (at zero once empty), so a drained queue's depth
        # falls to 0 instead of vanishing.
        by_queue = {r["queue"]: r for r in depth}
        self._queues_seen.update(by_queue)
        queues = [by_queue.get(name) or {"queue": name, "ready": 0, "scheduled": 0, "running": 0,
                                         "oldest_ready_seconds": 0.0} for name in sorted(self._queues_seen)]
        t = self._totals
        return Snapshot(queues=queues, workers=dict(workers), finished=dict(t.finished), retried=dict(t.retried),
                        rescued=dict(t.rescued), bounds=self.bounds,
                        run_seconds={k: Histogram(list(h.counts), h.total) for k, h in t.run_seconds.items()},
                        pickup_seconds={k: Histogram(list(h.counts), h.total) for k, h in t.pickup_seconds.items()},
                        counting_since=self._since)

    def _add(self, finished: list[dict[str, Any]], ended: list[dict[str, Any]]) -> None:
        t = self._totals
        for r in finished:
            if r["kind"] == "finished":
                key3 = (r["task"], r["queue"], r["state"])
                t.finished[key3] = t.finished.get(key3, 0) + int(r["n"])
            else:
                hists = t.run_seconds if r["kind"] == "run" else t.pickup_seconds
                h = hists.setdefault(r["task"], Histogram([0] * (len(self.bounds) + 1)))
                h.counts[int(r["bucket"])] += int(r["n"])
                h.total += float(r["total"] or 0.0)
        for r in ended:
            if r["kind"] == "next":
                self._history_id = int(r["next_after_id"])
                continue
            counter = t.retried if r["kind"] == "retried" else t.rescued
            key2 = (r["task"], r["queue"])
            counter[key2] = counter.get(key2, 0) + int(r["n"])
