"""The pull-through rules: when to ask upstream, what to keep, what to serve.

No Flask request objects here: the registry blueprint hands in validated values and
turns the returned records (:mod:`.results`) into responses. :class:`PullThroughCache`
is the cache's one face; manifests and tags follow the rules of :mod:`.manifests`, the
upstreams asked are chosen by :mod:`.routes`. This module holds the blob rules:

- Blobs are immutable: served locally once cached.
- A blob miss is fetched once and streamed to every client while it is verified, from
  any offset (a ``Range``) of the bytes fetched so far and then as they arrive.
- A group gets a blob it does not hold only on its own route's word: its own fetch
  opened it upstream, or a ``HEAD`` with its credential confirmed the digest, before it
  follows anyone's fetch, is served a stored copy or records the blob. What a route
  confirmed is remembered per worker for a while (:mod:`.confirmations`), so a herd
  costs about one ``HEAD`` per route and worker.
- Database reads and writes run in short phases (:mod:`..models.database`) that end,
  with the connection back in the pool, before any upstream request, retry or wait for
  a fetch.
- While the database is unavailable, a blob this worker recently served or recorded for
  the group is still served from the store (:mod:`.worker_memory`); last-read
  bookkeeping waits for it.
- New content (a manifest or blob the group does not hold) passes the size checks of
  :mod:`.quota` first; cached content is always served.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import typing as t

from ..fetch.errors import BlobTooLarge, UpstreamSizeError
from ..fetch.fetcher import BlobFetcher, Committed
from ..fetch.following import Fetch
from ..metrics import Metrics
from ..models.database import DatabaseUnavailable
from ..models.hot_tags import write_reference_pulls
from ..models.pulls import write_pulls
from ..models.repository import CacheMetadata
from ..models.tables import utcnow
from ..models.usage import write_usage
from ..oci.errors import ErrorCode, RegistryError
from ..oci.reference import ProxyPath
from ..single_flight import SingleFlight
from ..stores.base import BlobStore, ByteStream, Following
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError
from ..upstream.registry import TagPage
from ..upstream.routing import Candidate, GroupUpstreamSource, UpstreamSet
from .audit import FLUSH_SECONDS as AUDIT_FLUSH_SECONDS
from .audit import PullAudit
from .blocks import BlockList
from .confirmations import BlobOpener, Confirmations
from .cooldown import Cooldowns
from .manifests import DeletedTags, ManifestCache
from .quota import Quotas
from .referrers import Referrers, ReferrersCache
from .results import BlobResult, ManifestResult, Outcome
from .routes import ImageRoutes, call_upstream, first_that_has
from .usage import FLUSH_SECONDS as USAGE_FLUSH_SECONDS
from .usage import UsageBuffer
from .worker_memory import RecentBlobs, UnreadableBlobs

log = logging.getLogger(__name__)

#: Fetches a request starts or joins before it gives up on one that fails for another
#: route (its own route confirmed the digest each time).
_FETCH_ATTEMPTS = 3


class PullThroughCache:
    """Pull-through cache for one application.

    :param tag_check_interval: seconds a tag is trusted without a HEAD upstream.
    :param serve_stale_on_not_found: keep serving a cached tag that upstream deleted.
    :param quotas: the size checks (largest blob, each group's limit and its policy).
    :param blocks: the blocked images (:mod:`.blocks`); ``None``: none.
    :param deleted_tags: each group's policy for a cached tag upstream deleted.
    :param cooldowns: the groups' tag cooldowns (:mod:`.cooldown`); ``None``: none.
    :param audit_flush_seconds: how often the pull record is written.
    :param usage_flush_seconds: how often the usage counters (and the pull counts per
        tag the refresher ranks by) are written.
    """

    def __init__(
        self,
        *,
        store: BlobStore,
        upstreams: UpstreamSet,
        group_upstreams: GroupUpstreamSource,
        metadata: CacheMetadata,
        fetcher: BlobFetcher,
        quotas: Quotas,
        tag_check_interval: float = 0,
        serve_stale_on_not_found: bool = False,
        clock: t.Callable[[], dt.datetime] = utcnow,
        blocks: BlockList | None = None,
        deleted_tags: DeletedTags | None = None,
        cooldowns: Cooldowns | None = None,
        metrics: Metrics | None = None,
        audit_flush_seconds: float = AUDIT_FLUSH_SECONDS,
        usage_flush_seconds: float = USAGE_FLUSH_SECONDS,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.group_upstreams = group_upstreams
        self.metadata = metadata
        self.fetcher = fetcher
        self.database = metadata.database
        self.routes = ImageRoutes(upstreams, group_upstreams, metadata)
        self.manifests = ManifestCache(
            routes=self.routes,
            metadata=metadata,
            quotas=quotas,
            tag_check_interval=tag_check_interval,
            serve_stale_on_not_found=serve_stale_on_not_found,
            clock=clock,
            blocks=blocks,
            deleted_tags=deleted_tags,
            cooldowns=cooldowns,
        )
        self.blocks = blocks
        self.cooldowns = cooldowns
        self.metrics = metrics or Metrics()
        #: Who pulled what, written in batches by :meth:`finish_request`.
        self.audit = PullAudit(
            flush_seconds=audit_flush_seconds,
            on_lost=lambda count: self.metrics.pull_records("lost", count),
        )
        self.referrers = ReferrersCache(
            routes=self.routes, metadata=metadata, manifests=self.manifests, quotas=quotas
        )
        self.recent_blobs = RecentBlobs()
        #: Digests the routes of this worker's groups confirmed lately.
        self.confirmations = Confirmations()
        #: Blobs this worker found gone from the store although a row names them.
        self._unreadable = UnreadableBlobs()
        self._recording = SingleFlight()
        #: The reads of a blob request, shared by the herd of requests that ask for the
        #: same blob at once (one query each, not one per client).
        self._lookups = SingleFlight()
        #: Pulls and bytes per group and day, written by :meth:`finish_request`.
        self.usage = UsageBuffer(flush_seconds=usage_flush_seconds)
        self._bookkeeping_failed = False
        self.quotas = quotas

    # -- manifests -----------------------------------------------------------------

    def get_manifest(
        self, group_id: int, path: ProxyPath, reference: str, accept: t.Sequence[str] = ()
    ) -> ManifestResult:
        """The manifest for a tag or digest, in a media type the client accepts
        (:meth:`.ManifestCache.get_manifest`)."""
        return self.manifests.get_manifest(group_id, path, reference, accept)

    def list_tags(self, group_id: int, path: ProxyPath, n: int | None, last: str | None) -> TagPage:
        """One page of the image's tags (:meth:`.ManifestCache.list_tags`)."""
        return self.manifests.list_tags(group_id, path, n, last)

    def get_referrers(
        self, group_id: int, path: ProxyPath, digest: str, artifact_type: str | None = None
    ) -> Referrers:
        """The referrers of ``digest``, of ``artifact_type`` only when given
        (:meth:`.ReferrersCache.get`)."""
        return self.referrers.get(group_id, path, digest).of_type(artifact_type)

    # -- blobs -----------------------------------------------------------------------

    def get_blob(
        self, group_id: int, path: ProxyPath, digest: str, *, until_committed: bool = False
    ) -> BlobResult:
        """A blob from the store, or a stream of an upstream fetch that caches it.

        :param until_committed: a fetch's stream ends only once the blob is committed to
            the store, not when its last byte is verified (a warm-up that exits next).
        """
        size = self._held_blob_size(group_id, digest, touch=True)
        if size is not None:
            return self._stored(digest, size)

        size = self.fetcher.committed_size(digest)
        candidates = self._lookups.do(
            ("admitted", group_id, path, digest, size),
            lambda: self._admitted_candidates(group_id, path, digest, size),
        )
        if size is not None:
            # Another group cached these bytes. This group may only have them if its
            # upstream serves them to it: a HEAD settles that without a download.
            call_upstream(
                lambda: self.confirmations.confirm(candidates, digest), ErrorCode.BLOB_UNKNOWN
            )
            self._record_blob(group_id, digest, size)
            return self._stored(digest, size)

        for _ in range(_FETCH_ATTEMPTS):
            found = call_upstream(
                lambda: self._fetch_blob(candidates, digest), ErrorCode.BLOB_UNKNOWN
            )
            if isinstance(found, Committed):
                # Committed by another request meanwhile (and confirmed) ...
                self._record_blob(group_id, digest, found.size)
                return self._stored(digest, found.size)
            if found is not None:
                fetch: Fetch = found
                break
            # ... and already taken away again by cleanup: fetch it once more.
        else:
            raise RegistryError(
                ErrorCode.UNAVAILABLE, "the blob was removed while it was fetched; try again"
            )
        fetch.on_commit(lambda written: self._record_blob(group_id, digest, written), key=group_id)

        def read_from(start: int) -> t.Iterator[bytes]:
            return fetch.follow(self.store, start=start, until_committed=until_committed)

        return BlobResult(
            digest=digest,
            size=fetch.size,
            location=Following(fetch.size, read_from),
            outcome=Outcome.MISS,
            upstream_status=fetch.upstream_status,
        )

    def _admitted_candidates(
        self, group_id: int, path: ProxyPath, digest: str, size: int | None
    ) -> tuple[Candidate, ...]:
        """Where the group's image asks for ``digest``, once the group's quota admits it.

        :raises RegistryError: ``DENIED`` by the quota.
        """
        with self.database.phase("checking the quota"):
            self.quotas.admit_blob(group_id, digest, size)
            return self.routes.image_candidates(group_id, path)

    def _fetch_blob(
        self, candidates: t.Sequence[Candidate], digest: str
    ) -> Fetch | Committed | None:
        """The fetch of ``digest`` that the group may follow, or :class:`Committed` when
        the blob was committed meanwhile; either way on the word of the group's own
        route. ``None`` when it was committed and is gone again: cleanup took it while
        the route confirmed it.

        Only a fetch this request started with its own opener asked that route; any
        other (one running in this or another process, one whose bytes come from another
        host, a blob committed meanwhile) may have come from another group's route, so
        the route confirms the digest first. A fetch that failed before it started
        failed on its starter's route: unless this request's opener made it fail, the
        group's own route answers instead (a ``404`` of its own, or a fetch of its own).

        :raises UpstreamError: the group's own route does not serve the blob, or could
            not answer.
        """
        for attempt in range(_FETCH_ATTEMPTS):
            opener = BlobOpener(candidates, digest, self.confirmations)
            try:
                fetch = self.fetcher.fetch(digest, opener)
            except UpstreamError as exc:
                if opener.attempted or not _route_specific(exc):
                    raise
                self.confirmations.confirm(candidates, digest)
                log.info("the fetch of %s this request joined failed (%s); again", digest, exc)
                # The failed fetch is being cleared away: give it a moment.
                time.sleep(0.02 * (attempt + 1))
                continue
            if not opener.opened and self.confirmations.confirm(candidates, digest):
                if isinstance(fetch, Committed):
                    # The route answered after a round trip upstream, time enough for
                    # a cleanup to take the blob: the fetcher says whether it is still in.
                    size = self.fetcher.committed_size(digest)
                    return None if size is None else Committed(size)
            return fetch
        raise UpstreamError(f"the fetches of {digest} this request joined kept failing")

    def _stored(self, digest: str, size: int) -> BlobResult:
        location = self.store.locate(digest, size)
        if isinstance(location, ByteStream):
            location = ByteStream(location.size, open=self._noting_missing(digest, location.open))
        return BlobResult(digest=digest, size=size, location=location)

    def _noting_missing(
        self, digest: str, open_blob: t.Callable[[], t.Iterator[bytes]]
    ) -> t.Callable[[], t.Iterator[bytes]]:
        """``open_blob``, remembering a blob found gone when it is opened, so the
        request's retry asks the store instead of trusting the row again."""

        def opened() -> t.Iterator[bytes]:
            try:
                return open_blob()
            except FileNotFoundError:
                self._unreadable.add(digest)
                raise

        return opened

    def head_blob(self, group_id: int, path: ProxyPath, digest: str) -> int | None:
        """The size of a blob, without downloading it when it is not cached."""
        size = self._held_blob_size(group_id, digest, touch=False)
        if size is not None:
            return size
        with self.database.phase("reading the image's upstream"):
            candidates = self.routes.image_candidates(group_id, path)
        size, _ = call_upstream(
            lambda: first_that_has(candidates, lambda c: c.client.head_blob(c.repository, digest)),
            ErrorCode.BLOB_UNKNOWN,
        )
        self.quotas.check_blob_size(digest, size)
        return t.cast("int | None", size)

    def _held_blob_size(self, group_id: int, digest: str, *, touch: bool) -> int | None:
        """The size of the group's cached copy of a blob, or ``None`` when it has none.

        While the database is unavailable, a blob this worker recently served or
        recorded for the group still counts as the group's.

        :raises DatabaseUnavailable: the database is unavailable and this worker does
            not know the group to hold the blob.
        """
        known = (group_id, digest) in self.recent_blobs
        try:
            with self.database.phase("reading a blob", has_fallback=known):
                record = self._lookups.do(
                    ("blob", group_id, digest), lambda: self.metadata.find_blob(group_id, digest)
                )
        except DatabaseUnavailable:
            size = self.fetcher.committed_size(digest) if known else None
            if size is None:
                raise
            log.info("database unavailable; serving %s to group %s from memory", digest, group_id)
            return size
        if record is None:
            return None
        if digest in self._unreadable:
            # Found gone when it was opened: the store decides, not the row.
            size = self.fetcher.committed_size(digest)
            if size is not None:
                self._unreadable.discard(digest)
        else:
            # No round trip to an object store: the row knows the size.
            size = self.store.recorded_size(digest, record.size)
        if size is None:
            return None
        self.recent_blobs.add(group_id, digest)
        if touch:
            self.metadata.touch_blob(record)
        return size

    def _record_blob(self, group_id: int, digest: str, size: int) -> None:
        """Claim a committed blob for the group. The bytes are verified and committed
        whether or not the row can be written now, so a database failure here does not
        fail the pull: the worker remembers the claim, and the next pull records it."""
        self.recent_blobs.add(group_id, digest)
        try:
            # The readers of another process's fetch finish together: one write for all.
            self._recording.do(
                (group_id, digest), lambda: self.metadata.record_blob(group_id, digest, size)
            )
        except DatabaseUnavailable as exc:
            log.warning("could not record blob %s for group %s: %s", digest, group_id, exc)

    def finish_request(self) -> None:
        """Write batched bookkeeping that is due, then free the database connection."""
        try:
            self.flush_bookkeeping()
        finally:
            self.metadata.release()

    def flush_bookkeeping(self) -> None:
        """Write the batched bookkeeping that is due: usage counters, the pull record,
        last-read times. The end of a request calls it, and so does a thread of each
        process (:class:`~..admin.periodic.PeriodicJob`), so a worker that goes quiet
        does not keep its last pulls unrecorded until its next request.

        Bookkeeping never fails a request: while the database is unavailable the
        last-read times stay buffered, and the outage is logged once.
        """
        self._flush_usage()
        self._flush_audit()
        try:
            if not self.metadata.flush_due():
                return
            with self.database.phase("writing last-read times", has_fallback=True):
                self.metadata.flush_reads()
        except DatabaseUnavailable as exc:
            if not self._bookkeeping_failed:
                log.warning("last-read times kept for later: %s", exc)
            self._bookkeeping_failed = True
        else:
            if self._bookkeeping_failed:
                log.info("last-read times written again")
            self._bookkeeping_failed = False

    def _flush_usage(self) -> None:
        """Write the usage counters when due; a failed write keeps them for the next."""
        if not self.usage.flush_due():
            return
        try:
            with self.database.phase("writing usage counters", has_fallback=True):
                self.usage.flush(
                    lambda batch: write_usage(self.metadata.session, batch),
                    references=lambda refs: write_reference_pulls(self.metadata.session, refs),
                )
        except Exception as exc:
            log.warning("usage counters kept for later: %s", exc)

    def _flush_audit(self) -> None:
        """Write the pull record when due; a failed write keeps it for the next."""
        if not self.audit.flush_due():
            return
        pending = self.audit.pending()
        try:
            with self.database.phase("writing the pull record", has_fallback=True):
                written = self.audit.flush(lambda batch: write_pulls(self.metadata.session, batch))
        except Exception as exc:
            log.warning("pull record kept for later: %s", exc)
            self.metrics.pull_records("deferred", pending)
        else:
            self.metrics.pull_records("written", written)


def _route_specific(exc: UpstreamError) -> bool:
    """Whether a fetch's failure may be its route's alone, so another route could still
    serve the blob (not a blob over the size limit, not a store that is full)."""
    return not isinstance(exc, BlobTooLarge | UpstreamSizeError | UpstreamDigestMismatch)
