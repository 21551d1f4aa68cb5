"""Runs inside bench/.peers-venv (PgQueuer, Procrastinate): never imports skiplock.
`python peer_runner.py SYSTEM ACTION URL [options]`; prints one JSON object for timed actions.
APIs as documented by each project (PgQueuer 0.x/1.x QueueManager + Queries; Procrastinate 3.x App)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from datetime import timedelta
from typing import Any

LATENCY_FILE = os.environ.get("BENCH_LATENCY_FILE", "")
_out: Any = None


def record_latency(t0: float) -> None:
    started = time.time()
    global _out
    if _out is None:
        _out = open(LATENCY_FILE, "a", buffering=1)  # noqa: SIM115
    _out.write(f"{started - t0:.6f}\n")


# -- PgQueuer (asyncpg driver: its fastest) ----------------------------------------------------

async def pgq_queries(url: str) -> Any:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    return conn, Queries(AsyncpgDriver(conn))


async def pgqueuer(action: str, url: str, a: argparse.Namespace) -> dict[str, Any]:
    if action == "setup":
        conn, q = await pgq_queries(url)
        await q.install()
        await conn.close()
        return {}
    if action in ("enqueue", "bulk", "load", "latency-enqueue"):
        conn, q = await pgq_queries(url)
        try:
            if action == "enqueue":
                for _ in range(20):
                    await q.enqueue("noop", None)
                t = time.perf_counter()
                for _ in range(a.n):
                    await q.enqueue("noop", None)
                return {"rate": a.n / (time.perf_counter() - t)}
            if action in ("bulk", "load"):
                per = a.per
                t = time.perf_counter()
                for _ in range(a.n // per):
                    await q.enqueue(["noop"] * per, [None] * per, [0] * per)
                return {"rate": a.n // per * per / (time.perf_counter() - t)}
            for i in range(a.warmup + a.n):  # latency-enqueue
                await asyncio.sleep(a.gap)
                await q.enqueue("latency", json.dumps({"t0": time.time()}).encode())
                if i == a.warmup - 1:
                    await asyncio.sleep(0.5)
                    open(LATENCY_FILE, "w").close()  # noqa: ASYNC230 - once, between phases
            return {}
        finally:
            await conn.close()
    if action == "worker":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager
        from pgqueuer.types import QueueExecutionMode

        conn = await asyncpg.connect(url)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        @qm.entrypoint("latency")
        async def latency(job: Any) -> None:
            record_latency(json.loads(job.payload)["t0"])

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        mode = QueueExecutionMode.drain if a.burst else QueueExecutionMode.continuous
        await qm.run(batch_size=a.batch, mode=mode, dequeue_timeout=timedelta(seconds=30))
        return {}
    raise SystemExit(f"unknown action {action}")


# -- Procrastinate (psycopg 3 connector) -------------------------------------------------------

def pro_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="latency")
    async def latency(t0: float) -> None:
        record_latency(t0)

    return app


async def procrastinate_(action: str, url: str, a: argparse.Namespace) -> dict[str, Any]:
    app = pro_app(url)
    async with app.open_async():
        if action == "setup":
            await app.schema_manager.apply_schema_async()
            return {}
        noop, latency = app.tasks["noop"], app.tasks["latency"]
        if action == "enqueue":
            for _ in range(20):
                await noop.defer_async()
            t = time.perf_counter()
            for _ in range(a.n):
                await noop.defer_async()
            return {"rate": a.n / (time.perf_counter() - t)}
        if action in ("bulk", "load"):
            t = time.perf_counter()
            for _ in range(a.n // a.per):
                await noop.batch_defer_async(*({} for _ in range(a.per)))
            return {"rate": a.n // a.per * a.per / (time.perf_counter() - t)}
        if action == "latency-enqueue":
            for i in range(a.warmup + a.n):
                await asyncio.sleep(a.gap)
                await latency.defer_async(t0=time.time())
                if i == a.warmup - 1:
                    await asyncio.sleep(0.5)
                    open(LATENCY_FILE, "w").close()  # noqa: ASYNC230 - once, between phases
            return {}
        if action == "worker":
            await app.run_worker_async(concurrency=a.concurrency, wait=not a.burst, install_signal_handlers=True)
            return {}
    raise SystemExit(f"unknown action {action}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("system", choices=["pgqueuer", "procrastinate"])
    p.add_argument("action")
    p.add_argument("url")
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--per", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--gap", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    fn = pgqueuer if a.system == "pgqueuer" else procrastinate_
    result = asyncio.run(fn(a.action, a.url, a))
    if result:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
