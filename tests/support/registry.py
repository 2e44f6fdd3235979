"""The upstream registry: Debian's ``docker-registry`` (CNCF distribution 2.8).

It plays Docker Hub in the tests. Each :class:`Registry` writes its own config, keeps its
storage in its own directory, binds 127.0.0.1 and logs every request in Apache combined
format, which :meth:`Registry.access_log` parses to count what reached the upstream.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import typing as t
from pathlib import Path

from .processes import ProcessFactory, free_port, http_probe

#: ``127.0.0.1 - - [27/Nov/2026:08:43:36 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"``
_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)
_INVERT = bytes(255 - i for i in range(256))
_REGISTRY_PATH = re.compile(
    r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs|tags)/(?P<reference>[^/]+)$"
)


@dataclasses.dataclass(frozen=True)
class AccessRecord:
    """One request the registry answered."""

    method: str
    path: str
    query: str
    status: int
    size: int

    @property
    def _parts(self) -> re.Match[str] | None:
        return _REGISTRY_PATH.match(self.path)

    @property
    def repository(self) -> str | None:
        match = self._parts
        return match["repository"] if match else None

    @property
    def kind(self) -> str | None:
        """``manifests``, ``blobs`` or ``tags``; ``None`` for ``/v2/`` and uploads."""
        match = self._parts
        return match["kind"] if match else None

    @property
    def reference(self) -> str | None:
        match = self._parts
        return match["reference"] if match else None


def parse_access_log(text: str) -> list[AccessRecord]:
    """Pick the access log lines out of the registry's combined output."""
    records = []
    for line in text.splitlines():
        match = _ACCESS_LINE.match(line)
        if match is None:
            continue
        path, _, query = match["target"].partition("?")
        size = match["size"]
        records.append(
            AccessRecord(
                method=match["method"],
                path=path,
                query=query,
                status=int(match["status"]),
                size=0 if size == "-" else int(size),
            )
        )
    return records


@dataclasses.dataclass(frozen=True)
class TokenAuth:
    """Token auth like Docker Hub's: the registry sends clients to ``realm``."""

    realm: str
    rootcertbundle: Path
    service: str = "registry.docker.io"
    issuer: str = "auth.docker.io"


class Registry:
    """One ``docker-registry serve`` process with its config, storage and log.

    :param processes: the factory that owns the process.
    :param directory: config and storage go here.
    :param token_auth: require bearer tokens from this token server.
    :param port: a fixed port (else a free one).
    """

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        *,
        name: str = "upstream",
        token_auth: TokenAuth | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.port = port or free_port()
        self.storage_dir = directory / "storage"
        self.config_path = directory / "config.yml"
        self.token_auth = token_auth
        directory.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config())
        self.process = processes.create(name, ["docker-registry", "serve", self.config_path])

    def _config(self) -> str:
        # JSON is YAML; it needs no escaping rules of its own.
        config: dict[str, t.Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "test-registry-secret"},
        }
        if self.token_auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.token_auth.rootcertbundle),
                }
            }
        return json.dumps(config, indent=2) + "\n"

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> Registry:
        self.process.start(ready=http_probe(f"{self.url}/v2/", status=(200, 401)), timeout=timeout)
        return self

    def stop(self) -> None:
        """Stop the registry (the upstream is down until :meth:`start`)."""
        self.process.stop()

    def restart(self) -> Registry:
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self.process.is_running()

    # -- access log --------------------------------------------------------------------

    def access_log(self, since: int = 0) -> list[AccessRecord]:
        """Every request answered so far (across restarts), from record ``since`` on."""
        self._settle()
        return parse_access_log(self.process.log_text())[since:]

    def mark(self) -> int:
        """The number of requests logged so far; pass it as ``since`` to count what follows."""
        return len(self.access_log())

    def count(
        self,
        method: str | None = None,
        *,
        repository: str | None = None,
        kind: str | None = None,
        reference: str | None = None,
        status: int | None = None,
        since: int = 0,
    ) -> int:
        """Count logged requests matching every given field.

        ``registry.count("HEAD", repository="library/alpine", kind="manifests")``
        """
        return len(
            [
                r
                for r in self.access_log(since)
                if (method is None or r.method == method)
                and (repository is None or r.repository == repository)
                and (kind is None or r.kind == kind)
                and (reference is None or r.reference == reference)
                and (status is None or r.status == status)
            ]
        )

    def _settle(self, quiet: float = 0.05, timeout: float = 2.0) -> None:
        """Wait until the log stops growing: the line for a request that just finished
        is written right after its response."""
        deadline = time.monotonic() + timeout
        size = -1
        while time.monotonic() < deadline:
            try:
                current = self.process.log_path.stat().st_size
            except FileNotFoundError:
                return
            if current == size:
                return
            size = current
            time.sleep(quiet)

    # -- storage -----------------------------------------------------------------------

    @property
    def _v2(self) -> Path:
        return self.storage_dir / "docker" / "registry" / "v2"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_ = digest.partition(":")
        return self._v2 / "blobs" / algorithm / hex_[:2] / hex_ / "data"

    def read_blob(self, digest: str) -> bytes:
        """The stored bytes of a blob or manifest, read from disk (no request is logged)."""
        return self.blob_path(digest).read_bytes()

    def tag_digest(self, repository: str, tag: str) -> str:
        """The digest a tag points at, read from disk."""
        link = self._v2 / "repositories" / repository / "_manifests" / "tags" / tag
        return (link / "current" / "link").read_text().strip()

    def manifest(self, repository: str, reference: str) -> bytes:
        """The stored manifest bytes for a tag or digest, read from disk."""
        digest = reference if ":" in reference else self.tag_digest(repository, reference)
        return self.read_blob(digest)

    def corrupt_blob(self, digest: str) -> bytes:
        """Overwrite a stored blob with different bytes of the same length, so the
        registry serves content that does not hash to its digest.

        :return: the original bytes, for :meth:`restore_blob`.
        """
        path = self.blob_path(digest)
        original = path.read_bytes()
        path.write_bytes(original.translate(_INVERT))
        return original

    def restore_blob(self, digest: str, original: bytes) -> None:
        self.blob_path(digest).write_bytes(original)
