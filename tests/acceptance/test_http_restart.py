"""A PostgreSQL restart while the API is idle costs no request that arrives after the
database is back: the pool notices the connections the server closed and replaces them,
instead of failing a request on each of them in turn."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2 as httpx
import pytest

import app.tasks  # noqa: F401 - registers the example tasks
from app.embedded_pg import scratch_database
from app.http import create_app
from app.settings import Settings

pytestmark = pytest.mark.slow

ECHO = {"task": "echo", "args": {"message": "x"}}


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_first_requests_after_an_idle_restart_succeed(mode: str):
    with scratch_database("skiplock-api-restart-") as (cluster, url):
        api = create_app(Settings(database_url=url, allowed_hosts="t"))

        async def go() -> dict[str, Any]:
            async with api.router.lifespan_context(api):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t",
                                             timeout=30) as c:
                    grown = await asyncio.gather(*(c.post("/jobs", json=ECHO) for _ in range(30)))
                    assert {r.status_code for r in grown} == {201}
                    idle = api.state.api.pool.get_stats()["pool_available"]
                    await asyncio.to_thread(cluster.restart, mode)
                    first = await c.post("/jobs", json=ECHO)
                    health = await c.get("/health")
                    second = await c.post("/jobs", json=ECHO)
                    return {"idle": idle, "statuses": [first.status_code, health.status_code, second.status_code],
                            "bodies": [first.text, health.text, second.text]}

        seen = asyncio.run(go())
        assert seen["idle"] > 1, seen  # the pool had grown: several dead connections to get past
        assert seen["statuses"] == [201, 200, 201], seen
