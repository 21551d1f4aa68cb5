"""The `skiplock` command (also `python -m app`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from skiplock import InvalidInput, JobSpec, Operations, SkiplockError, Worker
from skiplock.limits import parse_rate

from . import migrate as migrations
from .embedded_pg import PostgresNotFound
from .settings import Settings
from .wiring import configure_logging, database_url, load_tasks


def _queues(value: str) -> list[str]:
    return [q.strip() for q in value.split(",") if q.strip()]


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {n}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiplock", description="A job queue that lives entirely in PostgreSQL.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="database (embedded unless DATABASE_URL) + migrations + API + one worker")
    api = sub.add_parser("api", help="serve the HTTP API and dashboard")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    w = sub.add_parser("worker", help="run jobs")
    w.add_argument("--queues", type=_queues, help="comma-separated queues (default: all)")
    w.add_argument("--concurrency", type=_positive_int)
    w.add_argument("--burst", action="store_true", help="exit when no job is ready and none is running")
    sub.add_parser("migrate", help="bring the schema to the latest migration")
    e = sub.add_parser("enqueue", help="submit one job")
    e.add_argument("task")
    e.add_argument("--args", default="{}", help="JSON object of arguments")
    e.add_argument("--queue")
    e.add_argument("--priority", choices=["high", "normal", "low"])
    e.add_argument("--delay", type=float, help="seconds from now")
    e.add_argument("--max-attempts", type=int)
    e.add_argument("--idempotency-key")
    e.add_argument("--depends-on", action="append", default=None, metavar="ID",
                   help="a job to wait for (its id); repeat it or give ids separated by commas")
    sub.add_parser("status", help="queues and job counts by state")
    for name in ("retry", "cancel", "show"):
        c = sub.add_parser(name, help=f"{name} one job")
        c.add_argument("id")
    rs = sub.add_parser("resume", help="put a parked job back in its queue")
    rs.add_argument("id")
    rs.add_argument("--data", help="a JSON object its next attempt receives as ctx.review")
    fl = sub.add_parser("fail", help="fail a parked job for good")
    fl.add_argument("id")
    fl.add_argument("--reason", help="its last error (default: the park's reason)")
    pr = sub.add_parser("prune", help="delete finished jobs older than the retention")
    pr.add_argument("--older-than", type=float, help="seconds (default: SKIPLOCK_RETENTION_SECONDS)")
    h = sub.add_parser("health", help="exit 0 if the database answers at the current schema revision")
    h.add_argument("--worker", action="store_true",
                   help="also require a worker on this host whose heartbeat is within one lease")
    qu = sub.add_parser("queue", help="queue operations")
    qsub = qu.add_subparsers(dest="queue_command", required=True)
    qd = qsub.add_parser("delete", help="delete a queue no job names (forgets its settings)")
    qd.add_argument("name")
    ql = qsub.add_parser("limits", help="set a queue's limits and print them all (`none` removes one; workers "
                                        "apply a change within 2 s)")
    ql.add_argument("name")
    ql.add_argument("--max-waiting", metavar="N|none", help="most waiting jobs (beyond it submissions are refused)")
    ql.add_argument("--max-running", metavar="N|none", help="most jobs running at once, over every worker")
    ql.add_argument("--per-key", metavar="ARG=N|none", help="most running jobs per value of argument ARG")
    ql.add_argument("--rate", metavar="N/PERIOD|none", help="most jobs started per period, e.g. 100/60s, 10/s, 500/1h")
    sc = sub.add_parser("schedule", help="cron schedules: list, show, pause, resume")
    ssub = sc.add_subparsers(dest="schedule_command", required=True)
    ssub.add_parser("list", help="every schedule with its next run")
    for name, text in (("show", "one schedule"), ("pause", "enqueue nothing for it until resumed"),
                       ("resume", "enqueue its ticks again, from now on")):
        ssub.add_parser(name, help=text).add_argument("name")
    ba = sub.add_parser("batch", help="batches: list, show, cancel, retry")
    bsub = ba.add_subparsers(dest="batch_command", required=True)
    bl = bsub.add_parser("list", help="batches, newest first, with counts and percent")
    bl.add_argument("--state", choices=["open", "active", "succeeded", "failed", "cancelled"])
    bl.add_argument("--limit", type=_positive_int, default=50)
    for name, text in (("show", "one batch: counts, percent, state, times, its completion job"),
                       ("cancel", "cancel its queued and running jobs"), ("retry", "retry its failed jobs")):
        bsub.add_parser(name, help=text).add_argument("id")
    sub.add_parser("url", help="print the database URL in use (starts the embedded cluster if needed)")
    sub.add_parser("stop-db", help="stop the embedded PostgreSQL")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    try:
        return int(COMMANDS[args.command](args, settings) or 0)
    except PostgresNotFound as exc:
        print(f"skiplock: {exc}", file=sys.stderr)
        return 3
    except SkiplockError as exc:
        print(f"skiplock: {exc.message}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"skiplock: database unavailable: {exc}".strip(), file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130


def _url(settings: Settings) -> str:
    """For one-shot commands: a cluster they had to start stays up for the next command."""
    url, started = database_url(settings)
    if started is not None:
        print("skiplock: started the embedded PostgreSQL; `make stop-db` stops it", file=sys.stderr)
    return url


@contextmanager
def _serving_database(settings: Settings) -> Iterator[str]:
    """For long-running commands: the URL in use; an embedded cluster this command started
    is migrated (it is ours alone) and stopped again on exit."""
    url, started = database_url(settings)
    try:
        if not settings.database_url:
            migrations.upgrade(url)
        yield url
    finally:
        if started is not None:
            started.stop()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = _url(settings)
    migrations.upgrade(url)
    print(f"skiplock: schema at revision {migrations.head_revision()}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    load_tasks(settings)
    with _serving_database(settings) as url:
        worker = Worker(url, queues=args.queues or settings.queue_list,
                        concurrency=args.concurrency or settings.concurrency, lease_seconds=settings.lease_seconds,
                        poll_interval=settings.poll_interval, grace_seconds=settings.grace_seconds,
                        rescue_interval=settings.rescue_interval,
                        retention_seconds=settings.retention_seconds or None, burst=args.burst,
                        max_result_bytes=settings.max_result_bytes)

        async def go() -> None:
            worker.install_signal_handlers()
            await worker.run()
            _exit_if_held(worker)

        _run_fast(go())
    return worker.exit_code


def _exit_if_held(worker: Worker) -> None:
    """After a worker stopped: if handler code still runs (a thread that never returns, a
    non-daemon thread a handler started, a task that ignores cancellation), end the process
    now. Leaving through asyncio would wait for it: the event loop's shutdown cancels and
    awaits every task and joins the default executor's threads, and the interpreter joins
    non-daemon threads. Everything the worker owns is already flushed and unregistered."""
    held = worker.leftovers()
    if held is None:
        return
    print(f"skiplock: exiting with handler code still running ({held})", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(worker.exit_code)


def _run_fast(coro: Any) -> None:
    """asyncio.run on uvloop where it is installed (README, Dependencies): the worker spends
    most of its CPU in the event loop, and uvloop's is cheaper per job on the same core."""
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: the standard loop works the same
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _json_option(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--{name} is not valid JSON: {exc}", field=name) from None


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    load_tasks(settings)
    job_args = _json_option(args.args, "args")
    spec = JobSpec(args.task, job_args, queue=args.queue, priority=args.priority, delay=args.delay,
                   max_attempts=args.max_attempts, idempotency_key=args.idempotency_key,
                   depends_on=[d.strip() for ids in args.depends_on for d in ids.split(",") if d.strip()]
                   if args.depends_on else None)
    [job] = _ops(settings, lambda ops: ops.submit([spec], json_args=True),
                 max_args_bytes=settings.max_args_bytes)
    _print({"id": str(job.id), "created": job.created, "state": job.row.get("state")})
    return 0


def _ops(settings: Settings, fn: Callable[[Operations], Awaitable[Any]], **kw: Any) -> Any:
    """Run one operation against the database in use."""
    async def go() -> Any:
        async with Operations.connect(_url(settings), max_size=1, **kw) as ops:
            return await fn(ops)
    return asyncio.run(go())


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    rows = _ops(settings, lambda ops: ops.queue_stats())
    cols = ["queue", "paused", "ready", "scheduled", "waiting", "running", "succeeded", "failed", "cancelled",
            "oldest_ready_seconds"]
    print("  ".join(f"{c:>10}" for c in cols))
    for r in rows:
        print("  ".join(f"{(round(r[c], 1) if isinstance(r[c], float) else r[c])!s:>10}" for c in cols))
    if not rows:
        print("(no queues yet)")
    return 0


def _now_in(job: dict[str, Any]) -> int:
    """What a job action prints: the state the job is in now."""
    print(f"skiplock: job {job['id']} is {job['state']}")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    job = _ops(settings, lambda ops: ops.retry(args.id))
    return _now_in(job)


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    job = _ops(settings, lambda ops: ops.cancel(args.id))
    return _now_in(job)


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    data = None if args.data is None else _json_option(args.data, "data")
    if data is not None and not isinstance(data, dict):
        raise InvalidInput("--data must be a JSON object", field="data")
    job = _ops(settings, lambda ops: ops.resume(args.id, data))
    return _now_in(job)


def cmd_fail(args: argparse.Namespace, settings: Settings) -> int:
    job = _ops(settings, lambda ops: ops.fail(args.id, args.reason))
    return _now_in(job)


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    _print(_ops(settings, lambda ops: ops.get_job(args.id)))
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    older = args.older_than if args.older_than is not None else settings.retention_seconds
    print(f"skiplock: pruned {_ops(settings, lambda ops: ops.prune(older_than_seconds=older))} finished jobs")
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """For container health checks: 0 healthy, 1 not (the reason on stderr), 4 database down."""
    async def check(ops: Operations) -> str | None:
        revision = await ops.schema_revision()
        if revision != migrations.head_revision():
            return f"schema at revision {revision}, expected {migrations.head_revision()} (run `skiplock migrate`)"
        if args.worker:
            host = socket.gethostname()
            live = [w for w in await ops.workers(hostname=host) if w["heartbeat_age_seconds"] < settings.lease_seconds]
            if not live:
                return f"no worker on {host} has renewed its heartbeat within {settings.lease_seconds:g}s"
        return None

    problem = _ops(settings, check)
    if problem:
        print(f"skiplock: unhealthy: {problem}", file=sys.stderr)
        return 1
    print("skiplock: healthy")
    return 0


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    if args.queue_command == "limits":
        given = _limit_options(args)
        if not given:
            raise InvalidInput("give at least one of --max-waiting, --max-running, --per-key, --rate")
        _print(_ops(settings, lambda ops: ops.set_queue_limits(args.name, **given)))
        return 0
    _ops(settings, lambda ops: ops.delete_queue(args.name))
    print(f"skiplock: queue {args.name} deleted")
    return 0


def _limit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line (`none` removes one), as Operations.set_queue_limits takes them."""
    out: dict[str, Any] = {}
    for option, parse in (("max_waiting", _limit_int), ("max_running", _limit_int), ("per_key", _per_key),
                          ("rate", parse_rate)):
        text = getattr(args, option)
        if text is not None:
            out[option] = None if text.strip().lower() == "none" else parse(text)
    return out


def _limit_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a whole number (or none)") from None


def _per_key(text: str) -> tuple[str, int]:
    arg, sep, n = text.rpartition("=")
    if not sep:
        raise InvalidInput(f"--per-key {text!r} is not ARG=N (e.g. customer_id=2)", field="per_key")
    return arg, _limit_int(n)


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    if args.schedule_command == "list":
        rows = _ops(settings, lambda ops: ops.schedules())
        cols = ["name", "task", "cron", "timezone", "paused", "next_run_at", "last_tick_at", "error"]
        table = [[_cell(r[c]) for c in cols] for r in rows]
        widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(cols)]
        for row in [cols, *table]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if not rows:
            print("(no schedules)")
        return 0
    if args.schedule_command == "show":
        _print(_ops(settings, lambda ops: ops.get_schedule(args.name)))
        return 0
    action = {"pause": lambda ops: ops.pause_schedule(args.name),
              "resume": lambda ops: ops.resume_schedule(args.name)}[args.schedule_command]
    row = _ops(settings, action)
    state = "paused" if row["paused"] else f"active, next run {_cell(row['next_run_at'])}"
    print(f"skiplock: schedule {row['name']} is {state}")
    return 0


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch_command == "list":
        page = _ops(settings, lambda ops: ops.list_batches(state=args.state, limit=args.limit))
        cols = ["id", "state", "total", "waiting", "queued", "running", "parked", "succeeded", "failed", "cancelled",
                "percent", "finished_at"]
        table = [[_cell(r[c]) for c in cols] for r in page.batches]
        widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(cols)]
        for row in [cols, *table]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if not page.batches:
            print("(no batches)")
        return 0
    action = {"show": lambda ops: ops.get_batch(args.id), "cancel": lambda ops: ops.cancel_batch(args.id),
              "retry": lambda ops: ops.retry_batch(args.id)}[args.batch_command]
    _print(_ops(settings, action))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def cmd_url(args: argparse.Namespace, settings: Settings) -> int:
    print(_url(settings))
    return 0


def cmd_stop_db(args: argparse.Namespace, settings: Settings) -> int:
    from .wiring import embedded_cluster

    embedded_cluster(settings).stop()
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from .http import create_app, effective_host
    from .http.server import serve

    load_tasks(settings)
    with _serving_database(settings) as url:
        host = effective_host(settings, args.host or settings.host)
        api_settings = settings.model_copy(update={"database_url": url, "host": host})
        # uvicorn re-raises the SIGTERM it caught once it has shut down; with this handler that
        # becomes a clean exit, so our `finally` blocks (worker, embedded cluster) still run.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        serve(create_app(api_settings), api_settings, host=host, port=args.port or settings.port)
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Everything a newcomer needs: database, schema, API, and one supervised worker process
    (restarted if it dies, so `kill -9` on it shows a job being rescued and run again)."""
    url, started = database_url(settings)
    try:
        migrations.upgrade(url)
        print(f"skiplock: schema at revision {migrations.head_revision()}", file=sys.stderr)
        env = dict(os.environ, DATABASE_URL=url)
        worker: subprocess.Popen[bytes] | None = None
        stop = False

        def spawn() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env)
            print(f"skiplock: worker started (pid {proc.pid})", file=sys.stderr)
            return proc

        def supervise() -> None:
            nonlocal worker
            while not stop:
                if worker is None or worker.poll() is not None:
                    if worker is not None:
                        print(f"skiplock: worker exited ({worker.returncode}); starting another", file=sys.stderr)
                        time.sleep(1)
                    if not stop:
                        worker = spawn()
                time.sleep(0.5)

        import threading

        threading.Thread(target=supervise, name="skiplock-supervisor", daemon=True).start()
        try:
            print(f"skiplock: database {url}", file=sys.stderr)
            cmd_api(argparse.Namespace(host=None, port=None), settings.model_copy(update={"database_url": url}))
        finally:
            stop = True
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(settings.grace_seconds + 15)
                except subprocess.TimeoutExpired:
                    worker.kill()
    finally:
        if started is not None:
            started.stop()
    return 0


COMMANDS = {
    "run": cmd_run, "api": cmd_api, "worker": cmd_worker, "migrate": cmd_migrate, "enqueue": cmd_enqueue,
    "status": cmd_status, "retry": cmd_retry, "cancel": cmd_cancel, "show": cmd_show,
    "resume": cmd_resume, "fail": cmd_fail, "prune": cmd_prune,
    "queue": cmd_queue, "schedule": cmd_schedule, "batch": cmd_batch, "url": cmd_url, "stop-db": cmd_stop_db,
    "health": cmd_health,
}
