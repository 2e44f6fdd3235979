"""``curl`` as the client that keeps whatever it receives (no digest check), and what
one transfer got: whether the response ended cleanly with every announced byte; and a
transfer cut short and resumed with ``curl -C -`` (:func:`cut_then_resume`)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import typing as t
from pathlib import Path

from .processes import wait_for


@dataclasses.dataclass(frozen=True)
class Transfer:
    """What one curl run got."""

    exit_code: int
    status: int
    received: int
    content_length: int | None
    body: bytes = dataclasses.field(repr=False)

    @property
    def complete(self) -> bool:
        """curl saw the response end cleanly with every byte it announced (exit code 0;
        18 is a partial transfer, 56 a connection that broke)."""
        return self.exit_code == 0

    @property
    def error_code(self) -> str | None:
        """The registry error code of a JSON error body."""
        try:
            return str(json.loads(self.body)["errors"][0]["code"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    @property
    def error_message(self) -> str | None:
        try:
            return str(json.loads(self.body)["errors"][0]["message"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None


def get(
    url: str, headers: t.Mapping[str, str], workdir: Path, name: str, timeout: float = 60
) -> Transfer:
    """``curl URL`` with ``headers``; body and response headers go to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    body_path = workdir / f"{name}.body"
    headers_path = workdir / f"{name}.headers"
    argv = ["curl", "--silent", "--max-time", str(int(timeout))]
    for key, value in headers.items():
        argv += ["--header", f"{key}: {value}"]
    argv += [
        "--output",
        str(body_path),
        "--dump-header",
        str(headers_path),
        "--write-out",
        "%{http_code} %{size_download}",
        url,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    status, _, received = result.stdout.partition(" ")
    length = None
    if headers_path.exists():
        for line in headers_path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
    return Transfer(
        exit_code=result.returncode,
        status=int(status or 0),
        received=int(received or 0),
        content_length=length,
        body=body_path.read_bytes() if body_path.exists() else b"",
    )


def argv(url: str, headers: t.Mapping[str, str], output: Path, *extra: str) -> list[str]:
    """``curl URL`` with ``headers``: the body to ``output``, the response's header lines
    to ``output.headers`` (read them with :func:`response_headers`)."""
    command = ["curl", "--silent", "--show-error", "--max-time", "120", "--output", str(output)]
    for key, value in headers.items():
        command += ["--header", f"{key}: {value}"]
    return [*command, "--dump-header", f"{output}.headers", *extra, url]


def response_headers(output: Path) -> dict[str, str]:
    """The last response head curl wrote for ``output``: ``status`` and the header
    fields, by lower-case name."""
    lines = Path(f"{output}.headers").read_text(errors="replace").splitlines()
    found = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        found[key.strip().lower()] = value.strip()
    return found


def cut_then_resume(
    first_url: str,
    resume_url: str,
    headers: t.Mapping[str, str],
    output: Path,
    *,
    cut_at: int,
    still_running: t.Callable[[], bool],
) -> dict[str, str]:
    """Download ``first_url`` into ``output`` until ``cut_at`` bytes are in, kill curl
    (a broken connection), then resume with ``curl -C -`` from ``resume_url``, which
    asks for the bytes after those in ``output`` and appends them; the resumed answer's
    headers (:func:`response_headers`).

    :param still_running: whether the transfer's source is still busy (a fetch of the
        proxy), checked right before the resume.
    """
    first = subprocess.Popen(argv(first_url, headers, output), stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: output.exists() and output.stat().st_size >= cut_at,
            timeout=60,
            interval=0.01,
            what=f"{cut_at} bytes of the first transfer",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if first.stderr is not None:
            first.stderr.close()
    assert still_running(), "the source finished before the client resumed: slow it down"
    resumed = subprocess.run(
        argv(resume_url, headers, output, "--continue-at", "-"),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert resumed.returncode == 0, resumed.stderr
    return response_headers(output)
