"""The blob size limit inside a fetch (a real store, an in-memory upstream), and the
size notation of the group page's size limit field."""

from __future__ import annotations

import hashlib
import time
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.cache.quota import (
    MAX_GROUP_LIMIT_BYTES,
    exact_size,
    manifest_blobs,
    parse_size,
)
from flask_dependency_proxy.fetch.errors import BlobTooLarge, FetchFailed
from flask_dependency_proxy.fetch.fetcher import BlobFetcher
from flask_dependency_proxy.stores.filesystem import FilesystemStore


class UnsizedStream:
    """An upstream response that announces ``size`` (``None``: no Content-Length)."""

    def __init__(self, data: bytes, size: int | None) -> None:
        self.data = data
        self.size = size
        self.offset = 0
        self.status = 200
        self.closed = False
        self.sent = 0

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(0, len(self.data), 1000):
            chunk = self.data[start : start + 1000]
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_announced_size_over_the_limit_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store, max_blob_size=4000)
    data = b"x" * 5000
    streams: list[UnsizedStream] = []

    def open_upstream(offset: int) -> UnsizedStream:
        streams.append(UnsizedStream(data, len(data)))
        return streams[-1]

    with pytest.raises(BlobTooLarge) as refused:
        fetcher.fetch(_digest(data), open_upstream)
    assert (refused.value.limit, refused.value.size) == (4000, 5000)
    assert [s.sent for s in streams] == [0] and streams[0].closed
    assert list((tmp_path / "staging").iterdir()) == []
    assert store.size(_digest(data)) is None


def test_unannounced_size_is_cut_off_at_the_limit_and_never_committed(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store, max_blob_size=4500)
    data = bytes(range(256)) * 40  # 10240 bytes
    opened: list[int] = []

    def open_upstream(offset: int) -> UnsizedStream:
        opened.append(offset)
        return UnsizedStream(data, None)

    fetch = fetcher.fetch(_digest(data), open_upstream)
    assert fetch is not None
    received = b""
    with pytest.raises(FetchFailed) as failed:
        for chunk in fetch.follow(store):
            received += chunk
    assert failed.value.reason == "too_large"
    assert isinstance(failed.value.__cause__, BlobTooLarge)
    assert opened == [0]  # not resumed
    assert len(received) < 4500  # the end is held back: never a whole body
    assert store.size(_digest(data)) is None
    assert list((tmp_path / "staging").iterdir()) == []


def test_unannounced_size_under_the_limit_is_committed(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store, max_blob_size=len(b"y" * 3000))
    data = b"y" * 3000
    fetch = fetcher.fetch(_digest(data), lambda offset: UnsizedStream(data, None))
    assert fetch is not None
    assert b"".join(fetch.follow(store)) == data
    # The follower is done once the digest is verified; the commit follows.
    deadline = time.monotonic() + 5
    while store.size(_digest(data)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.size(_digest(data)) == 3000


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("1536", 1536),
        ("500 MiB", 500 * 1024**2),
        ("500mib", 500 * 1024**2),
        (" 1.5 GiB ", 1536 * 1024**2),
        ("2 TiB", 2 * 1024**4),
        ("10 bytes", 10),
        ("1024 TiB", MAX_GROUP_LIMIT_BYTES),
    ],
)
def test_sizes_are_read_in_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "0", "-5", "abc", "1.5", "5 MB", "1025 TiB", "9" * 20, "²", "1e9", "1 GiB x"]
)
def test_other_sizes_are_refused(text: str) -> None:
    assert parse_size(text) is None


@pytest.mark.parametrize("size", [1, 1000, 1024, 1536, 500 * 1024**2, 3 * 1024**4])
def test_exact_sizes_read_back_unchanged(size: int) -> None:
    assert parse_size(exact_size(size)) == size


def test_manifest_blobs_are_the_config_and_layers() -> None:
    manifest = (
        b'{"config": {"digest": "sha256:c", "size": 10},'
        b' "layers": [{"digest": "sha256:a", "size": 100}, {"digest": "sha256:b", "size": true},'
        b' "junk"]}'
    )
    assert manifest_blobs(manifest) == {"sha256:c": 10, "sha256:a": 100}
    assert manifest_blobs(b'{"manifests": []}') == {}
    assert manifest_blobs(b"not json") == {}
