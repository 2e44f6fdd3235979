"""One suite every store backend passes (:class:`~flask_dependency_proxy.stores.base.StoreBackend`:
the serving and staging face, and the sweeping face): the filesystem store, the object
store (against a real SeaweedFS, redirecting and streaming hits) and the in-memory store
the unit tests use.

What the rest of the package relies on, whatever keeps the blobs:

- staging: bytes written are in the local spool file at once; nothing is visible under
  the digest before :meth:`commit` (the fetcher commits only a verified digest), and a
  discarded or restarted blob leaves nothing of what it wrote;
- serving: a committed blob's size, its location (a local file, a redirect or a stream)
  and its exact bytes; a missing blob is ``None`` or ``FileNotFoundError``, never
  another error;
- sweeping: listing, set aside, restore (a newer copy wins), delete for good, and the
  spool files a killed fetch left.

Ranges are not part of the Protocol: a :class:`~flask_dependency_proxy.stores.base.LocalFile`
is sent by the web server, which answers them."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import itertools
import os
import time
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.stores.base import (
    BlobLocation,
    ByteStream,
    LocalFile,
    Redirect,
    StagedBlob,
    StoreBackend,
)
from flask_dependency_proxy.stores.filesystem import FilesystemStore
from tests.support.memorystore import MemoryStore

if t.TYPE_CHECKING:
    from tests.support.seaweedfs import SeaweedFS

#: Several chunks of a streamed hit, not a whole number of them.
DATA = os.urandom(3 * 64 * 1024 + 123)
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def conformance_bucket(seaweedfs: SeaweedFS) -> str:
    """One bucket for the module (SeaweedFS gives each bucket volumes of its own); each
    test's store has a prefix of its own in it."""
    return seaweedfs.new_bucket()


@pytest.fixture(
    params=[
        "filesystem",
        "memory",
        pytest.param("s3-redirect", marks=pytest.mark.process),
        pytest.param("s3-stream", marks=pytest.mark.process),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    if request.param == "filesystem":
        return FilesystemStore(str(tmp_path / "store"))
    if request.param == "memory":
        return MemoryStore(str(tmp_path / "local"))
    from flask_dependency_proxy.stores.s3 import S3Store

    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    return S3Store(
        seaweedfs.client,
        request.getfixturevalue("conformance_bucket"),
        f"conformance-{next(_prefixes)}",
        str(tmp_path / "local"),
        endpoint_url=seaweedfs.endpoint,
        redirect=request.param == "s3-redirect",
    )


def _digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _write(staged: StagedBlob, data: bytes, chunk: int = 50_000) -> None:
    for start in range(0, len(data), chunk):
        staged.write(data[start : start + chunk])


def _commit(store: StoreBackend, data: bytes, algorithm: str = "sha256") -> str:
    digest = _digest(data, algorithm)
    staged = store.stage(digest, len(data))
    _write(staged, data)
    staged.commit()
    return digest


def _served(location: BlobLocation) -> bytes:
    """The bytes a client of this location gets."""
    match location:
        case LocalFile(path=path):
            with open(path, "rb") as file:
                return file.read()
        case Redirect(url=url):
            answer = requests.get(url, timeout=10)
            answer.raise_for_status()
            return answer.content
        case ByteStream(open=open_blob):
            return b"".join(open_blob())
    raise AssertionError(f"not a BlobLocation: {location!r}")


def _gone(store: StoreBackend, digest: str) -> None:
    """Nothing is served under ``digest``."""
    assert store.size(digest) is None
    with pytest.raises(FileNotFoundError):
        store.open(digest)
    assert digest not in dict(store.committed())


# -- staging ---------------------------------------------------------------------------


def test_a_staged_blob_is_in_its_spool_file_at_once_and_visible_only_at_commit(
    store: StoreBackend,
) -> None:
    digest = _digest(DATA)
    staged = store.stage(digest, len(DATA))
    assert staged.spool_path == store.spool.path(digest)
    assert os.path.dirname(staged.spool_path) == store.spool.root

    _write(staged, DATA[:1000])
    with open(staged.spool_path, "rb") as follower:
        assert follower.read() == DATA[:1000], "followers read what is written at once"
        _write(staged, DATA[1000:])
        assert follower.read() == DATA[1000:]
    _gone(store, digest)

    staged.commit()

    assert store.size(digest) == len(DATA)
    assert store.recorded_size(digest, len(DATA)) == len(DATA)
    with store.open(digest) as file:
        assert file.read() == DATA
    assert _served(store.locate(digest, len(DATA))) == DATA
    assert digest in dict(store.committed())
    assert store.usage() == (1, len(DATA))


def test_a_discarded_blob_leaves_nothing(store: StoreBackend) -> None:
    digest = _digest(DATA)
    staged = store.stage(digest, len(DATA))
    _write(staged, DATA)

    staged.discard()
    staged.discard()  # idempotent

    _gone(store, digest)
    assert not os.path.exists(staged.spool_path)
    assert store.usage() == (0, 0)
    assert store.remove_stale_staging(utcnow() + dt.timedelta(hours=1)) == 0


def test_a_restarted_blob_keeps_only_what_was_written_after(store: StoreBackend) -> None:
    digest = _digest(DATA)
    staged = store.stage(digest, len(DATA))
    _write(staged, b"bytes upstream sent before it ignored a range")
    staged.restart()
    _write(staged, DATA)
    staged.commit()
    with store.open(digest) as file:
        assert file.read() == DATA


def test_staging_replaces_the_spool_file_a_killed_fetch_left(store: StoreBackend) -> None:
    digest = _digest(DATA)
    with open(store.spool.path(digest), "wb") as left:
        left.write(b"half of a blob from a fetch that was killed")
    staged = store.stage(digest, len(DATA))
    _write(staged, DATA)
    staged.commit()
    with store.open(digest) as file:
        assert file.read() == DATA


def test_a_blob_of_unknown_size_and_an_empty_blob_commit(store: StoreBackend) -> None:
    digest = _digest(DATA)
    staged = store.stage(digest, None)
    _write(staged, DATA)
    staged.commit()
    assert store.size(digest) == len(DATA)

    empty = _commit(store, b"")
    assert store.size(empty) == 0
    assert _served(store.locate(empty, 0)) == b""


def test_sha512_digests_are_stored_and_listed(store: StoreBackend) -> None:
    digest = _commit(store, DATA, "sha512")
    assert store.size(digest) == len(DATA)
    assert digest in dict(store.committed())
    assert _served(store.locate(digest, len(DATA))) == DATA


def test_a_commit_again_keeps_the_same_bytes(store: StoreBackend) -> None:
    """Two hosts may fetch and commit the same digest: the second commit is harmless."""
    digest = _commit(store, DATA)
    assert _commit(store, DATA) == digest
    assert store.usage() == (1, len(DATA))


def test_each_digest_has_its_own_lock_file_that_can_be_locked(store: StoreBackend) -> None:
    first, second = _digest(b"one"), _digest(b"two")
    assert store.spool.lock_path(first) != store.spool.lock_path(second)
    fd = os.open(store.spool.lock_path(first), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# -- serving ---------------------------------------------------------------------------


def test_a_missing_blob_is_none_or_file_not_found(store: StoreBackend) -> None:
    digest = _digest(b"never stored")
    _gone(store, digest)
    assert store.delete(digest) is False
    # A store that cannot tell without a round trip trusts the row: opening tells.
    assert store.recorded_size(digest, 12) in (None, 12)


def test_a_deleted_blob_is_gone_and_its_location_fails_with_file_not_found(
    store: StoreBackend,
) -> None:
    digest = _commit(store, DATA)
    location = store.locate(digest, len(DATA))

    assert store.delete(digest) is True
    assert store.delete(digest) is False

    _gone(store, digest)
    match location:
        case ByteStream(open=open_blob):
            with pytest.raises(FileNotFoundError):
                b"".join(open_blob())
        case LocalFile(path=path):
            assert not os.path.exists(path)
        case Redirect(url=url):
            assert requests.get(url, timeout=10).status_code == 404


def test_a_healthy_store_passes_its_check(store: StoreBackend) -> None:
    store.check()
    free = store.free_bytes()
    assert free is None or free > 0
    assert isinstance(store.describe(), str) and store.describe()


# -- sweeping --------------------------------------------------------------------------


def test_committed_lists_every_blob_with_its_commit_time(store: StoreBackend) -> None:
    before = time.time() - 60
    digests = {_commit(store, DATA), _commit(store, b"small")}
    listed = dict(store.committed())
    assert set(listed) == digests
    assert all(before < moment < time.time() + 60 for moment in listed.values())
    assert store.usage() == (2, len(DATA) + len(b"small"))


def test_a_set_aside_blob_is_not_served_and_can_be_put_back(store: StoreBackend) -> None:
    digest = _commit(store, DATA)
    stamp = dt.datetime(2030, 1, 2, 3, 4, 5, 678000)

    assert store.set_aside(digest, stamp) is True

    _gone(store, digest)
    [(listed, when, handle)] = list(store.set_aside_blobs())
    assert (listed, when) == (digest, stamp)
    assert store.restore(digest, handle) is True
    assert list(store.set_aside_blobs()) == []
    with store.open(digest) as file:
        assert file.read() == DATA
    assert store.set_aside(_digest(b"not stored"), stamp) is False


def test_a_set_aside_blob_is_deleted_for_good(store: StoreBackend) -> None:
    digest = _commit(store, DATA)
    store.set_aside(digest, utcnow())
    [(_digest_, _when, handle)] = list(store.set_aside_blobs())

    assert store.delete_set_aside(handle) == len(DATA)
    assert store.delete_set_aside(handle) is None

    assert list(store.set_aside_blobs()) == []
    _gone(store, digest)
    assert store.restore(digest, handle) is False


def test_a_copy_committed_meanwhile_wins_over_a_restore(store: StoreBackend) -> None:
    digest = _commit(store, DATA)
    store.set_aside(digest, utcnow())
    [(_digest_, _when, handle)] = list(store.set_aside_blobs())
    _commit(store, DATA)

    assert store.restore(digest, handle) is False

    assert list(store.set_aside_blobs()) == [], "the set-aside copy is dropped"
    with store.open(digest) as file:
        assert file.read() == DATA


def test_stale_spool_files_are_removed_and_fresh_ones_kept(store: StoreBackend) -> None:
    stale = store.spool.path(_digest(b"killed fetch"))
    fresh = store.spool.path(_digest(b"running fetch"))
    for path in (stale, fresh):
        with open(path, "wb") as file:
            file.write(b"part of a blob")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    removed = store.remove_stale_staging(utcnow() - dt.timedelta(hours=1))

    assert removed == 1
    assert (os.path.exists(stale), os.path.exists(fresh)) == (False, True)
