"""The election of the process of a host that fetches a digest, and the state its
holder publishes in the lock file for the other processes (:mod:`.fetch.host_lock`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from flask_dependency_proxy.fetch.errors import BlobTooLarge
from flask_dependency_proxy.fetch.host_lock import HostLock, LockWatch, Published
from flask_dependency_proxy.stores.base import StorageError
from flask_dependency_proxy.stores.spool import Spool
from flask_dependency_proxy.upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
)

DIGEST = "sha256:" + hashlib.sha256(b"a blob").hexdigest()


def test_one_holder_at_a_time_and_a_new_file_for_the_next(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    first = HostLock.acquire(spool, DIGEST)
    assert first is not None
    assert HostLock.acquire(spool, DIGEST) is None, "a second descriptor is not elected"
    other = HostLock.acquire(spool, "sha256:" + "0" * 64)
    assert other is not None, "each digest has a lock of its own"
    other.release()

    watch = LockWatch.open(spool, DIGEST)
    assert watch is not None
    first.release()

    assert not os.path.exists(spool.lock_path(DIGEST)), "released means unlinked"
    with watch:
        assert not watch.held()
    second = HostLock.acquire(spool, DIGEST)
    assert second is not None
    second.release()
    assert LockWatch.open(spool, DIGEST) is None


def test_followers_read_each_state_and_the_last_one_after_the_release(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    lock = HostLock.acquire(spool, DIGEST)
    assert lock is not None
    watch = LockWatch.open(spool, DIGEST)
    assert watch is not None
    with watch:
        assert watch.held(), "upstream not answered yet"
        assert watch.published() is None and watch.state() == Published()

        lock.publish(Published(size=1234))
        assert watch.published() == Published(size=1234)
        lock.publish(Published(size=1234, verified=1234))
        assert watch.state().verified == 1234 and watch.state().committed is None
        lock.publish(Published(size=1234, committed=1234))
        lock.release()

        assert not watch.held()
        assert watch.state() == Published(size=1234, committed=1234)
        assert watch.failure() is None


@pytest.mark.parametrize(
    "error",
    [
        StorageError("disk full", path="/spool/x.partial"),
        UpstreamNotFound("gone", status=404),
        UpstreamDigestMismatch("wrong bytes"),
        BlobTooLarge(DIGEST, size=5000, limit=4096),
        UpstreamError("upstream answered 502"),
    ],
)
def test_a_failure_reaches_followers_as_the_same_kind_of_error(
    tmp_path: Path, error: Exception
) -> None:
    spool = Spool(str(tmp_path))
    lock = HostLock.acquire(spool, DIGEST)
    assert lock is not None
    watch = LockWatch.open(spool, DIGEST)
    assert watch is not None
    lock.publish(Published.failure(5000, error))
    lock.release()

    with watch:
        state = watch.published()
    assert state is not None and state.committed is None
    seen = state.error_for(DIGEST)
    assert type(seen) is type(error)
    if isinstance(error, StorageError):
        assert isinstance(seen, StorageError) and seen.path == error.path
    if isinstance(error, BlobTooLarge):
        assert isinstance(seen, BlobTooLarge)
        assert (seen.size, seen.limit) == (5000, 4096)
    if type(error) is UpstreamError:
        assert "upstream answered 502" in str(seen)


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'"text"', b'{"size": "big"}'])
def test_a_lock_file_with_something_else_in_it_tells_nothing(
    tmp_path: Path, content: bytes
) -> None:
    spool = Spool(str(tmp_path))
    Path(spool.lock_path(DIGEST)).write_bytes(content)
    watch = LockWatch.open(spool, DIGEST)
    assert watch is not None
    with watch:
        state = watch.published()
    assert state is None or state == Published()
    assert (state or Published()).error_for(DIGEST) is None


def test_a_symbolic_link_in_place_of_a_lock_file_is_refused(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.symlink(target, spool.lock_path(DIGEST))
    with pytest.raises(StorageError):
        HostLock.acquire(spool, DIGEST)
