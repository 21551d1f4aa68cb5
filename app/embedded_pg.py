"""A private PostgreSQL cluster: the embedded default of `skiplock run` and the server the tests start.

PostgreSQL refuses to run as root. When we are root, the cluster belongs to the OS user
`postgres` and every server command runs through `runuser -u postgres`. A data directory
that user cannot reach (a checkout under a 0700 directory) moves to /var/tmp, and a file
in the requested directory says where it went.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (pg_ctl, initdb) were not found. Install them, e.g. "
    "`apt-get install postgresql` (Debian/Ubuntu), `dnf install postgresql-server` (Fedora), "
    "`brew install postgresql@16` (macOS), or set PG_BIN to the folder that holds pg_ctl."
)


class PostgresNotFound(RuntimeError):
    """The PostgreSQL server binaries are missing."""


def find_bindir() -> Path:
    """Locate pg_ctl: $PG_BIN, then `pg_config --bindir`, then PATH, then Debian's layout."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "pg_ctl").exists() and (c / "initdb").exists() and (c / "postgres").exists():
            return c
    raise PostgresNotFound(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _server_user_can_reach(path: Path) -> bool:
    if not _is_root():
        return True
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], capture_output=True)
    return probe.returncode == 0


@dataclass
class Cluster:
    """One PostgreSQL cluster in `home` (data in home/data), served on 127.0.0.1:port, trust auth."""

    home: Path
    port: int = 54329
    user: str = "postgres"

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.bindir = find_bindir()
        self.base = self._resolve_base()

    def _resolve_base(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        pointer = self.home / "cluster-location"
        if pointer.exists():
            return Path(pointer.read_text().strip())
        if _server_user_can_reach(self.home):
            return self.home
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        base = Path("/var/tmp") / f"skiplock-{digest}"  # noqa: S108 - owned by postgres, not shared secrets
        pointer.write_text(f"{base}\n")
        return base

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    def url(self, dbname: str = "skiplock") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = _as_server_user([str(self.bindir / tool), *args])
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb once; settings tuned for a queue on a small machine."""
        if self.initialized():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        if _is_root():
            shutil.chown(self.base, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                       "max_connections = 200\nshared_buffers = '256MB'\nfsync = on\n")

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._pg("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        if self.running():
            return
        result = self._pg("pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.datadir),
                          "-l", str(self.logfile), "-o", f"-p {self.port}", check=False)
        if result.returncode != 0:
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}: {result.stderr}\n{tail}")
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._pg("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.datadir), check=False)

    def restart(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "restart", "-w", "-m", mode, "-D", str(self.datadir), "-l", str(self.logfile),
                 "-o", f"-p {self.port}")
        self._wait_ready(60)

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def scratch_database(prefix: str = "skiplock-scratch-") -> Iterator[tuple[Cluster, str]]:
    """A throwaway cluster of its own on a free port, with a `skiplock` database migrated to
    head: for tests, the soak and the bench, which may crash or restart it freely."""
    from app import migrate

    cluster = Cluster(Path(tempfile.mkdtemp(prefix=prefix)), port=free_port())
    cluster.start()
    try:
        cluster.create_database("skiplock")
        url = cluster.url("skiplock")
        migrate.upgrade(url)
        yield cluster, url
    finally:
        cluster.destroy()
