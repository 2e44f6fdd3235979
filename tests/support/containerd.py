"""A standalone containerd (Debian's ``containerd`` package) and its ``ctr`` client.

Its root lives in the test's directory, its state and sockets in a short folder under
``/tmp`` (socket paths are limited); no CRI plugin, no metrics port. The ``native``
snapshotter unpacks layers without overlay mounts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

from .processes import LiveProcess, ProcessFactory

#: ``ctr`` runs are bounded; a pull of a small image takes well under a second here.
CTR_TIMEOUT = 120.0


class Containerd:
    """``containerd --config`` with its own root, state and socket under ``directory``."""

    def __init__(self, processes: ProcessFactory, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # Unix socket paths are limited to about 104 bytes: sockets and state live in a
        # short folder of their own, whatever the test's path.
        run_dir = Path(tempfile.mkdtemp(prefix="containerd-", dir="/tmp"))
        weakref.finalize(self, shutil.rmtree, run_dir, True)
        self.address = run_dir / "containerd.sock"
        config = directory / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{directory / "root"}"\n'
            f'state = "{run_dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{run_dir / "containerd.sock.ttrpc"}"\n'
            f'[debug]\n  address = "{run_dir / "debug.sock"}"\n  level = "info"\n'
            '[metrics]\n  address = ""\n'
        )
        self.process: LiveProcess = processes.create(
            "containerd", ["containerd", "--config", str(config)]
        )

    def start(self, timeout: float = 30.0) -> Containerd:
        self.process.start(
            ready=lambda: self.address.exists() and self.ctr("version").returncode == 0,
            timeout=timeout,
        )
        return self

    def ctr(self, *args: str, timeout: float = CTR_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``ctr --address SOCKET ARGS``."""
        argv = ["ctr", "--address", str(self.address), "--connect-timeout", "5s", *args]
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TMPDIR": str(self.directory)},
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return subprocess.CompletedProcess(argv, -9, out, f"(timed out after {timeout} s)")

    def pull(self, reference: str, username: str, secret: str) -> subprocess.CompletedProcess[str]:
        """``ctr images pull`` over plain HTTP with ``--user``, unpacked with ``native``."""
        return self.ctr(
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            "--user",
            f"{username}:{secret}",
            reference,
        )
