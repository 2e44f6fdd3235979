"""A Werkzeug-style live process factory.

A :class:`LiveProcess` runs one command with its output in a log file, is ready once a
probe succeeds before a deadline, and is stopped (terminate, then kill) by its process
group. Every running process is listed in :data:`RUNNING` so the test report can show
the tail of each log when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import typing as t
from pathlib import Path

import requests

#: Processes started and not yet stopped, in start order.
RUNNING: list[LiveProcess] = []
#: Processes stopped since the current test started; their logs matter for its report.
RECENTLY_STOPPED: list[LiveProcess] = []

Probe = t.Callable[[], bool]


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Probe,
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    alive: t.Callable[[], bool] | None = None,
) -> None:
    """Call ``probe`` until it returns true; raise :class:`TimeoutError` at the deadline.

    :param alive: checked between attempts; when it returns false the wait ends early
        with :class:`RuntimeError` (the process being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if probe():
                return
        except Exception as exc:  # a probe that raises is just not ready yet
            last_error = exc
        if alive is not None and not alive():
            raise RuntimeError(f"exited while waiting for {what}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what} not reached within {timeout} s{detail}")
        time.sleep(interval)


def http_probe(url: str, *, status: int | t.Container[int] | None = None) -> Probe:
    """A probe that is true once ``GET url`` answers (with ``status`` when given)."""

    def probe() -> bool:
        response = requests.get(url, timeout=2, allow_redirects=False)
        response.close()
        if status is None:
            return True
        if isinstance(status, int):
            return response.status_code == status
        return response.status_code in status

    return probe


class LiveProcess:
    """One command run in its own process group with its output in ``log_path``.

    :param name: used for the log file name and in reports.
    :param argv: the command.
    :param env: the complete environment; ``None`` inherits the test's.
    :param cwd: working directory.
    :param log_path: stdout and stderr are appended here.
    :param stop_signal: sent to the process group first; ``SIGKILL`` follows after
        ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        name: str,
        argv: t.Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: t.Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.popen: subprocess.Popen[bytes] | None = None
        #: Log size when the current test started (see ``conftest.py``).
        self.log_mark = 0

    def __repr__(self) -> str:
        pid = self.popen.pid if self.popen else None
        return f"<LiveProcess {self.name} pid={pid}>"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(
        self,
        *,
        ready: Probe | None = None,
        ready_url: str | None = None,
        ready_status: int | t.Container[int] | None = None,
        timeout: float = 30.0,
    ) -> LiveProcess:
        """Start the command and wait until it is ready.

        :param ready: a callable probe.
        :param ready_url: probe with ``GET`` on this URL instead.
        :param ready_status: the status ``ready_url`` must answer with.
        :raises RuntimeError: the process exited or did not become ready; the log tail
            is part of the message.
        """
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        RUNNING.append(self)
        if ready is None and ready_url is not None:
            ready = http_probe(ready_url, status=ready_status)
        if ready is not None:
            try:
                wait_for(ready, timeout=timeout, what=f"{self.name} ready", alive=self.is_running)
            except (TimeoutError, RuntimeError) as exc:
                self.stop()
                raise RuntimeError(f"{self.name}: {exc}\n--- log tail:\n{self.tail()}") from None
        return self

    def stop(self) -> int | None:
        """Signal the process group, wait, kill it if needed. Returns the exit code."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait(10)
        # Children left in the group (e.g. gunicorn workers) go too.
        self._signal_group(signal.SIGKILL)
        if self in RUNNING:
            RUNNING.remove(self)
            RECENTLY_STOPPED.append(self)
        with self.log_path.open("ab") as log:
            log.write(f"--- stopped, exit code {popen.returncode}\n".encode())
        return popen.returncode

    def _signal_group(self, signum: int) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def log_text(self, start: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(start)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60, start: int = 0) -> str:
        return "\n".join(self.log_text(start).splitlines()[-lines:])

    def mark_log(self) -> None:
        try:
            self.log_mark = self.log_path.stat().st_size
        except FileNotFoundError:
            self.log_mark = 0


class ProcessFactory:
    """Starts :class:`LiveProcess` objects whose logs go to ``log_dir`` and stops them all
    in :meth:`stop_all` (a fixture calls it at teardown).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[LiveProcess] = []

    def __call__(
        self,
        name: str,
        argv: t.Sequence[str | os.PathLike[str]],
        *,
        env: t.Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready: Probe | None = None,
        ready_url: str | None = None,
        ready_status: int | t.Container[int] | None = None,
        timeout: float = 30.0,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> LiveProcess:
        process = self.create(
            name, argv, env=env, cwd=cwd, stop_signal=stop_signal, stop_timeout=stop_timeout
        )
        return process.start(
            ready=ready, ready_url=ready_url, ready_status=ready_status, timeout=timeout
        )

    def create(
        self,
        name: str,
        argv: t.Sequence[str | os.PathLike[str]],
        *,
        env: t.Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> LiveProcess:
        """Make a process without starting it."""
        taken = {p.log_path.name for p in self.processes}
        log_name = f"{name}.log"
        n = 1
        while log_name in taken:
            n += 1
            log_name = f"{name}-{n}.log"
        process = LiveProcess(
            name,
            argv,
            log_path=self.log_dir / log_name,
            env=env,
            cwd=cwd,
            stop_signal=stop_signal,
            stop_timeout=stop_timeout,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
