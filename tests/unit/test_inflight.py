"""Blob fetches with an in-memory upstream: commit, failure, followers that arrive at
every moment of a fetch, the end of a body held back until its digest is verified, and
a store without room."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import logging
import os
import threading
import time
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.fetch.errors import CommittedBlobGone, FetchFailed, UpstreamSizeError
from flask_dependency_proxy.fetch.fetcher import BlobFetcher, Committed
from flask_dependency_proxy.fetch.following import LocalFetch, RemoteFetch
from flask_dependency_proxy.fetch.host_lock import HostLock, Published
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.stores.base import BlobStore
from flask_dependency_proxy.stores.filesystem import FilesystemStore, StorageError
from flask_dependency_proxy.stores.s3 import S3Store


class FakeStream:
    """Stands in for an upstream response: yields ``data`` in pieces."""

    def __init__(self, data: bytes, offset: int = 0, gate: threading.Event | None = None):
        self.data = data[offset:]
        self.offset = offset
        self.status = 206 if offset else 200
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
    # The last commit may follow the last follower by a moment.
    _wait(lambda: fetcher.in_flight() == 0)
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
    _wait(lambda: fetcher.in_flight() == 0)
    assert store.size(digest) == len(data)
    assert recorded == [len(data)]
    # Once committed, there is nothing left to fetch.
    assert fetcher.fetch(digest, open_upstream) == Committed(len(data))


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


# -- holding the end back until the digest is verified -----------------------------------


class GatedEnd:
    """An upstream response that sends all of ``data`` and then waits for ``end``
    before it ends: the fetch has every byte but cannot verify it yet."""

    def __init__(self, data: bytes, end: threading.Event) -> None:
        self.data = data
        self.offset = 0
        self.status = 200
        self.size: int | None = len(data)
        self.end = end
        self.closed = False

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(0, len(self.data), 64 * 1024):
            yield self.data[start : start + 64 * 1024]
        self.end.wait(5)

    def close(self) -> None:
        self.closed = True


class Reader:
    """Follows a fetch in a thread, recording what it received and how it ended."""

    def __init__(self, chunks: t.Iterator[bytes]) -> None:
        self.received = bytearray()
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(chunks,), daemon=True).start()

    def _run(self, chunks: t.Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                self.received += chunk
        except BaseException as exc:  # noqa: B036 - recorded for the test to check
            self.error = exc
        finally:
            self.done.set()


def _wait(condition: t.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.mark.parametrize("right_bytes", [True, False])
def test_followers_get_the_last_chunk_only_once_the_blob_is_verified(
    tmp_path: Path, right_bytes: bool
) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 12_000  # about 3 MiB: several chunks for the reader
    digest = _digest(data if right_bytes else data[:-1] + b"?")
    end = threading.Event()
    fetch = fetcher.fetch(digest, lambda offset: GatedEnd(data, end))
    assert fetch is not None
    reader = Reader(fetch.follow(store))

    _wait(lambda: fetch.written == len(data))  # type: ignore[attr-defined]
    time.sleep(0.2)
    # Every byte is on disk, but the follower keeps the last chunk in hand.
    assert not reader.done.is_set()
    assert 0 < len(reader.received) < len(data)
    end.set()
    assert reader.done.wait(5)

    if right_bytes:
        assert reader.error is None
        assert bytes(reader.received) == data
    else:
        assert isinstance(reader.error, FetchFailed)
        assert reader.error.reason == "digest_mismatch"
        assert len(reader.received) < len(data)
        assert store.size(digest) is None


def test_small_wrong_blob_fails_before_its_first_byte(tmp_path: Path) -> None:
    """A blob that fits in one chunk is held back whole: the response can still be an
    error instead of a body."""
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = b"small config" * 50
    digest = _digest(b"what it should have been")
    fetch = fetcher.fetch(digest, lambda offset: FakeStream(data[:900], offset))
    assert fetch is not None
    chunks = fetch.follow(store)
    with pytest.raises(FetchFailed) as failed:
        next(chunks)
    assert failed.value.reason == "digest_mismatch"


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    """The filesystem store, or the object store on the session's SeaweedFS."""
    if kind == "filesystem":
        return FilesystemStore(str(tmp_path))
    seaweedfs = request.getfixturevalue("seaweedfs")
    return S3Store(
        seaweedfs.client,
        seaweedfs.new_bucket(),
        "cache",
        str(tmp_path / "local"),
        endpoint_url=seaweedfs.endpoint,
        part_bytes=5 * 1024 * 1024,
    )


@pytest.mark.parametrize("kind", ["filesystem", pytest.param("s3", marks=pytest.mark.process)])
def test_follower_that_comes_after_cleanup_took_the_committed_blob_still_gets_it(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """A client joins a fetch; before it reads a byte, the fetch commits and a cleanup
    without a grace period sets the blob aside (no row claims it yet, or a purge just
    dropped the row). The client still gets the bytes the fetch verified for it."""
    store = _store(kind, tmp_path, request)
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 400
    digest = _digest(data)
    fetch = fetcher.fetch(digest, lambda offset: FakeStream(data, offset))
    assert isinstance(fetch, LocalFetch)
    _wait(lambda: fetcher.in_flight() == 0, timeout=30)
    assert store.set_aside(digest, utcnow())
    assert store.size(digest) is None
    assert not os.path.exists(store.spool.path(digest))

    assert b"".join(fetch.follow(store)) == data


def test_followers_of_one_fetch_record_it_once_per_key(tmp_path: Path) -> None:
    """A hundred clients of a group follow one fetch: the blob is recorded for the group
    once when it commits, not once per client (each a write to the same row)."""
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 40
    digest = _digest(data)
    end = threading.Event()
    fetch = fetcher.fetch(digest, lambda offset: GatedEnd(data, end))
    assert isinstance(fetch, LocalFetch)
    recorded: list[tuple[str, int]] = []
    for group in ("a", "b") * 50:
        fetch.on_commit(lambda size, group=group: recorded.append((group, size)), key=group)
    fetch.on_commit(lambda size: recorded.append(("no key", size)))
    end.set()
    _wait(lambda: fetcher.in_flight() == 0)

    assert sorted(recorded) == [("a", len(data)), ("b", len(data)), ("no key", len(data))]
    # After the commit a new key is called at once, a known one not again.
    fetch.on_commit(lambda size: recorded.append(("c", size)), key="c")
    fetch.on_commit(lambda size: recorded.append(("a", size)), key="a")
    assert recorded[-1] == ("c", len(data)) and len(recorded) == 4


def test_follower_of_another_process_is_not_misled_by_a_later_lock_holder(
    tmp_path: Path,
) -> None:
    """A client joins the fetch another process runs; the fetch commits, and a third
    request takes the digest's (new) lock file only to find the blob committed. The
    client follows the fetch it joined, which committed, not the later holder, which
    publishes nothing and would look like a failed fetch."""
    store = FilesystemStore(str(tmp_path))
    holder, other = BlobFetcher(store), BlobFetcher(store)
    data = bytes(range(250))
    digest = _digest(data)
    end = threading.Event()
    assert isinstance(holder.fetch(digest, lambda offset: GatedEnd(data, end)), LocalFetch)
    remote = other.fetch(digest, lambda offset: pytest.fail("a second fetch"))
    assert isinstance(remote, RemoteFetch)
    end.set()
    _wait(lambda: holder.in_flight() == 0)
    later = HostLock.acquire(store.spool, digest)
    assert later is not None

    reader = Reader(remote.follow(store))
    time.sleep(0.1)
    later.release()

    assert reader.done.wait(5)
    assert reader.error is None
    assert bytes(reader.received) == data


def test_follower_of_another_process_finds_the_blob_taken_since_the_commit(
    tmp_path: Path,
) -> None:
    """A client joins the fetch another process runs; before it reads a byte, the fetch
    commits and a cleanup sets the blob aside (a purge dropped its row). The follower
    says the blob is gone (a ``FileNotFoundError``, which the view answers by fetching
    again), not that the fetch failed: it did not."""
    store = FilesystemStore(str(tmp_path))
    holder, other = BlobFetcher(store), BlobFetcher(store)
    data = bytes(range(256)) * 400
    digest = _digest(data)
    end = threading.Event()
    fetch = holder.fetch(digest, lambda offset: GatedEnd(data, end))
    assert isinstance(fetch, LocalFetch)
    remote = other.fetch(digest, lambda offset: pytest.fail("a second fetch"))
    assert isinstance(remote, RemoteFetch)
    end.set()
    _wait(lambda: holder.in_flight() == 0)
    assert store.size(digest) == len(data)
    assert store.set_aside(digest, utcnow())

    with pytest.raises(CommittedBlobGone):
        next(remote.follow(store))
    with pytest.raises(FileNotFoundError):
        next(RemoteFetch(digest, len(data)).follow(store))


class CountingStore(FilesystemStore):
    """A store that counts the times it is asked whether a blob is committed, each
    answer taking a moment, as an object store's ``HEAD`` does."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.asked = 0

    def size(self, digest: str) -> int | None:
        self.asked += 1
        time.sleep(0.05)
        return super().size(digest)


def test_a_herd_asking_whether_a_blob_is_committed_gets_one_answer_of_the_store(
    tmp_path: Path,
) -> None:
    store = CountingStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    digest = _digest(b"not committed")
    start = threading.Barrier(20)
    answers: list[int | None] = []

    def ask() -> None:
        start.wait(5)
        answers.append(fetcher.committed_size(digest))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert answers == [None] * 20
    assert store.asked < 5


def test_a_request_waiting_for_another_process_to_hear_from_upstream_leaves_the_store_alone(
    tmp_path: Path,
) -> None:
    """Another process holds the digest's lock and waits for upstream's answer: nothing
    is committed meanwhile, so the waiting request does not ask the store (an object
    store's ``HEAD`` per waiting client and poll) until the fetch has started."""
    store = CountingStore(str(tmp_path))
    data = bytes(range(250))
    digest = _digest(data)
    other_process = HostLock.acquire(store.spool, digest)
    assert other_process is not None
    joined: list[object] = []
    waiter = threading.Thread(
        target=lambda: joined.append(
            BlobFetcher(store).fetch(digest, lambda offset: pytest.fail("a second fetch"))
        )
    )
    waiter.start()
    time.sleep(0.3)
    assert store.asked == 0

    other_process.publish(Published(size=len(data)))
    waiter.join(5)
    assert isinstance(joined[0], RemoteFetch)
    other_process.release()


@pytest.mark.parametrize("kind", ["filesystem", pytest.param("s3", marks=pytest.mark.process)])
def test_cleanup_keeps_the_spool_file_of_a_live_fetch_however_old_it_looks(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """A fetch holds its digest's lock while it runs, and its spool file may go unwritten
    for longer than cleanup's threshold (a slow upstream, a long upload at the commit).
    Cleanup removes only what killed fetches left: the live fetch still commits."""
    store = _store(kind, tmp_path, request)
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 400
    digest = _digest(data)
    end = threading.Event()
    fetch = fetcher.fetch(digest, lambda offset: GatedEnd(data, end))
    assert fetch is not None
    _wait(lambda: fetch.written == len(data))  # type: ignore[attr-defined]
    live, dead = store.spool.path(digest), store.spool.path(_digest(b"killed"))
    Path(dead).write_bytes(b"what a killed fetch left")
    two_hours_ago = time.time() - 2 * 3600
    for path in (live, dead):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert store.remove_stale_staging(utcnow() - dt.timedelta(hours=1)) == 1

    assert os.path.exists(live) and not os.path.exists(dead)
    end.set()
    assert b"".join(fetch.follow(store)) == data
    _wait(lambda: fetcher.in_flight() == 0, timeout=30)
    assert store.size(digest) == len(data)


@pytest.mark.parametrize("outcome", ["commit", "digest_mismatch", "storage"])
def test_follower_in_another_process_is_held_back_and_learns_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """A second fetcher on the same store stands for another worker: the lock is taken,
    so it follows the staging file and the lock file."""
    store = FilesystemStore(str(tmp_path))
    holder, other = BlobFetcher(store), BlobFetcher(store)
    data = bytes(range(256)) * 12_000
    digest = _digest(data if outcome != "digest_mismatch" else b"not these bytes")
    end = threading.Event()
    fetch = holder.fetch(digest, lambda offset: GatedEnd(data, end))
    assert isinstance(fetch, LocalFetch)
    remote = other.fetch(digest, lambda offset: pytest.fail("a second fetch"))
    assert isinstance(remote, RemoteFetch)
    assert remote.size == len(data)
    if outcome == "storage":
        # The commit (a rename into place) fails as on a read-only or full disk.
        def no_room(spool_path: str, digest: str) -> None:
            raise StorageError("cannot write", path=store.path(digest), errno=errno.ENOSPC)

        monkeypatch.setattr(store, "commit_file", no_room)
    committed: list[int] = []
    remote.on_commit(committed.append)
    reader = Reader(remote.follow(store))

    _wait(lambda: fetch.written == len(data))
    time.sleep(0.2)
    assert not reader.done.is_set()
    assert 0 < len(reader.received) < len(data)
    end.set()
    assert reader.done.wait(5)

    if outcome == "commit":
        assert reader.error is None
        assert bytes(reader.received) == data
        # A follower that had every verified byte before the commit records the blob
        # from a thread once the commit is done.
        _wait(lambda: committed == [len(data)])
    else:
        assert isinstance(reader.error, FetchFailed)
        assert reader.error.reason == outcome
        assert len(reader.received) < len(data)
        assert committed == []
        assert store.size(digest) is None


def test_remote_follower_does_not_take_another_fetchs_file_for_its_own(tmp_path: Path) -> None:
    """The fetch being followed fails and a later one commits a file of the same size:
    the bytes this follower read are still not that blob."""
    store = FilesystemStore(str(tmp_path))
    data = b"a" * 1_500_000
    digest = _digest(b"b" * len(data))
    lock = HostLock.acquire(store.spool, digest)
    assert lock is not None
    staged = store.stage(digest, len(data))
    staged.write(data)
    remote = RemoteFetch(digest, len(data))
    reader = Reader(remote.follow(store))
    _wait(lambda: len(reader.received) > 0)

    staged.discard()
    final = store.path(digest)
    os.makedirs(os.path.dirname(final))
    with open(final, "wb") as later:
        later.write(b"b" * len(data))
    lock.release()

    assert reader.done.wait(5)
    assert isinstance(reader.error, FetchFailed)
    assert len(reader.received) < len(data)


# -- bytes beyond the announced size ----------------------------------------------------


def test_bytes_beyond_the_announced_size_abort_the_fetch_unwritten(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    data = bytes(range(256)) * 20
    digest = _digest(data)
    opened: list[int] = []
    largest: list[int] = [0]
    stage = store.stage

    def watched_stage(digest: str, size: int | None, *, upload: bool = True) -> t.Any:
        staged = stage(digest, size)
        write = staged.write
        written = [0]

        def counting_write(chunk: bytes) -> None:
            write(chunk)
            written[0] += len(chunk)
            largest[0] = max(largest[0], written[0])

        staged.write = counting_write  # type: ignore[method-assign]
        return staged

    store.stage = watched_stage  # type: ignore[method-assign]

    def open_upstream(offset: int) -> FakeStream:
        opened.append(offset)
        stream = FakeStream(data + b"extra bytes" * 200, offset)
        stream.size = len(data)  # what upstream announced
        return stream

    fetch = fetcher.fetch(digest, open_upstream)
    assert fetch is not None
    with pytest.raises(FetchFailed) as failed:
        b"".join(fetch.follow(store))
    assert isinstance(failed.value.__cause__, UpstreamSizeError)
    assert opened == [0]  # not resumed
    assert largest[0] <= len(data)
    assert store.size(digest) is None
    assert list((tmp_path / "staging").iterdir()) == []


# -- storage full or failing ------------------------------------------------------------


def test_blob_larger_than_the_free_space_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    monkeypatch.setattr(store, "free_bytes", lambda: 4000)
    data = b"z" * 5000
    streams: list[FakeStream] = []

    def open_upstream(offset: int) -> FakeStream:
        streams.append(FakeStream(data, offset))
        return streams[-1]

    with pytest.raises(StorageError) as refused:
        fetcher.fetch(_digest(data), open_upstream)
    assert refused.value.errno == errno.ENOSPC
    assert refused.value.path == store.spool.root
    assert list((tmp_path / "staging").iterdir()) == []
    assert fetcher.in_flight() == 0


def test_space_promised_to_fetches_in_flight_counts_as_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store)
    monkeypatch.setattr(store, "free_bytes", lambda: 10_000)
    first = bytes(range(256)) * 24  # 6144 bytes, still to be written
    end = threading.Event()
    running = fetcher.fetch(_digest(first), lambda offset: FakeStream(first, offset, end))
    assert running is not None
    try:
        with pytest.raises(StorageError):
            fetcher.fetch(_digest(b"y" * 5000), lambda offset: FakeStream(b"y" * 5000, offset))
        # One that fits beside it is fetched.
        fits = fetcher.fetch(_digest(b"x" * 3000), lambda offset: FakeStream(b"x" * 3000, offset))
        assert fits is not None
        assert b"".join(fits.follow(store)) == b"x" * 3000
    finally:
        end.set()
    assert b"".join(running.follow(store)) == first


class FailingFile(io.FileIO):
    """A staging file on a disk that fills up after ``room`` bytes."""

    def __init__(self, path: str, room: int) -> None:
        super().__init__(path, "wb")
        self.room = room

    def write(self, data: t.Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_write_that_fails_aborts_the_fetch_without_retrying_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = FilesystemStore(str(tmp_path))
    fetcher = BlobFetcher(store, resume_attempts=3)
    data = bytes(range(256)) * 20
    digest = _digest(data)
    staging = store.spool.path(digest)
    monkeypatch.setattr(
        "flask_dependency_proxy.stores.spool.create_spool_file",
        lambda path: FailingFile(path, 2500),
    )
    opened: list[int] = []

    def open_upstream(offset: int) -> FakeStream:
        opened.append(offset)
        return FakeStream(data, offset)

    fetch = fetcher.fetch(digest, open_upstream)
    assert fetch is not None
    with caplog.at_level(logging.ERROR, logger="flask_dependency_proxy.fetch.fetcher"):
        with pytest.raises(FetchFailed) as failed:
            b"".join(fetch.follow(store))
        _wait(lambda: fetcher.in_flight() == 0)
    assert failed.value.reason == "storage"
    assert opened == [0]
    assert store.size(digest) is None
    assert not os.path.exists(staging)
    assert f"path {staging}, errno ENOSPC" in caplog.text
