"""The pull-through rules for manifests and tags.

- Tags go upstream first with a HEAD (free of Docker Hub's pull quota); only a changed
  digest costs a GET. An unreachable upstream falls back to the cached copy; a tag
  upstream deleted is kept only with ``serve_stale_on_not_found``.
- A tag's HEAD is skipped for ``tag_check_interval`` after it was last checked.
- Manifests by digest are immutable: served locally once cached.
- A client is given a manifest in a media type it accepts, the way distribution
  negotiates (:meth:`ManifestCache.get_manifest`).
- Database reads and writes run in short phases that end before upstream is asked.
- A new manifest passes the size checks of :mod:`.quota` first; cached content is
  always served.
- A blocked image is never served (:mod:`.blocks`): a tag block refuses the tag before
  upstream is asked, a digest block refuses the digest however it would be served.
- A cached tag that upstream answers 404 for is served or refused as the group's
  policy says (:class:`DeletedTags`), and the event is recorded once an hour per tag.
- In a group whose tag cooldown is on (:mod:`.cooldown`), a tag's new upstream digest
  waits: the tag keeps serving its previous digest, the new manifest is cached meanwhile.
  A held tag is checked upstream on every pull, whatever ``tag_check_interval`` says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import typing as t

from ..models.database import DatabaseGuard, DatabaseUnavailable
from ..models.repository import CacheMetadata, ManifestRecord
from ..oci.errors import ErrorCode, RegistryError
from ..oci.reference import (
    MEDIA_TYPE_DOCKER_LIST,
    ProxyPath,
    accepts,
    default_platform_manifest,
    is_digest,
    is_valid_tag,
)
from ..single_flight import SingleFlight
from ..upstream.errors import UpstreamDigestMismatch, UpstreamError, UpstreamNotFound
from ..upstream.registry import TagPage
from ..upstream.routing import Candidate
from .blocks import BlockList, ImageBlocked
from .cooldown import CooldownRefused, Cooldowns
from .quota import Quotas
from .results import ManifestResult, Outcome, Pending
from .routes import ImageRoutes, call_upstream, first_that_has, translate, unavailable

log = logging.getLogger(__name__)

#: Seconds between two records of the same deleted tag by one process.
DELETED_TAG_EVENT_SECONDS = 3600.0


class DeletedTags:
    """What to do with a cached tag that upstream answers 404 for: the group's policy
    (read on that rare path only), and the record of the event.

    :param serve: the group's policy, ``True`` to keep serving the cached copy.
    :param record: writes the event (group, image, tag, digest, served).
    """

    def __init__(
        self,
        serve: t.Callable[[int], bool],
        record: t.Callable[[int, str, str, str, bool], None],
        database: DatabaseGuard,
        *,
        monotonic: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._serve = serve
        self._record = record
        self._database = database
        self._monotonic = monotonic
        self._recorded: dict[tuple[int, str, str], float] = {}
        self._lock = threading.Lock()

    @classmethod
    def fixed(cls, serve: bool) -> DeletedTags:
        """One answer for every group, nothing recorded (the instance default alone)."""
        return cls(lambda group_id: serve, lambda *event: None, DatabaseGuard())

    def serve(self, group_id: int, image: str, tag: str, digest: str) -> bool:
        """Whether to keep serving the cached copy; records the event."""
        with self._database.phase("reading the group's policy for deleted tags"):
            serve = self._serve(group_id)
        key = (group_id, image, tag)
        now = self._monotonic()
        with self._lock:
            last = self._recorded.get(key)
            due = last is None or now - last >= DELETED_TAG_EVENT_SECONDS
            if due:
                if len(self._recorded) > 10_000:
                    self._recorded.clear()
                self._recorded[key] = now
        if due:
            try:
                with self._database.phase("recording a deleted tag", has_fallback=True):
                    self._record(group_id, image, tag, digest, serve)
            except DatabaseUnavailable as exc:
                log.warning("deleted tag %s:%s not recorded: %s", image, tag, exc)
        return serve


class ManifestCache:
    """Manifests and tags of one application's pull-through cache.

    :param tag_check_interval: seconds a tag is trusted without a HEAD upstream.
    :param serve_stale_on_not_found: keep serving a cached tag that upstream deleted
        (unless ``deleted_tags`` says per group).
    :param blocks: the blocked images; ``None``: none.
    :param cooldowns: the groups' tag cooldowns; ``None``: none.
    """

    def __init__(
        self,
        *,
        routes: ImageRoutes,
        metadata: CacheMetadata,
        quotas: Quotas,
        tag_check_interval: float,
        serve_stale_on_not_found: bool,
        clock: t.Callable[[], dt.datetime],
        blocks: BlockList | None = None,
        deleted_tags: DeletedTags | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.routes = routes
        self.metadata = metadata
        self.database: DatabaseGuard = metadata.database
        self.quotas = quotas
        self.tag_check_interval = dt.timedelta(seconds=tag_check_interval)
        self.serve_stale_on_not_found = serve_stale_on_not_found
        self.blocks = blocks
        self.deleted_tags = deleted_tags or DeletedTags.fixed(serve_stale_on_not_found)
        self.cooldowns = cooldowns
        self._clock = clock
        # The requests of a herd (a CI fleet starting the same job) that ask for the same
        # reference at once share one lookup, one upstream check and at most one save,
        # rather than queueing for connections and for the row's lock.
        self._lookups = SingleFlight()

    def get_manifest(
        self,
        group_id: int,
        path: ProxyPath,
        reference: str,
        accept: t.Sequence[str] = (),
        *,
        revalidate: bool = False,
    ) -> ManifestResult:
        """The manifest for a tag or digest, from the cache or upstream, in a media type
        the client accepts (``accept``: its merged ``Accept`` list), the way distribution
        negotiates: a Docker manifest list asked for by tag by a client that cannot take
        one gives its ``linux/amd64`` manifest; any other type the client did not ask for
        is ``404 MANIFEST_UNKNOWN``.

        :raises ImageBlocked: the tag, or the digest it would serve, is blocked.
        :raises CooldownRefused: a brand-new tag, or a digest, in cooldown that the
            group's policy refuses.
        :param revalidate: ask upstream about a tag even within ``tag_check_interval``
            (the refresher, :mod:`.refresh`).
        """
        blocks = self.blocks
        if blocks is not None:
            if is_digest(reference):
                blocks.check_digest(group_id, reference)
            else:
                blocks.check_tag(group_id, path.image, reference)
        if self.cooldowns is not None and is_digest(reference):
            self.cooldowns.check_digest(group_id, path.image, reference, self._clock())
        result = self._manifest(group_id, path, reference, revalidate=revalidate)
        if blocks is not None:
            blocks.check_digest(group_id, result.digest)
        if accepts(list(accept), result.media_type):
            return result
        if result.media_type == MEDIA_TYPE_DOCKER_LIST and not is_digest(reference):
            child = default_platform_manifest(result.content)
            if child is not None:
                if blocks is not None:
                    blocks.check_digest(group_id, child)
                chosen = self._manifest(group_id, path, child)
                if accepts(list(accept), chosen.media_type):
                    if result.stale or result.pending is not None:
                        return dataclasses.replace(
                            chosen, outcome=result.outcome, pending=result.pending
                        )
                    return chosen
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest is {result.media_type}, which the Accept header does not allow",
            {"reference": reference},
        )

    def _manifest(
        self, group_id: int, path: ProxyPath, reference: str, *, revalidate: bool = False
    ) -> ManifestResult:
        if is_digest(reference):
            return self._lookups.do(
                (group_id, path, reference),
                lambda: self._manifest_by_digest(group_id, path, reference),
            )
        return self._lookups.do(
            (group_id, path, reference, revalidate),
            lambda: self._manifest_by_tag(group_id, path, reference, revalidate=revalidate),
        )

    def prefetch_manifest(self, group_id: int, path: ProxyPath, digest: str) -> ManifestResult:
        """The manifest ``digest``, cached or fetched, whatever cooldown it is in: the
        refresher fetches a tag's new digest ahead of its release (pulls are still given
        the previous digest until then). A blocked digest is refused as for a pull.

        :raises ImageBlocked: the digest is blocked.
        """
        if self.blocks is not None:
            self.blocks.check_digest(group_id, digest)
        return self._manifest_by_digest(group_id, path, digest)

    def list_tags(self, group_id: int, path: ProxyPath, n: int | None, last: str | None) -> TagPage:
        """One page of upstream's tags for the image; while upstream cannot answer, the
        tags the group has cached (``stale``).

        :raises RegistryError: ``NAME_UNKNOWN`` when no upstream knows the image,
            ``UNAVAILABLE`` or ``TOOMANYREQUESTS`` when upstream cannot answer and the
            group has no tags of the image.
        """
        with self.database.phase("reading the image's upstream"):
            candidates = self.routes.image_candidates(group_id, path)
        try:
            page, _ = first_that_has(
                candidates, lambda c: c.client.list_tags(c.repository, n, last)
            )
        except UpstreamError as exc:
            if isinstance(exc, UpstreamNotFound):
                raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": path.image}) from exc
            with self.database.phase("reading cached tags"):
                cached = self.metadata.cached_tags(group_id, path.image)
            if not cached:
                raise unavailable(exc) from exc
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
                candidates = self.routes.image_candidates(group_id, path)
        if cached is not None:
            self.metadata.touch_manifest(cached)
            return _result(cached)
        manifest, source = call_upstream(
            lambda: first_that_has(
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

    def _manifest_by_tag(
        self, group_id: int, path: ProxyPath, tag: str, *, revalidate: bool = False
    ) -> ManifestResult:
        policy = None if self.cooldowns is None else self.cooldowns.policy(group_id, path.image)
        held = None
        with self.database.phase("reading a tag"):
            if policy is None:
                cached = self.metadata.find_tag(group_id, path.image, tag)
            else:
                cached, held = t.cast(Cooldowns, self.cooldowns).find_tag(group_id, path.image, tag)
            # A check time ahead of this clock (another host's clock, or this one stepped
            # back) is not trusted: it would skip the HEAD for as long as they disagree.
            fresh = (
                cached is not None
                and held is None
                and not revalidate
                and dt.timedelta(0) <= self._clock() - cached.checked_at < self.tag_check_interval
            )
            if not fresh:
                route = self.routes.route(group_id, path)
        if cached is not None and fresh:
            self.metadata.touch_manifest(cached)
            return _result(cached)
        # A cached tag is checked where it came from; a new one goes down the list.
        candidates = (
            route.candidates if cached is None else route.sticky(self.routes.source_of(cached))
        )
        try:
            head, source = first_that_has(
                candidates, lambda c: c.client.head_manifest(c.repository, tag)
            )
        except UpstreamNotFound:
            if cached is not None and self.deleted_tags.serve(
                group_id, path.image, tag, cached.digest
            ):
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
            raise unavailable(exc) from exc

        if cached is not None and cached.digest == head.digest:
            if self.tag_check_interval or held is not None:
                with self.database.phase("marking a tag checked"):
                    self.metadata.mark_checked(cached)
                    if held is not None:  # upstream moved the tag back
                        t.cast(Cooldowns, self.cooldowns).drop(group_id, path.image, tag)
            self.metadata.touch_manifest(cached)
            return _result(cached, Outcome.REVALIDATED)

        # The tag is new or moved: in cooldown, its previous digest is served meanwhile.
        if policy is not None:
            pending = t.cast(Cooldowns, self.cooldowns).hold(
                group_id,
                path.image,
                tag,
                previous=None if cached is None else cached.digest,
                digest=head.digest,
                policy=policy,
                held=held,
                now=self._clock(),
            )
            if pending is not None:
                return self._held_back(group_id, path, tag, cached, pending, source)

        # A blocked digest is not even fetched. A manifest this group already holds by
        # digest (pulled by digest earlier, or cached in its cooldown) needs no GET.
        if self.blocks is not None:
            self.blocks.check_digest(group_id, head.digest)
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
                raise translate(exc, ErrorCode.MANIFEST_UNKNOWN) from exc
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
            if policy is not None or held is not None:
                t.cast(Cooldowns, self.cooldowns).drop(group_id, path.image, tag)
        return _result(record, outcome)

    def _held_back(
        self,
        group_id: int,
        path: ProxyPath,
        tag: str,
        cached: ManifestRecord | None,
        pending: Pending,
        source: Candidate,
    ) -> ManifestResult:
        """The tag's previous digest, while ``pending`` waits; a brand-new tag is
        refused. The pending manifest is cached meanwhile (by digest), so it is warm
        when it is released; failing that only costs the release a GET."""
        try:
            self._warm(group_id, path, pending.digest, source)
        except (RegistryError, UpstreamError, DatabaseUnavailable) as exc:
            if not isinstance(exc, ImageBlocked):
                log.warning("could not cache %s in its cooldown: %s", pending.digest, exc)
        if cached is None:
            raise CooldownRefused(
                f"{path.image}:{tag}", pending.digest, pending.release_at, self._clock()
            )
        self.metadata.touch_manifest(cached)
        return dataclasses.replace(_result(cached, Outcome.COOLDOWN_PREVIOUS), pending=pending)

    def _warm(self, group_id: int, path: ProxyPath, digest: str, source: Candidate) -> None:
        if self.blocks is not None:
            self.blocks.check_digest(group_id, digest)
        with self.database.phase("reading a manifest"):
            if self.metadata.find_digest(group_id, path.image, digest) is not None:
                return
        manifest = source.client.get_manifest(source.repository, digest)
        with self.database.phase("saving a manifest"):
            self.quotas.admit_manifest(group_id, manifest.digest, manifest.content)
            self.metadata.save_manifest(
                group_id,
                path.image,
                None,
                digest=manifest.digest,
                media_type=manifest.media_type,
                content=manifest.content,
                upstream=source.name,
            )


def _result(record: ManifestRecord, outcome: Outcome = Outcome.HIT) -> ManifestResult:
    return ManifestResult(
        digest=record.digest, media_type=record.media_type, content=record.content, outcome=outcome
    )
