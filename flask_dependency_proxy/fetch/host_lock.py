"""The election of the one process of a host that fetches a digest, and what it tells
the others.

An exclusive ``flock`` on the digest's lock file (:meth:`~..stores.spool.Spool.lock_path`)
elects the fetching process (:class:`HostLock`). The holder writes the fetch's state
into that file as it goes, a small JSON object (:class:`Published`): its size once
upstream answered, the verified size once every byte hashed to the digest, then how it
ended (the committed size, or the kind of error). The other processes of the host
follow the spool file and read that state through a descriptor of their own
(:class:`LockWatch`), which stays readable after the holder unlinks the file.

The holder unlinks the file before it unlocks it, so a process that locked the old file
after that sees a different inode at the path and starts over: a lock on an unlinked
file elects nobody.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import typing as t

from ..stores.base import StorageError
from ..stores.spool import Spool
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError, UpstreamNotFound
from .errors import BlobTooLarge

#: More than any state a holder writes.
_MAX_STATE_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Published:
    """What the holder of a digest's lock tells the other processes of its host."""

    #: The size upstream announced, ``None`` while unknown.
    size: int | None = None
    #: Every byte hashed to the digest: this many (the commit may still run).
    verified: int | None = None
    #: Committed with this many bytes.
    committed: int | None = None
    #: How the fetch failed (:func:`error_kind`), ``None`` while it has not.
    error: str | None = None
    #: The file or key a store could not write, for a ``storage`` error.
    path: str | None = None

    @classmethod
    def failure(cls, size: int | None, exc: BaseException) -> Published:
        """The state of a fetch that ``exc`` ended."""
        path = exc.path if isinstance(exc, StorageError) else None
        return cls(size=size, error=error_kind(exc), path=path)

    def encode(self) -> bytes:
        state: dict[str, t.Any] = {"size": self.size}
        for key in ("verified", "committed", "error", "path"):
            value = getattr(self, key)
            if value is not None:
                state[key] = value
        return json.dumps(state).encode()

    @classmethod
    def decode(cls, data: bytes) -> Published | None:
        """The state in a lock file's bytes; ``None`` when there is none (the holder has
        not written yet) or it cannot be read."""
        try:
            state = json.loads(data)
        except ValueError:
            return None
        if not isinstance(state, dict):
            return None

        def number(key: str) -> int | None:
            value = state.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        def text(key: str) -> str | None:
            value = state.get(key)
            return value if isinstance(value, str) else None

        return cls(
            size=number("size"),
            verified=number("verified"),
            committed=number("committed"),
            error=text("error"),
            path=text("path"),
        )

    def error_for(self, digest: str) -> Exception | None:
        """The exception a published failure stands for, ``None`` when there is none."""
        kind = self.error
        if not kind:
            return None
        if kind == "not_found":
            return UpstreamNotFound(f"upstream has no blob {digest}", status=404)
        if kind == "storage":
            return StorageError(
                f"the fetch of {digest} in another process could not store it",
                path=self.path or "",
            )
        if kind == "digest_mismatch":
            return UpstreamDigestMismatch(f"upstream blob {digest} does not match its digest")
        if kind.startswith("too_large:") and kind[10:].isdigit():
            return BlobTooLarge(digest, size=self.size, limit=int(kind[10:]))
        return UpstreamError(f"upstream fetch of {digest} failed: {kind}")


def error_kind(exc: BaseException) -> str:
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


class HostLock:
    """The lock of a digest this process holds: it fetches the digest for the host."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, spool: Spool, digest: str) -> HostLock | None:
        """Take the digest's lock without waiting; ``None`` when another process holds it.

        :raises StorageError: the lock file cannot be opened.
        """
        path = spool.lock_path(digest)
        while True:
            fd = spool.open_lock(digest)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            # The previous holder unlinks the file before unlocking: a lock on an
            # unlinked file elects nobody, so start over on the file now at that path.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.ftruncate(fd, 0)
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def publish(self, state: Published) -> None:
        """Tell the other processes of the host how the fetch goes.

        :raises StorageError: the lock file cannot be written.
        """
        data = state.encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            raise StorageError.from_os_error(exc, f"/proc/self/fd/{self._fd}") from exc

    def release(self) -> None:
        """Unlink the lock file, then unlock it: the next fetch takes a new one."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # releases the flock


class LockWatch:
    """A lock file opened by a process that does not hold it: whether its holder still
    fetches, and what it published (readable once the holder unlinked it)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, spool: Spool, digest: str) -> LockWatch | None:
        """The lock file of a digest's fetch, ``None`` when there is none (none runs, or
        it ended already)."""
        try:
            return cls(spool.read_lock(digest))
        except FileNotFoundError:
            return None

    def held(self) -> bool:
        """Whether a fetch still holds the lock (same file, even once unlinked)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def published(self) -> Published | None:
        """What the holder wrote; ``None`` while it wrote nothing (or nothing readable)."""
        try:
            data = os.pread(self._fd, _MAX_STATE_BYTES, 0)
        except OSError:
            return None
        return Published.decode(data) if data else None

    def state(self) -> Published:
        """What the holder wrote; an empty state while it wrote nothing."""
        return self.published() or Published()

    def failure(self) -> Exception | None:
        """The failure the holder left, if any."""
        return self.state().error_for("the blob")

    def duplicate(self) -> LockWatch:
        """A second descriptor of the same file, closed on its own."""
        return LockWatch(os.dup(self._fd))

    def close(self) -> None:
        """Close the descriptor; closing it again does nothing (never another file's
        descriptor that reused the number)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> LockWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
