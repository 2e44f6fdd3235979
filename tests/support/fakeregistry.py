"""A small registry in the test process that serves exactly the bytes a test gives it.

A real registry always serves what it stored under a digest; a fake one can serve
bytes that do not match their digest, at a chosen speed and with a chosen framing,
which is how tests show what a cache does with a lying or broken upstream. It answers
``/v2/``, manifest and blob ``GET``/``HEAD`` (with ``Range`` for resumed downloads) like
a registry, on 127.0.0.1 with HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import http.server
import json
import re
import threading
import time
import typing as t

from .httpserver import BackgroundServer

_PATH = re.compile(r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")
_PIECE = 64 * 1024


class Framing(enum.Enum):
    """How a blob body goes on the wire."""

    #: ``Content-Length`` and the bytes.
    LENGTH = "length"
    #: ``Transfer-Encoding: chunked`` with no ``Content-Length``.
    CHUNKED = "chunked"
    #: ``Transfer-Encoding: chunked`` and a ``Content-Length`` header too (which a
    #: client must then ignore): the body may hold more bytes than the length says.
    CHUNKED_WITH_LENGTH = "chunked+length"


@dataclasses.dataclass
class ServedBlob:
    """What the fake sends for one digest.

    :param body: the bytes on the wire (need not hash to the digest).
    :param announced: the size ``HEAD`` and ``Content-Length`` announce (``len(body)``
        unless given).
    :param bytes_per_second: throttle the body to about this rate.
    """

    body: bytes = dataclasses.field(repr=False)
    framing: Framing = Framing.LENGTH
    announced: int | None = None
    bytes_per_second: int | None = None

    @property
    def length(self) -> int:
        return len(self.body) if self.announced is None else self.announced


@dataclasses.dataclass(frozen=True)
class Served:
    """One request the fake answered."""

    method: str
    path: str
    range: str | None
    status: int
    #: Body bytes written to the socket before the response ended or the peer left.
    sent: int


def corrupt_one_byte(data: bytes, position: int | None = None) -> bytes:
    """``data`` with one byte flipped (by default in the middle); same length."""
    index = len(data) // 2 if position is None else position
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """A threaded HTTP server on 127.0.0.1 that plays an upstream registry."""

    def __init__(self) -> None:
        self._manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._blobs: dict[tuple[str, str], ServedBlob] = {}
        self._log: list[Served] = []
        self._lock = threading.Lock()
        self._http = BackgroundServer("fake registry")

    # -- content -----------------------------------------------------------------------

    def add_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """Serve ``body`` for a tag (and for its digest); returns the digest."""
        digest = sha256_digest(body)
        self._manifests[(repository, reference)] = (media_type, body)
        self._manifests[(repository, digest)] = (media_type, body)
        return digest

    def add_blob(self, repository: str, digest: str, blob: ServedBlob) -> None:
        self._blobs[(repository, digest)] = blob

    @property
    def requests(self) -> list[Served]:
        with self._lock:
            return list(self._log)

    def blob_gets(self, digest: str) -> list[Served]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(digest)]

    def _record(self, entry: Served) -> None:
        with self._lock:
            self._log.append(entry)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeRegistry:
        self._http.start(_make_handler(self))
        return self

    def stop(self) -> None:
        self._http.stop()


def _make_handler(registry: FakeRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: t.Any) -> None:
            pass

        def do_GET(self) -> None:
            self._handle(body=True)

        def do_HEAD(self) -> None:
            self._handle(body=False)

        def _handle(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/v2/", "/v2"):
                self._send_bytes(200, b"{}", "application/json", body=body)
                return
            match = _PATH.match(path)
            if match is None:
                self._error(404, "NAME_UNKNOWN", body=body)
                return
            key = (match["repository"], match["reference"])
            if match["kind"] == "manifests":
                manifest = registry._manifests.get(key)
                if manifest is None:
                    self._error(404, "MANIFEST_UNKNOWN", body=body)
                    return
                media_type, content = manifest
                self._send_bytes(
                    200,
                    content,
                    media_type,
                    body=body,
                    headers={"Docker-Content-Digest": sha256_digest(content)},
                )
                return
            blob = registry._blobs.get(key)
            if blob is None:
                self._error(404, "BLOB_UNKNOWN", body=body)
                return
            self._send_blob(match["reference"], blob, body=body)

        def _send_blob(self, digest: str, blob: ServedBlob, *, body: bool) -> None:
            requested = self.headers.get("Range")
            start = 0
            found = _RANGE.match(requested or "")
            if found and blob.framing is Framing.LENGTH:
                start = int(found.group(1))
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Docker-Content-Digest", digest)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{blob.length - 1}/{blob.length}")
            if not body or blob.framing is not Framing.CHUNKED:
                self.send_header("Content-Length", str(blob.length - start))
            if body and blob.framing is not Framing.LENGTH:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            if body:
                sent = self._write_body(blob, blob.body[start:])
            registry._record(Served(self.command, self.path, requested, status, sent))

        def _write_body(self, blob: ServedBlob, data: bytes) -> int:
            chunked = blob.framing is not Framing.LENGTH
            began = time.monotonic()
            sent = 0
            try:
                for offset in range(0, len(data), _PIECE):
                    piece = data[offset : offset + _PIECE]
                    if chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    else:
                        self.wfile.write(piece)
                    sent += len(piece)
                    if blob.bytes_per_second:
                        due = began + sent / blob.bytes_per_second
                        time.sleep(max(0.0, due - time.monotonic()))
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                self.close_connection = True
            return sent

        def _error(self, status: int, code: str, *, body: bool) -> None:
            content = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
            self._send_bytes(status, content, "application/json", body=body)

        def _send_bytes(
            self,
            status: int,
            content: bytes,
            media_type: str,
            *,
            body: bool,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(content)
            registry._record(Served(self.command, self.path, None, status, len(content)))

    return Handler
