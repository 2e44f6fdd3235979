"""A :class:`~flask_dependency_proxy.stores.base.StoreBackend` (both faces of a store) that
keeps committed blobs in memory, for tests of the cache and the life cycle that need no
disk layout and no object store.

Like every store it stages a blob being fetched in a local spool file of its
:class:`~flask_dependency_proxy.stores.spool.Spool` (the fetcher's followers read that
file as it grows, and its lock files elect the fetching process), so it needs a folder
for those; committed and set-aside blobs live in dictionaries.
Hits are served as :class:`~flask_dependency_proxy.stores.base.ByteStream`, the way a
store clients cannot reach is served.

Stricter than the real stores where that catches a caller's mistake: a commit whose
bytes do not hash to the digest fails the test (:class:`CommitOfWrongBytes`), and a
write after commit or discard is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import os
import threading
import time
import typing as t

from flask_dependency_proxy.stores.base import ByteStream, StorageError
from flask_dependency_proxy.stores.spool import Spool

#: Bytes per chunk of a streamed hit.
CHUNK = 64 * 1024


class CommitOfWrongBytes(AssertionError):
    """A caller committed bytes that do not hash to the blob's digest."""


@dataclasses.dataclass
class _Blob:
    data: bytes = dataclasses.field(repr=False)
    #: Seconds since the epoch (what ``committed()`` reports as the commit time).
    committed_at: float


class MemoryStore:
    """Committed blobs in a dictionary; spool and lock files under ``local_root``.

    :param local_root: a folder the test owns (created if missing).
    :param clock: seconds since the epoch, for commit times; tests that move time pass
        their own.
    :param free: what :meth:`free_bytes` answers (``None``: no limit).
    """

    def __init__(
        self,
        local_root: str,
        *,
        clock: t.Callable[[], float] = time.time,
        free: int | None = None,
    ) -> None:
        self.spool = Spool(local_root)
        self.clock = clock
        self.free = free
        self._blobs: dict[str, _Blob] = {}
        #: Set-aside blobs by handle: ``(digest, when, blob)``.
        self._trash: dict[str, tuple[str, dt.datetime, _Blob]] = {}
        self._lock = threading.Lock()
        #: Digests committed, in order (a digest committed twice shows twice).
        self.commits: list[str] = []
        #: Set by a test to make :meth:`check` and :meth:`stage` fail.
        self.broken: str | None = None

    # -- serving -------------------------------------------------------------------------

    def describe(self) -> str:
        return f"memory ({len(self._blobs)} blobs)"

    def size(self, digest: str) -> int | None:
        with self._lock:
            blob = self._blobs.get(digest)
        return None if blob is None else len(blob.data)

    def recorded_size(self, digest: str, size: int) -> int | None:
        """The store knows without a round trip whether it holds the blob, as a local
        file does."""
        return self.size(digest)

    def locate(self, digest: str, size: int) -> ByteStream:
        return ByteStream(size, open=lambda: self._chunks(digest))

    def _chunks(self, digest: str) -> t.Iterator[bytes]:
        data = self.open(digest).read()  # FileNotFoundError now, not at the first next()
        return iter([data[start : start + CHUNK] for start in range(0, len(data), CHUNK)])

    def open(self, digest: str) -> t.BinaryIO:
        with self._lock:
            blob = self._blobs.get(digest)
        if blob is None:
            raise FileNotFoundError(2, "no such blob", digest)
        return io.BytesIO(blob.data)

    def data(self, digest: str) -> bytes | None:
        """The committed bytes of ``digest`` (for assertions)."""
        with self._lock:
            blob = self._blobs.get(digest)
        return None if blob is None else blob.data

    # -- staging -------------------------------------------------------------------------

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> MemoryStaged:
        if self.broken:
            raise StorageError(self.broken, path=self.spool.path(digest))
        return MemoryStaged(self, digest, self.spool.path(digest))

    def free_bytes(self) -> int | None:
        return self.free

    def check(self) -> None:
        if self.broken:
            raise StorageError(self.broken, path=self.spool.root)

    def delete(self, digest: str) -> bool:
        with self._lock:
            return self._blobs.pop(digest, None) is not None

    def _commit(self, digest: str, data: bytes) -> None:
        algorithm, hex_digest = digest.split(":", 1)
        actual = hashlib.new(algorithm, data).hexdigest()
        if actual != hex_digest:
            raise CommitOfWrongBytes(f"{digest} committed with bytes that hash to {actual}")
        with self._lock:
            self._blobs[digest] = _Blob(data, self.clock())
            self.commits.append(digest)

    # -- cleanup -------------------------------------------------------------------------

    def committed(self) -> t.Iterator[tuple[str, float]]:
        with self._lock:
            found = [(digest, blob.committed_at) for digest, blob in self._blobs.items()]
        yield from sorted(found)

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return len(self._blobs), sum(len(blob.data) for blob in self._blobs.values())

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        with self._lock:
            blob = self._blobs.pop(digest, None)
            if blob is None:
                return False
            stamp_ms = int(stamp.replace(tzinfo=dt.UTC).timestamp() * 1000)
            self._trash[f"trash/{digest}.{stamp_ms}"] = (digest, stamp, blob)
            return True

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        with self._lock:
            found = [(digest, stamp, handle) for handle, (digest, stamp, _) in self._trash.items()]
        yield from sorted(found)

    def restore(self, digest: str, handle: str) -> bool:
        with self._lock:
            entry = self._trash.pop(handle, None)
            if entry is None:
                return False
            if digest in self._blobs:
                # Committed again meanwhile: that copy wins.
                return False
            self._blobs[digest] = entry[2]
            return True

    def delete_set_aside(self, handle: str) -> int | None:
        with self._lock:
            entry = self._trash.pop(handle, None)
        return None if entry is None else len(entry[2].data)

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        return self.spool.remove_stale(older_than)


class MemoryStaged:
    """A blob being fetched into a :class:`MemoryStore`: appended to its spool file (each
    write flushed, so followers see it), copied into memory at :meth:`commit`."""

    def __init__(self, store: MemoryStore, digest: str, spool_path: str) -> None:
        self.store = store
        self.digest = digest
        self.spool_path = spool_path
        try:
            os.unlink(spool_path)  # left by a fetch that was killed
        except FileNotFoundError:
            pass
        self._file: t.BinaryIO | None = open(spool_path, "xb")  # noqa: SIM115
        self.ended = False

    def write(self, chunk: bytes) -> None:
        file = self._open()
        file.write(chunk)
        file.flush()

    def restart(self) -> None:
        file = self._open()
        file.seek(0)
        file.truncate()

    def commit(self) -> None:
        self._open().close()
        self._file = None
        with open(self.spool_path, "rb") as file:
            data = file.read()
        self.store._commit(self.digest, data)
        self.ended = True
        os.unlink(self.spool_path)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.ended = True
        try:
            os.unlink(self.spool_path)
        except FileNotFoundError:
            pass

    def _open(self) -> t.BinaryIO:
        if self._file is None:
            raise StorageError("the staged blob was committed or discarded", path=self.spool_path)
        return self._file
