"""Helpers for tests that run the real `skiplock` command as separate OS processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]


def skiplock_env(db_url: str | None, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_") and k != "DATABASE_URL"}
    if db_url:
        env["DATABASE_URL"] = db_url
    env.update({f"SKIPLOCK_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def cli(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"skiplock {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def scalar(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
        return row[0] if row else None


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as c:
        return {s: n for s, n in c.execute("SELECT state::text, count(*) FROM skiplock.jobs GROUP BY 1").fetchall()}
