"""``curl`` as the client that keeps whatever it receives (no digest check), and what
one transfer got: whether the response ended cleanly with every announced byte."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import typing as t
from pathlib import Path


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
