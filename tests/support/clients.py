"""Real registry clients: skopeo and podman, with all of their state in one directory.

Each call returns the :class:`subprocess.CompletedProcess` (text stdout and stderr) so a
test can assert on success or on the error a client printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import typing as t
from pathlib import Path

DEFAULT_TIMEOUT = 120.0


def _run(
    argv: t.Sequence[str], *, env: t.Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(
            list(argv), -9, out, err + f"\n(timed out after {timeout} s)"
        )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A readable account of a client run, for assertion messages."""
    return (
        f"$ {' '.join(result.args)}\nexit code {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _registries_conf(directory: Path) -> Path:
    """An empty registries.conf: only fully qualified names, no mirrors from the host."""
    path = directory / "registries.conf"
    if not path.exists():
        path.write_text("unqualified-search-registries = []\n")
    return path


def _authfile(directory: Path) -> Path:
    """An empty auth file (podman refuses to use one that does not exist)."""
    path = directory / "auth.json"
    if not path.exists():
        path.write_text('{"auths": {}}\n')
    return path


class Skopeo:
    """``skopeo`` with its own auth file, TLS verification off (plain HTTP on 127.0.0.1).

    :param directory: auth file, registries.conf and copy targets live here.
    """

    def __init__(self, directory: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.authfile = _authfile(directory)
        self.timeout = timeout
        self._copies = 0
        self.env = dict(os.environ)
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(_registries_conf(directory))
        self.env["TMPDIR"] = str(directory)

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        limit = timeout or self.timeout
        return _run(
            ["skopeo", "--command-timeout", f"{int(limit)}s", *args],
            env=self.env,
            timeout=limit + 10,
        )

    def login(
        self, registry: str, username: str, password: str
    ) -> subprocess.CompletedProcess[str]:
        """``skopeo login`` to ``registry`` (``host:port``)."""
        return self.run(
            "login",
            "--tls-verify=false",
            "--authfile",
            str(self.authfile),
            "-u",
            username,
            "-p",
            password,
            registry,
        )

    def logout(self, registry: str) -> subprocess.CompletedProcess[str]:
        return self.run("logout", "--authfile", str(self.authfile), registry)

    def copy(
        self, reference: str, destination: str, *, all: bool = False, extra: t.Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``skopeo copy docker://REFERENCE DESTINATION``."""
        argv = [
            "copy",
            "--quiet",
            "--retry-times",
            "0",
            "--src-tls-verify=false",
            "--authfile",
            str(self.authfile),
        ]
        if all:
            argv.append("--all")
        return self.run(*argv, *extra, f"docker://{reference}", destination)

    def _new_target(self, kind: str) -> Path:
        self._copies += 1
        target = self.directory / f"{kind}-{self._copies}"
        if target.exists():
            shutil.rmtree(target)
        return target

    def copy_to_dir(
        self, reference: str, extra: t.Sequence[str] = ()
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        """Copy into a new ``dir:`` target: ``manifest.json`` plus one file per blob,
        named by the digest's hex part."""
        target = self._new_target("dir")
        return self.copy(reference, f"dir:{target}", extra=extra), target

    def copy_to_oci(
        self, reference: str, *, tag: str = "pulled", all: bool = True
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        """Copy into a new ``oci:`` layout (``--all``: every platform of an index)."""
        target = self._new_target("oci")
        return self.copy(reference, f"oci:{target}:{tag}", all=all), target

    def inspect(self, reference: str, *, raw: bool = False) -> subprocess.CompletedProcess[str]:
        argv = ["inspect", "--no-tags", "--tls-verify=false", "--authfile", str(self.authfile)]
        if raw:
            argv.append("--raw")
        return self.run(*argv, f"docker://{reference}")


class Podman:
    """``podman`` with storage, run state, temp files and network config under
    ``directory`` and no events log, so nothing outside the test's directory changes.

    :param storage_driver: ``vfs`` works everywhere; ``overlay`` needs kernel support.
    """

    def __init__(
        self,
        directory: Path,
        *,
        storage_driver: str = "vfs",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.authfile = _authfile(directory)
        self.timeout = timeout
        self.storage_driver = storage_driver
        for sub in ("root", "runroot", "tmp", "network"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot path longer than 50 characters: reach the run
        # directory's runroot through a short symlink (removed by close()).
        self._link_dir = Path(tempfile.mkdtemp(prefix="fdp-podman-"))
        self.runroot = self._link_dir / "runroot"
        self.runroot.symlink_to(directory / "runroot")
        self.env = dict(os.environ)
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(_registries_conf(directory))
        self.env["TMPDIR"] = str(directory / "tmp")
        self.env["XDG_RUNTIME_DIR"] = str(self.runroot)

    @property
    def base_argv(self) -> list[str]:
        d = self.directory
        return [
            "podman",
            "--root",
            str(d / "root"),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(d / "tmp"),
            "--network-config-dir",
            str(d / "network"),
            "--events-backend",
            "none",
            "--storage-driver",
            self.storage_driver,
        ]

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return _run([*self.base_argv, *args], env=self.env, timeout=timeout or self.timeout)

    def login(
        self, registry: str, username: str, password: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "login",
            "--tls-verify=false",
            "--authfile",
            str(self.authfile),
            "-u",
            username,
            "-p",
            password,
            registry,
        )

    def pull(self, reference: str, *, arch: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["pull", "--quiet", "--tls-verify=false", "--authfile", str(self.authfile)]
        if arch:
            argv += ["--arch", arch]
        return self.run(*argv, reference)

    def image_inspect(self, reference: str) -> dict[str, t.Any]:
        """``podman image inspect`` as a dict; raises if the image is not there."""
        result = self.run("image", "inspect", reference)
        if result.returncode != 0:
            raise AssertionError(describe(result))
        data = json.loads(result.stdout)
        assert isinstance(data, list) and len(data) == 1, data
        return t.cast(dict[str, t.Any], data[0])

    def close(self) -> None:
        """Remove the runroot symlink (the state itself stays in the run directory)."""
        shutil.rmtree(self._link_dir, ignore_errors=True)


def podman_unusable(client: Podman) -> str | None:
    """``None`` when podman runs here with this client's state, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    result = client.run("info", "--format", "{{.Store.GraphDriverName}}", timeout=60)
    if result.returncode != 0:
        return describe(result)
    return None
