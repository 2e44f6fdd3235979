"""Byte ranges of blobs: which ``Range`` is answered ``206``, which ``416``, and which
with the whole blob; a fetch followed from an offset (in this process, in another one,
and through the cache's miss); and a range cut from a fetch's bytes, whose last piece
waits until the fetch has verified the whole blob."""

from __future__ import annotations

import hashlib
import threading
import time
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.blueprints._ranges import limited, requested_range, skipped
from flask_dependency_proxy.fetch.errors import FetchFailed
from flask_dependency_proxy.fetch.fetcher import BlobFetcher
from flask_dependency_proxy.fetch.following import LocalFetch, RemoteFetch
from flask_dependency_proxy.oci.errors import ErrorCode, RegistryError
from flask_dependency_proxy.oci.reference import ProxyPath
from flask_dependency_proxy.stores.base import ByteStream, Following
from flask_dependency_proxy.stores.filesystem import FilesystemStore
from tests.support.core import Core

SIZE = 1000
DIGEST = "sha256:" + "a" * 64
ETAG = f'"{DIGEST}"'


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- which range is answered -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-", 0, 1000),
        ("bytes=100-", 100, 1000),
        ("bytes=100-199", 100, 200),
        ("bytes=999-999", 999, 1000),
        # A closed range that runs past the end ends at the blob's last byte.
        ("bytes=900-5000", 900, 1000),
        # The last 100 bytes.
        ("bytes=-100", 900, 1000),
        ("bytes= 10 - 20", 10, 21),
    ],
)
def test_one_satisfiable_range_is_answered_with_its_bytes(
    header: str, start: int, stop: int
) -> None:
    found = requested_range(header, None, SIZE, ETAG)
    assert found is not None
    assert (found.start, found.stop, found.length) == (start, stop, stop - start)
    assert found.content_range == f"bytes {start}-{stop - 1}/{SIZE}"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=1000-",  # starts at the end
        "bytes=5000-6000",
        "bytes=0-1,5-6",  # several ranges: refused, as for a cached blob
        "items=0-5",
        "bytes=5-1",
        "bytes=x-",
        "garbage",
    ],
)
def test_a_range_that_cannot_be_answered_is_416_with_the_size(header: str) -> None:
    with pytest.raises(RegistryError) as raised:
        requested_range(header, None, SIZE, ETAG)
    assert raised.value.code is ErrorCode.RANGE_INVALID
    assert raised.value.status == 416
    assert raised.value.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    ("header", "if_range", "size"),
    [
        (None, None, SIZE),
        ("", None, SIZE),
        # Upstream announced no size: the range cannot be placed, the whole blob is sent.
        ("bytes=100-", None, None),
        ("bytes=100-", None, 0),
        # If-Range names another representation (or a date, and a blob has none).
        ("bytes=100-", '"sha256:' + "b" * 64 + '"', SIZE),
        ("bytes=100-", f"W/{ETAG}", SIZE),
        ("bytes=100-", "Wed, 21 Oct 2015 07:28:00 GMT", SIZE),
    ],
)
def test_the_whole_blob_is_answered_otherwise(
    header: str | None, if_range: str | None, size: int | None
) -> None:
    assert requested_range(header, if_range, size, ETAG) is None


def test_if_range_with_the_blob_s_etag_keeps_the_range() -> None:
    found = requested_range("bytes=10-", ETAG, SIZE, ETAG)
    assert found is not None and found.start == 10


# -- cutting a range out of a stream -------------------------------------------------------


def test_a_closed_range_of_a_fetch_ends_only_once_the_fetch_has() -> None:
    """The bytes of the range are out early, but its last piece waits for the end of
    the fetch's stream (which ends normally only for a verified blob)."""
    gate = threading.Event()
    pulled: list[bytes] = []

    def source() -> t.Iterator[bytes]:
        yield b"abc"
        yield b"def"
        gate.wait(5)
        pulled.append(b"ghi")
        yield b"ghi"

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(limited(source(), 4, until_end=True)))
    reader.start()
    time.sleep(0.1)
    # The first piece is out; the range's last byte waits for the end of the stream.
    assert got == [b"abc"] and reader.is_alive()
    gate.set()
    reader.join(5)
    assert b"".join(got) == b"abcd"
    assert pulled == [b"ghi"]


def test_a_fetch_that_breaks_after_the_range_s_bytes_still_cuts_the_range() -> None:
    def source() -> t.Iterator[bytes]:
        yield b"abcdef"
        yield b"ghi"
        raise FetchFailed("the fetch broke")

    got: list[bytes] = []
    with pytest.raises(FetchFailed):
        for chunk in limited(source(), 4, until_end=True):
            got.append(chunk)
    assert len(b"".join(got)) < 4


def test_a_range_of_a_stored_blob_stops_reading_after_it() -> None:
    closed: list[bool] = []

    def source() -> t.Iterator[bytes]:
        try:
            yield from (b"abc", b"def", b"ghi", b"jkl")
        finally:
            closed.append(True)

    assert b"".join(limited(skipped(source(), 2), 5, until_end=False)) == b"cdefg"
    assert closed == [True]


def test_a_stream_that_ends_before_the_range_does_is_an_error() -> None:
    with pytest.raises(FetchFailed):
        b"".join(limited(iter([b"abc"]), 5, until_end=False))


# -- following a fetch from an offset --------------------------------------------------


class GatedStream:
    """An upstream answer that sends ``data`` in 1000-byte pieces, the pieces after
    ``open_until`` only once ``gate`` is set."""

    def __init__(self, data: bytes, gate: threading.Event, open_until: int) -> None:
        self.data = data
        self.offset = 0
        self.status = 200
        self.size: int | None = len(data)
        self.gate = gate
        self.open_until = open_until

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(0, len(self.data), 1000):
            if start >= self.open_until:
                self.gate.wait(5)
            yield self.data[start : start + 1000]

    def close(self) -> None:
        pass


def _wait(condition: t.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.mark.parametrize("start", [0, 12_345, 40_000, 70_000, 99_999, 100_000])
def test_a_fetch_is_followed_from_an_offset_in_this_process_and_another(
    tmp_path: Path, start: int
) -> None:
    """Before and beyond the bytes fetched so far: the follower gets the blob from
    ``start`` on, the last piece once the blob is verified."""
    store = FilesystemStore(str(tmp_path))
    holder, other = BlobFetcher(store), BlobFetcher(store)
    data = bytes(range(256)) * 390 + b"x" * 160
    assert len(data) == 100_000
    digest = _digest(data)
    gate = threading.Event()
    fetch = holder.fetch(digest, lambda offset: GatedStream(data, gate, 50_000))
    assert isinstance(fetch, LocalFetch)
    remote = other.fetch(digest, lambda offset: pytest.fail("a second fetch"))
    assert isinstance(remote, RemoteFetch)
    _wait(lambda: fetch.written == 50_000)

    got: dict[str, bytes] = {}

    def read(name: str, followed: LocalFetch | RemoteFetch) -> None:
        got[name] = b"".join(followed.follow(store, start=start))

    readers = [
        threading.Thread(target=read, args=("local", fetch)),
        threading.Thread(target=read, args=("remote", remote)),
    ]
    for reader in readers:
        reader.start()
    time.sleep(0.1)
    assert got == {}
    gate.set()
    for reader in readers:
        reader.join(5)
    assert got == {"local": data[start:], "remote": data[start:]}


def test_a_miss_of_the_cache_is_read_from_an_offset(make_core: t.Callable[..., Core]) -> None:
    core = make_core()
    data = bytes(range(256)) * 100
    digest = core.upstream.push_blob("team/app", data)

    miss = core.cache.get_blob(1, ProxyPath("acme", "team/app"), digest)

    assert isinstance(miss.location, Following)
    assert b"".join(miss.location.read_from(9_000)) == data[9_000:]
    core.settle()
    hit = core.cache.get_blob(1, ProxyPath("acme", "team/app"), digest)
    assert isinstance(hit.location, ByteStream)
    assert core.upstream.count("GET", "blob") == 1
