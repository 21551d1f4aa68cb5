"""`make bench` (`python -m bench`) and `make bench-peers` (`python -m bench --peers`).

Starts a private PostgreSQL (as the tests do), runs every workload, prints the table with
each figure beside its reference, and writes bench/results.json."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import batches, floor, ours, peers, report
from .env import ROOT, Server, median

RESULTS = ROOT / "bench" / "results.json"


def machine() -> dict[str, Any]:
    import os

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(["postgres", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1), "python": platform.python_version(),
            "postgres": pg, "os": platform.platform(), "load_before": os.getloadavg()}


ONLY: set[str] = set()
"""Workloads chosen with --only (empty: all). The floor always runs: every ratio needs it."""


def step(results: dict[str, Any], name: str, fn: Any) -> Any:
    if ONLY and name not in ONLY and name != "floor":
        return {}
    t = time.monotonic()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    try:
        value = fn()
    except Exception as exc:  # a workload that fails is reported, the rest still run
        value = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    results[name] = value
    print(f"bench: {name} done in {time.monotonic() - t:.0f}s: {json.dumps(value, default=str)[:300]}",
          file=sys.stderr, flush=True)
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    r: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    logdir = Path(tempfile.mkdtemp(prefix="skiplock-bench-logs-"))
    r["logs"] = str(logdir)
    server = Server()
    server.start()
    reps = 1 if quick else 3
    drain_n = 20_000 if quick else 50_000
    try:
        def floors() -> dict[str, Any]:
            with server.database("floor", template=None) as url:
                out = floor.run_all(url, repeat=reps)
                out["insert_32"] = median([floor.insert_concurrent(url, 3200) for _ in range(reps)])
            return out

        def enqueue() -> dict[str, Any]:
            with server.database("enqueue") as url:
                return {"one": median([ours.enqueue_one_per_tx(url, 3000) for _ in range(reps)]),
                        "bulk": median([ours.enqueue_bulk(url, 50_000) for _ in range(reps)])}

        step(r, "floor", floors)

        def sql_alone() -> dict[str, Any]:
            with server.database("sql_alone") as url:
                return {"insert_one": median([floor.schema_insert_one(url, 3000) for _ in range(reps)]),
                        "insert_batch": median([floor.schema_insert_batch(url, 50_000) for _ in range(reps)]),
                        "claim_ack": median([floor.schema_claim_ack(url, drain_n) for _ in range(reps)])}

        step(r, "sql_alone", sql_alone)
        step(r, "enqueue", enqueue)
        step(r, "http", lambda: ours.http(server, logdir, n=3200))

        def drain() -> dict[str, Any]:
            runs = [ours.drain(server, logdir, drain_n, concurrency=c) for c in (100, 200, 400, 800)]
            for x in runs:
                x.pop("rss_mb", None)
            best = max(runs, key=lambda x: x["rate"])
            two = [ours.drain(server, logdir, drain_n, concurrency=best["concurrency"], processes=2)
                   for _ in range(1 if quick else 2)]
            return {"runs": runs, "best": best, "two_processes": max(two, key=lambda x: x["rate"])}

        d = step(r, "drain", drain)
        conc = d.get("best", {}).get("concurrency", 200) if isinstance(d, dict) else 200
        step(r, "latency", lambda: ours.latency(server, logdir, n=200 if quick else 500))
        step(r, "latency_floor", lambda: ours.latency_floor(server, logdir, n=200 if quick else 500))

        def isolation() -> dict[str, Any]:
            with server.database("isolation") as url:
                return floor.claim_isolation(url, 100_000 if quick else 1_000_000)

        step(r, "isolation", isolation)

        def backlog() -> dict[str, Any]:
            big = 200_000 if quick else 1_000_000
            small = [ours.drain(server, logdir, 10_000, concurrency=conc, backlog=10_000)["rate"]
                     for _ in range(reps)]
            t = time.monotonic()
            large = ours.drain(server, logdir, drain_n, concurrency=conc, backlog=big)
            return {"queued_small": 10_000, "rate_small": median(small), "queued_large": big,
                    "rate_large": large["rate"], "measured_jobs": drain_n, "took_s": round(time.monotonic() - t)}

        step(r, "backlog", backlog)

        def queues() -> dict[str, Any]:
            one = [ours.drain(server, logdir, drain_n, concurrency=conc)["rate"] for _ in range(reps)]
            many = [ours.drain(server, logdir, drain_n, concurrency=conc, queues=100, mixed_priorities=True)["rate"]
                    for _ in range(reps)]
            return {"one_queue": median(one), "many_queues": median(many)}

        step(r, "queues", queues)
        def batch_costs() -> dict[str, Any]:
            with server.database("batch_submit") as url:
                sub = batches.submit(url, 10_000, rounds=2 * reps + 1)
            return {"drain": batches.drain(server, logdir, drain_n, concurrency=conc, rounds=2 * reps), "submit": sub,
                    "plain": batches.plain_cost(server, logdir, drain_n, concurrency=conc, rounds=reps)}

        step(r, "batches", batch_costs)
        step(r, "flow", lambda: ours.flow(server, logdir, drain_n, concurrency=conc, reps=reps))
        step(r, "memory", lambda: ours.memory(server, logdir, n=40_000 if quick else 100_000, concurrency=100))

        if args.peers:
            for system in peers.SYSTEMS:
                r[system] = sys_results = {}
                step(sys_results, "enqueue", lambda s=system: peers.enqueue(server, s, n_one=1000, n_bulk=20_000))
                if system == "pgqueuer":
                    def pgq_drain() -> dict[str, Any]:
                        runs = [peers.drain(server, "pgqueuer", logdir, drain_n, stop_at=drain_n // 2, batch=b)
                                for b in (10, 100)]
                        best = max(runs, key=lambda x: x["rate"])
                        two = peers.drain(server, "pgqueuer", logdir, drain_n, stop_at=drain_n // 2, processes=2,
                                          batch=best["batch"])
                        return {"runs": runs, "best": best, "two_processes": two,
                                "alternating": alternating_drains(best["batch"])}

                    def alternating_drains(batch: int) -> dict[str, list[float]]:
                        """Skiplock's best drain and PgQueuer's, one process then two, taken in
                        turn: the host's speed drifts over minutes, so a ratio of figures taken
                        minutes apart says more about the drift than about the two systems."""
                        out: dict[str, list[float]] = {"ours": [], "theirs": [], "ours_two": [], "theirs_two": []}
                        for _ in range(reps):
                            for p, suffix in ((1, ""), (2, "_two")):
                                out["ours" + suffix].append(ours.drain(server, logdir, drain_n, concurrency=conc,
                                                                       processes=p)["rate"])
                                out["theirs" + suffix].append(peers.drain(
                                    server, "pgqueuer", logdir, drain_n, stop_at=drain_n // 2, processes=p,
                                    batch=batch)["rate"])
                        return out

                    def alternating_enqueues() -> dict[str, list[float]]:
                        """Skiplock's enqueue calls and PgQueuer's, in turn (as the drains)."""
                        out: dict[str, list[float]] = {"ours_one": [], "ours_bulk": [], "theirs_one": [],
                                                       "theirs_bulk": []}
                        for _ in range(reps):
                            with server.database("enqueue_alt") as url:
                                out["ours_one"].append(ours.enqueue_one_per_tx(url, 1000))
                                out["ours_bulk"].append(ours.enqueue_bulk(url, 20_000))
                            theirs = peers.enqueue(server, "pgqueuer", n_one=1000, n_bulk=20_000)
                            out["theirs_one"].append(theirs["enqueue_one"])
                            out["theirs_bulk"].append(theirs["enqueue_bulk"])
                        return out

                    step(sys_results, "drain", pgq_drain)
                    step(sys_results, "enqueue_alternating", alternating_enqueues)
                else:
                    def pro_drain() -> dict[str, Any]:
                        runs = [peers.drain(server, "procrastinate", logdir, 10_000, stop_at=3000, concurrency=c)
                                for c in (10, 50)]
                        return {"runs": runs, "best": max(runs, key=lambda x: x["rate"])}
                    step(sys_results, "drain", pro_drain)
                step(sys_results, "latency", lambda s=system: peers.latency(server, s, logdir,
                                                                             n=200 if quick else 500))
    finally:
        server.stop()
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return r


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--peers", action="store_true", help="also run PgQueuer and Procrastinate (bench/.peers-venv)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repetition (a smoke run)")
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier results file")
    p.add_argument("--only", metavar="NAMES", help="comma-separated workloads to run (sql_alone, enqueue, http, drain, "
                   "latency, latency_floor, isolation, backlog, queues, batches, flow, memory), beside the floor; "
                   "results.json is not written")
    args = p.parse_args()
    if args.only:
        ONLY.update(x.strip() for x in args.only.split(",") if x.strip())
    if args.table:
        print(report.table(json.loads(Path(args.table).read_text())))
        return
    results = run(args)
    if ONLY:
        print(report.table(results))
        return
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(report.table(results))
    print(f"\nbench: wrote {RESULTS.relative_to(ROOT)}; worker and server logs in {results['logs']}")


if __name__ == "__main__":
    main()
