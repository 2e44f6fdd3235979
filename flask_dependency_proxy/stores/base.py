"""The blob-store seam: what the cache, the fetcher, cleanup and the CLI need of a store.

A store keeps bytes by digest and nothing else: no database, no upstream, no HTTP.
Two implementations ship: :class:`~.filesystem.FilesystemStore` (the embedded default)
and :class:`~.s3.S3Store` (S3-compatible object storage). Each new backend is one
module implementing :class:`StoreBackend`, that is both faces of a store:

- :class:`BlobStore`, what serving and fetching need: sizes, locations and bytes of
  committed blobs, and staging a blob being fetched;
- :class:`StoreJanitor`, what only the life cycle (and the CLI's figures) need: listing,
  setting aside, restoring and deleting committed blobs, and removing what killed
  fetches left.

Every store, whatever keeps its committed blobs, stages a blob being fetched in a
host-local *spool* file (:class:`StagedBlob`, in the store's :class:`~.spool.Spool`):
clients of the fetching host follow that file as it grows, and only a verified digest is
committed (a rename on a filesystem, the completion of a multipart upload on S3). A
blob is answered from a :data:`BlobLocation`, which the registry view turns into a
response: where a committed blob is (:data:`StoredLocation`), or the bytes of the fetch
a miss follows (:class:`Following`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno as _errno
import typing as t

if t.TYPE_CHECKING:
    from .spool import Spool


class StorageError(Exception):
    """The blob store cannot take a blob: its disk is full, read-only or failing, or the
    object store refused a write.

    Unlike an upstream error this is not retried upstream: the same bytes would fail
    the same way. ``path`` is the file or object key the store could not write;
    ``errno`` the operating system's error number (``None`` when there is none).
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
        return _errno.errorcode.get(self.errno, str(self.errno))


@dataclasses.dataclass(frozen=True)
class LocalFile:
    """A committed blob in a local file: sent by the server (ranges, conditional
    requests) or handed to nginx through ``X-Accel-Redirect`` as ``relative``."""

    path: str
    #: The file's path below the store's blob folder, with ``/`` separators.
    relative: str


@dataclasses.dataclass(frozen=True)
class Redirect:
    """A committed blob clients fetch from elsewhere (a presigned object-store URL)."""

    url: str


@dataclasses.dataclass(frozen=True)
class ByteStream:
    """A committed blob the proxy streams itself, from a store clients cannot reach."""

    size: int
    #: Opens the blob and yields its bytes; raises ``FileNotFoundError`` when it is gone.
    open: t.Callable[[], t.Iterator[bytes]]


@dataclasses.dataclass(frozen=True)
class Following:
    """A blob being fetched: the bytes of the fetch in progress, the end held back until
    the digest is verified (a failure raises from the iterator, cutting the body short)."""

    #: The size upstream announced, ``None`` when it announced none.
    size: int | None
    #: The fetch's bytes from an offset on, those fetched already and then as they
    #: arrive: what a ``Range`` of a miss is answered from.
    read_from: t.Callable[[int], t.Iterator[bytes]]

    @property
    def chunks(self) -> t.Iterator[bytes]:
        """The whole blob."""
        return self.read_from(0)


#: Where a committed blob is served from (:meth:`BlobStore.locate`).
StoredLocation = LocalFile | Redirect | ByteStream
#: How a blob reaches the client: from the store, or following its fetch.
BlobLocation = StoredLocation | Following


class StagedBlob(t.Protocol):
    """A blob being fetched. Bytes appended with :meth:`write` are in the local spool
    file at :attr:`spool_path` at once (followers read it as it grows)."""

    spool_path: str

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises :class:`StorageError` when it cannot be kept."""

    def restart(self) -> None:
        """Drop everything written (upstream ignored a range request)."""

    def commit(self) -> None:
        """Publish the verified blob under its digest; the spool file may be gone after
        (open readers keep reading it). Raises :class:`StorageError`."""

    def discard(self) -> None:
        """Give up: nothing becomes visible under the digest. Idempotent."""


class BlobStore(t.Protocol):
    """Content-addressed blobs as serving and fetching see them: staged locally,
    committed atomically, served by location.

    Digests handed to a store are validated already (:mod:`..oci.reference`).
    """

    #: The host-local spool and lock files of fetches (on every host, whatever the store).
    spool: Spool

    def describe(self) -> str:
        """Where the blobs are, for logs and the CLI (no credentials)."""

    def size(self, digest: str) -> int | None:
        """The size of a committed blob, ``None`` when it is not stored."""

    def recorded_size(self, digest: str, size: int) -> int | None:
        """The size of a blob the database records as committed with ``size`` bytes,
        ``None`` when the store can tell without a round trip that it is gone (a local
        file). A remote store trusts the record: a missing object shows when it is
        opened (``FileNotFoundError``), or, behind a redirect, at the client."""

    def locate(self, digest: str, size: int) -> StoredLocation:
        """How a hit of a committed blob of ``size`` bytes is served; no request to a
        remote store."""

    def open(self, digest: str) -> t.BinaryIO:
        """A committed blob for reading; raises ``FileNotFoundError`` when it is gone."""

    def stage(self, digest: str, size: int | None, *, upload: bool = True) -> StagedBlob:
        """Start writing a blob whose fetch this process was elected to run, in the
        spool file :meth:`Spool.path <.spool.Spool.path>` names. A spool file a killed
        fetch left is replaced. With ``upload=False`` a store that copies the bytes
        elsewhere (object storage) does so only at commit, not while they arrive (for
        bytes followed from another host, which usually commits them itself).

        :raises StorageError: when the blob cannot be staged.
        """

    def free_bytes(self) -> int | None:
        """Bytes the store can still take, ``None`` when it sets no limit we can see."""

    def check(self) -> None:
        """Prove the store can be read and written now (the readiness check).

        :raises StorageError: naming what failed.
        """


class StoreJanitor(t.Protocol):
    """Committed blobs as cleanup sees them: listed, set aside for a grace period, put
    back or deleted; and what killed fetches left behind."""

    def committed(self) -> t.Iterator[tuple[str, float]]:
        """``(digest, commit time in seconds since the epoch)`` of every committed blob."""

    def usage(self) -> tuple[int, int]:
        """Number and total bytes of committed blobs."""

    def delete(self, digest: str) -> bool:
        """Remove a committed blob at once (tests, repair); ``False`` when absent."""

    def set_aside(self, digest: str, stamp: dt.datetime) -> bool:
        """Stop serving a committed blob but keep it for the grace period (moved to the
        trash); ``False`` when it is no longer there."""

    def set_aside_blobs(self) -> t.Iterator[tuple[str, dt.datetime, str]]:
        """``(digest, when it was set aside, handle)`` of every blob in the trash."""

    def restore(self, digest: str, handle: str) -> bool:
        """Put a set-aside blob back; ``False`` when a newer copy is committed already
        (then the set-aside one is dropped) or it is gone."""

    def delete_set_aside(self, handle: str) -> int | None:
        """Delete a set-aside blob for good; its size, ``None`` when it was gone."""

    def remove_stale_staging(self, older_than: dt.datetime) -> int:
        """Remove what fetches killed before ``older_than`` left behind (spool files,
        unfinished uploads); how many."""


class StoreBackend(BlobStore, StoreJanitor, t.Protocol):
    """A whole store, both faces: what a backend implements and the composition root
    opens (:func:`~.backends.open_store`); the cache and the fetcher get its
    :class:`BlobStore` face, the life cycle its :class:`StoreJanitor` face."""
