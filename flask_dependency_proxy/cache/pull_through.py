"""The pull-through rules: when to ask upstream, what to keep, what to serve.

No Flask request objects here: the registry blueprint hands in validated values and
turns the returned records into responses.

- Tags go upstream first with a HEAD (free of Docker Hub's pull quota); only a changed
  digest costs a GET. An unreachable upstream falls back to the cached copy.
- Which upstream: the one a name's registry host names, or the group's ordered list
  (:mod:`.upstreams`), where a ``404`` moves on to the next and an outage does not. What
  the group cached of an image records its upstream; refreshes, digests and blobs of
  the image go back there.
- Manifests by digest and blobs are immutable: served locally once cached.
- A blob miss is fetched once and streamed to every client while it is verified.
- A group gets a blob it does not hold only on its own route's word: its own fetch
  opened it upstream, or a ``HEAD`` with its credential confirmed the digest, before it
  follows anyone's fetch, is served a stored copy or records the blob. What a route
  confirmed is remembered per worker for a while (:class:`_Confirmations`), so a herd
  costs about one ``HEAD`` per route and worker.
- Database reads and writes run in short phases (:mod:`.database`) that end, with the
  connection back in the pool, before any upstream request, retry or wait for a fetch.
- While the database is unavailable, a blob this worker recently served or recorded for
  the group is still served from the store; last-read bookkeeping waits for it.
- New content (a manifest or blob the group does not hold) passes the size checks of
  :mod:`.quota` first; cached content is always served.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import logging
import threading
import time
import typing as t

from ..fetch.errors import BlobTooLarge, UpstreamSizeError
from ..fetch.fetcher import BlobFetcher, Committed
from ..fetch.following import Fetch
from ..models.database import DatabaseUnavailable
from ..models.repository import CacheMetadata, ManifestRecord
from ..models.tables import utcnow
from ..models.usage import write_usage
from ..oci.errors import ErrorCode, RegistryError, storage_unavailable
from ..oci.reference import (
    MEDIA_TYPE_DOCKER_LIST,
    ProxyPath,
    accepts,
    default_platform_manifest,
    is_digest,
    is_valid_tag,
)
from ..stores.base import BlobLocation, BlobStore, ByteStream, Following, StorageError
from ..upstream.credentials import credential_id
from ..upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
)
from ..upstream.registry import BlobStream, TagPage
from ..upstream.routing import Candidate, GroupUpstreamSource, Route, UnknownRegistry, UpstreamSet
from ..upstream.single_flight import SingleFlight
from .quota import Quotas, blob_too_large
from .usage import UsageBuffer

log = logging.getLogger(__name__)

#: (group, digest) pairs remembered per worker for pulls during a database outage.
RECENT_BLOBS = 10_000
#: (route, digest) confirmations remembered per worker.
CONFIRMATIONS = 10_000
#: Seconds a route's word that it serves a digest is trusted without asking again.
CONFIRMATION_SECONDS = 300.0
#: Fetches a request starts or joins before it gives up on one that fails for another
#: route (its own route confirmed the digest each time).
_FETCH_ATTEMPTS = 3

_T = t.TypeVar("_T")


class _RecentBlobs:
    """The blobs this worker recently served or recorded, per group: a bounded LRU set.

    Only consulted when the database cannot say whether a group holds a blob.
    """

    def __init__(self, max_entries: int = RECENT_BLOBS) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[int, str], None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, group_id: int, digest: str) -> None:
        key = (group_id, digest)
        with self._lock:
            self._entries[key] = None
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key: tuple[int, str]) -> bool:
        with self._lock:
            return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: What decides whether an upstream serves a digest to a group: the entry, its URL, the
#: repository there and the credential used (by :func:`~.upstream.credentials.credential_id`, as
#: the upstream clients themselves are told apart).
RouteKey = tuple[str, str, str, str]


def route_key(candidate: Candidate) -> RouteKey:
    """The key of one candidate: two groups share it only when they would send the very
    same request upstream (same entry, repository and credential)."""
    client = candidate.client
    return (
        candidate.name,
        client.base_url,
        candidate.repository,
        credential_id(client.credentials),
    )


class _Confirmations:
    """The digests routes confirmed lately in this worker, by a ``HEAD`` or by opening
    the blob: a bounded, expiring set, with one ``HEAD`` at a time per route and digest
    (a herd of one group waits for the first one's answer instead of asking again)."""

    def __init__(
        self,
        max_entries: int = CONFIRMATIONS,
        seconds: float = CONFIRMATION_SECONDS,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.seconds = seconds
        self._clock = clock
        self._until: collections.OrderedDict[tuple[RouteKey, str], float] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._single_flight = SingleFlight()

    def add(self, key: RouteKey, digest: str) -> None:
        """Remember that the route ``key`` serves ``digest``."""
        entry = (key, digest)
        with self._lock:
            self._until[entry] = self._clock() + self.seconds
            self._until.move_to_end(entry)
            while len(self._until) > self.max_entries:
                self._until.popitem(last=False)

    def confirmed(self, keys: t.Iterable[RouteKey], digest: str) -> bool:
        """Whether one of the routes ``keys`` confirmed ``digest`` lately."""
        now = self._clock()
        with self._lock:
            for key in keys:
                until = self._until.get((key, digest))
                if until is None:
                    continue
                if until > now:
                    return True
                del self._until[(key, digest)]
        return False

    def confirm(self, candidates: t.Sequence[Candidate], digest: str) -> bool:
        """Make sure one of ``candidates`` serves ``digest``: remembered, or a ``HEAD``
        down the list (shared by concurrent callers with the same list). ``True`` when
        it was not remembered: the answer took a round trip upstream.

        :raises UpstreamNotFound: none of them serves it.
        :raises UpstreamError: the route could not answer.
        """
        keys = tuple(route_key(candidate) for candidate in candidates)
        if self.confirmed(keys, digest):
            return False

        def ask() -> None:
            if self.confirmed(keys, digest):
                return
            _, source = PullThroughCache._first_that_has(
                candidates, lambda c: c.client.head_blob(c.repository, digest)
            )
            self.add(route_key(source), digest)

        self._single_flight.do((keys, digest), ask)
        return True


class _Unreadable:
    """Digests whose committed blob was found missing when opened; bounded (a flood of
    missing blobs only costs each a store request again)."""

    def __init__(self, max_entries: int = 1000) -> None:
        self.max_entries = max_entries
        self._digests: set[str] = set()
        self._lock = threading.Lock()

    def add(self, digest: str) -> None:
        with self._lock:
            if len(self._digests) >= self.max_entries:
                self._digests.clear()
            self._digests.add(digest)

    def discard(self, digest: str) -> None:
        with self._lock:
            self._digests.discard(digest)

    def __contains__(self, digest: str) -> bool:
        return digest in self._digests


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

    @property
    def from_cache(self) -> bool:
        return self is not Outcome.MISS


@dataclasses.dataclass(frozen=True)
class ManifestResult:
    digest: str
    media_type: str
    content: bytes
    outcome: Outcome = Outcome.HIT

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


class PullThroughCache:
    """Pull-through cache for one application.

    :param tag_check_interval: seconds a tag is trusted without a HEAD upstream.
    :param serve_stale_on_not_found: keep serving a cached tag that upstream deleted.
    :param quotas: the size checks (largest blob, each group's limit and its policy).
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
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.group_upstreams = group_upstreams
        self.metadata = metadata
        self.fetcher = fetcher
        self.tag_check_interval = dt.timedelta(seconds=tag_check_interval)
        self.serve_stale_on_not_found = serve_stale_on_not_found
        self._clock = clock
        self.database = metadata.database
        self.recent_blobs = _RecentBlobs()
        #: Digests the routes of this worker's groups confirmed lately.
        self.confirmations = _Confirmations()
        #: Blobs this worker found gone from the store although a row names them.
        self._unreadable = _Unreadable()
        #: Pulls and bytes per group and day, written by :meth:`finish_request`.
        self.usage = UsageBuffer()
        self._bookkeeping_failed = False
        self.quotas = quotas

    # -- manifests -----------------------------------------------------------------

    def get_manifest(
        self, group_id: int, path: ProxyPath, reference: str, accept: t.Sequence[str] = ()
    ) -> ManifestResult:
        """The manifest for a tag or digest, from the cache or upstream, in a media type
        the client accepts (``accept``: its merged ``Accept`` list), the way distribution
        negotiates: a Docker manifest list asked for by tag by a client that cannot take
        one gives its ``linux/amd64`` manifest; any other type the client did not ask for
        is ``404 MANIFEST_UNKNOWN``.
        """
        result = self._manifest(group_id, path, reference)
        if accepts(list(accept), result.media_type):
            return result
        if result.media_type == MEDIA_TYPE_DOCKER_LIST and not is_digest(reference):
            child = default_platform_manifest(result.content)
            if child is not None:
                chosen = self._manifest(group_id, path, child)
                if accepts(list(accept), chosen.media_type):
                    if result.stale:
                        return dataclasses.replace(chosen, outcome=Outcome.STALE)
                    return chosen
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest is {result.media_type}, which the Accept header does not allow",
            {"reference": reference},
        )

    def _manifest(self, group_id: int, path: ProxyPath, reference: str) -> ManifestResult:
        if is_digest(reference):
            return self._manifest_by_digest(group_id, path, reference)
        return self._manifest_by_tag(group_id, path, reference)

    def list_tags(self, group_id: int, path: ProxyPath, n: int | None, last: str | None) -> TagPage:
        """One page of upstream's tags for the image; while upstream cannot answer, the
        tags the group has cached (``stale``).

        :raises RegistryError: ``NAME_UNKNOWN`` when no upstream knows the image,
            ``UNAVAILABLE`` or ``TOOMANYREQUESTS`` when upstream cannot answer and the
            group has no tags of the image.
        """
        with self.database.phase("reading the image's upstream"):
            candidates = self._image_candidates(group_id, path)
        try:
            page, _ = self._first_that_has(
                candidates, lambda c: c.client.list_tags(c.repository, n, last)
            )
        except UpstreamError as exc:
            if isinstance(exc, UpstreamNotFound):
                raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": path.image}) from exc
            with self.database.phase("reading cached tags"):
                cached = self.metadata.cached_tags(group_id, path.image)
            if not cached:
                raise _unavailable(exc) from exc
            log.warning("upstream failed for tags of %s (%s); serving cached tags", path.image, exc)
            page = TagPage(tags=tuple(cached), next_last=None, stale=True)
        # Registries that do not paginate (distribution 2.8) send every tag, in no
        # particular order: the page is cut here, in the spec's lexical order.
        tags = sorted(
            tag for tag in page.tags if is_valid_tag(tag) and (last is None or tag > last)
        )
        if n is not None and len(tags) > n:
            return TagPage(
                tags=tuple(tags[:n]), next_last=tags[n - 1] if n else None, stale=page.stale
            )
        return TagPage(
            tags=tuple(tags), next_last=page.next_last if tags else None, stale=page.stale
        )

    def _manifest_by_digest(self, group_id: int, path: ProxyPath, digest: str) -> ManifestResult:
        with self.database.phase("reading a manifest"):
            cached = self.metadata.find_digest(group_id, path.image, digest)
            if cached is None:
                candidates = self._image_candidates(group_id, path)
        if cached is not None:
            self.metadata.touch_manifest(cached)
            return _result(cached)
        manifest, source = self._call_upstream(
            lambda: self._first_that_has(
                candidates, lambda c: c.client.get_manifest(c.repository, digest)
            ),
            ErrorCode.MANIFEST_UNKNOWN,
        )
        with self.database.phase("saving a manifest"):
            self.quotas.admit_manifest(group_id, manifest.digest, manifest.content)
            record = self.metadata.save_manifest(
                group_id,
                path.image,
                None,
                digest=manifest.digest,
                media_type=manifest.media_type,
                content=manifest.content,
                upstream=source.name,
            )
        return _result(record, Outcome.MISS)

    def _manifest_by_tag(self, group_id: int, path: ProxyPath, tag: str) -> ManifestResult:
        with self.database.phase("reading a tag"):
            cached = self.metadata.find_tag(group_id, path.image, tag)
            # A check time ahead of this clock (another host's clock, or this one stepped
            # back) is not trusted: it would skip the HEAD for as long as they disagree.
            fresh = cached is not None and (
                dt.timedelta(0) <= self._clock() - cached.checked_at < self.tag_check_interval
            )
            if not fresh:
                route = self._route(group_id, path)
        if cached is not None and fresh:
            self.metadata.touch_manifest(cached)
            return _result(cached)
        # A cached tag is checked where it came from; a new one goes down the list.
        candidates = route.candidates if cached is None else route.sticky(self._source_of(cached))
        try:
            head, source = self._first_that_has(
                candidates, lambda c: c.client.head_manifest(c.repository, tag)
            )
        except UpstreamNotFound:
            if cached is not None and self.serve_stale_on_not_found:
                log.warning(
                    "upstream no longer has %s:%s; serving the cached copy", path.image, tag
                )
                return _result(cached, Outcome.STALE)
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, detail={"name": path.image, "tag": tag}
            ) from None
        except UpstreamError as exc:
            if cached is not None:
                log.warning(
                    "upstream failed for %s:%s (%s); serving the cached copy", path.image, tag, exc
                )
                return _result(cached, Outcome.STALE)
            raise _unavailable(exc) from exc

        if cached is not None and cached.digest == head.digest:
            if self.tag_check_interval:
                with self.database.phase("marking a tag checked"):
                    self.metadata.mark_checked(cached)
            self.metadata.touch_manifest(cached)
            return _result(cached, Outcome.REVALIDATED)

        # The tag is new or moved. A manifest this group already holds by digest
        # (pulled by digest earlier) needs no GET.
        with self.database.phase("reading a manifest"):
            known = self.metadata.find_digest(group_id, path.image, head.digest)
        outcome = Outcome.REVALIDATED
        if known is not None:
            digest, media_type, content = known.digest, known.media_type, known.content
        else:
            outcome = Outcome.MISS
            try:
                # By the digest the HEAD announced: a tag that moves meanwhile cannot
                # hand over a manifest that was never checked against it.
                manifest = source.client.get_manifest(source.repository, head.digest)
            except UpstreamError as exc:
                if cached is not None and not isinstance(exc, UpstreamDigestMismatch):
                    return _result(cached, Outcome.STALE)
                raise _translate(exc, ErrorCode.MANIFEST_UNKNOWN) from exc
            digest, media_type, content = manifest.digest, manifest.media_type, manifest.content
        with self.database.phase("saving a manifest"):
            self.quotas.admit_manifest(group_id, digest, content)
            record = self.metadata.save_manifest(
                group_id,
                path.image,
                tag,
                digest=digest,
                media_type=media_type,
                content=content,
                upstream=source.name,
            )
        return _result(record, outcome)

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
        with self.database.phase("checking the quota"):
            self.quotas.admit_blob(group_id, digest, size)
            candidates = self._image_candidates(group_id, path)
        if size is not None:
            # Another group cached these bytes. This group may only have them if its
            # upstream serves them to it: a HEAD settles that without a download.
            self._call_upstream(
                lambda: self.confirmations.confirm(candidates, digest), ErrorCode.BLOB_UNKNOWN
            )
            self._record_blob(group_id, digest, size)
            return self._stored(digest, size)

        for _ in range(_FETCH_ATTEMPTS):
            found = self._call_upstream(
                lambda: self._fetch_blob(candidates, digest), ErrorCode.BLOB_UNKNOWN
            )
            if isinstance(found, Committed):
                # Committed by another request meanwhile (and confirmed) ...
                self._record_blob(group_id, digest, found.size)
                return self._stored(digest, found.size)
            if found is not None:
                fetch = found
                break
            # ... and already taken away again by cleanup: fetch it once more.
        else:
            raise RegistryError(
                ErrorCode.UNAVAILABLE, "the blob was removed while it was fetched; try again"
            )
        fetch.on_commit(lambda written: self._record_blob(group_id, digest, written))
        return BlobResult(
            digest=digest,
            size=fetch.size,
            location=Following(
                fetch.size, fetch.follow(self.store, until_committed=until_committed)
            ),
            outcome=Outcome.MISS,
            upstream_status=fetch.upstream_status,
        )

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
            opener = _BlobOpener(candidates, digest, self.confirmations)
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
            candidates = self._image_candidates(group_id, path)
        size, _ = self._call_upstream(
            lambda: self._first_that_has(
                candidates, lambda c: c.client.head_blob(c.repository, digest)
            ),
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
                record = self.metadata.find_blob(group_id, digest)
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
            self.metadata.record_blob(group_id, digest, size)
        except DatabaseUnavailable as exc:
            log.warning("could not record blob %s for group %s: %s", digest, group_id, exc)

    def finish_request(self) -> None:
        """Write batched bookkeeping, then free the database connection.

        Bookkeeping never fails a request: while the database is unavailable the
        last-read times stay buffered, and the outage is logged once.
        """
        self._flush_usage()
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
        finally:
            self.metadata.release()

    def _flush_usage(self) -> None:
        """Write the usage counters when due; a failed write keeps them for the next."""
        if not self.usage.flush_due():
            return
        try:
            with self.database.phase("writing usage counters", has_fallback=True):
                self.usage.flush(lambda batch: write_usage(self.metadata.session, batch))
        except Exception as exc:
            log.warning("usage counters kept for later: %s", exc)

    # -- upstreams -----------------------------------------------------------------------

    def _route(self, group_id: int, path: ProxyPath) -> Route:
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

    def _image_candidates(self, group_id: int, path: ProxyPath) -> tuple[Candidate, ...]:
        """Where the image's digests, blobs and tags are asked for: the upstream that
        served what the group cached of the image, or the whole route (inside a phase)."""
        route = self._route(group_id, path)
        if route.pinned:
            return route.candidates
        held, upstream = self.metadata.image_upstream(group_id, path.image)
        if not held:
            return route.candidates
        return route.sticky(upstream or self.upstreams.default.name)

    def _source_of(self, record: ManifestRecord) -> str:
        return record.upstream or self.upstreams.default.name

    @staticmethod
    def _first_that_has(
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

    # -- helpers -------------------------------------------------------------------------

    def _call_upstream(self, call: t.Callable[[], t.Any], not_found: ErrorCode) -> t.Any:
        try:
            return call()
        except UpstreamError as exc:
            raise _translate(exc, not_found) from exc
        except StorageError as exc:
            # The store, not upstream, refused the blob: logged by the fetcher.
            raise storage_unavailable() from exc


class _BlobOpener:
    """Opens a blob at the first upstream that has it, and resumes it at the same one.

    What it opens counts as the route's confirmation of the digest (``confirmations``).
    """

    def __init__(
        self,
        candidates: t.Sequence[Candidate],
        digest: str,
        confirmations: _Confirmations | None = None,
    ) -> None:
        self._candidates = tuple(candidates)
        self._digest = digest
        self._confirmations = confirmations
        self._source: Candidate | None = None
        #: A fetch called it: its outcome is the route's own answer.
        self.attempted = False

    @property
    def opened(self) -> bool:
        """Upstream served the blob to this route (through this opener, not a peer's)."""
        return self._source is not None

    def __call__(self, offset: int) -> BlobStream:
        if self._source is not None:
            return self._source.client.open_blob(self._source.repository, self._digest, offset)
        self.attempted = True
        stream, source = PullThroughCache._first_that_has(
            self._candidates, lambda c: c.client.open_blob(c.repository, self._digest, offset)
        )
        if self._confirmations is not None:
            self._confirmations.add(route_key(source), self._digest)
        self._source = source
        return stream


def _route_specific(exc: UpstreamError) -> bool:
    """Whether a fetch's failure may be its route's alone, so another route could still
    serve the blob (not a blob over the size limit, not a store that is full)."""
    return not isinstance(exc, BlobTooLarge | UpstreamSizeError | UpstreamDigestMismatch)


def _result(record: ManifestRecord, outcome: Outcome = Outcome.HIT) -> ManifestResult:
    return ManifestResult(
        digest=record.digest, media_type=record.media_type, content=record.content, outcome=outcome
    )


def _translate(exc: UpstreamError, not_found: ErrorCode) -> RegistryError:
    if isinstance(exc, BlobTooLarge):
        return blob_too_large(exc.digest, exc.size, exc.limit)
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(not_found)
    if isinstance(exc, UpstreamDigestMismatch):
        return RegistryError(
            ErrorCode.UNAVAILABLE, "upstream sent content that does not match its digest"
        )
    return _unavailable(exc)


def _unavailable(exc: UpstreamError) -> RegistryError:
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
    if isinstance(exc, UpstreamRateLimited):
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS, "upstream registry rate limit reached", headers=headers
        )
    return RegistryError(ErrorCode.UNAVAILABLE, headers=headers)
