"""A Docker engine (Debian's ``docker.io``) of one test, kept off the network.

``dockerd`` runs without iptables or a bridge, on the ``vfs`` storage driver, with its
data, run state and socket under one directory; it starts its own containerd there. The
client is Debian's ``docker`` next to it, with its own config folder (where ``docker
login`` writes what it stores). Docker treats 127.0.0.0/8 as an insecure registry.

Host names of its own (``hosts={"mirror.example.test": "127.0.0.1"}``) are given to the
daemon alone: it runs in a mount namespace of its own (``unshare --mount``, private
propagation) where a copy of ``/etc/hosts`` with those names is bind-mounted over the
file; the machine's ``/etc/hosts`` is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import typing as t
import weakref
from pathlib import Path

from .processes import LiveProcess, ProcessFactory

DOCKER_TIMEOUT = 120.0


def _client_binary() -> str:
    """The client packaged with ``dockerd`` (a newer one elsewhere on PATH may exist)."""
    dockerd = shutil.which("dockerd")
    if dockerd:
        beside = Path(dockerd).resolve().parent.parent / "bin" / "docker"
        if beside.exists():
            return str(beside)
    return "docker"


def _with_hosts(directory: Path, hosts: t.Mapping[str, str]) -> list[str]:
    """The argv prefix that starts the daemon with ``hosts`` added to its ``/etc/hosts``
    (none without them). ``exec`` keeps the daemon's PID the one that was started."""
    if not hosts:
        return []
    copy = directory / "etc-hosts"
    lines = "".join(f"{address} {name}\n" for name, address in hosts.items())
    copy.write_text(Path("/etc/hosts").read_text() + "\n" + lines)
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, str(copy)]


class Dockerd:
    """``dockerd`` with everything under ``directory``; :meth:`docker` runs the client."""

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        hosts: t.Mapping[str, str] | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # Unix socket paths are limited to about 104 bytes: the sockets of dockerd and
        # its containerd live in a short folder of their own, whatever the test's path.
        self.run_dir = Path(tempfile.mkdtemp(prefix="dockerd-", dir="/tmp"))
        weakref.finalize(self, shutil.rmtree, self.run_dir, True)
        self.socket = self.run_dir / "docker.sock"
        self.config_dir = directory / "client-config"
        self.config_dir.mkdir(exist_ok=True)
        self.client = _client_binary()
        self.process: LiveProcess = processes.create(
            "dockerd",
            [
                *_with_hosts(directory, hosts or {}),
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--data-root",
                str(directory / "data"),
                "--exec-root",
                str(self.run_dir / "exec"),
                "-p",
                str(directory / "dockerd.pid"),
                "-H",
                f"unix://{self.socket}",
            ],
            stop_signal=signal.SIGTERM,
            stop_timeout=20.0,
        )

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.process.start(
            ready=lambda: self.socket.exists() and self.docker("version").returncode == 0,
            timeout=timeout,
        )
        return self

    def docker(
        self, *args: str, stdin: str | None = None, timeout: float = DOCKER_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``docker -H SOCKET --config DIR ARGS``."""
        argv = [self.client, "-H", f"unix://{self.socket}", "--config", str(self.config_dir)]
        argv += args
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                input=stdin,
                timeout=timeout,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                env={**os.environ, "TMPDIR": str(self.directory)},
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return subprocess.CompletedProcess(argv, -9, out, f"(timed out after {timeout} s)")

    def login(self, registry: str, username: str, secret: str) -> subprocess.CompletedProcess[str]:
        return self.docker("login", "-u", username, "--password-stdin", registry, stdin=secret)

    def stored_auth(self, registry: str) -> dict[str, t.Any]:
        """What ``docker login`` wrote to the client's config for ``registry``."""
        config = json.loads((self.config_dir / "config.json").read_text())
        return t.cast(dict[str, t.Any], config.get("auths", {}).get(registry, {}))
