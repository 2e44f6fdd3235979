"""Content-addressed blob storage: bytes by digest, staged and committed atomically.

Knows files and digests; nothing of the database, the upstream or HTTP. A blob is
written to a staging file while it is fetched and becomes visible under its digest
only through :meth:`FilesystemStore.commit`, an atomic rename after verification.

Folders are created ``0750`` and files ``0640`` (the process's user and group only), and
every file is opened without following a symbolic link, so nobody who can write into
the store folder can point a blob at a file elsewhere.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import stat as _stat
import typing as t

_DIGEST_FILE = re.compile(r"(?:[a-f0-9]{64}|[a-f0-9]{128})")
_TRASH_NAME = re.compile(r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]+)\.(?P<stamp>\d+)")
FOLDER_MODE = 0o750
FILE_MODE = 0o640
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class StorageError(Exception):
    """The blob store cannot take a blob: its disk is full, read-only or failing.

    Unlike an upstream error this is not retried upstream: the same bytes would fail
    the same way. ``path`` is the file the store could not write; ``errno`` the
    operating system's error number (``None`` for a refusal made before writing).
    """

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    @classmethod
    def from_os_error(cls, exc: OSError, path: str) -> StorageError:
        return cls(f"cannot write {path}: {exc.strerror or exc}", path=path, errno=exc.errno)

    @property
    def errno_name(self) -> str:
        """``ENOSPC``, ``EROFS``, ...; ``-`` when there is no error number."""
        if self.errno is None:
            return "-"
        return errno.errorcode.get(self.errno, str(self.errno))


class FilesystemStore:
    """Blobs under ``<root>/blobs/<algorithm>/<2 hex>/<hex>``, staging under ``<root>/staging``.

    Staging and final files share a filesystem, so a commit is a ``rename``.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.staging_root = os.path.join(self.root, "staging")
        self._locks = os.path.join(self.root, "locks")
        #: Committed blobs live below this folder (what a web server may serve directly).
        self.blobs_root = os.path.join(self.root, "blobs")
        make_folder(self.root)
        for folder in (self.staging_root, self._locks, self.blobs_root):
            make_folder(folder)

    def path(self, digest: str) -> str:
        """The final location of a blob. ``digest`` must already be validated."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.blobs_root, algorithm, hex_digest[:2], hex_digest)

    def size(self, digest: str) -> int | None:
        """The size of a committed blob, or ``None`` when it is not stored."""
        try:
            stat = os.stat(self.path(digest), follow_symlinks=False)
        except FileNotFoundError:
            return None
        return stat.st_size if _stat.S_ISREG(stat.st_mode) else None

    def open(self, digest: str) -> t.BinaryIO:
        """Open a committed blob for reading.

        :raises FileNotFoundError: when it is not stored (a symbolic link in its place
            counts as not stored: the next fetch replaces it).
        """
        path = self.path(digest)
        try:
            return open_for_reading(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileNotFoundError(errno.ENOENT, "a symbolic link, not a blob", path) from exc
            raise

    def staging_path(self, digest: str) -> str:
        """Where a blob is written while it is fetched.

        One name per digest, so a reader in another process can find and follow it; only
        the holder of the digest's fetch lock (see :meth:`lock_path`) writes it.
        """
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.staging_root, f"{algorithm}-{hex_digest}.partial")

    def lock_path(self, digest: str) -> str:
        """A file whose ``flock`` elects the one process that fetches a digest."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self._locks, f"{algorithm}-{hex_digest}.lock")

    def create_staging(self, digest: str) -> tuple[str, t.BinaryIO]:
        """Create the staging file of a blob whose fetch lock the caller holds, anew: a
        file (or link) left there by a killed fetch is removed first.

        :raises StorageError: when the file cannot be created.
        """
        staging_path = self.staging_path(digest)
        try:
            _unlink(staging_path)
            fd = os.open(staging_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, FILE_MODE)
            return staging_path, os.fdopen(fd, "wb")
        except OSError as exc:
            raise StorageError.from_os_error(exc, staging_path) from exc

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still put on the store's filesystem."""
        stats = os.statvfs(self.staging_root)
        return stats.f_bavail * stats.f_frsize

    def commit(self, staging_path: str, digest: str) -> None:
        """Publish a fully written and verified staging file under its digest.

        :raises StorageError: when the file cannot be moved into place.
        """
        final = self.path(digest)
        try:
            make_folder(os.path.dirname(final))
            os.replace(staging_path, final)
        except OSError as exc:
            raise StorageError.from_os_error(exc, final) from exc

    def discard(self, staging_path: str) -> None:
        """Remove a staging file that will not be committed."""
        try:
            os.unlink(staging_path)
        except FileNotFoundError:
            pass

    def delete(self, digest: str) -> bool:
        """Remove a committed blob; ``False`` when it was not there."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True


class BlobFiles:
    """What cleanup needs of the filesystem store: walking committed blobs, and the
    trash folder where files wait out the grace period before they are deleted."""

    def __init__(self, store: FilesystemStore) -> None:
        self.store = store
        self.trash = os.path.join(store.root, "trash")

    def committed(self) -> t.Iterator[tuple[str, float]]:
        """``(digest, mtime)`` of every committed blob file."""
        top = self.store.blobs_root
        for algorithm in _listdir(top):
            if algorithm not in {"sha256", "sha512"}:
                continue
            for prefix in _listdir(os.path.join(top, algorithm)):
                folder = os.path.join(top, algorithm, prefix)
                try:
                    entries = list(os.scandir(folder))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    if not _DIGEST_FILE.fullmatch(entry.name) or not entry.name.startswith(prefix):
                        continue
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield f"{algorithm}:{entry.name}", stat.st_mtime

    def usage(self) -> tuple[int, int]:
        """Number and total bytes of committed blob files."""
        count = size = 0
        for digest, _mtime in self.committed():
            found = self.store.size(digest)
            if found is not None:
                count += 1
                size += found
        return count, size

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        """Move a committed file into the trash; ``False`` if it is no longer there."""
        make_folder(self.trash)
        algorithm, hex_digest = digest.split(":", 1)
        target = os.path.join(self.trash, f"{algorithm}-{hex_digest}.{_epoch_ms(stamp)}")
        try:
            os.rename(self.store.path(digest), target)
        except FileNotFoundError:
            return False
        return True

    def set_aside_files(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        """``(digest, when it was set aside, path)`` of every file in the trash."""
        for name in _listdir(self.trash):
            match = _TRASH_NAME.fullmatch(name)
            if match is None:
                continue
            stamp = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(match["stamp"]))
            yield f"{match['algorithm']}:{match['hex']}", stamp, os.path.join(self.trash, name)

    def restore(self, digest: str, path: str) -> bool:
        """Put a set-aside file back; ``False`` when a newer copy is already committed
        (then the set-aside one is dropped)."""
        final = self.store.path(digest)
        make_folder(os.path.dirname(final))
        try:
            # A link never replaces a file a fetch committed meanwhile.
            os.link(path, final)
            restored = True
        except FileExistsError:
            restored = False
        except FileNotFoundError:
            return False
        _unlink(path)
        return restored

    def delete(self, path: str) -> int | None:
        """Delete a set-aside file; its size, or ``None`` if it was gone already."""
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return None
        return size

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        """Delete staging files no fetch has written to since ``older_than`` (left by a
        process that was killed mid-fetch); returns how many."""
        removed = 0
        limit = _epoch(older_than)
        for name in _listdir(self.store.staging_root):
            path = os.path.join(self.store.staging_root, name)
            try:
                if os.stat(path).st_mtime < limit:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


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


def open_lock_file(path: str) -> int:
    """Open (creating it if needed) a lock file for reading and writing, never through a
    symbolic link; the descriptor."""
    return os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, FILE_MODE)


def _epoch(moment: dt.datetime) -> float:
    return moment.replace(tzinfo=dt.UTC).timestamp()


def _epoch_ms(moment: dt.datetime) -> int:
    return int(_epoch(moment) * 1000)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
