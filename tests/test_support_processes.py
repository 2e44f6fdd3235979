"""The live process factory: readiness, deadlines, logs, stopping."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import ProcessFactory, free_port, wait_for


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_ready_url_then_stop(live_process: ProcessFactory, tmp_path: Path) -> None:
    port = free_port()
    server = live_process(
        "http-server",
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        ready_url=f"http://127.0.0.1:{port}/",
        ready_status=200,
        timeout=20,
    )
    assert server.is_running()
    assert server.log_path.parent == tmp_path / "logs"
    server.stop()
    assert not server.is_running()
    assert "GET / HTTP/1.1" in server.log_text()
    assert "--- stopped" in server.log_text()


def test_exit_before_ready_reports_log(live_process: ProcessFactory) -> None:
    with pytest.raises(RuntimeError, match="exited") as info:
        live_process(
            "fails",
            [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
            ready=lambda: False,
            timeout=20,
        )
    assert "bad config" in str(info.value)


def test_deadline(live_process: ProcessFactory) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not reached within 0.5 s"):
        live_process(
            "sleeper",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            ready=lambda: False,
            timeout=0.5,
        )
    assert time.monotonic() - started < 15


@pytest.mark.process
def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    factory = ProcessFactory(tmp_path)
    stubborn = factory.create(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('up', flush=True); time.sleep(60)",
        ],
        stop_timeout=0.5,
    )
    stubborn.start(ready=lambda: "up" in stubborn.log_text(), timeout=20)
    started = time.monotonic()
    factory.stop_all()
    assert not stubborn.is_running()
    assert time.monotonic() - started < 10


def test_wait_for_passes_last_error() -> None:
    def probe() -> bool:
        raise ConnectionError("nobody home")

    with pytest.raises(TimeoutError, match="nobody home"):
        wait_for(probe, timeout=0.2, what="a probe")
