"""A herd of lightweight registry clients that pull one image at the same moment.

Each client is a coroutine with its own keep-alive connection (asyncio streams, no
dependency beyond the standard library), so one process holds hundreds of them where
hundreds of skopeo processes would measure the machine's process scheduler instead of
the server. Every client connects first; once all are connected (or have failed to),
they start together: ``GET`` the manifest (with the full Accept list), then each blob it
names, one after the other on its connection, following a redirect to a presigned URL
(without the ``Authorization`` header, as registry clients do). A client is done when it
has received every byte of every blob; a blob of the wrong size, a non-2xx answer, a
broken connection or the timeout makes it a failed client. A few clients also hash what
they receive and check it against the digest (hashing every byte of 200 clients would
make this process the bottleneck).

With ``blobs`` instead of a manifest URL a client skips the manifest and GETs those
URLs: the same herd against a plain file server (nginx) for comparison.

The spec comes as JSON on stdin (or ``--spec FILE``), the result is one JSON object on
stdout::

    {"clients": 200, "verify": 2, "timeout": 600,
     "targets": [{"manifest": "http://127.0.0.1:P/v2/REPO/manifests/TAG",
                  "blob_url": "http://127.0.0.1:P/v2/REPO/blobs/{digest}",
                  "headers": {"Authorization": "Bearer ..."}}]}

Clients are spread over the targets round-robin (two hosts of a fleet: half each).
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import resource
import sys
import time
import typing as t
from urllib.parse import urljoin, urlsplit

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
#: Bytes asked of the stream per read of a body.
_READ = 1024 * 1024
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HerdError(Exception):
    """A client could not get every byte (the message says where it stopped)."""


@dataclasses.dataclass
class Target:
    """Where a client pulls from: a manifest and its blobs, or a fixed list of blob URLs."""

    manifest: str | None = None
    blob_url: str | None = None
    #: digest -> (URL, size), for a target without a manifest.
    blobs: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: t.Mapping[str, t.Any]) -> Target:
        blobs = {d: (b["url"], int(b["size"])) for d, b in (data.get("blobs") or {}).items()}
        target = cls(data.get("manifest"), data.get("blob_url"), blobs, dict(data.get("headers")))
        if target.manifest is None and not target.blobs:
            raise ValueError("a target needs a manifest URL or blobs")
        if target.manifest is not None and not target.blob_url:
            raise ValueError("a target with a manifest needs blob_url (with {digest})")
        return target

    def first_url(self) -> str:
        return self.manifest or next(iter(self.blobs.values()))[0]


@dataclasses.dataclass
class ClientResult:
    ok: bool
    #: Seconds from the common start to the last byte (or to the failure).
    seconds: float
    blob_bytes: int
    error: str = ""
    #: Seconds from the common start to the first byte of the largest blob.
    first_byte: float | None = None
    #: Seconds from the common start to the end of the manifest's answer.
    manifest_done: float | None = None


class _Connection:
    """One keep-alive HTTP/1.1 connection to one ``host:port``."""

    def __init__(self, netloc: str) -> None:
        parts = urlsplit(f"http://{netloc}")
        if parts.hostname not in _LOOPBACK:
            raise HerdError(f"the herd only targets the loopback interface, not {netloc}")
        self.netloc = netloc
        self.host = parts.hostname
        self.port = parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=4 * _READ
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self,
        target: str,
        headers: t.Mapping[str, str],
        sink: t.Callable[[bytes], None] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """``GET target``; the body goes to ``sink`` chunk by chunk when given (the
        returned body is then empty), else it is returned."""
        await self.open()
        assert self.reader is not None and self.writer is not None
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.netloc}", "User-Agent: fdp-herd"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        answer: dict[str, str] = {}
        for line in header_lines:
            if line:
                key, _, value = line.partition(":")
                answer[key.strip().lower()] = value.strip()
        body = bytearray()

        def take(chunk: bytes) -> None:
            if sink is None:
                body.extend(chunk)
            else:
                sink(chunk)

        if "chunked" in answer.get("transfer-encoding", "").lower():
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size:
                    take(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
                if size == 0:
                    break
        elif "content-length" in answer:
            left = int(answer["content-length"])
            while left:
                chunk = await self.reader.read(min(left, _READ))
                if not chunk:
                    raise HerdError(f"connection closed with {left} bytes of the body left")
                take(chunk)
                left -= len(chunk)
        else:
            while chunk := await self.reader.read(_READ):
                take(chunk)
            answer["connection"] = "close"
        if answer.get("connection", "").lower() == "close" or status_line.startswith("HTTP/1.0"):
            self.close()
        return status, answer, bytes(body)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Client:
    """One member of the herd."""

    def __init__(self, target: Target, verify: bool) -> None:
        self.target = target
        self.verify = verify
        self.connection = _Connection(urlsplit(target.first_url()).netloc)
        #: When the first byte of the largest blob arrived (``time.monotonic()``).
        self.first_byte_at: float | None = None
        #: When the manifest's answer ended (``time.monotonic()``).
        self.manifest_at: float | None = None
        self._largest = 0

    async def connect(self) -> None:
        await self.connection.open()

    async def pull(self) -> int:
        """Everything the target names; returns the blob bytes received."""
        blobs = self.target.blobs
        if self.target.manifest is not None:
            headers = {**self.target.headers, "Accept": MANIFEST_ACCEPT}
            status, _, body = await self.connection.request(_path(self.target.manifest), headers)
            if status != 200:
                raise HerdError(f"manifest: {status} {body[:200]!r}")
            self.manifest_at = time.monotonic()
            manifest = json.loads(body)
            if "layers" not in manifest:
                raise HerdError("the herd pulls single-platform manifests only")
            assert self.target.blob_url is not None
            blobs = {
                d["digest"]: (self.target.blob_url.format(digest=d["digest"]), int(d["size"]))
                for d in [manifest["config"], *manifest["layers"]]
            }
        total = 0
        self._largest = max((size for _, size in blobs.values()), default=0)
        for digest, (url, size) in blobs.items():
            total += await self._blob(digest, url, size)
        return total

    async def _blob(self, digest: str, url: str, size: int) -> int:
        hasher = hashlib.sha256() if self.verify else None
        received = 0

        def sink(chunk: bytes) -> None:
            nonlocal received
            if size == self._largest and self.first_byte_at is None:
                self.first_byte_at = time.monotonic()
            received += len(chunk)
            if hasher is not None:
                hasher.update(chunk)

        status, answer, _ = await self.connection.request(_path(url), self.target.headers, sink)
        if status in (301, 302, 303, 307, 308):
            # A presigned URL elsewhere: no Authorization goes with it.
            location = urljoin(url, answer.get("location", ""))
            other = _Connection(urlsplit(location).netloc)
            try:
                received = 0
                status, answer, _ = await other.request(_path(location), {}, sink)
            finally:
                other.close()
        if status != 200:
            raise HerdError(f"blob {digest[:19]}: {status}")
        if received != size:
            raise HerdError(f"blob {digest[:19]}: {received} of {size} bytes")
        if hasher is not None and f"sha256:{hasher.hexdigest()}" != digest:
            raise HerdError(f"blob {digest[:19]}: digest mismatch")
        return received


async def run(
    targets: t.Sequence[Target], *, clients: int, verify: int = 1, timeout: float = 600
) -> dict[str, t.Any]:
    """Start ``clients`` clients over ``targets`` at once; the summary as a dict."""
    herd = [
        Client(targets[n % len(targets)], verify=n < verify * len(targets)) for n in range(clients)
    ]
    results: list[ClientResult | None] = [None] * clients
    start = asyncio.Event()
    started = 0.0

    async def one(number: int, client: Client) -> None:
        nonlocal started
        try:
            try:
                await asyncio.wait_for(client.connect(), 30)
            finally:
                ready.append(number)
                if len(ready) == clients:
                    started = time.monotonic()
                    start.set()
            await start.wait()
            blob_bytes = await asyncio.wait_for(client.pull(), timeout)
            results[number] = ClientResult(
                True,
                time.monotonic() - started,
                blob_bytes,
                first_byte=client.first_byte_at - started if client.first_byte_at else None,
                manifest_done=client.manifest_at - started if client.manifest_at else None,
            )
        except (TimeoutError, OSError, ValueError, HerdError, asyncio.IncompleteReadError) as exc:
            at = time.monotonic() - started if start.is_set() else 0.0
            results[number] = ClientResult(False, at, 0, f"{type(exc).__name__}: {exc}"[:300])
        finally:
            client.connection.close()

    ready: list[int] = []
    tasks = [asyncio.create_task(one(n, c)) for n, c in enumerate(herd)]
    await start.wait()
    await asyncio.gather(*tasks)
    done = [r for r in results if r is not None]
    wall = max((r.seconds for r in done), default=0.0)
    blob_bytes = sum(r.blob_bytes for r in done)
    errors = sorted({r.error for r in done if not r.ok})
    times = sorted(r.seconds for r in done if r.ok)
    per_target = []
    for index in range(len(targets)):
        ours = [r for n, r in enumerate(results) if r is not None and n % len(targets) == index]
        mine = sorted(r.seconds for r in ours if r.ok)
        firsts = sorted(r.first_byte for r in ours if r.first_byte is not None)
        manifests = sorted(r.manifest_done for r in ours if r.manifest_done is not None)
        per_target.append(
            {
                "median_manifest_seconds": manifests[len(manifests) // 2] if manifests else None,
                "median_first_byte_seconds": firsts[len(firsts) // 2] if firsts else None,
                "median_done_seconds": mine[len(mine) // 2] if mine else None,
                "last_done_seconds": mine[-1] if mine else None,
            }
        )
    return {
        "clients": clients,
        "failed": sum(1 for r in done if not r.ok),
        "verified": sum(1 for c in herd if c.verify),
        "wall_seconds": wall,
        "first_done_seconds": times[0] if times else None,
        "median_done_seconds": times[len(times) // 2] if times else None,
        "blob_bytes": blob_bytes,
        "throughput_mb_s": blob_bytes / wall / 1e6 if wall else 0.0,
        "errors": errors[:5],
        "per_target": per_target,
    }


def main(argv: t.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="the JSON spec (default: stdin)")
    args = parser.parse_args(argv)
    spec = json.loads(open(args.spec).read() if args.spec else sys.stdin.read())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    targets = [Target.from_json(item) for item in spec["targets"]]
    result = asyncio.run(
        run(
            targets,
            clients=int(spec["clients"]),
            verify=int(spec.get("verify", 1)),
            timeout=min(float(spec.get("timeout", 600)), 1800.0),
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
