"""The host-local spool: the files of blobs being fetched on this host, whatever store
commits them.

Every store stages a blob being fetched in a spool file (``<root>/staging``) that the
clients of this host follow as it grows, and the digest's lock file (``<root>/locks``)
elects the one process of the host that writes it (:mod:`..fetch.host_lock` holds the
election; here are only the files). One name per digest, so a process can find and
follow another's fetch.

Folders are created ``0750`` and files ``0640`` (the process's user and group only), and
every file is opened without following a symbolic link, so nobody who can write into
the folder can point a spool or lock file at a file elsewhere.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import typing as t

from .base import StorageError

FOLDER_MODE = 0o750
FILE_MODE = 0o640
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_SPOOL_SUFFIX = ".partial"
_LOCK_SUFFIX = ".lock"


class Spool:
    """Spool files under ``<root>/staging``, lock files under ``<root>/locks``.

    :param root: a local folder of this host (created with its parents if missing).
    """

    def __init__(self, root: str) -> None:
        root = os.path.abspath(root)
        #: The folder of spool files (what the free space of a fetch is measured on).
        self.root = os.path.join(root, "staging")
        self.locks = os.path.join(root, "locks")
        for folder in (root, self.root, self.locks):
            make_folder(folder)

    def path(self, digest: str) -> str:
        """The spool file of a digest being fetched; only the holder of the digest's
        lock (:meth:`lock_path`) writes it."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.root, f"{algorithm}-{hex_digest}{_SPOOL_SUFFIX}")

    def lock_path(self, digest: str) -> str:
        """The lock file whose ``flock`` elects the process of this host that fetches a
        digest."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.locks, f"{algorithm}-{hex_digest}{_LOCK_SUFFIX}")

    def create(self, digest: str) -> SpoolFile:
        """The spool file of a digest, created anew for a fetch whose lock the caller
        holds (what a killed fetch left there is replaced).

        :raises StorageError: when the file cannot be created.
        """
        return SpoolFile(self.path(digest))

    def open(self, digest: str) -> t.BinaryIO:
        """A digest's spool file, for reading as it grows.

        :raises FileNotFoundError: no fetch of the digest has a spool file now.
        """
        return open_for_reading(self.path(digest))

    def open_lock(self, digest: str) -> int:
        """A digest's lock file for reading and writing, created if needed; the
        descriptor.

        :raises StorageError: when it cannot be opened.
        """
        path = self.lock_path(digest)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, FILE_MODE)
        except OSError as exc:
            raise StorageError.from_os_error(exc, path) from exc

    def read_lock(self, digest: str) -> int:
        """A digest's lock file for reading, never created here; the descriptor (still
        readable once its holder unlinks it).

        :raises FileNotFoundError: no fetch of the digest holds one now.
        """
        return os.open(self.lock_path(digest), os.O_RDONLY | _NO_FOLLOW)

    def check(self) -> None:
        """:raises StorageError: the spool folder is missing or not writable."""
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageError("spool folder is missing or not writable", path=self.root)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still put on the spool's filesystem."""
        try:
            stats = os.statvfs(self.root)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.root) from exc
        return stats.f_bavail * stats.f_frsize

    def remove_stale(self, older_than: dt.datetime) -> int:
        """Delete spool files no fetch has written to since ``older_than`` (left by a
        process that was killed mid-fetch); returns how many.

        A file whose digest's lock is held belongs to a live fetch however old it looks:
        an upstream that sends slowly, or a commit that uploads the rest of a large blob
        to object storage, can leave it unwritten for longer, and the commit reads or
        renames it by its name. It is kept.
        """
        removed = 0
        limit = older_than.replace(tzinfo=dt.UTC).timestamp()
        for name in _listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                if os.stat(path).st_mtime >= limit:
                    continue
                if name.endswith(_SPOOL_SUFFIX) and lock_is_held(
                    os.path.join(self.locks, name.removesuffix(_SPOOL_SUFFIX) + _LOCK_SUFFIX)
                ):
                    continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
        return removed


class SpoolFile:
    """The local file a blob being fetched is appended to, whatever store commits it:
    every write is flushed at once, so readers that follow the file see it grow.

    Created anew for a fetch whose lock the caller holds: a file (or link) a killed
    fetch left there is removed first.

    :raises StorageError: when the file cannot be created.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: Bytes in the file now.
        self.written = 0
        self._file: t.BinaryIO | None = create_spool_file(path)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises :class:`StorageError` when it cannot be kept."""
        try:
            file = self._open()
            file.write(chunk)
            file.flush()
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path) from exc
        self.written += len(chunk)

    def truncate(self) -> None:
        """Drop everything written (the fetch starts over)."""
        try:
            file = self._open()
            file.seek(0)
            file.truncate()
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path) from exc
        self.written = 0

    def close(self) -> None:
        """Close the file (idempotent); readers that opened it keep reading."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                raise StorageError.from_os_error(exc, self.path) from exc

    def remove(self) -> None:
        """Delete the file if it is still there."""
        unlink(self.path)

    def _open(self) -> t.BinaryIO:
        if self._file is None:
            raise StorageError("the staged blob was closed", path=self.path)
        return self._file


def create_spool_file(path: str) -> t.BinaryIO:
    """Create a spool file anew: a file (or link) a killed fetch left there is removed
    first.

    :raises StorageError: when the file cannot be created.
    """
    try:
        unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, FILE_MODE)
        return os.fdopen(fd, "wb")
    except OSError as exc:
        raise StorageError.from_os_error(exc, path) from exc


def lock_is_held(path: str) -> bool:
    """Whether a process holds the lock file at ``path`` (a fetch runs), without
    creating it. Probed with a shared lock, released at once."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    except OSError:
        # None (no fetch since the last one ended), or not a file we made.
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def make_folder(path: str) -> None:
    """Create a store folder and its missing parents, each as :data:`FOLDER_MODE`
    (``os.makedirs`` gives the parents the default mode)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_folder(parent)
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def open_for_reading(path: str) -> t.BinaryIO:
    """Open a store file for reading, refusing a symbolic link (``OSError`` ``ELOOP``).

    :raises FileNotFoundError: when there is no such file.
    """
    return os.fdopen(os.open(path, os.O_RDONLY | _NO_FOLLOW), "rb")


def unlink(path: str) -> None:
    """Delete a file if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
