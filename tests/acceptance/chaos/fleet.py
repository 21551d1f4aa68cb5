"""Real worker (and API) processes for the chaos scenarios: start them, find their worker id,
and hit them with real signals. Nothing here is simulated: SIGKILL, SIGTERM, SIGSTOP and
SIGCONT go to `python -m app worker` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.acceptance.chaos.dbq import rows, scalar
from tests.acceptance.procs import skiplock_env, start, wait_for

TASKS = "app.tasks,tests.acceptance.chaos_tasks"


def worker_env(url: str, **settings: Any) -> dict[str, str]:
    """The environment of a chaos worker: the chaos tasks loaded, short leases, fast rescue."""
    defaults: dict[str, Any] = {"tasks": TASKS, "lease_seconds": 2, "rescue_interval": 0.3, "poll_interval": 0.2,
                                "concurrency": 10, "grace_seconds": 2}
    return skiplock_env(url, **(defaults | settings))


@dataclass
class WorkerProc:
    """One `python -m app worker` process and the id it registered under."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    worker_id: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Fleet:
    """The workers of one scenario. `stop_all()` (always call it) ends every process it started:
    SIGCONT first (a stopped process cannot handle SIGTERM), then SIGTERM, then SIGKILL."""

    def __init__(self, url: str, logdir: Path, **settings: Any) -> None:
        self.url = url
        self.logdir = logdir
        self.settings = settings
        self.workers: list[WorkerProc] = []
        self.killed: set[str] = set()    # worker ids that got SIGKILL
        self.stopped: set[str] = set()   # worker ids that were ever frozen with SIGSTOP
        self.frozen: set[str] = set()    # ... and are frozen right now
        self.termed: set[str] = set()    # worker ids that got SIGTERM
        self._n = 0

    def start(self, *, wait: bool = True, **settings: Any) -> WorkerProc:
        self._n += 1
        name = f"w{self._n}"
        env = worker_env(self.url, **(self.settings | settings))
        log = self.logdir / f"{name}.log"
        w = WorkerProc(name, start(["worker"], env, log), log)
        self.workers.append(w)
        if wait:
            self.wait_registered(w)
        return w

    def wait_registered(self, w: WorkerProc, timeout: float = 30) -> str:
        def registered() -> str | None:
            assert w.alive(), f"worker {w.name} exited ({w.proc.returncode}):\n{w.log_text()[-3000:]}"
            return scalar(self.url, "SELECT id FROM skiplock.workers WHERE pid = %s", (w.pid,))  # type: ignore[no-any-return]
        w.worker_id = wait_for(registered, timeout, f"worker {w.name} to register")
        return w.worker_id

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive() and w.worker_id not in self.frozen]

    def held(self, w: WorkerProc) -> list[Any]:
        """Ids of the jobs the database says this worker holds right now."""
        if not w.worker_id:
            self.wait_registered(w)
        return [r[0] for r in rows(self.url, "SELECT id FROM skiplock.jobs WHERE state = 'running' AND worker_id = %s",
                                   (w.worker_id,))]

    def kill(self, w: WorkerProc) -> None:
        if not w.worker_id:
            self.wait_registered(w)
        w.signal(signal.SIGKILL)
        w.proc.wait(10)
        self.killed.add(w.worker_id)

    def term(self, w: WorkerProc) -> None:
        if not w.worker_id:
            self.wait_registered(w)
        w.signal(signal.SIGTERM)
        self.termed.add(w.worker_id)

    def freeze(self, w: WorkerProc) -> None:
        if not w.worker_id:
            self.wait_registered(w)
        w.signal(signal.SIGSTOP)
        self.stopped.add(w.worker_id)
        self.frozen.add(w.worker_id)

    def thaw(self, w: WorkerProc) -> None:
        w.signal(signal.SIGCONT)
        self.frozen.discard(w.worker_id)

    @property
    def disrupted(self) -> set[str]:
        """Workers whose executions may legitimately be repeated elsewhere."""
        return self.killed | self.stopped | self.termed

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for w in self.workers:  # a worker still starting has no SIGTERM handler yet: let it start
            if w.alive() and not w.worker_id and w.worker_id not in self.frozen:
                with contextlib.suppress(AssertionError):
                    self.wait_registered(w)
        for w in self.workers:
            if w.alive():
                w.signal(signal.SIGCONT)
                w.signal(signal.SIGTERM)
        for w in self.workers:
            try:
                codes[w.name] = w.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                w.signal(signal.SIGKILL)
                codes[w.name] = w.proc.wait(10)
        return codes


def api_available() -> bool:
    """The HTTP API (app/http) is built separately; scenarios submit through it once it can be
    imported. SKIPLOCK_CHAOS_VIA=sql|api forces one or the other."""
    forced = os.environ.get("SKIPLOCK_CHAOS_VIA")
    if forced:
        return forced == "api"
    try:
        from app.http import create_app  # noqa: F401
    except ImportError:
        return False
    return True


class ApiProc:
    """`python -m app api --port N` against `url`, under uvicorn, as its own OS process."""

    def __init__(self, url: str, logdir: Path, **settings: Any) -> None:
        from app.embedded_pg import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = logdir / "api.log"
        self.proc = start(["api", "--port", str(self.port)], worker_env(url, **settings), self.log)

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx2 as httpx

        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(ready, timeout, "the API to answer /health")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)
