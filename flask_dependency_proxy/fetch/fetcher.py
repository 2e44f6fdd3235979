"""One upstream fetch per blob digest, streamed to every client that asks meanwhile.

A fetch runs in its own thread: it copies upstream bytes into the digest's local spool
file (:meth:`~.blobstore.BlobStore.stage`), hashes them on the way, and commits only a
verified digest. Clients never read
the upstream response themselves; they follow the spool file as it grows, so the
first client and the tenth are served alike, and a client that hangs up does not abort
a fetch others are waiting for.

Across the processes of a host (gunicorn workers) an exclusive ``flock`` on the
digest's lock file elects the one process that fetches. The holder writes the fetch's
state (size, then how it ended) into the lock file; other processes follow the same
spool file and read the outcome there when the lock is released.

Nobody can tell a wrong blob from a right one before its last byte is hashed, so every
follower holds its last chunk back until the fetch is verified: a blob that fails its
digest (or breaks, or cannot be stored) always reaches clients as a broken transfer,
never as a complete response, and a small blob that fails before a byte was sent
answers with a registry error instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import typing as t
import weakref

import requests
import urllib3.exceptions

from ..blocking import Pending, in_background, off_the_loop
from ..metrics import Metrics
from ..stores.base import BlobStore, StagedBlob, StorageError

if t.TYPE_CHECKING:
    from .fleet import FleetSource
from ..stores.filesystem import open_for_reading, open_lock_file
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError, UpstreamNotFound
from ..upstream.registry import BlobStream

log = logging.getLogger(__name__)

#: Bytes handed to the WSGI server per ``yield`` when following a fetch.
_READ_CHUNK = 1024 * 1024
#: What a broken upstream transfer raises from the middle of a response body.
_TRANSFER_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)
#: Longest wait for a fetch whose spool file just disappeared to say how it ended.
_FINISH_WAIT_SECONDS = 30.0
#: How often a reader in another process looks for new bytes or the end of the fetch.
_POLL_SECONDS = 0.01
#: Longest wait of a reader that got a whole, verified blob for the store's commit.
_COMMIT_WAIT_SECONDS = 600.0


class FetchFailed(Exception):
    """The fetch a client was following broke; whatever it already received is not valid.

    Its ``__cause__`` says why when it is known: a :class:`StorageError`, an
    :class:`UpstreamDigestMismatch` or another :class:`UpstreamError`.
    """

    @property
    def reason(self) -> str:
        """``storage``, ``digest_mismatch``, ``too_large`` or ``upstream``: what broke
        the fetch."""
        cause = self.__cause__
        if isinstance(cause, StorageError):
            return "storage"
        if isinstance(cause, UpstreamDigestMismatch):
            return "digest_mismatch"
        if isinstance(cause, BlobTooLarge):
            return "too_large"
        return "upstream"


class UpstreamSizeError(UpstreamError):
    """Upstream sent more bytes than it announced, or announced two sizes for one blob.

    Not resumed: the fetch is aborted before the extra bytes are written.
    """


class BlobTooLarge(UpstreamError):
    """The blob is larger than ``DEPENDENCY_PROXY_MAX_BLOB_SIZE``: refused before a byte
    is written when upstream announces its size, cut off (never committed) when the
    limit is only passed while it streams. Not resumed.

    :param digest: the blob.
    :param size: its size, when upstream announced it.
    :param limit: the limit in bytes, for the message a client sees.
    """

    def __init__(self, digest: str, *, size: int | None, limit: int) -> None:
        what = "while it streamed" if size is None else f"with {size} bytes"
        super().__init__(f"blob {digest} passed the limit of {limit} bytes {what}")
        self.digest = digest
        self.size = size
        self.limit = limit


class Fetch(t.Protocol):
    """What a request needs from a fetch, whichever process runs it."""

    digest: str
    size: int | None
    #: The status of the upstream answer this process's fetch streams, ``None`` when
    #: another process or host fetches it.
    upstream_status: int | None

    def on_commit(self, callback: t.Callable[[int], None]) -> None: ...

    def follow(self, store: BlobStore, *, until_committed: bool = False) -> t.Iterator[bytes]: ...


class LocalFetch:
    """A fetch run by a thread of this process; readers wait on a condition variable."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.size: int | None = None
        self.upstream_status: int | None = None
        self.spool_path: str | None = None
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
        #: The spool file, opened for reading before its first byte; what followers read.
        self._reader: t.BinaryIO | None = None

    def update(self, **changes: t.Any) -> None:
        with self._condition:
            for key, value in changes.items():
                setattr(self, key, value)
            self._condition.notify_all()

    def staged(self, spool_path: str, *, size: int | None, upstream_status: int | None) -> None:
        """Upstream answered and the spool file exists: followers may start.

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
            reader = open_for_reading(spool_path)
        except OSError as exc:
            raise StorageError.from_os_error(exc, spool_path) from exc
        weakref.finalize(self, reader.close)
        with self._condition:
            self._reader = reader
            self.spool_path = spool_path
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

    def on_commit(self, callback: t.Callable[[int], None]) -> None:
        with self._condition:
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

    def follow(self, store: BlobStore, *, until_committed: bool = False) -> t.Iterator[bytes]:
        """Yield the blob's bytes as the fetch writes them, the last chunk only once the
        fetch has verified the digest (and, with ``until_committed``, committed it: what
        another host that shares the store waits for). A client does not wait for the
        store's commit, which on object storage is the end of an upload.

        :raises FetchFailed: if the fetch breaks; the response must then be aborted so
            the client sees a truncated transfer, never a wrong blob.
        """
        return _held_back(self._follow(store, until_committed))

    def _follow(self, store: BlobStore, until_committed: bool) -> t.Iterator[bytes]:
        reader = self._reader
        if reader is None:
            yield from self._stored(store)
            return
        position = 0
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
            if verified and not until_committed and position == available:
                return
            if finished:
                if not committed:
                    raise FetchFailed(f"fetch of {self.digest} was not committed")
                return

    def _stored(self, store: BlobStore) -> t.Iterator[bytes]:
        """The outcome of a fetch that staged nothing (it failed before upstream's first
        byte): the committed blob if there is one, else the failure."""
        with self._condition:
            self._condition.wait_for(lambda: self.finished, _FINISH_WAIT_SECONDS)
        if not self.committed:
            raise FetchFailed(f"fetch of {self.digest} failed") from self.error
        try:
            file = store.open(self.digest)
        except FileNotFoundError:
            raise FetchFailed(f"blob {self.digest} left the store before it was read") from None
        yield from _read_file(file)


class RemoteFetch:
    """A fetch run by another process of this host, followed through the spool and lock
    files."""

    def __init__(self, digest: str, size: int | None, lock_path: str) -> None:
        self.digest = digest
        self.size = size
        self.upstream_status: int | None = None
        self._lock_path = lock_path
        self._on_commit: list[t.Callable[[int], None]] = []

    def on_commit(self, callback: t.Callable[[int], None]) -> None:
        # Run once this reader has seen the whole, committed blob.
        self._on_commit.append(callback)

    def follow(self, store: BlobStore, *, until_committed: bool = False) -> t.Iterator[bytes]:
        """Like :meth:`LocalFetch.follow`, for a fetch that another process runs."""
        return _held_back(self._follow(store, until_committed))

    def _follow(self, store: BlobStore, until_committed: bool) -> t.Iterator[bytes]:
        # The lock file of the fetch being followed: held while it runs, and where its
        # holder leaves how it ended (still readable once unlinked).
        try:
            lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            # It has ended already: committed, or failed.
            yield from self._committed(store)
            return
        try:
            try:
                file = open_for_reading(store.spool_path(self.digest))
            except FileNotFoundError:
                file = None
            if file is None:
                # Committed (the spool file is gone once its blob is), or discarded.
                while _is_locked(lock_fd):
                    time.sleep(_POLL_SECONDS)
                if _published_state(lock_fd).get("committed") is None:
                    raise self._failed() from _published_error(lock_fd)
                yield from self._committed(store)
                return
            with file:
                position = 0
                while True:
                    chunk = file.read(_READ_CHUNK)
                    if chunk:
                        position += len(chunk)
                        yield chunk
                        continue
                    if _is_locked(lock_fd):
                        if not until_committed and (
                            _published_state(lock_fd).get("verified") == position
                        ):
                            # Whole and verified: the client has it; the blob is
                            # recorded for its group once the commit is done.
                            self._record_after_commit(os.dup(lock_fd), position)
                            return
                        time.sleep(_POLL_SECONDS)
                        continue
                    # The fetch ended: whatever it wrote is in the file by now.
                    while chunk := file.read(_READ_CHUNK):
                        position += len(chunk)
                        yield chunk
                    if _published_state(lock_fd).get("committed") != position:
                        raise self._failed() from _published_error(lock_fd)
                    for callback in self._on_commit:
                        callback(position)
                    return
        finally:
            os.close(lock_fd)

    def _record_after_commit(self, lock_fd: int, size: int) -> None:
        """Run the commit callbacks from a thread once the holder committed (``lock_fd``
        is this reader's own descriptor of the lock file, closed here)."""

        def wait() -> None:
            try:
                deadline = time.monotonic() + _COMMIT_WAIT_SECONDS
                while _is_locked(lock_fd) and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS * 5)
                committed = _published_state(lock_fd).get("committed") == size
            finally:
                os.close(lock_fd)
            if committed:
                for callback in self._on_commit:
                    try:
                        callback(size)
                    except Exception:
                        log.exception("recording blob %s failed", self.digest)

        if self._on_commit:
            threading.Thread(target=wait, name="blob-commit-wait", daemon=True).start()
        else:
            os.close(lock_fd)

    def _committed(self, store: BlobStore) -> t.Iterator[bytes]:
        """The committed blob, for a reader that came after the spool file was gone."""
        try:
            file = store.open(self.digest)
        except FileNotFoundError:
            raise self._failed() from None
        position = 0
        for chunk in _read_file(file):
            position += len(chunk)
            yield chunk
        for callback in self._on_commit:
            callback(position)

    def _failed(self) -> FetchFailed:
        return FetchFailed(f"fetch of {self.digest} in another process failed")


class BlobFetcher:
    """Starts fetches and lets concurrent requests for the same digest join them.

    :param store: where verified blobs are committed.
    :param start_timeout: seconds a client waits for upstream's first answer.
    :param resume_attempts: range requests made to finish a transfer that broke off.
    :param max_blob_size: largest blob fetched, in bytes; ``0`` sets no limit.
    :param fleet: where this host's fetches read from when several hosts share the
        database (:mod:`.coordination`); ``None`` always reads upstream.
    :param metrics: counts fetches in flight and the bytes they commit.
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        start_timeout: float = 60.0,
        resume_attempts: int = 2,
        max_blob_size: int = 0,
        fleet: FleetSource | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.metrics = metrics or Metrics()
        self.start_timeout = start_timeout
        self.resume_attempts = resume_attempts
        self.max_blob_size = max_blob_size
        self._fetches: dict[str, LocalFetch] = {}
        self._lock = threading.Lock()

    def fetch(self, digest: str, open_upstream: t.Callable[[int], BlobStream]) -> Fetch | None:
        """Join the fetch of ``digest`` in progress here or elsewhere, or start one.

        Returns once upstream has answered, so an upstream error (404, 5xx) reaches the
        client as a registry error rather than a broken body; returns ``None`` when the
        blob got committed meanwhile and can be served from the store.
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            with self._lock:
                local = self._fetches.get(digest)
                if local is None:
                    lock_fd = _try_lock(self.store.lock_path(digest))
                    if lock_fd is not None:
                        local = LocalFetch(digest)
                        self._fetches[digest] = local
                        threading.Thread(
                            target=self._run,
                            args=(local, open_upstream, lock_fd),
                            name=f"blob-fetch-{digest[7:19]}",
                            daemon=True,
                        ).start()
            if local is not None:
                local.wait_started(self.start_timeout)
                if local.already_stored:
                    return None
                return local
            remote = self._remote(digest)
            if remote is not None:
                return remote
            if self.store.size(digest) is not None:
                return None
            if time.monotonic() > deadline:
                raise UpstreamError("the fetch in another process did not start in time")
            time.sleep(_POLL_SECONDS)

    def _remote(self, digest: str) -> RemoteFetch | None:
        """The state another process published for its fetch; ``None`` while it has none
        (not started yet, or already finished)."""
        lock_path = self.store.lock_path(digest)
        try:
            with open_for_reading(lock_path) as file:
                text = file.read()
        except FileNotFoundError:
            return None
        if not text:
            return None
        try:
            state = json.loads(text)
        except ValueError:
            return None
        error = _error_from_state(digest, state)
        if error is not None:
            raise error
        size = state.get("size")
        return RemoteFetch(digest, size if isinstance(size, int) else None, lock_path)

    def join(self, digest: str) -> Fetch | None:
        """The fetch of ``digest`` running in this host, to follow without starting one
        (the peer route); ``None`` when there is none.

        :raises UpstreamError: the fetch running here failed.
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            with self._lock:
                local = self._fetches.get(digest)
            if local is not None:
                local.wait_started(self.start_timeout)
                return None if local.already_stored else local
            remote = self._remote(digest)
            if remote is not None:
                return remote
            try:
                with open_for_reading(self.store.lock_path(digest)) as file:
                    starting = not file.read() and _is_locked(file.fileno())
            except FileNotFoundError:
                return None
            if not starting or time.monotonic() > deadline:
                return None
            time.sleep(_POLL_SECONDS)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._fetches)

    def _run(
        self, fetch: LocalFetch, open_upstream: t.Callable[[int], BlobStream], lock_fd: int
    ) -> None:
        with self.metrics.fetch_in_flight():
            self._run_fetch(fetch, open_upstream, lock_fd)

    def _run_fetch(
        self, fetch: LocalFetch, open_upstream: t.Callable[[int], BlobStream], lock_fd: int
    ) -> None:
        lock_path = self.store.lock_path(fetch.digest)
        try:
            # Committed by a fetch that ended between this request's lookup and the lock.
            stored = self.store.size(fetch.digest)
            if stored is not None:
                fetch.update(already_stored=True, size=stored, written=stored, started=True)
                fetch.mark_committed()
                return
            if self.fleet is None:
                written = self._fetch_into_store(fetch, open_upstream, lock_fd, from_peer=None)
                self.metrics.upstream_fetched_bytes(written)
            else:
                opener = self.fleet.opener(fetch.digest, open_upstream)
                try:
                    written = self._fetch_into_store(
                        fetch, opener, lock_fd, from_peer=lambda: opener.from_peer
                    )
                    if not opener.from_peer:
                        self.metrics.upstream_fetched_bytes(written)
                finally:
                    opener.release()
            # Readers in other processes of this host read how it ended here.
            with contextlib.suppress(StorageError):
                _publish(lock_fd, {"size": fetch.size, "committed": written})
            for callback in fetch.mark_committed():
                try:
                    callback(written)
                except Exception:
                    log.exception("recording blob %s failed", fetch.digest)
        except BaseException as exc:  # noqa: B036 - every failure must release the readers
            if isinstance(exc, StorageError):
                log.error(
                    "blob store cannot take %s: %s (path %s, errno %s)",
                    fetch.digest,
                    exc,
                    exc.path,
                    exc.errno_name,
                )
            else:
                log.warning("fetch of %s failed: %s", fetch.digest, exc)
            failure = {"size": fetch.size, "error": _error_kind(exc)}
            if isinstance(exc, StorageError):
                failure["path"] = exc.path
            with contextlib.suppress(StorageError):
                _publish(lock_fd, failure)
            fetch.update(error=exc, finished=True)
        finally:
            with self._lock:
                self._fetches.pop(fetch.digest, None)
                _unlock(lock_path, lock_fd)

    def _fetch_into_store(
        self,
        fetch: LocalFetch,
        opener: t.Callable[[int], BlobStream],
        lock_fd: int,
        *,
        from_peer: t.Callable[[], bool] | None,
    ) -> int:
        """Stage, download, verify and commit the blob; the verified size. A staged blob
        that is not committed is discarded before this returns or raises, so it is gone
        before any reader hears of the failure.

        :param from_peer: whether the bytes now come from another host of the fleet,
            which commits them to the shared store itself.
        """
        stream = opener(0)
        try:
            self._check_size(fetch.digest, stream.size)
            self._check_space(fetch, stream.size)
            peer = from_peer is not None and from_peer()
            staged = self.store.stage(fetch.digest, stream.size, upload=not peer)
        except BaseException:
            stream.close()
            raise
        try:
            _publish(lock_fd, {"size": stream.size})
            fetch.staged(
                staged.spool_path,
                size=stream.size,
                upstream_status=None if peer else stream.status,
            )
            written = self._download(fetch, stream, staged, opener)
            # Every byte hashes to the digest: readers may finish before the commit.
            _publish(lock_fd, {"size": fetch.size, "verified": written})
            fetch.update(verified=True)
            if from_peer is not None and from_peer() and self.store.size(fetch.digest) == written:
                # The peer committed it to the store this host shares with it.
                staged.discard()
            else:
                staged.commit()
        except BaseException:
            _discard(staged)
            raise
        return written

    def _check_size(self, digest: str, size: int | None) -> None:
        """Refuse a blob whose announced ``size`` exceeds the limit, before a byte is
        written (the client gets a clean error, not a broken transfer).

        :raises BlobTooLarge:
        """
        if size is not None and self.max_blob_size and size > self.max_blob_size:
            raise BlobTooLarge(digest, size=size, limit=self.max_blob_size)

    def _check_space(self, fetch: LocalFetch, size: int | None) -> None:
        """Refuse a blob of announced ``size`` that the store has no room for, counting
        what this process's other fetches still have to write.

        :raises StorageError: before anything is written, so the client gets a clean
            error rather than a broken transfer.
        """
        if size is None:
            return
        with self._lock:
            pending = sum(
                max(other.size - other.written, 0)
                for other in self._fetches.values()
                if other is not fetch and other.size is not None
            )
        free = self.store.free_bytes()
        if free is not None and free - pending < size:
            raise StorageError(
                f"no room for {size} bytes: {free} free, {pending} promised to other fetches",
                path=self.store.spool_root,
                errno=errno.ENOSPC,
            )

    def _download(
        self,
        fetch: LocalFetch,
        stream: BlobStream,
        staged: StagedBlob,
        open_upstream: t.Callable[[int], BlobStream],
    ) -> int:
        """Copy, hash and publish upstream bytes; resume a broken transfer with a range
        request (up to ``resume_attempts`` times). Returns the verified size.

        :raises StorageError: a write failed; never retried upstream.
        :raises UpstreamSizeError: upstream sent more than it announced.
        :raises BlobTooLarge: upstream announced no size and sent more than the limit.
        """
        algorithm = fetch.digest.split(":", 1)[0]
        absorber = _Absorber(fetch, staged, hashlib.new(algorithm))
        size = stream.size
        resumes = 0
        while True:
            # One comparison per chunk: against the announced size (already checked
            # against the limit), else against the limit itself.
            bound = size if size is not None else (self.max_blob_size or None)
            try:
                try:
                    received = absorber.written
                    for chunk in stream:
                        received += len(chunk)
                        if bound is not None and received > bound:
                            raise self._overflow(fetch.digest, size)
                        absorber.absorb(chunk)
                finally:
                    stream.close()
                    # Every chunk received is in the spool file before anything else
                    # happens, even when the transfer broke (the resume starts there).
                    written = absorber.settle()
                if size is not None and written != size:
                    raise UpstreamError(f"upstream sent {written} of {size} bytes")
                break
            except (OSError, UpstreamError, *_TRANSFER_ERRORS) as exc:
                if isinstance(exc, UpstreamSizeError | BlobTooLarge):
                    raise
                if resumes >= self.resume_attempts or isinstance(exc, UpstreamNotFound):
                    raise UpstreamError(
                        f"upstream transfer of {fetch.digest} broke: {exc}"
                    ) from exc
                resumes += 1
                log.info("resuming %s at byte %d after: %s", fetch.digest, written, exc)
                stream = open_upstream(written)
                if stream.offset != written:
                    # Upstream ignored the range: start over in the same file, whose
                    # readers see the same bytes at the same offsets again.
                    try:
                        staged.restart()
                    except StorageError:
                        stream.close()
                        raise
                    absorber = _Absorber(fetch, staged, hashlib.new(algorithm))
                    written = 0
                if stream.size is not None and size is not None and stream.size != size:
                    stream.close()
                    raise UpstreamSizeError(
                        f"upstream announced {stream.size} bytes for {fetch.digest}, {size} before"
                    ) from exc
                size = stream.size if stream.size is not None else size
                try:
                    self._check_size(fetch.digest, size)
                except BlobTooLarge:
                    stream.close()
                    raise
        actual = f"{algorithm}:{absorber.hasher.hexdigest()}"
        if actual != fetch.digest:
            raise UpstreamDigestMismatch(f"upstream blob {fetch.digest} hashes to {actual}")
        return written

    def _overflow(self, digest: str, size: int | None) -> UpstreamError:
        """The error for a chunk that goes past the announced size, or the limit."""
        if size is not None:
            return UpstreamSizeError(f"upstream sent more than the {size} bytes it announced")
        return BlobTooLarge(digest, size=None, limit=self.max_blob_size)


class _Absorber:
    """Hashes a fetch's chunks and appends them to its spool file, each while the next
    one is received (one chunk in hand at most), and tells the fetch's readers as soon
    as a chunk is in the file."""

    def __init__(self, fetch: LocalFetch, staged: StagedBlob, hasher: t.Any) -> None:
        self.fetch = fetch
        self.staged = staged
        self.hasher = hasher
        #: Bytes hashed and in the spool file.
        self.written = 0
        self._pending: Pending[None] | None = None

    def absorb(self, chunk: bytes) -> None:
        """Start on ``chunk`` once the previous chunk is in."""
        self.settle()
        self._pending = in_background(self._absorb, chunk)

    def _absorb(self, chunk: bytes) -> None:
        off_the_loop(_absorb, self.hasher, self.staged, chunk)
        self.written += len(chunk)
        self.fetch.update(written=self.written)

    def settle(self) -> int:
        """Wait for the chunk in hand; the bytes written.

        :raises StorageError: the chunk could not be written.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.get()
        return self.written


def _absorb(hasher: t.Any, staged: StagedBlob, chunk: bytes) -> None:
    """Hash a chunk and append it to the spool file, visible to its readers at once."""
    hasher.update(chunk)
    staged.write(chunk)


def _discard(staged: StagedBlob) -> None:
    try:
        staged.discard()
    except Exception:
        log.exception("could not discard the staged blob %s", staged.spool_path)


def _try_lock(path: str) -> int | None:
    """Take the digest's fetch lock without waiting; the open descriptor, or ``None``."""
    while True:
        try:
            fd = open_lock_file(path)
        except OSError as exc:
            raise StorageError.from_os_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        # The previous holder unlinks the file before unlocking: a lock on an unlinked
        # file elects nobody, so start over on the file now at that path.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _publish(fd: int, state: dict[str, t.Any]) -> None:
    """Tell readers in other processes how the fetch started."""
    data = json.dumps(state).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:
        raise StorageError.from_os_error(exc, f"/proc/self/fd/{fd}") from exc


def _unlock(path: str, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)  # releases the flock


def _is_locked(fd: int) -> bool:
    """Whether a fetch still holds the lock file open as ``fd`` (same file, even once
    unlinked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _published_state(fd: int) -> dict[str, t.Any]:
    """What the holder of a fetch's lock file (open as ``fd``) wrote into it."""
    try:
        state = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _error_kind(exc: BaseException) -> str:
    """How a failed fetch is described in its lock file."""
    if isinstance(exc, StorageError):
        return "storage"
    if isinstance(exc, UpstreamNotFound):
        return "not_found"
    if isinstance(exc, UpstreamDigestMismatch):
        return "digest_mismatch"
    if isinstance(exc, BlobTooLarge):
        return f"too_large:{exc.limit}"
    return str(exc)[:200] or type(exc).__name__


def _error_from_state(digest: str, state: dict[str, t.Any]) -> Exception | None:
    """The exception that a failure published in a lock file stands for."""
    kind = state.get("error")
    if not kind:
        return None
    if kind == "not_found":
        return UpstreamNotFound(f"upstream has no blob {digest}", status=404)
    if kind == "storage":
        return StorageError(
            f"the fetch of {digest} in another process could not store it",
            path=state.get("path") or "",
        )
    if kind == "digest_mismatch":
        return UpstreamDigestMismatch(f"upstream blob {digest} does not match its digest")
    if isinstance(kind, str) and kind.startswith("too_large:") and kind[10:].isdigit():
        limit = int(kind[10:])
        return BlobTooLarge(digest, size=state.get("size"), limit=limit)
    return UpstreamError(f"upstream fetch of {digest} failed: {kind}")


def _published_error(fd: int) -> Exception | None:
    """The failure a fetch's holder left in its lock file (open as ``fd``), if any."""
    return _error_from_state("the blob", _published_state(fd))


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


def _read_file(file: t.BinaryIO) -> t.Iterator[bytes]:
    with file:
        while chunk := file.read(_READ_CHUNK):
            yield chunk
