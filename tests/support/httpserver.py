"""A stdlib HTTP server on 127.0.0.1 that serves from a daemon thread: the one lifecycle
behind the test suite's small fakes (fault proxy, token server, fake registry)."""

from __future__ import annotations

import http.server
import threading


class BackgroundServer:
    """Serves a handler class on a free port until :meth:`stop`.

    :param name: of the serving thread, and in the error when it is used unstarted.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, f"start() the {self.name} first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
