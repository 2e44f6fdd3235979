"""One upstream fetch per blob digest, streamed to every client that asks meanwhile.

A fetch runs in its own thread: it copies upstream bytes into the digest's staging
file, hashes them on the way, and commits only a verified digest. Clients never read
the upstream response themselves; they follow the staging file as it grows, so the
first client and the tenth are served alike, and a client that hangs up does not abort
a fetch others are waiting for.

Across processes (gunicorn workers, or hosts sharing the store's filesystem) an
exclusive ``flock`` on the digest's lock file elects the one process that fetches. The
holder writes the fetch's state (size, or the upstream error) into the lock file; other
processes follow the same staging file and learn the outcome when the lock is released.
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

import requests
import urllib3.exceptions

from .storage import FilesystemStore
from .upstream import BlobStream, UpstreamDigestMismatch, UpstreamError, UpstreamNotFound

log = logging.getLogger(__name__)

#: Bytes handed to the WSGI server per ``yield`` when following a fetch.
_READ_CHUNK = 1024 * 1024
#: What a broken upstream transfer raises from the middle of a response body.
_TRANSFER_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)
#: Longest wait for a fetch whose staging file just disappeared to say how it ended.
_FINISH_WAIT_SECONDS = 30.0
#: How often a reader in another process looks for new bytes or the end of the fetch.
_POLL_SECONDS = 0.01


class FetchFailed(Exception):
    """The fetch a client was following broke; whatever it already received is not valid."""


class Fetch(t.Protocol):
    """What a request needs from a fetch, whichever process runs it."""

    digest: str
    size: int | None

    def on_commit(self, callback: t.Callable[[int], None]) -> None: ...

    def follow(self, store: FilesystemStore) -> t.Iterator[bytes]: ...


class LocalFetch:
    """A fetch run by a thread of this process; readers wait on a condition variable."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.size: int | None = None
        self.staging_path: str | None = None
        self.error: BaseException | None = None
        self.written = 0
        self.started = False
        self.finished = False
        self.committed = False
        self._condition = threading.Condition()
        self._on_commit: list[t.Callable[[int], None]] = []

    def update(self, **changes: t.Any) -> None:
        with self._condition:
            for key, value in changes.items():
                setattr(self, key, value)
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

    def _progressed(self, position: int) -> t.Callable[[], bool]:
        return lambda: self.written > position or self.finished

    def follow(self, store: FilesystemStore) -> t.Iterator[bytes]:
        """Yield the blob's bytes as the fetch writes them.

        :raises FetchFailed: if the fetch breaks; the response must then be aborted so
            the client sees a truncated transfer, never a wrong blob.
        """
        try:
            file = open(self.staging_path or "", "rb")
        except FileNotFoundError:
            # Renamed by the commit, or discarded: the fetch is finishing either way.
            with self._condition:
                self._condition.wait_for(lambda: self.finished, _FINISH_WAIT_SECONDS)
            if self.committed:
                yield from _read_file(store.open(self.digest))
                return
            raise FetchFailed(f"fetch of {self.digest} failed") from self.error
        with file:
            position = 0
            while True:
                with self._condition:
                    self._condition.wait_for(self._progressed(position))
                    available, finished, error = self.written, self.finished, self.error
                if error is not None:
                    raise FetchFailed(f"fetch of {self.digest} failed: {error}") from error
                while position < available:
                    chunk = file.read(min(available - position, _READ_CHUNK))
                    if not chunk:
                        raise FetchFailed(f"staging file of {self.digest} ended early")
                    position += len(chunk)
                    yield chunk
                if finished:
                    return


class RemoteFetch:
    """A fetch run by another process, followed through the staging and lock files."""

    def __init__(self, digest: str, size: int | None, lock_path: str) -> None:
        self.digest = digest
        self.size = size
        self._lock_path = lock_path
        self._on_commit: list[t.Callable[[int], None]] = []

    def on_commit(self, callback: t.Callable[[int], None]) -> None:
        # Run once this reader has seen the whole, committed blob.
        self._on_commit.append(callback)

    def follow(self, store: FilesystemStore) -> t.Iterator[bytes]:
        file: t.BinaryIO
        try:
            file = open(store.staging_path(self.digest), "rb")
        except FileNotFoundError:
            if store.size(self.digest) is None:
                raise FetchFailed(f"fetch of {self.digest} in another process failed") from None
            file = store.open(self.digest)
        position = 0
        with file:
            while True:
                chunk = file.read(_READ_CHUNK)
                if chunk:
                    position += len(chunk)
                    yield chunk
                    continue
                if _lock_is_held(self._lock_path):
                    time.sleep(_POLL_SECONDS)
                    continue
                # The fetch ended: whatever it wrote is in the file by now.
                while chunk := file.read(_READ_CHUNK):
                    position += len(chunk)
                    yield chunk
                committed = store.size(self.digest)
                if committed is None or committed != position:
                    raise FetchFailed(f"fetch of {self.digest} in another process failed")
                for callback in self._on_commit:
                    callback(position)
                return


class BlobFetcher:
    """Starts fetches and lets concurrent requests for the same digest join them.

    :param store: where verified blobs are committed.
    :param start_timeout: seconds a client waits for upstream's first answer.
    :param resume_attempts: range requests made to finish a transfer that broke off.
    """

    def __init__(
        self, store: FilesystemStore, *, start_timeout: float = 60.0, resume_attempts: int = 2
    ) -> None:
        self.store = store
        self.start_timeout = start_timeout
        self.resume_attempts = resume_attempts
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
                        if self.store.size(digest) is not None:
                            _unlock(self.store.lock_path(digest), lock_fd)
                            return None
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
            with open(lock_path) as file:
                text = file.read()
        except FileNotFoundError:
            return None
        if not text:
            return None
        try:
            state = json.loads(text)
        except ValueError:
            return None
        if state.get("error") == "not_found":
            raise UpstreamNotFound(f"upstream has no blob {digest}", status=404)
        if state.get("error"):
            raise UpstreamError(f"upstream fetch of {digest} failed: {state['error']}")
        size = state.get("size")
        return RemoteFetch(digest, size if isinstance(size, int) else None, lock_path)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._fetches)

    def _run(
        self, fetch: LocalFetch, open_upstream: t.Callable[[int], BlobStream], lock_fd: int
    ) -> None:
        lock_path = self.store.lock_path(fetch.digest)
        staging_path: str | None = None
        try:
            try:
                stream = open_upstream(0)
            except UpstreamError as exc:
                kind = "not_found" if isinstance(exc, UpstreamNotFound) else str(exc)[:200]
                _publish(lock_fd, {"error": kind})
                raise
            staging_path, file = self.store.create_staging(fetch.digest)
            _publish(lock_fd, {"size": stream.size})
            fetch.update(staging_path=staging_path, size=stream.size, started=True)
            with file:
                written = self._download(fetch, stream, file, open_upstream)
            self.store.commit(staging_path, fetch.digest)
            staging_path = None
            for callback in fetch.mark_committed():
                try:
                    callback(written)
                except Exception:
                    log.exception("recording blob %s failed", fetch.digest)
        except BaseException as exc:  # noqa: B036 - every failure must release the readers
            log.warning("fetch of %s failed: %s", fetch.digest, exc)
            fetch.update(error=exc, finished=True)
        finally:
            if staging_path is not None:
                self.store.discard(staging_path)
            with self._lock:
                self._fetches.pop(fetch.digest, None)
                _unlock(lock_path, lock_fd)

    def _download(
        self,
        fetch: LocalFetch,
        stream: BlobStream,
        file: t.BinaryIO,
        open_upstream: t.Callable[[int], BlobStream],
    ) -> int:
        """Copy, hash and publish upstream bytes; resume a broken transfer with a range
        request (up to ``resume_attempts`` times). Returns the verified size."""
        algorithm = fetch.digest.split(":", 1)[0]
        hasher = hashlib.new(algorithm)
        written = 0
        size = stream.size
        resumes = 0
        while True:
            try:
                try:
                    for chunk in stream:
                        hasher.update(chunk)
                        file.write(chunk)
                        # Make the bytes visible to readers of the staging file.
                        file.flush()
                        written += len(chunk)
                        fetch.update(written=written)
                finally:
                    stream.close()
                if size is not None and written != size:
                    raise UpstreamError(f"upstream sent {written} of {size} bytes")
                break
            except (OSError, UpstreamError, *_TRANSFER_ERRORS) as exc:
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
                    file.seek(0)
                    file.truncate()
                    hasher = hashlib.new(algorithm)
                    written = 0
                size = stream.size if stream.size is not None else size
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != fetch.digest:
            raise UpstreamDigestMismatch(f"upstream blob {fetch.digest} hashes to {actual}")
        return written


def _try_lock(path: str) -> int | None:
    """Take the digest's fetch lock without waiting; the open descriptor, or ``None``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _unlock(path: str, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)  # releases the flock


def _lock_is_held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_file(file: t.BinaryIO) -> t.Iterator[bytes]:
    with file:
        while chunk := file.read(_READ_CHUNK):
            yield chunk
