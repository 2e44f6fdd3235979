"""Misbehaving clients on raw sockets: slow readers, idle connections, slowloris.

Each kind is what a CI fleet on bad links looks like to the server. All of them run in
background threads of the test process, are bounded in time by the test, and close
every socket on :meth:`Crowd.close`.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import typing as t


@dataclasses.dataclass
class SlowReader:
    """A GET whose response is read a little at a time."""

    sock: socket.socket
    received: int = 0
    #: Seconds after the start at which the server ended the connection, if it did.
    closed_after: float | None = None


@dataclasses.dataclass
class Held:
    """A connection that sends nothing (or a header line now and then)."""

    sock: socket.socket
    started: float
    closed_after: float | None = None


def _connect(address: tuple[str, int], rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Set before connecting so the advertised window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def _ended(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class Crowd:
    """Holds misbehaving clients against ``host:port`` until :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.readers: list[SlowReader] = []
        self.idle: list[Held] = []
        self.slowloris: list[Held] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()

    def slow_readers(
        self, count: int, path: str, headers: t.Mapping[str, str], *, rate: int = 1024
    ) -> None:
        """``count`` GETs of ``path`` that read ``rate`` bytes a second through a 4 KiB
        receive buffer."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.address[0]}:{self.address[1]}"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        for _ in range(count):
            reader = SlowReader(_connect(self.address, rcvbuf=4096))
            reader.sock.sendall(request)
            self.readers.append(reader)
        self._spawn(self._read_slowly, rate)

    def idle_connections(self, count: int) -> None:
        """``count`` connections that never send a byte."""
        for _ in range(count):
            self.idle.append(Held(_connect(self.address), time.monotonic()))

    def slowloris_connections(self, count: int, *, interval: float = 2.0) -> None:
        """``count`` requests whose head never ends: one header line every ``interval``."""
        for _ in range(count):
            held = Held(_connect(self.address), time.monotonic())
            held.sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            self.slowloris.append(held)
        self._spawn(self._drip, interval)

    def _spawn(self, target: t.Callable[[t.Any], None], argument: t.Any) -> None:
        thread = threading.Thread(target=target, args=(argument,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_slowly(self, rate: int) -> None:
        while not self._stop.wait(1.0):
            for reader in self.readers:
                if reader.closed_after is not None:
                    continue
                reader.sock.setblocking(False)
                try:
                    data = reader.sock.recv(rate)
                    if not data:
                        reader.closed_after = time.monotonic() - self._started
                    reader.received += len(data)
                except BlockingIOError:
                    pass
                except OSError:
                    reader.closed_after = time.monotonic() - self._started

    def _drip(self, interval: float) -> None:
        number = 0
        while not self._stop.wait(interval):
            number += 1
            for held in self.slowloris:
                if held.closed_after is not None:
                    continue
                try:
                    held.sock.sendall(f"X-Drip-{number}: x\r\n".encode())
                except OSError:
                    held.closed_after = time.monotonic() - held.started

    def closed_by_server(self, group: t.Sequence[Held]) -> list[Held]:
        """The connections of ``group`` the server has ended by now (each stamped)."""
        now = time.monotonic()
        for held in group:
            if held.closed_after is None and _ended(held.sock):
                held.closed_after = now - held.started
        return [held for held in group if held.closed_after is not None]

    def readers_open(self) -> int:
        return sum(reader.closed_after is None for reader in self.readers)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for entry in [*self.readers, *self.idle, *self.slowloris]:
            entry.sock.close()
