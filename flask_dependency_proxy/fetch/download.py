"""The download loop: copies upstream bytes into a staged blob, hashing them on the
way; resumes a transfer that broke off; holds the blob to the size upstream announced
and to the configured limit. Commits nothing: :mod:`.fetcher` commits a verified digest.
"""

from __future__ import annotations

import hashlib
import logging
import typing as t

import requests
import urllib3.exceptions

from ..blocking import Pending, in_thread
from ..stores.base import StagedBlob, StorageError
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError, UpstreamNotFound
from ..upstream.registry import BlobStream
from .errors import BlobTooLarge, UpstreamSizeError

log = logging.getLogger(__name__)

#: What a broken upstream transfer raises from the middle of a response body.
_TRANSFER_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)


def check_size(digest: str, size: int | None, max_blob_size: int) -> None:
    """Refuse a blob whose announced ``size`` exceeds the limit, before a byte is
    written (the client gets a clean error, not a broken transfer).

    :raises BlobTooLarge:
    """
    if size is not None and max_blob_size and size > max_blob_size:
        raise BlobTooLarge(digest, size=size, limit=max_blob_size)


def download(
    digest: str,
    stream: BlobStream,
    staged: StagedBlob,
    open_upstream: t.Callable[[int], BlobStream],
    *,
    progress: t.Callable[[int], None],
    max_blob_size: int = 0,
    resume_attempts: int = 2,
) -> int:
    """Copy and hash upstream bytes into ``staged``, calling ``progress`` with the bytes
    in the spool file after each chunk; resume a broken transfer with a range request
    (up to ``resume_attempts`` times). Returns the verified size.

    :param stream: upstream's answer, opened by the caller (which checked its size).
    :param max_blob_size: largest blob, in bytes; ``0`` sets no limit.

    :raises StorageError: a write failed; never retried upstream.
    :raises UpstreamSizeError: upstream sent more than it announced.
    :raises BlobTooLarge: upstream announced no size and sent more than the limit.
    """
    algorithm = digest.split(":", 1)[0]
    absorber = _Absorber(progress, staged, hashlib.new(algorithm))
    size = stream.size
    resumes = 0
    while True:
        # One comparison per chunk: against the announced size (already checked
        # against the limit), else against the limit itself.
        bound = size if size is not None else (max_blob_size or None)
        try:
            try:
                received = absorber.written
                for chunk in stream:
                    received += len(chunk)
                    if bound is not None and received > bound:
                        raise _overflow(digest, size, max_blob_size)
                    absorber.absorb(chunk)
            finally:
                stream.close()
                # Every chunk received is in the spool file before anything else
                # happens, even when the transfer broke (the resume starts there).
                written = absorber.settle()
            if size is not None and written != size:
                raise UpstreamError(f"upstream sent {written} of {size} bytes")
            break
        except (OSError, UpstreamError, *_TRANSFER_ERRORS) as exc:
            if isinstance(exc, UpstreamSizeError | BlobTooLarge):
                raise
            if resumes >= resume_attempts or isinstance(exc, UpstreamNotFound):
                raise UpstreamError(f"upstream transfer of {digest} broke: {exc}") from exc
            resumes += 1
            log.info("resuming %s at byte %d after: %s", digest, written, exc)
            stream = open_upstream(written)
            if stream.offset != written:
                # Upstream ignored the range: start over in the same file, whose
                # readers see the same bytes at the same offsets again.
                try:
                    staged.restart()
                except StorageError:
                    stream.close()
                    raise
                absorber = _Absorber(progress, staged, hashlib.new(algorithm))
                written = 0
            if stream.size is not None and size is not None and stream.size != size:
                stream.close()
                raise UpstreamSizeError(
                    f"upstream announced {stream.size} bytes for {digest}, {size} before"
                ) from exc
            size = stream.size if stream.size is not None else size
            try:
                check_size(digest, size, max_blob_size)
            except BlobTooLarge:
                stream.close()
                raise
    actual = f"{algorithm}:{absorber.hasher.hexdigest()}"
    if actual != digest:
        raise UpstreamDigestMismatch(f"upstream blob {digest} hashes to {actual}")
    return written


def _overflow(digest: str, size: int | None, max_blob_size: int) -> UpstreamError:
    """The error for a chunk that goes past the announced size, or the limit."""
    if size is not None:
        return UpstreamSizeError(f"upstream sent more than the {size} bytes it announced")
    return BlobTooLarge(digest, size=None, limit=max_blob_size)


class _Absorber:
    """Hashes a fetch's chunks and appends them to its spool file, each on another
    thread while the next one is received (one chunk in hand at most), and reports
    progress once a chunk is in the file (what the fetch's readers wait for): at once
    where the work runs in place, else when the next chunk arrives or the stream ends."""

    def __init__(
        self, progress: t.Callable[[int], None], staged: StagedBlob, hasher: t.Any
    ) -> None:
        self.progress = progress
        self.staged = staged
        self.hasher = hasher
        #: Bytes hashed and in the spool file.
        self.written = 0
        self._pending: Pending[None] | None = None
        self._pending_bytes = 0

    def absorb(self, chunk: bytes) -> None:
        """Start on ``chunk`` once the previous chunk is in."""
        self.settle()
        self._pending = in_thread(_absorb, self.hasher, self.staged, chunk)
        self._pending_bytes = len(chunk)
        if self._pending.ready():
            self.settle()

    def settle(self) -> int:
        """Wait for the chunk in hand; the bytes written.

        :raises StorageError: the chunk could not be written.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.get()
            self.written += self._pending_bytes
            self.progress(self.written)
        return self.written


def _absorb(hasher: t.Any, staged: StagedBlob, chunk: bytes) -> None:
    """Hash a chunk and append it to the spool file, visible to its readers at once."""
    hasher.update(chunk)
    staged.write(chunk)
