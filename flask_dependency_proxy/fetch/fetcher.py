"""One upstream fetch per blob digest, streamed to every client that asks meanwhile.

A fetch runs in its own thread: it stages the blob in the digest's local spool file
(:meth:`~..stores.base.BlobStore.stage`), copies upstream bytes into it while it hashes
them (:mod:`.download`), and commits only a verified digest. Clients follow the spool
file as it grows (:mod:`.following`).

Across the processes of a host (gunicorn workers) the digest's lock file elects the one
process that fetches (:mod:`.host_lock`); the others follow the same spool file and
read how the fetch goes, and how it ended, in the lock file.

The fetcher alone answers whether a digest is committed or being fetched: the cache
asks it (:meth:`BlobFetcher.committed_size`, :meth:`BlobFetcher.fetch`), never the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import threading
import time
import typing as t

from ..metrics import Metrics
from ..single_flight import SingleFlight
from ..stores.base import BlobStore, StagedBlob, StorageError
from ..upstream.errors import UpstreamError
from ..upstream.registry import BlobStream
from .download import check_size, download
from .fleet import CommittedMeanwhile
from .following import POLL_SECONDS, Fetch, LocalFetch, RemoteFetch
from .host_lock import HostLock, LockWatch, Published

if t.TYPE_CHECKING:
    from .fleet import FleetSource

log = logging.getLogger(__name__)


class _Starting:
    """Another process holds a digest's lock and has published nothing yet."""


_NOTHING_YET = _Starting()


@dataclasses.dataclass(frozen=True)
class Committed:
    """The blob is committed to the store (by a fetch that just ended, or before), with
    ``size`` bytes: served from the store, not followed."""

    size: int


class BlobFetcher:
    """Starts fetches and lets concurrent requests for the same digest join them.

    :param store: where verified blobs are committed.
    :param start_timeout: seconds a client waits for upstream's first answer.
    :param resume_attempts: range requests made to finish a transfer that broke off.
    :param max_blob_size: largest blob fetched, in bytes; ``0`` sets no limit.
    :param fleet: where this host's fetches read from when several hosts share the
        database (:mod:`.fleet`); ``None`` always reads upstream.
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
        self._sizes = SingleFlight()

    def committed_size(self, digest: str) -> int | None:
        """The size of the committed blob of ``digest``; ``None`` when the store does not
        hold it (it may be being fetched: :meth:`fetch` joins that fetch).

        Concurrent callers share one answer of the store: a herd of clients asking for a
        blob at once costs one ``HEAD`` of an object store, not one each.
        """
        return self._sizes.do(digest, lambda: self.store.size(digest))

    def fetch(self, digest: str, open_upstream: t.Callable[[int], BlobStream]) -> Fetch | Committed:
        """Join the fetch of ``digest`` in progress here or elsewhere, or start one.

        Returns once upstream has answered, so an upstream error (404, 5xx) reaches the
        client as a registry error rather than a broken body; returns :class:`Committed`
        when the blob got committed meanwhile and can be served from the store.
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            with self._lock:
                local = self._fetches.get(digest)
                if local is None:
                    lock = HostLock.acquire(self.store.spool, digest)
                    if lock is not None:
                        local = LocalFetch(digest)
                        self._fetches[digest] = local
                        threading.Thread(
                            target=self._run,
                            args=(local, open_upstream, lock),
                            name=f"blob-fetch-{digest[7:19]}",
                            daemon=True,
                        ).start()
            if local is not None:
                local.wait_started(self.start_timeout)
                if local.already_stored:
                    return Committed(local.written)
                return local
            remote = self._remote(digest)
            if isinstance(remote, RemoteFetch):
                return remote
            # While another process holds the lock and waits for upstream's answer
            # (``_NOTHING_YET``), nothing was committed: the store is not asked.
            if remote is None and (size := self.committed_size(digest)) is not None:
                return Committed(size)
            if time.monotonic() > deadline:
                raise UpstreamError("the fetch in another process did not start in time")
            time.sleep(POLL_SECONDS)

    def _remote(self, digest: str) -> RemoteFetch | _Starting | None:
        """The fetch another process runs and published; :data:`_NOTHING_YET` while it
        holds the lock but upstream has not answered it; ``None`` when no process holds
        the lock (none started, or the last one ended)."""
        lock = LockWatch.open(self.store.spool, digest)
        if lock is None:
            return None
        with lock:
            state = lock.published()
            if state is None:
                return _NOTHING_YET if lock.held() else None
            error = state.error_for(digest)
            if error is not None:
                raise error
            # The follower watches this very file (its own descriptor of it).
            return RemoteFetch(digest, state.size, lock.duplicate())

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
            if isinstance(remote, RemoteFetch):
                return remote
            if remote is None or time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._fetches)

    def _run(
        self, fetch: LocalFetch, open_upstream: t.Callable[[int], BlobStream], lock: HostLock
    ) -> None:
        with self.metrics.fetch_in_flight():
            self._run_fetch(fetch, open_upstream, lock)

    def _run_fetch(
        self, fetch: LocalFetch, open_upstream: t.Callable[[int], BlobStream], lock: HostLock
    ) -> None:
        try:
            # Committed by a fetch that ended between this request's lookup and the lock.
            stored = self.store.size(fetch.digest)
            if stored is not None:
                _already_stored(fetch, stored)
                return
            if self.fleet is None:
                written = self._fetch_into_store(fetch, open_upstream, lock, from_peer=None)
                self.metrics.upstream_fetched_bytes(written)
            else:
                opener = self.fleet.opener(fetch.digest, open_upstream, self.store.size)
                try:
                    written = self._fetch_into_store(
                        fetch,
                        opener,
                        lock,
                        from_peer=lambda: opener.from_peer,
                        peer_committed=opener.peer_committed,
                    )
                    if not opener.from_peer:
                        self.metrics.upstream_fetched_bytes(written)
                except CommittedMeanwhile as done:
                    # ... or by another host, which let go of the lease just now.
                    _already_stored(fetch, done.size)
                    return
                finally:
                    opener.release()
            # Readers in other processes of this host read how it ended here.
            with contextlib.suppress(StorageError):
                lock.publish(Published(size=fetch.size, committed=written))
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
            with contextlib.suppress(StorageError):
                lock.publish(Published.failure(fetch.size, exc))
            fetch.update(error=exc, finished=True)
        finally:
            with self._lock:
                self._fetches.pop(fetch.digest, None)
                lock.release()

    def _fetch_into_store(
        self,
        fetch: LocalFetch,
        opener: t.Callable[[int], BlobStream],
        lock: HostLock,
        *,
        from_peer: t.Callable[[], bool] | None,
        peer_committed: t.Callable[[int], bool] | None = None,
    ) -> int:
        """Stage, download, verify and commit the blob; the verified size. A staged blob
        that is not committed is discarded before this returns or raises, so it is gone
        before any reader hears of the failure.

        :param from_peer: whether the bytes now come from another host of the fleet,
            which commits them to the shared store itself.
        :param peer_committed: waits for that host's commit of the verified size; false
            when it will not come, and this host commits the blob itself.
        """
        stream = opener(0)
        try:
            check_size(fetch.digest, stream.size, self.max_blob_size)
            self._check_space(fetch, stream.size)
            peer = from_peer is not None and from_peer()
            staged = self.store.stage(fetch.digest, stream.size, upload=not peer)
        except BaseException:
            stream.close()
            raise
        try:
            lock.publish(Published(size=stream.size))
            fetch.staged(
                self.store.spool,
                size=stream.size,
                upstream_status=None if peer else stream.status,
            )
            written = download(
                fetch.digest,
                stream,
                staged,
                opener,
                progress=lambda written: fetch.update(written=written),
                max_blob_size=self.max_blob_size,
                resume_attempts=self.resume_attempts,
            )
            # Every byte hashes to the digest: readers may finish before the commit.
            lock.publish(Published(size=fetch.size, verified=written))
            fetch.update(verified=True)
            if from_peer is not None and from_peer() and peer_committed is not None:
                committed = peer_committed(written)
            else:
                committed = False
            if committed:
                # The peer committed it to the store this host shares with it.
                staged.discard()
            else:
                staged.commit()
        except BaseException:
            _discard(staged)
            raise
        return written

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
                path=self.store.spool.root,
                errno=errno.ENOSPC,
            )


def _already_stored(fetch: LocalFetch, size: int) -> None:
    fetch.update(already_stored=True, size=size, written=size, started=True)
    fetch.mark_committed()


def _discard(staged: StagedBlob) -> None:
    try:
        staged.discard()
    except Exception:
        log.exception("could not discard the staged blob %s", staged.spool_path)
