"""The fetch objects a request follows: :class:`LocalFetch` (run by a thread of this
process) and :class:`RemoteFetch` (run by another process of this host).

Clients never read the upstream response themselves; they follow the digest's spool
file as it grows, so the first client and the tenth are served alike, and a client that
hangs up does not abort a fetch others are waiting for. A follower in another process
reads how the fetch goes, and how it ended, from the digest's lock file
(:mod:`.host_lock`).

Nobody can tell a wrong blob from a right one before its last byte is hashed, so every
follower holds its last chunk back until the fetch is verified: a blob that fails its
digest (or breaks, or cannot be stored) always reaches clients as a broken transfer,
never as a complete response, and a small blob that fails before a byte was sent
answers with a registry error instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
import weakref

from ..stores.base import BlobStore, StorageError
from ..stores.spool import Spool
from ..upstream.errors import UpstreamError
from .errors import CommittedBlobGone, FetchFailed
from .host_lock import LockWatch

log = logging.getLogger(__name__)

#: Bytes handed to the WSGI server per ``yield`` when following a fetch.
_READ_CHUNK = 1024 * 1024
#: Longest wait for a fetch whose spool file just disappeared to say how it ended.
_FINISH_WAIT_SECONDS = 30.0
#: How often a reader in another process looks for new bytes or the end of the fetch.
POLL_SECONDS = 0.01
#: Longest wait of a reader that got a whole, verified blob for the store's commit.
_COMMIT_WAIT_SECONDS = 600.0


class Fetch(t.Protocol):
    """What a request needs from a fetch, whichever process runs it."""

    digest: str
    size: int | None
    #: The status of the upstream answer this process's fetch streams, ``None`` when
    #: another process or host fetches it.
    upstream_status: int | None

    def on_commit(
        self, callback: t.Callable[[int], None], *, key: t.Hashable | None = None
    ) -> None: ...

    def follow(
        self, store: BlobStore, *, start: int = 0, until_committed: bool = False
    ) -> t.Iterator[bytes]: ...


class LocalFetch:
    """A fetch run by a thread of this process; readers wait on a condition variable."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.size: int | None = None
        self.upstream_status: int | None = None
        #: Committed before this fetch started (by a fetch that just ended elsewhere).
        self.already_stored = False
        self.error: BaseException | None = None
        self.written = 0
        self.started = False
        self.finished = False
        #: Every byte is in and hashes to the digest; the commit may still be running.
        self.verified = False
        self.committed = False
        self._condition = threading.Condition()
        self._on_commit: list[t.Callable[[int], None]] = []
        self._commit_keys: set[t.Hashable] = set()
        #: The spool file, opened for reading before its first byte; what followers read.
        self._reader: t.BinaryIO | None = None

    def update(self, **changes: t.Any) -> None:
        with self._condition:
            for key, value in changes.items():
                setattr(self, key, value)
            self._condition.notify_all()

    def staged(self, spool: Spool, *, size: int | None, upstream_status: int | None) -> None:
        """Upstream answered and the digest's spool file exists: followers may start.

        The file is opened for reading here, before a byte is in it, and followers read
        through that descriptor, never by its name: between joining the fetch and
        reading its first byte, a follower may see the commit rename the file (or upload
        and remove it) and a cleanup set the committed blob aside (a grace period of 0,
        or a purge that dropped the row), and it still gets the bytes this fetch
        verified. The descriptor is closed with this object, once the last follower
        is done with it.

        :raises StorageError: the spool file cannot be opened.
        """
        try:
            reader = spool.open(self.digest)
        except OSError as exc:
            raise StorageError.from_os_error(exc, spool.path(self.digest)) from exc
        weakref.finalize(self, reader.close)
        with self._condition:
            self._reader = reader
            self.size = size
            self.upstream_status = upstream_status
            self.started = True
            self._condition.notify_all()

    def wait_started(self, timeout: float) -> None:
        """Block until upstream answered (size known) or the fetch failed.

        :raises UpstreamError: the error that stopped the fetch before any byte arrived.
        """
        with self._condition:
            self._condition.wait_for(lambda: self.started or self.finished, timeout)
            if self.error is not None and not self.started:
                raise self.error
            if not (self.started or self.finished):
                raise UpstreamError("upstream did not answer in time")

    def mark_committed(self) -> list[t.Callable[[int], None]]:
        with self._condition:
            self.committed = True
            self.finished = True
            self._condition.notify_all()
            return list(self._on_commit)

    def on_commit(
        self, callback: t.Callable[[int], None], *, key: t.Hashable | None = None
    ) -> None:
        """Call ``callback`` with the size once the blob is committed (at once if it is).

        :param key: a callback with the key of an earlier one is dropped: the hundred
            followers of one fetch for a group record the blob once, not a hundred times.
        """
        with self._condition:
            if key is not None:
                if key in self._commit_keys:
                    return
                self._commit_keys.add(key)
            if not self.finished:
                self._on_commit.append(callback)
                return
            committed = self.committed
        if committed:
            callback(self.written)

    def _progressed(self, position: int, until_committed: bool) -> t.Callable[[], bool]:
        if until_committed:
            return lambda: self.written > position or self.finished
        return lambda: self.written > position or self.finished or self.verified

    def follow(
        self, store: BlobStore, *, start: int = 0, until_committed: bool = False
    ) -> t.Iterator[bytes]:
        """Yield the blob's bytes from ``start`` on as the fetch writes them (those
        before ``start`` are never read: a ranged request, a peer resuming), the last
        chunk only once the fetch has verified the digest (and, with
        ``until_committed``, committed it: what another host that shares the store waits
        for). A client does not wait for the store's commit, which on object storage is
        the end of an upload.

        :raises FetchFailed: if the fetch breaks, or ends before ``start``; the response
            must then be aborted so the client sees a truncated transfer, never a wrong
            blob.
        """
        return _held_back(self._follow(store, start, until_committed))

    def _follow(self, store: BlobStore, start: int, until_committed: bool) -> t.Iterator[bytes]:
        reader = self._reader
        if reader is None:
            yield from self._stored(store, start)
            return
        position = start
        while True:
            with self._condition:
                self._condition.wait_for(self._progressed(position, until_committed))
                available, finished, error = self.written, self.finished, self.error
                committed, verified = self.committed, self.verified
            if error is not None:
                raise FetchFailed(f"fetch of {self.digest} failed: {error}") from error
            while position < available:
                chunk = os.pread(reader.fileno(), min(available - position, _READ_CHUNK), position)
                if not chunk:
                    raise FetchFailed(f"spool file of {self.digest} ended early")
                position += len(chunk)
                yield chunk
            if position > available and (verified or finished):
                raise FetchFailed(f"blob {self.digest} ended before byte {start}")
            if verified and not until_committed and position == available:
                return
            if finished:
                if not committed:
                    raise FetchFailed(f"fetch of {self.digest} was not committed")
                return

    def _stored(self, store: BlobStore, start: int) -> t.Iterator[bytes]:
        """The outcome of a fetch that staged nothing (it failed before upstream's first
        byte): the committed blob if there is one, else the failure."""
        with self._condition:
            self._condition.wait_for(lambda: self.finished, _FINISH_WAIT_SECONDS)
        if not self.committed:
            raise FetchFailed(f"fetch of {self.digest} failed") from self.error
        try:
            file = store.open(self.digest)
        except FileNotFoundError:
            raise CommittedBlobGone(
                f"blob {self.digest} left the store before it was read"
            ) from None
        yield from _read_file(file, start)


class RemoteFetch:
    """A fetch run by another process of this host, followed through the spool and lock
    files."""

    def __init__(self, digest: str, size: int | None, lock: LockWatch | None = None) -> None:
        """:param lock: the lock file of the fetch to follow, as the caller found it
        running. Opened again by its path, the file might be a later holder's: one
        that took the lock after this fetch ended and found the blob committed, which
        publishes nothing, so its end would look like a failure."""
        self.digest = digest
        self.size = size
        self.upstream_status: int | None = None
        self._on_commit: list[t.Callable[[int], None]] = []
        self._lock = lock
        if lock is not None:
            weakref.finalize(self, lock.close)

    def on_commit(
        self, callback: t.Callable[[int], None], *, key: t.Hashable | None = None
    ) -> None:
        # Run once this reader has seen the whole, committed blob. Each reader has its
        # own object, so ``key`` has nothing to be compared with here.
        self._on_commit.append(callback)

    def follow(
        self, store: BlobStore, *, start: int = 0, until_committed: bool = False
    ) -> t.Iterator[bytes]:
        """Like :meth:`LocalFetch.follow`, for a fetch that another process runs."""
        return _held_back(self._follow(store, start, until_committed))

    def _follow(self, store: BlobStore, start: int, until_committed: bool) -> t.Iterator[bytes]:
        # The lock file of the fetch being followed: held while it runs, and where its
        # holder leaves how it ended (still readable once unlinked).
        lock, self._lock = self._lock, None
        if lock is None:
            lock = LockWatch.open(store.spool, self.digest)
        if lock is None:
            # It has ended already: committed, or failed.
            yield from self._committed(store, start)
            return
        with lock:
            try:
                file = store.spool.open(self.digest)
            except FileNotFoundError:
                file = None
            if file is None:
                # Committed (the spool file is gone once its blob is), or discarded.
                while lock.held():
                    time.sleep(POLL_SECONDS)
                if lock.state().committed is None:
                    raise self._failed() from lock.failure()
                yield from self._committed(store, start)
                return
            with file:
                # Reading past the end of the file waits, like reading at its end, for
                # the bytes to arrive.
                file.seek(start)
                position = start
                while True:
                    chunk = file.read(_READ_CHUNK)
                    if chunk:
                        position += len(chunk)
                        yield chunk
                        continue
                    if lock.held():
                        if not until_committed and lock.state().verified == position:
                            # Whole and verified: the client has it; the blob is
                            # recorded for its group once the commit is done.
                            self._record_after_commit(lock.duplicate(), position)
                            return
                        time.sleep(POLL_SECONDS)
                        continue
                    # The fetch ended: whatever it wrote is in the file by now.
                    while chunk := file.read(_READ_CHUNK):
                        position += len(chunk)
                        yield chunk
                    if lock.state().committed != position:
                        raise self._failed() from lock.failure()
                    for callback in self._on_commit:
                        callback(position)
                    return

    def _record_after_commit(self, lock: LockWatch, size: int) -> None:
        """Run the commit callbacks from a thread once the holder committed (``lock`` is
        this reader's own descriptor of the lock file, closed here)."""

        def wait() -> None:
            with lock:
                deadline = time.monotonic() + _COMMIT_WAIT_SECONDS
                while lock.held() and time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS * 5)
                committed = lock.state().committed == size
            if committed:
                for callback in self._on_commit:
                    try:
                        callback(size)
                    except Exception:
                        log.exception("recording blob %s failed", self.digest)

        if self._on_commit:
            threading.Thread(target=wait, name="blob-commit-wait", daemon=True).start()
        else:
            lock.close()

    def _committed(self, store: BlobStore, start: int) -> t.Iterator[bytes]:
        """The committed blob, for a reader that came after the spool file was gone.

        :raises CommittedBlobGone: it is not in the store (anymore): cleanup took it
            since the commit, or the fetch failed; fetching again tells which.
        """
        try:
            file = store.open(self.digest)
        except FileNotFoundError:
            raise CommittedBlobGone(
                f"blob {self.digest} fetched in another process is not in the store"
            ) from None
        position = start
        for chunk in _read_file(file, start):
            position += len(chunk)
            yield chunk
        for callback in self._on_commit:
            callback(position)

    def _failed(self) -> FetchFailed:
        return FetchFailed(f"fetch of {self.digest} in another process failed")


def _held_back(chunks: t.Iterator[bytes]) -> t.Iterator[bytes]:
    """Yield ``chunks`` one behind: the last one only once ``chunks`` has ended
    normally, which a follower does only for a verified, committed blob. A failure
    therefore always leaves the client short of the end of the body."""
    held: bytes | None = None
    for chunk in chunks:
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


def _read_file(file: t.BinaryIO, start: int = 0) -> t.Iterator[bytes]:
    """The bytes of ``file`` from ``start`` on, skipped by reading where it cannot seek
    (an object store's body).

    :raises FetchFailed: the file ends before ``start``.
    """
    with file:
        skip = start
        if skip and file.seekable():
            skip -= file.seek(min(start, file.seek(0, os.SEEK_END)))
        while skip and (chunk := file.read(min(skip, _READ_CHUNK))):
            skip -= len(chunk)
        if skip:
            raise FetchFailed(f"the blob ends before byte {start}")
        while chunk := file.read(_READ_CHUNK):
            yield chunk
