"""What the upstream client raises: :class:`UpstreamError` and the kinds of it the cache
answers differently (a missing name, a rate limit, wrong bytes, a refused request, an
upstream counted as down). Every one means upstream could not answer; none carries a
credential or a token.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Upstream could not answer; a cached copy may be served instead."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class UpstreamNotFound(UpstreamError):
    """Upstream answered that the manifest or blob does not exist (or is not ours to see)."""


class UpstreamRateLimited(UpstreamError):
    """Upstream answered 429 on every attempt."""


class UpstreamDigestMismatch(UpstreamError):
    """Upstream's bytes do not hash to the digest it announced or was asked for."""


class UpstreamRefused(UpstreamError):
    """The client refused what upstream asked of it (a realm, a redirect, an encoding)."""


class UpstreamDown(UpstreamError):
    """Upstream failed to connect repeatedly and is not asked again for a few seconds."""
