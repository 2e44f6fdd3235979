"""The filesystem blob store (:class:`~.base.StoreBackend`): the embedded default.

Knows files and digests; nothing of the database, the upstream or HTTP. A blob is
written to a staging file while it is fetched and becomes visible under its digest
only when it is committed, an atomic rename after verification.

Folders are created ``0750`` and files ``0640`` (the process's user and group only), and
every file is opened without following a symbolic link, so nobody who can write into
the store folder can point a blob at a file elsewhere (the rules of :mod:`.spool`).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import stat as _stat
import typing as t

from .base import LocalFile, StorageError
from .spool import Spool, SpoolFile, make_folder, open_for_reading, unlink

_DIGEST_FILE = re.compile(r"(?:[a-f0-9]{64}|[a-f0-9]{128})")
_TRASH_NAME = re.compile(r"(?P<algorithm>sha256|sha512)-(?P<hex>[a-f0-9]+)\.(?P<stamp>[0-9]{1,18})")


class FilesystemStore:
    """Blobs under ``<root>/blobs/<algorithm>/<2 hex>/<hex>``, staging under ``<root>/staging``.

    Staging and final files share a filesystem, so a commit is a ``rename``; the grace
    period of cleanup moves files to ``<root>/trash`` and a restore links them back.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.spool = Spool(self.root)
        #: Committed blobs live below this folder (what a web server may serve directly).
        self.blobs_root = os.path.join(self.root, "blobs")
        self.trash = os.path.join(self.root, "trash")
        make_folder(self.blobs_root)

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

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> StagedFile:
        """Stage in the spool file, which shares the store's filesystem (the commit is a
        rename)."""
        return StagedFile(self, digest, self.spool.create(digest))

    def check(self) -> None:
        for folder in (self.blobs_root, self.spool.root):
            if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                raise StorageError("folder is missing or not writable", path=folder)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer can still put on the store's filesystem (the
        spool's)."""
        return self.spool.free_bytes()

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
        unlink(handle)
        return restored

    def delete_set_aside(self, handle: str) -> int | None:
        try:
            size = os.stat(handle).st_size
            os.unlink(handle)
        except FileNotFoundError:
            return None
        return size

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        return self.spool.remove_stale(older_than)


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


def _epoch(moment: dt.datetime) -> float:
    return moment.replace(tzinfo=dt.UTC).timestamp()


def _epoch_ms(moment: dt.datetime) -> int:
    return int(_epoch(moment) * 1000)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
