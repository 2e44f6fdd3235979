"""Which upstreams the cache asks for an image, in which order, and what their failures
tell the client.

- Which upstream: the one a name's registry host names, or the group's ordered list
  (:mod:`..upstream.routing`), where a ``404`` moves on to the next and an outage does
  not. What the group cached of an image records its upstream; refreshes, digests and
  blobs of the image go back there.
- An upstream's failure becomes a registry error in the protocol's format: its ``404``
  the caller's ``*_UNKNOWN`` code, a rate limit ``TOOMANYREQUESTS``, anything else a
  retryable ``UNAVAILABLE`` (with upstream's ``Retry-After``).
"""

from __future__ import annotations

import typing as t

from ..fetch.errors import BlobTooLarge
from ..models.repository import CacheMetadata, ManifestRecord
from ..oci.errors import ErrorCode, RegistryError, storage_unavailable
from ..oci.reference import ProxyPath
from ..stores.base import StorageError
from ..upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
)
from ..upstream.routing import Candidate, GroupUpstreamSource, Route, UnknownRegistry, UpstreamSet
from .quota import blob_too_large

_T = t.TypeVar("_T")


class ImageRoutes:
    """The upstreams a group's requests for an image go to."""

    def __init__(
        self,
        upstreams: UpstreamSet,
        group_upstreams: GroupUpstreamSource,
        metadata: CacheMetadata,
    ) -> None:
        self.upstreams = upstreams
        self.group_upstreams = group_upstreams
        self.metadata = metadata

    def route(self, group_id: int, path: ProxyPath) -> Route:
        """The upstreams to ask for the image (inside a database phase: the group's list
        may live in the database).

        :raises RegistryError: ``NAME_UNKNOWN`` for a registry host the group's
            upstreams do not serve.
        """
        group_list = self.group_upstreams.ordered(group_id, self.upstreams.names())
        try:
            route = self.upstreams.route(path.image, group_list)
        except UnknownRegistry as exc:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, str(exc), {"name": path.image}) from None
        if not route.candidates:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, "this group uses no upstream", {"name": path.image}
            )
        return route

    def image_candidates(self, group_id: int, path: ProxyPath) -> tuple[Candidate, ...]:
        """Where the image's digests, blobs and tags are asked for: the upstream that
        served what the group cached of the image, or the whole route (inside a phase)."""
        route = self.route(group_id, path)
        if route.pinned:
            return route.candidates
        held, upstream = self.metadata.image_upstream(group_id, path.image)
        if not held:
            return route.candidates
        return route.sticky(upstream or self.upstreams.default.name)

    def source_of(self, record: ManifestRecord) -> str:
        """The upstream a cached manifest came from."""
        return record.upstream or self.upstreams.default.name


def first_that_has(
    candidates: t.Sequence[Candidate], call: t.Callable[[Candidate], _T]
) -> tuple[_T, Candidate]:
    """Ask each upstream in turn until one has it: a ``404`` (or ``401``/``403``)
    moves on, any other failure is raised at once (an outage is not a reason to
    serve the name from another registry).

    :raises UpstreamNotFound: none of them has it.
    """
    missing: UpstreamNotFound | None = None
    for candidate in candidates:
        try:
            return call(candidate), candidate
        except UpstreamNotFound as exc:
            missing = exc
    raise missing or UpstreamNotFound("no upstream to ask")


def call_upstream(call: t.Callable[[], t.Any], not_found: ErrorCode) -> t.Any:
    """``call()``, its upstream or store failure turned into the registry error a
    client gets (``not_found`` for upstream's ``404``)."""
    try:
        return call()
    except UpstreamError as exc:
        raise translate(exc, not_found) from exc
    except StorageError as exc:
        # The store, not upstream, refused the blob: logged by the fetcher.
        raise storage_unavailable() from exc


def translate(exc: UpstreamError, not_found: ErrorCode) -> RegistryError:
    """The registry error for an upstream failure (``not_found`` for its ``404``)."""
    if isinstance(exc, BlobTooLarge):
        return blob_too_large(exc.digest, exc.size, exc.limit)
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(not_found)
    if isinstance(exc, UpstreamDigestMismatch):
        return RegistryError(
            ErrorCode.UNAVAILABLE, "upstream sent content that does not match its digest"
        )
    return unavailable(exc)


def unavailable(exc: UpstreamError) -> RegistryError:
    """The retryable error for an upstream that could not answer."""
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
    if isinstance(exc, UpstreamRateLimited):
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS, "upstream registry rate limit reached", headers=headers
        )
    return RegistryError(ErrorCode.UNAVAILABLE, headers=headers)
