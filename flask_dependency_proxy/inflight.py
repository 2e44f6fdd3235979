"""One upstream fetch per blob digest, streamed to every client that asks meanwhile.

A fetch runs in its own thread: it copies upstream bytes into a staging file,
hashes them on the way, and commits only a verified digest. Clients never read the
upstream response themselves; they follow the staging file as it grows, so the first
client and the tenth are served the same way, and a client that hangs up does not
abort a fetch others are waiting for.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import typing as t

from .storage import FilesystemStore
from .upstream import BlobStream, UpstreamDigestMismatch, UpstreamError

log = logging.getLogger(__name__)

#: Bytes handed to the WSGI server per ``yield`` when following a fetch.
_READ_CHUNK = 1024 * 1024


class FetchFailed(Exception):
    """The fetch a client was following broke; whatever it already received is not valid."""


class BlobFetch:
    """The state of one in-flight fetch, shared by the thread writing and those reading."""

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

    # -- writer side ----------------------------------------------------------------

    def _update(self, **changes: t.Any) -> None:
        with self._condition:
            for key, value in changes.items():
                setattr(self, key, value)
            self._condition.notify_all()

    # -- reader side ----------------------------------------------------------------

    def wait_started(self, timeout: float) -> None:
        """Block until upstream answered (size known) or the fetch failed.

        :raises UpstreamError: the error that stopped the fetch before any byte arrived.
        """
        with self._condition:
            self._condition.wait_for(lambda: self.started or self.finished, timeout)
            if self.error is not None and self.written == 0:
                raise self.error
            if not (self.started or self.finished):
                raise UpstreamError("upstream did not answer in time")

    def on_commit(self, callback: t.Callable[[int], None]) -> None:
        """Run ``callback(size)`` once the blob is committed (at once if it already is)."""
        with self._condition:
            if not self.finished:
                self._on_commit.append(callback)
                return
            committed = self.committed
        if committed:
            callback(self.written)

    def follow(self, store: FilesystemStore) -> t.Iterator[bytes]:
        """Yield the blob's bytes as the fetch writes them.

        :raises FetchFailed: if the fetch breaks; the response must then be aborted so
            the client sees a truncated transfer, never a wrong blob.
        """
        with self._condition:
            staging_path = self.staging_path
        try:
            file = open(staging_path or "", "rb")
        except FileNotFoundError:
            # Committed (renamed) or discarded between our check and open.
            if self.committed:
                yield from _read_file(store.open(self.digest))
                return
            raise FetchFailed(f"fetch of {self.digest} failed") from self.error
        with file:
            position = 0
            while True:
                with self._condition:
                    self._condition.wait_for(lambda: self.written > position or self.finished)
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


class BlobFetcher:
    """Starts fetches and lets concurrent requests for the same digest join them.

    :param store: where verified blobs are committed.
    :param start_timeout: seconds a client waits for upstream's first answer.
    """

    def __init__(self, store: FilesystemStore, *, start_timeout: float = 60.0) -> None:
        self.store = store
        self.start_timeout = start_timeout
        self._fetches: dict[str, BlobFetch] = {}
        self._lock = threading.Lock()

    def fetch(self, digest: str, open_upstream: t.Callable[[], BlobStream]) -> BlobFetch:
        """Join the fetch of ``digest`` in progress, or start one with ``open_upstream``.

        Returns once upstream has answered, so an upstream error (404, 5xx) reaches the
        client as a registry error rather than a broken body.
        """
        with self._lock:
            fetch = self._fetches.get(digest)
            if fetch is None:
                fetch = BlobFetch(digest)
                self._fetches[digest] = fetch
                thread = threading.Thread(
                    target=self._run,
                    args=(fetch, open_upstream),
                    name=f"blob-fetch-{digest[7:19]}",
                    daemon=True,
                )
                thread.start()
        fetch.wait_started(self.start_timeout)
        return fetch

    def in_flight(self) -> int:
        with self._lock:
            return len(self._fetches)

    def _run(self, fetch: BlobFetch, open_upstream: t.Callable[[], BlobStream]) -> None:
        staging_path: str | None = None
        try:
            stream = open_upstream()
            try:
                staging_path, file = self.store.create_staging(fetch.digest)
                fetch._update(staging_path=staging_path, size=stream.size, started=True)
                algorithm = fetch.digest.split(":", 1)[0]
                hasher = hashlib.new(algorithm)
                written = 0
                with file:
                    for chunk in stream:
                        hasher.update(chunk)
                        file.write(chunk)
                        # Make the bytes visible to readers of the staging file.
                        file.flush()
                        written += len(chunk)
                        fetch._update(written=written)
            finally:
                stream.close()
            if stream.size is not None and written != stream.size:
                raise UpstreamError(
                    f"upstream sent {written} of {stream.size} bytes for {fetch.digest}"
                )
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if actual != fetch.digest:
                raise UpstreamDigestMismatch(f"upstream blob {fetch.digest} hashes to {actual}")
            self.store.commit(staging_path, fetch.digest)
            staging_path = None
            with fetch._condition:
                fetch.committed = True
                fetch.finished = True
                callbacks = list(fetch._on_commit)
                fetch._condition.notify_all()
            for callback in callbacks:
                try:
                    callback(written)
                except Exception:
                    log.exception("recording blob %s failed", fetch.digest)
        except BaseException as exc:  # noqa: B036 - every failure must release the readers
            log.warning("fetch of %s failed: %s", fetch.digest, exc)
            fetch._update(error=exc, finished=True)
        finally:
            if staging_path is not None:
                self.store.discard(staging_path)
            with self._lock:
                self._fetches.pop(fetch.digest, None)


def _read_file(file: t.BinaryIO) -> t.Iterator[bytes]:
    with file:
        while chunk := file.read(_READ_CHUNK):
            yield chunk

