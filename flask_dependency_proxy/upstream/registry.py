"""What the cache and the fetcher ask of an upstream registry, and what it answers.

:class:`RegistryClient` names the calls and status fields they use; the HTTP client
(:class:`~.client.UpstreamClient`) is one, and so is any stand-in a test puts behind an
:class:`~.routing.UpstreamSet`, checked by the type checker like the real one. A call
that gets no answer raises an :class:`~.errors.UpstreamError`.
"""

from __future__ import annotations

import dataclasses
import typing as t


@dataclasses.dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int | None


@dataclasses.dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    content: bytes


@dataclasses.dataclass(frozen=True)
class TagPage:
    """One page of upstream's tag list.

    :param next_last: the ``last`` value of the next page, when upstream has more.
    """

    tags: tuple[str, ...]
    next_last: str | None
    #: The tags a group has cached, served because upstream could not be asked.
    stale: bool = False


class BlobStream(t.Protocol):
    """An open blob download; iterate it once, then close it."""

    #: Where the bytes start in the blob (non-zero for a resumed download).
    offset: int
    #: The status of upstream's answer (200, or 206 for a range).
    status: int
    #: The whole blob's size, when upstream said.
    size: int | None

    def __iter__(self) -> t.Iterator[bytes]: ...

    def close(self) -> None: ...


class RegistryClient(t.Protocol):
    """One upstream registry, for one credential: the registry calls the cache makes,
    and what the group page shows of the upstream."""

    @property
    def name(self) -> str:
        """The instance's name for the upstream."""
        ...

    @property
    def base_url(self) -> str: ...

    @property
    def credentials(self) -> tuple[str, str] | None: ...

    @property
    def last_status(self) -> int | None:
        """The HTTP status of upstream's last answer; ``None`` when it failed to connect."""
        ...

    @property
    def rate_limit_limit(self) -> int | None: ...

    @property
    def rate_limit_remaining(self) -> int | None: ...

    def throttled_until(self) -> float | None:
        """Seconds since the epoch until which a ``429`` holds requests back, or ``None``."""
        ...

    def head_manifest(self, repository: str, reference: str) -> ManifestHead: ...

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """:raises UpstreamDigestMismatch: the bytes do not hash to the digest."""
        ...

    def list_tags(self, repository: str, n: int | None, last: str | None) -> TagPage: ...

    def get_referrers(self, repository: str, digest: str) -> bytes:
        """The referrers API's image index for ``digest``; raises
        :class:`~.errors.UpstreamNotFound` when upstream has no referrers API."""
        ...

    def head_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size if upstream said; raises when it does not serve the blob."""
        ...

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> BlobStream: ...
