"""GET /metrics: Prometheus text. Job metrics are read from the database at each scrape
(skiplock/metrics.py), so one scrape of any API process covers every worker on every host;
request metrics are this process's own, counted by RequestMetrics around every route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skiplock.metrics import Snapshot

from .context import ApiState, api

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Counts every request by method, route template (`/jobs/{job_id}`, never the raw path,
    so the series stay few; `unmatched` for no route) and status, and times it, refusals by
    the guard included. Outermost middleware."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("skiplock_http_requests", "HTTP requests answered, by method, route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("skiplock_http_request_duration_seconds",
                                 "Time from a request's arrival to the end of its answer, by method and route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if nothing is sent (the server answers 500)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = route.path if isinstance(route, Route) else "unmatched"
            key = (scope["method"], name, status)
            children = self._children.get(key)
            if children is None:  # labels() takes a lock and builds a key each time: once per series
                children = self._children[key] = (self.requests.labels(key[0], name, str(status)),
                                                  self.latency.labels(key[0], name))
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


def count_submissions(state: ApiState) -> None:
    """A gauge of the POST /jobs submissions waiting for their group to be stored."""
    pending = Gauge("skiplock_http_submissions_pending", "POST /jobs submissions accepted and not answered yet "
                    "(waiting to be stored with the others that arrive meanwhile)", registry=state.metrics_registry)
    pending.set_function(lambda: state.submitter.pending if state.submitter is not None else 0)


class SnapshotCollector(Collector):
    """One snapshot of the job metrics as metric families."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        depth = GaugeMetricFamily("skiplock_queue_jobs", "Jobs waiting or running, by queue and state "
                                  "(ready: due now; scheduled: due later)", labels=["queue", "state"])
        oldest = GaugeMetricFamily("skiplock_queue_oldest_ready_seconds",
                                   "Age of the oldest ready job (since it became due), 0 when none is ready",
                                   labels=["queue"])
        for r in s.queues:
            for state in ("ready", "scheduled", "running"):
                depth.add_metric([r["queue"], state], float(r[state]))
            oldest.add_metric([r["queue"]], float(r["oldest_ready_seconds"]))
        yield depth
        yield oldest
        yield GaugeMetricFamily("skiplock_workers_live", "Workers whose heartbeat is within one lease",
                                value=float(s.workers["live"]))
        yield GaugeMetricFamily("skiplock_workers_slots", "Jobs the live workers may run at once (their concurrency)",
                                value=float(s.workers["slots"]))
        yield GaugeMetricFamily("skiplock_workers_oldest_heartbeat_seconds",
                                "Age of the oldest heartbeat among live workers",
                                value=float(s.workers["oldest_heartbeat_seconds"]))
        created = s.counting_since.timestamp() if s.counting_since else None
        finished = CounterMetricFamily("skiplock_jobs_finished", "Jobs that reached a final state (succeeded, "
                                       "failed, cancelled), by task, queue and state",
                                       labels=["task", "queue", "state"], created=created)
        for (task, queue, state), n in sorted(s.finished.items()):
            finished.add_metric([task, queue, state], n, created=created)
        yield finished
        for name, doc, counts in (
                ("skiplock_jobs_retried", "Runs that raised and were scheduled again, by task and queue", s.retried),
                ("skiplock_jobs_rescued", "Runs whose lease was lost (worker died or stopped renewing), by task and "
                 "queue", s.rescued)):
            family = CounterMetricFamily(name, doc, labels=["task", "queue"], created=created)
            for (task, queue), n in sorted(counts.items()):
                family.add_metric([task, queue], n, created=created)
            yield family
        for name, doc, hists in (
                ("skiplock_job_run_seconds", "Run time of finished jobs' last attempt (succeeded or failed), by task",
                 s.run_seconds),
                ("skiplock_job_pickup_seconds", "Time from due to claimed of succeeded jobs' last attempt, by task",
                 s.pickup_seconds)):
            histogram = HistogramMetricFamily(name, doc, labels=["task"])
            bounds = [*(repr(b) for b in s.bounds), "+Inf"]
            for task, h in sorted(hists.items()):
                histogram.add_metric([task], [(b, float(c)) for b, c in zip(bounds, h.cumulative(), strict=True)],
                                     h.total)
            yield histogram


async def metrics(request: Request) -> Response:
    """GET /metrics: job metrics from the database, then this process's request metrics."""
    state = api(request)
    snap = await state.job_metrics.collect()
    jobs = CollectorRegistry(auto_describe=False)
    jobs.register(SnapshotCollector(snap))
    body = generate_latest(jobs) + generate_latest(state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
