"""The API process in the scenarios: submit through `POST /jobs` on a real uvicorn process when
the HTTP API exists (app/http), through SQL otherwise, and watch `GET /health`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.acceptance.chaos.fleet import ApiProc, api_available
from tests.acceptance.chaos.load import HttpSubmit, SqlSubmit, Submit


class HealthProbe(threading.Thread):
    """Polls GET /health and keeps every (time, status) it saw; a 0 status means no answer."""

    def __init__(self, base: str) -> None:
        super().__init__(name="chaos-health", daemon=True)
        self.base = base
        self.seen: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx2 as httpx

        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self.halt.is_set():
                try:
                    status = client.get("/health").status_code
                except httpx.TransportError:
                    status = 0
                self.seen.append((time.monotonic(), status))
                self.halt.wait(0.05)


@contextmanager
def submitter(url: str, tmp_path: Path) -> Iterator[tuple[Submit, HealthProbe | None, ApiProc | None]]:
    """(submit, health probe, API process): over HTTP through a real API process when the API
    exists, else over SQL (probe and process None). The API must shut down cleanly (exit 0)."""
    if not api_available():
        yield SqlSubmit(url), None, None
        return
    api = ApiProc(url, tmp_path)
    probe = HealthProbe(api.base)
    try:
        api.wait_ready()
        probe.start()
        yield HttpSubmit(api.base), probe, api
        probe.halt.set()
        probe.join(10)
        assert api.stop() == 0, api.log.read_text()[-3000:]
    finally:
        probe.halt.set()
        api.stop()


def via() -> str:
    """How the load scenarios submit: "api" or "sql"."""
    return "api" if api_available() else "sql"
