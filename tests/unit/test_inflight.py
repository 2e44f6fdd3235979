"""Blob fetches with an in-memory upstream: commit, failure, and followers that arrive
at every moment of a fetch."""

from __future__ import annotations

import hashlib
import threading
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.inflight import BlobFetcher, FetchFailed
from flask_dependency_proxy.storage import FilesystemStore


class FakeStream:
    """Stands in for an upstream response: yields ``data`` in pieces."""

    def __init__(self, data: bytes, offset: int = 0, gate: threading.Event | None = None):
        self.data = data[offset:]
        self.offset = offset
        self.size: int | None = len(data)
        self.gate = gate

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(0, len(self.data), 1000):
            if self.gate is not None:
                self.gate.wait(5)
            yield self.data[start : start + 1000]

    def close(self) -> None:
        pass


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_tiny_blobs_are_always_followed_to_the_end(tmp_path: Path) -> None:
    """A follower that opens the staging file just as the fetch commits it still gets
    the whole blob (the rename and the 'committed' flag are not one step)."""
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    for n in range(300):
        data = b"config %d " % n * 50
        digest = _digest(data)
        fetch = fetcher.fetch(digest, lambda offset, data=data: FakeStream(data, offset))  # type: ignore[misc]
        assert fetch is not None
        assert b"".join(fetch.follow(store)) == data
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == []


def test_followers_share_one_fetch_and_the_commit(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 400
    digest = _digest(data)
    gate = threading.Event()
    opened: list[int] = []

    def open_upstream(offset: int) -> FakeStream:
        opened.append(offset)
        return FakeStream(data, offset, gate)

    first = fetcher.fetch(digest, open_upstream)
    second = fetcher.fetch(digest, open_upstream)
    assert first is second and first is not None
    recorded: list[int] = []
    first.on_commit(recorded.append)
    gate.set()
    assert b"".join(first.follow(store)) == data
    assert b"".join(second.follow(store)) == data
    assert opened == [0]
    assert store.size(digest) == len(data)
    assert recorded == [len(data)]
    # Once committed, there is nothing left to fetch.
    assert fetcher.fetch(digest, open_upstream) is None


def test_wrong_bytes_are_never_committed(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = b"x" * 5000
    digest = _digest(b"something else")
    fetch = fetcher.fetch(digest, lambda offset: FakeStream(data, offset))
    assert fetch is not None
    with pytest.raises(FetchFailed):
        b"".join(fetch.follow(store))
    assert store.size(digest) is None
