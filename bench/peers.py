"""PgQueuer and Procrastinate on the same server, in the same run: their own venv
(bench/.peers-venv, created here with pip, git-ignored), driven through bench/peer_runner.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

from .env import ROOT, Server, execute, sample_drain, spawn, stop
from .ours import percentiles

VENV = ROOT / "bench" / ".peers-venv"
RUNNER = ROOT / "bench" / "peer_runner.py"
PACKAGES = ["pgqueuer==1.6.0", "procrastinate==3.10.0", "asyncpg>=0.29", "psycopg[binary]>=3.2"]
SYSTEMS = ("pgqueuer", "procrastinate")
DONE = {
    # PgQueuer deletes a job when it completes (its log keeps the outcome)
    "pgqueuer": "SELECT {n} - count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
}


def python() -> Path:
    py = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if not stamp.exists() or stamp.read_text() != "\n".join(PACKAGES):
        print(f"bench: creating {VENV.relative_to(ROOT)} ({', '.join(PACKAGES)})", file=sys.stderr)
        venv.create(VENV, with_pip=True, clear=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], capture_output=True, text=True,
                             env=env)
        if out.returncode != 0:
            raise RuntimeError(f"pip install into {VENV} failed:\n{out.stderr[-3000:]}")
        stamp.write_text("\n".join(PACKAGES))
    return py


def run(system: str, action: str, url: str, timeout: float = 600, **opts: Any) -> dict[str, Any]:
    args = [str(python()), str(RUNNER), system, action, url]
    for k, v in opts.items():
        if v is True:
            args.append(f"--{k}")
        elif v not in (None, False):
            args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{system} {action} failed: {out.stderr[-2000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return result


def worker(system: str, url: str, log: Path, env: dict[str, str] | None = None, **opts: Any) -> Any:
    args = [str(python()), str(RUNNER), system, "worker", url]
    for k, v in opts.items():
        if v is True:
            args.append(f"--{k}")
        elif v not in (None, False):
            args += [f"--{k}", str(v)]
    return spawn(args, {**os.environ, **(env or {})}, log)


def enqueue(server: Server, system: str, *, n_one: int, n_bulk: int) -> dict[str, float]:
    with server.database(f"{system}_enq", template=None) as url:
        run(system, "setup", url)
        one = run(system, "enqueue", url, n=n_one)["rate"]
        bulk = run(system, "bulk", url, n=n_bulk, per=10_000)["rate"]
    return {"enqueue_one": one, "enqueue_bulk": bulk}


def drain(server: Server, system: str, logdir: Path, n: int, *, stop_at: int | None = None, processes: int = 1,
          **opts: Any) -> dict[str, Any]:
    name = f"{system}_drain_p{processes}_" + "_".join(f"{k}{v}" for k, v in opts.items())
    with server.database(name, template=None) as url:
        run(system, "setup", url)
        run(system, "load", url, n=n, per=min(n, 10_000))
        execute(url, "VACUUM ANALYZE")
        procs = [worker(system, url, logdir / f"{name}.{i}.log", burst=stop_at is None, **opts)
                 for i in range(processes)]
        try:
            d = sample_drain(url, DONE[system].format(n=n), n, procs, stop_at=stop_at, timeout=240)
        finally:
            for p in procs:
                stop(p)
        return {"rate": d.rate(), "processes": processes, **opts}


def latency(server: Server, system: str, logdir: Path, *, n: int = 500, gap: float = 0.02,
            **opts: Any) -> dict[str, Any]:
    out = logdir / f"latency-{system}.txt"
    out.unlink(missing_ok=True)
    env = {"BENCH_LATENCY_FILE": str(out)}
    with server.database(f"{system}_latency", template=None) as url:
        run(system, "setup", url)
        proc = worker(system, url, logdir / f"{system}_latency.log", env=env, **opts)
        try:
            time.sleep(3.0)  # start-up: imports, connections, LISTEN
            subprocess.run([str(python()), str(RUNNER), system, "latency-enqueue", url, "--n", str(n),
                            "--gap", str(gap)], check=True, env={**os.environ, **env}, cwd=ROOT, timeout=300)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(out.read_text().split()) < n:
                time.sleep(0.05)
        finally:
            stop(proc)
    values = sorted(float(x) * 1000 for x in out.read_text().split()) if out.exists() else []
    return percentiles(values)
