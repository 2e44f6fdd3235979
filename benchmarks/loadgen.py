"""A bounded HTTP/1.1 load generator for requests wrk cannot make.

Debian's wrk (4.1) never completes a HEAD response that carries ``Content-Length``: its
parser waits for a body. This sends any method over ``--connections`` keep-alive
connections for ``--duration`` seconds (and at most ``--max-requests`` requests), then
prints one JSON object: requests, requests per second, non-2xx answers, errors and
latency percentiles.

    python benchmarks/loadgen.py --method HEAD --connections 8 --duration 5 \
        -H 'Authorization: Bearer ...' http://127.0.0.1:PORT/v2/...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import typing as t
from urllib.parse import urlsplit


class Stats:
    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.requests = 0
        self.non_2xx = 0
        self.errors = 0
        self.latencies: list[float] = []

    def full(self) -> bool:
        return self.requests >= self.max_requests


async def _read_response(reader: asyncio.StreamReader, head: bool) -> tuple[int, bool]:
    """Read one response; returns its status and whether the server will close."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length: int | None = None
    chunked = False
    close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ConnectionError("connection closed in headers")
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        value = value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif key == b"connection" and value == b"close":
            close = True
    if head or status in (204, 304):
        return status, close
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    elif length is None:
        await reader.read()  # body until close
        close = True
    return status, close


async def _connection(
    host: str, port: int, request: bytes, head: bool, deadline: float, stats: Stats
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.monotonic() < deadline and not stats.full():
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            try:
                writer.write(request)
                status, close = await asyncio.wait_for(_read_response(reader, head), 10)
            except (
                TimeoutError,
                OSError,
                ConnectionError,
                ValueError,
                IndexError,
                asyncio.IncompleteReadError,
            ):
                stats.errors += 1
                writer.close()
                writer = None
                await asyncio.sleep(0.01)
                continue
            stats.latencies.append(time.perf_counter() - started)
            stats.requests += 1
            if not 200 <= status < 300:
                stats.non_2xx += 1
            if close:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run(
    url: str,
    *,
    method: str,
    headers: t.Sequence[str],
    connections: int,
    duration: float,
    max_requests: int,
) -> dict[str, t.Any]:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loadgen only targets the loopback interface")
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: fdp-loadgen"]
    lines += list(headers)
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    stats = Stats(max_requests)
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(
        *(
            _connection(parts.hostname, port, request, method == "HEAD", deadline, stats)
            for _ in range(connections)
        )
    )
    elapsed = time.monotonic() - started
    latencies = sorted(stats.latencies)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    return {
        "requests": stats.requests,
        "seconds": elapsed,
        "requests_per_second": stats.requests / elapsed if elapsed else 0.0,
        "non_2xx": stats.non_2xx,
        "errors": stats.errors,
        "latency_p50_ms": percentile(50),
        "latency_p99_ms": percentile(99),
        "latency_mean_ms": 1000 * statistics.fmean(latencies) if latencies else None,
    }


def main(argv: t.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(
            args.url,
            method=args.method,
            headers=args.header,
            connections=args.connections,
            duration=min(args.duration, 600.0),
            max_requests=args.max_requests,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
