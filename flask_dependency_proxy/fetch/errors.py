"""How a fetch fails, as the cache and the registry view tell the cases apart."""

from __future__ import annotations

from ..stores.base import StorageError
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError


class FetchFailed(Exception):
    """The fetch a client was following broke; whatever it already received is not valid.

    Its ``__cause__`` says why when it is known: a :class:`StorageError`, an
    :class:`UpstreamDigestMismatch` or another :class:`UpstreamError`.
    """

    @property
    def reason(self) -> str:
        """``storage``, ``digest_mismatch``, ``too_large`` or ``upstream``: what broke
        the fetch."""
        cause = self.__cause__
        if isinstance(cause, StorageError):
            return "storage"
        if isinstance(cause, UpstreamDigestMismatch):
            return "digest_mismatch"
        if isinstance(cause, BlobTooLarge):
            return "too_large"
        return "upstream"


class CommittedBlobGone(FileNotFoundError):
    """The fetch a client joined committed its blob, and cleanup took it away (a purge
    dropped its rows) before this client read a byte of it.

    A ``FileNotFoundError``, as for a cached blob removed between lookup and open: the
    registry view fetches it again instead of failing the pull.
    """


class UpstreamSizeError(UpstreamError):
    """Upstream sent more bytes than it announced, or announced two sizes for one blob.

    Not resumed: the fetch is aborted before the extra bytes are written.
    """


class BlobTooLarge(UpstreamError):
    """The blob is larger than ``DEPENDENCY_PROXY_MAX_BLOB_SIZE``: refused before a byte
    is written when upstream announces its size, cut off (never committed) when the
    limit is only passed while it streams. Not resumed.

    :param digest: the blob.
    :param size: its size, when upstream announced it.
    :param limit: the limit in bytes, for the message a client sees.
    """

    def __init__(self, digest: str, *, size: int | None, limit: int) -> None:
        what = "while it streamed" if size is None else f"with {size} bytes"
        super().__init__(f"blob {digest} passed the limit of {limit} bytes {what}")
        self.digest = digest
        self.size = size
        self.limit = limit
