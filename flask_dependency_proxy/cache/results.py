"""What the cache answers: the value types the registry blueprint turns into responses,
and the :class:`Outcome` that metrics, the request log and a group's savings count."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from ..oci.errors import RegistryError
from ..stores.base import BlobLocation


class Outcome(enum.StrEnum):
    """How the cache answered a manifest or blob: what metrics, logs and the group's
    savings count."""

    #: From the cache, upstream not asked.
    HIT = "hit"
    #: From the cache after upstream's HEAD confirmed the tag's digest.
    REVALIDATED = "revalidated"
    #: Fetched from upstream.
    MISS = "miss"
    #: From the cache because upstream could not answer.
    STALE = "stale"
    #: The tag's previous digest from the cache: upstream's new one is in cooldown.
    COOLDOWN_PREVIOUS = "cooldown-previous"

    @property
    def from_cache(self) -> bool:
        return self is not Outcome.MISS


@dataclasses.dataclass(frozen=True)
class Pending:
    """A tag's new upstream digest held back by the cooldown, and when it is served
    (naive UTC)."""

    digest: str
    release_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ManifestResult:
    digest: str
    media_type: str
    content: bytes
    outcome: Outcome = Outcome.HIT
    #: Served instead of this digest, which is in cooldown (:mod:`.cooldown`).
    pending: Pending | None = None

    @property
    def stale(self) -> bool:
        """Served from the cache because upstream could not be asked."""
        return self.outcome is Outcome.STALE


@dataclasses.dataclass(frozen=True)
class BlobResult:
    """How the blob reaches the client (``location``: a committed blob, or the fetch a
    miss follows); ``None`` for a ``HEAD``."""

    digest: str
    size: int | None
    location: BlobLocation | None = None
    outcome: Outcome = Outcome.HIT
    #: Upstream's answer to the blob GET this request's fetch made, if it made one.
    upstream_status: int | None = None


class PullRefused(RegistryError):
    """A pull a supply-chain control refused: the registry error the client gets, with
    what the pull record keeps of it.

    :param outcome: ``blocked`` or ``refused``.
    :param digest: the digest refused, when one was known.
    """

    outcome: str = "refused"
    digest: str | None = None
