"""The filesystem blob store (:class:`~.blobstore.BlobStore`): the embedded default.

Knows files and digests; nothing of the database, the upstream or HTTP. A blob is
written to a staging file while it is fetched and becomes visible under its digest
only when it is committed, an atomic rename after verification.

Folders are created ``0750`` and files ``0640`` (the process's user and group only), and
every file is opened without following a symbolic link, so nobody who can write into
the store folder can point a blob at a file elsewhere.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import re
import stat as _stat
import typing as t

from .base import LocalFile, StorageError

_DIGEST_FILE = re.compile(r"(?:[a-f0-9]{64}|[a-f0-9]{128})")
_TRASH_NAME = re.compile(r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]+)\.(?P<stamp>[0-9]{1,18})")
FOLDER_MODE = 0o750
FILE_MODE = 0o640
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_SPOOL_SUFFIX = ".partial"
_LOCK_SUFFIX = ".lock"


class FilesystemStore:
    """Blobs under ``<root>/blobs/<algorithm>/<2 hex>/<hex>``, staging under ``<root>/staging``.

    Staging and final files share a filesystem, so a commit is a ``rename``; the grace
    period of cleanup moves files to ``<root>/trash`` and a restore links them back.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.spool_root = os.path.join(self.root, "staging")
        self._locks = os.path.join(self.root, "locks")
        #: Committed blobs live below this folder (what a web server may serve directly).
        self.blobs_root = os.path.join(self.root, "blobs")
        self.trash = os.path.join(self.root, "trash")
        make_folder(self.root)
        for folder in (self.spool_root, self._locks, self.blobs_root):
            make_folder(folder)

    def describe(self) -> str:
        return self.root

    def path(self, digest: str) -> str:
        """The final location of a blob. ``digest`` must already be validated."""
        algorithm, hex_digest = digest.split(":", 1)
        return os.path.join(self.blobs_root, algorithm, hex_digest[:2], hex_digest)

    def size(self, digest: str) -> int | None:
        try:
            stat = os.stat(self.path(digest), follow_symlinks=False)
        except FileNotFoundError:
            return None
        return stat.st_size if _stat.S_ISREG(stat.st_mode) else None

    def recorded_size(self, digest: str, size: int) -> int | None:
        """A ``stat`` (local, no round trip) checks that the file is there."""
        return self.size(digest)

    def locate(self, digest: str, size: int) -> LocalFile:
        algorithm, hex_digest = digest.split(":", 1)
        return LocalFile(self.path(digest), f"{algorithm}/{hex_digest[:2]}/{hex_digest}")

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

    def spool_path(self, digest: str) -> str:
        """Where a blob is written while it is fetched.

        One name per digest, so a reader in another process can find and follow it; only
        the holder of the digest's fetch lock (see :meth:`lock_path`) writes it.
        """
        return os.path.join(self.spool_root, spool_name(digest))

    def lock_path(self, digest: str) -> str:
        return os.path.join(self._locks, lock_name(digest))

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> StagedFile:
        return StagedFile(self, digest, SpoolFile(self.spool_path(digest)))

    def check(self) -> None:
        for folder in (self.blobs_root, self.spool_root):
            if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                raise StorageError("folder is missing or not writable", path=folder)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer can still put on the store's filesystem."""
        try:
            stats = os.statvfs(self.spool_root)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.spool_root) from exc
        return stats.f_bavail * stats.f_frsize

    def commit_file(self, spool_path: str, digest: str) -> None:
        """Publish a fully written and verified file under its digest.

        :raises StorageError: when the file cannot be moved into place.
        """
        final = self.path(digest)
        try:
            make_folder(os.path.dirname(final))
            os.replace(spool_path, final)
        except OSError as exc:
            raise StorageError.from_os_error(exc, final) from exc

    def delete(self, digest: str) -> bool:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    # -- cleanup -----------------------------------------------------------------------

    def committed(self) -> t.Iterator[tuple[str, float]]:
        top = self.blobs_root
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
        count = size = 0
        for digest, _mtime in self.committed():
            found = self.size(digest)
            if found is not None:
                count += 1
                size += found
        return count, size

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        """Rename a committed file into the trash: readers that opened it keep reading."""
        make_folder(self.trash)
        algorithm, hex_digest = digest.split(":", 1)
        target = os.path.join(self.trash, f"{algorithm}-{hex_digest}.{_epoch_ms(stamp)}")
        try:
            os.rename(self.path(digest), target)
        except FileNotFoundError:
            return False
        return True

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        for name in _listdir(self.trash):
            match = _TRASH_NAME.fullmatch(name)
            if match is None:
                continue
            stamp = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(match["stamp"]))
            yield f"{match['algorithm']}:{match['hex']}", stamp, os.path.join(self.trash, name)

    def restore(self, digest: str, handle: str) -> bool:
        final = self.path(digest)
        make_folder(os.path.dirname(final))
        try:
            # A link never replaces a file a fetch committed meanwhile.
            os.link(handle, final)
            restored = True
        except FileExistsError:
            restored = False
        except FileNotFoundError:
            return False
        _unlink(handle)
        return restored

    def delete_set_aside(self, handle: str) -> int | None:
        try:
            size = os.stat(handle).st_size
            os.unlink(handle)
        except FileNotFoundError:
            return None
        return size

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        return remove_stale_spool_files(self.spool_root, older_than, self._locks)


class StagedFile:
    """A blob being written to the filesystem store: the spool file is the staging file,
    renamed under the digest by :meth:`commit`."""

    def __init__(self, store: FilesystemStore, digest: str, spool: SpoolFile) -> None:
        self.store = store
        self.digest = digest
        self.spool_path = spool.path
        self._spool = spool

    def write(self, chunk: bytes) -> None:
        self._spool.write(chunk)

    def restart(self) -> None:
        self._spool.truncate()

    def commit(self) -> None:
        self._spool.close()
        self.store.commit_file(self.spool_path, self.digest)

    def discard(self) -> None:
        self._spool.close()
        self._spool.remove()


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
        _unlink(self.path)

    def _open(self) -> t.BinaryIO:
        if self._file is None:
            raise StorageError("the staged blob was closed", path=self.path)
        return self._file


def spool_name(digest: str) -> str:
    """The spool file's name of a digest being fetched (one per digest, every store)."""
    algorithm, hex_digest = digest.split(":", 1)
    return f"{algorithm}-{hex_digest}{_SPOOL_SUFFIX}"


def lock_name(digest: str) -> str:
    """The name of the lock file that elects a digest's fetching process."""
    algorithm, hex_digest = digest.split(":", 1)
    return f"{algorithm}-{hex_digest}{_LOCK_SUFFIX}"


def create_spool_file(path: str) -> t.BinaryIO:
    """Create a spool file anew for a fetch whose lock the caller holds: a file (or link)
    a killed fetch left there is removed first.

    :raises StorageError: when the file cannot be created.
    """
    try:
        _unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, FILE_MODE)
        return os.fdopen(fd, "wb")
    except OSError as exc:
        raise StorageError.from_os_error(exc, path) from exc


def remove_stale_spool_files(folder: str, older_than: dt.datetime, locks: str) -> int:
    """Delete spool files no fetch has written to since ``older_than`` (left by a process
    that was killed mid-fetch); returns how many.

    A file whose digest's lock (in the folder ``locks``) is held belongs to a live fetch
    however old it looks: an upstream that sends slowly, or a commit that uploads the
    rest of a large blob to object storage, can leave it unwritten for longer, and the
    commit reads or renames it by its name. It is kept.
    """
    removed = 0
    limit = _epoch(older_than)
    for name in _listdir(folder):
        path = os.path.join(folder, name)
        try:
            if os.stat(path).st_mtime >= limit:
                continue
            if name.endswith(_SPOOL_SUFFIX) and lock_is_held(
                os.path.join(locks, name.removesuffix(_SPOOL_SUFFIX) + _LOCK_SUFFIX)
            ):
                continue
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed


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
