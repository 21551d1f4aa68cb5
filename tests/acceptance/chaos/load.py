"""Steady submit load for the scenarios: a thread that submits `chaos.work` jobs at a fixed
rate, over SQL (`skiplock.enqueue`) or over HTTP (`POST /jobs` on the API process), and
remembers every job the queue accepted. Accepted means committed: the SQL call returned
an id, or the API answered 201. Refusals (database down: 503, or no connection) are counted
by kind; anything else unexpected (a 500, a malformed answer) is kept as an error."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

Args = Callable[[random.Random], dict[str, Any]]


@dataclass
class Answer:
    job_id: uuid.UUID | None = None  # set when accepted
    refused: str | None = None       # "503", "db-down", ...
    error: str | None = None         # anything a client must never see


class Submit(Protocol):
    def __call__(self, args: dict[str, Any]) -> Answer: ...
    def close(self) -> None: ...


class SqlSubmit:
    """`SELECT skiplock.enqueue('chaos.work', args)` on one connection, re-opened after a failure.
    SQL cannot see the Python task's defaults, so its max_attempts (25) is passed explicitly: a
    job that loses its lease to several frozen or killed workers in a row must not run out of
    attempts (the SQL default is 3)."""

    def __init__(self, url: str, task: str = "chaos.work", max_attempts: int = 25) -> None:
        self.url = url
        self.task = task
        self.max_attempts = max_attempts
        self.conn: psycopg.Connection[Any] | None = None

    def __call__(self, args: dict[str, Any]) -> Answer:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            row = self.conn.execute("SELECT skiplock.enqueue(%s, %s, max_attempts => %s)",
                                    (self.task, Jsonb(args), self.max_attempts)).fetchone()
            assert row is not None
            return Answer(job_id=row[0])
        except psycopg.OperationalError:
            self.close()
            return Answer(refused="db-down")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
            self.conn = None


class HttpSubmit:
    """`POST /jobs` to the API process; 201 is accepted, 503 refused, anything else an error."""

    def __init__(self, base: str, task: str = "chaos.work") -> None:
        import httpx2 as httpx

        self.task = task
        self.client = httpx.Client(base_url=base, timeout=10)

    def __call__(self, args: dict[str, Any]) -> Answer:
        import httpx2 as httpx

        try:
            resp = self.client.post("/jobs", json={"task": self.task, "args": args})
        except httpx.TransportError as exc:
            return Answer(error=f"API unreachable: {type(exc).__name__}: {exc}")
        if resp.status_code == 201:
            return Answer(job_id=uuid.UUID(resp.json()["id"]))
        if resp.status_code == 503 and "error" in resp.json():
            return Answer(refused="503")
        return Answer(error=f"{resp.status_code}: {resp.text[:300]}")

    def close(self) -> None:
        self.client.close()


class Load(threading.Thread):
    """Submits at `rate` jobs per second until `stop()`; `accepted` holds every accepted id."""

    def __init__(self, submit: Submit, rate: float, args: Args, seed: int = 1) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.submit = submit
        self.rate = rate
        self.make_args = args
        self.rand = random.Random(seed)
        self.accepted: list[uuid.UUID] = []
        self.accepted_at: list[float] = []
        self.refused: Counter[str] = Counter()
        self.refused_at: list[float] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._halt.is_set():
            answer = self.submit(self.make_args(self.rand))
            now = time.monotonic()
            if answer.job_id is not None:
                self.accepted.append(answer.job_id)
                self.accepted_at.append(now)
            elif answer.refused is not None:
                self.refused[answer.refused] += 1
                self.refused_at.append(now)
            else:
                self.errors.append(answer.error or "?")
            next_at = max(next_at + interval, now - 1.0)  # catch up after a stall, at most 1 s worth
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        self.submit.close()

    def first_accept_after(self, t: float) -> float | None:
        return next((a for a in self.accepted_at if a > t), None)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
