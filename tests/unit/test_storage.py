"""The blob store's files: private modes, and symbolic links planted in the store never
followed, neither when a fetch writes nor when a blob is read."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.fetch.fetcher import BlobFetcher
from flask_dependency_proxy.stores.filesystem import FilesystemStore, StorageError


class _Stream:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data[offset:]
        self.offset = offset
        self.status = 200
        self.size: int | None = len(data)

    def __iter__(self) -> t.Iterator[bytes]:
        yield self.data

    def close(self) -> None:
        pass


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _fetch(store: FilesystemStore, data: bytes) -> bytes:
    """The bytes a client gets; returns once the fetch has released its lock file too."""
    fetcher = BlobFetcher(store)
    fetch = fetcher.fetch(_digest(data), lambda offset: _Stream(data, offset))  # type: ignore[arg-type, return-value]
    assert fetch is not None
    received = b"".join(fetch.follow(store))
    deadline = time.monotonic() + 10
    while fetcher.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not fetcher.in_flight()
    return received


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_folders_and_files_are_private_to_the_process_user_and_group(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes are the store's own, not the umask's leftovers
    try:
        store = FilesystemStore(str(tmp_path / "store"))
        data = b"a layer" * 1000
        assert _fetch(store, data) == data
    finally:
        os.umask(old_umask)
    root = tmp_path / "store"
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.relative_to(root).as_posix() for p in files} == {
        "blobs/sha256/" + _digest(data)[7:9] + "/" + _digest(data)[7:]
    }
    assert {p.relative_to(root).as_posix(): _mode(p) for p in folders} == {
        p.relative_to(root).as_posix(): 0o750 for p in folders
    }
    assert [_mode(p) for p in files] == [0o640]


def test_a_link_planted_as_the_staging_file_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(str(tmp_path / "store"))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    data = b"blob bytes" * 500
    os.symlink(victim, store.spool.path(_digest(data)))

    assert _fetch(store, data) == data

    assert victim.read_bytes() == b"keep me"
    assert Path(store.path(_digest(data))).read_bytes() == data
    assert not Path(store.path(_digest(data))).is_symlink()


def test_a_link_in_place_of_a_committed_blob_counts_as_not_stored(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "store"))
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a blob")
    data = b"real blob" * 300
    digest = _digest(data)
    final = Path(store.path(digest))
    final.parent.mkdir(parents=True)
    os.symlink(secret, final)

    assert store.size(digest) is None
    with pytest.raises(FileNotFoundError):
        store.open(digest)
    assert store.recorded_size(digest, len(data)) is None
    # The fetch that follows replaces the link with the real blob.
    assert _fetch(store, data) == data
    assert not final.is_symlink() and final.read_bytes() == data
    assert secret.read_bytes() == b"not a blob"


def test_a_link_planted_as_the_lock_file_refuses_the_fetch(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "store"))
    target = tmp_path / "target"
    target.write_bytes(b"")
    data = b"locked out" * 100
    os.symlink(target, store.spool.lock_path(_digest(data)))

    with pytest.raises(StorageError) as raised:
        BlobFetcher(store).fetch(_digest(data), lambda offset: _Stream(data, offset))  # type: ignore[arg-type, return-value]

    assert raised.value.errno == errno.ELOOP
    assert target.read_bytes() == b""
    assert store.size(_digest(data)) is None
