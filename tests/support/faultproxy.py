"""A small reverse proxy that puts faults between the cache and its upstream.

Every request is forwarded with all of its header lines as they came (several
``Accept`` lines stay several lines; ``Host`` is passed through unchanged), unless a
rule matches it first. Rules are set at runtime by the test::

    proxy.add(Status(429, retry_after=1), method="GET", path="/manifests/", times=2)
    proxy.add(Truncate(1000), path="/blobs/")
    proxy.add(Rewrite((("Content-Type", "text/html"),)), path="/manifests/")

and are tried in the order they were added; a rule with ``times`` is used that many
times, then ignored.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import io
import json
import re
import socket
import struct
import threading
import time
import typing as t
import urllib.parse

from .httpserver import BackgroundServer

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)


@dataclasses.dataclass(frozen=True)
class Status:
    """Answer with ``code`` (a registry error body) without asking upstream."""

    code: int
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Delay:
    """Wait, then forward."""

    seconds: float


@dataclasses.dataclass(frozen=True)
class Truncate:
    """Forward, send the upstream's headers and the first ``after_bytes`` bytes of the
    body, then close (with a reset when ``reset``)."""

    after_bytes: int
    reset: bool = False


@dataclasses.dataclass(frozen=True)
class Throttle:
    """Forward with the body limited to about ``bytes_per_second``."""

    bytes_per_second: int


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """Forward, with these response headers in place of the upstream's of the same
    names (an upstream that answers a manifest as ``text/html``)."""

    headers: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Reset:
    """Reset the connection without answering."""


@dataclasses.dataclass(frozen=True)
class Hang:
    """Keep the connection open without answering for ``seconds`` (or until the proxy
    stops or :meth:`FaultProxy.release` is called), then close it."""

    seconds: float = 300.0


Action = Status | Delay | Truncate | Throttle | Rewrite | Reset | Hang


@dataclasses.dataclass
class Rule:
    action: Action
    method: str | None = None
    path: re.Pattern[str] | None = None
    times: int | None = None
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or self.path.search(path) is not None


@dataclasses.dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    #: The action applied, or ``None`` when the request was forwarded as is.
    action: Action | None
    #: The upstream's status, or the status the rule answered with; ``None`` if none.
    status: int | None = None

    def header_lines(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream_url``."""

    def __init__(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream_url
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port
        self._rules: list[Rule] = []
        self._log: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._http = BackgroundServer("fault proxy")

    # -- rules -------------------------------------------------------------------------

    def add(
        self,
        action: Action,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = None,
    ) -> Rule:
        """Apply ``action`` to requests with this method whose path (with query)
        matches the regular expression ``path``."""
        rule = Rule(action, method, re.compile(path) if path else None, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and let hanging connections go."""
        with self._lock:
            self._rules.clear()
        self.release()

    def release(self) -> None:
        """End every :class:`Hang` in progress (new ones hang again)."""
        self._release.set()
        self._release = threading.Event()

    def _pick(self, method: str, path: str) -> Action | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.used += 1
                    return rule.action
        return None

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._log)

    def _record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._http.start(_make_handler(self))
        return self

    def stop(self) -> None:
        self._release.set()
        self._http.stop()


def _make_handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: t.Any) -> None:
            pass

        def _handle(self) -> None:
            self.close_connection = True
            headers = tuple(self.headers.items())
            action = proxy._pick(self.command, self.path)
            self._recorded = False
            self._entry = ProxiedRequest(self.command, self.path, headers, action)
            try:
                if isinstance(action, Reset):
                    self._note(None)
                    self._reset()
                elif isinstance(action, Hang):
                    self._note(None)
                    proxy._release.wait(action.seconds)
                    self._reset()
                elif isinstance(action, Status):
                    self._answer(action)
                else:
                    if isinstance(action, Delay):
                        time.sleep(action.seconds)
                    self._forward(headers, action)
            finally:
                self._note(None)

        def _note(self, status: int | None) -> None:
            """Record the request once, before its response starts: a test that has
            read the response finds it in :attr:`FaultProxy.requests`."""
            if not self._recorded:
                self._recorded = True
                proxy._record(dataclasses.replace(self._entry, status=status))

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.wfile = _Sink()  # the handler's final flush must not fail

        def _answer(self, action: Status) -> None:
            body = json.dumps(
                {
                    "errors": [
                        {
                            "code": "TOOMANYREQUESTS" if action.code == 429 else "UNAVAILABLE",
                            "message": f"injected status {action.code}",
                            "detail": None,
                        }
                    ]
                }
            ).encode()
            self._note(action.code)
            self.send_response_only(action.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            if action.retry_after is not None:
                self.send_header("Retry-After", str(action.retry_after))
            for name, value in action.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, headers: tuple[tuple[str, str], ...], action: Action | None) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
            try:
                try:
                    conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in headers:
                        if name.lower() not in _HOP_BY_HOP:
                            conn.putheader(name, value)
                    conn.endheaders(body)
                    response = conn.getresponse()
                    self._note(response.status)
                except OSError:
                    # The upstream is down or broke before answering: so does this
                    # connection, as the cache would see it without a proxy in between.
                    self._reset()
                    return
                self.send_response_only(response.status, response.reason)
                replaced = action.headers if isinstance(action, Rewrite) else ()
                skipped = _HOP_BY_HOP | {name.lower() for name, _ in replaced}
                for name, value in response.getheaders():
                    if name.lower() not in skipped:
                        self.send_header(name, value)
                for name, value in replaced:
                    self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self._copy_body(response, action)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client went away; nothing to tell it
            finally:
                conn.close()

        def _copy_body(self, response: http.client.HTTPResponse, action: Action | None) -> None:
            sent = 0
            limit = action.after_bytes if isinstance(action, Truncate) else None
            chunk_size = 64 * 1024
            if isinstance(action, Throttle):
                chunk_size = max(1, action.bytes_per_second // 10)
            while True:
                want = chunk_size if limit is None else min(chunk_size, limit - sent)
                if want <= 0:
                    break
                chunk = response.read(want)
                if not chunk:
                    break
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                if isinstance(action, Throttle):
                    time.sleep(len(chunk) / action.bytes_per_second)
            if isinstance(action, Truncate):
                if action.reset:
                    self._reset()
                else:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.wfile = _Sink()

    return Handler


class _Sink(io.BufferedIOBase):
    """Stands in for the handler's output once its connection is gone."""

    def write(self, data: t.Any) -> int:
        return len(data)
