"""A throwaway PostgreSQL 15 cluster on 127.0.0.1 with one database per user of it.

As root the server programs run as the ``postgres`` user (``runuser``), which owns the
cluster directory. That directory is made with :func:`tempfile.mkdtemp` because pytest's
own temp root is private to root.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from .processes import LiveProcess, ProcessFactory, free_port


def _bin_dir() -> Path:
    """``POSTGRES_BIN_DIR``, else PostgreSQL 15's (Debian 12), else the newest installed."""
    if "POSTGRES_BIN_DIR" in os.environ:
        return Path(os.environ["POSTGRES_BIN_DIR"])
    preferred = Path("/usr/lib/postgresql/15/bin")
    if preferred.exists():
        return preferred
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else preferred


BIN_DIR = _bin_dir()
_counter = itertools.count(1)


def available() -> str | None:
    """``None`` when a cluster can be made here, else the reason it cannot."""
    if not (BIN_DIR / "initdb").exists():
        return f"{BIN_DIR}/initdb not found (install the postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no postgres user"
    return None


class PostgresCluster:
    """``initdb`` + ``postgres`` in the foreground, stopped with a fast shutdown.

    :param processes: owns the server process (its log lands in its log directory).
    """

    def __init__(self, processes: ProcessFactory) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="fdp-postgres-"))
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.socket_dir.mkdir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._processes = processes
        self.process: LiveProcess | None = None

    def _argv(self, program: str, *args: str) -> list[str]:
        command = [str(BIN_DIR / program), *args]
        if self._as_root:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        initdb = subprocess.run(
            self._argv(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        self.process = self._processes(
            "postgres",
            self._argv(
                "postgres",
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.socket_dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ),
            cwd=self.directory,
            ready=self._accepts_connections,
            timeout=timeout,
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM waits for clients to leave.
            stop_signal=signal.SIGINT,
        )
        return self

    def _accepts_connections(self) -> bool:
        with psycopg.connect(self._conninfo("postgres"), connect_timeout=2):
            return True

    def _conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """Create an empty database and return its name."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
