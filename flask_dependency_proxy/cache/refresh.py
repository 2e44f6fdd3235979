"""Predictive refresh: keeping each group's hot tags warm before anyone asks.

The usage buffer counts every manifest pull per group, image and reference (a tag, or
the digest of the platform manifest an index's pull chose), written in batches with the
usage counters (:mod:`.usage`, :mod:`..models.hot_tags`). A refresh run goes through the
groups whose refresh is on (their own setting, or ``REFRESH_DEFAULT_ENABLED``) and, for
each, through its hot set: the ``N`` tags pulled most in the last days, and the images
the host names for its CI (:class:`~..host.CiImageSource`). A tag not checked for the
group's interval is asked upstream with a ``HEAD`` (:meth:`.ManifestCache.get_manifest`
with ``revalidate``: the same rules as a pull, the tag cooldown included); when it moved,
the new manifest and the blobs of the platforms the group pulled are fetched through the
same calls a pull makes (:class:`.warm.Warmer`): one upstream GET per blob across the
fleet. In cooldown the new digest is fetched but the tag keeps serving the previous one
until its time; the refresher only warms.

Every upstream has a budget per run (:class:`UpstreamBudget`): at most
``REFRESH_BUDGET`` requests, none once the upstream answered ``RateLimit-Remaining`` at
or below the reserve, none while a ``429``'s ``Retry-After`` or the circuit breaker
holds requests back. A tag it cannot ask is skipped until the next run.

One run at a time across the fleet: a lease in the database (``refresh``), as cleanup
holds one; on SQLite the database, and so the lease, is the host's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import typing as t

from ..fetch.errors import FetchFailed
from ..models.database import DatabaseUnavailable
from ..models.job_lease import HeldLease, NamedLeases, held_lease
from ..models.tables import utcnow
from ..oci.errors import RegistryError
from ..oci.reference import (
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_OCI_INDEX,
    PROXY_SEPARATOR,
    is_digest,
    parse_proxy_path,
)
from ..stores.base import StorageError
from ..upstream.errors import UpstreamError
from .warm import Plan, Target, Warmer, WarmError, parse_platform, parse_target

if t.TYPE_CHECKING:
    from ..metrics import Metrics
    from ..models.group_settings import Settings
    from ..models.hot_tags import HotTagRecords, RefreshState
    from ..oci.reference import ProxyPath
    from ..upstream.routing import Candidate
    from .pull_through import PullThroughCache
    from .results import ManifestResult

log = logging.getLogger(__name__)

#: The lease every refresh run holds.
REFRESH_LEASE = "refresh"
#: A run renews its lease after each tag; one that died releases it after this.
LEASE_TTL = dt.timedelta(minutes=15)

_INDEX_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST)
_FAILURES = (RegistryError, WarmError, FetchFailed, UpstreamError, StorageError)


@dataclasses.dataclass(frozen=True)
class RefreshDefaults:
    """The instance's refresh settings (``REFRESH_*``), for groups without their own."""

    enabled: bool = False
    tags: int = 10
    interval_seconds: float = 900
    window_days: int = 7
    budget: int = 100
    min_rate_limit_remaining: int = 0

    def for_group(self, settings: Settings | None) -> tuple[bool, int, float]:
        """``(on, tags, interval seconds)`` of a group."""
        if settings is None:
            return self.enabled, self.tags, self.interval_seconds
        return (
            self.enabled if settings.refresh_enabled is None else settings.refresh_enabled,
            self.tags if settings.refresh_tags is None else settings.refresh_tags,
            (
                self.interval_seconds
                if settings.refresh_interval_seconds is None
                else float(settings.refresh_interval_seconds)
            ),
        )

    def requests_per_hour(self, hot_tags: int, upstreams: int = 1) -> float:
        """The most ``HEAD`` requests the refresher makes per hour for one group with
        ``hot_tags`` tags pulled, none of which moves: at most ``tags`` of them, each
        once per interval, at most the budget per upstream and run."""
        per_run = min(hot_tags, self.tags, self.budget * upstreams)
        return per_run * 3600.0 / self.interval_seconds


class UpstreamBudget:
    """What one run may still ask of each upstream."""

    def __init__(self, limit: int, min_remaining: int) -> None:
        self.limit = limit
        self.min_remaining = min_remaining
        #: Requests made per upstream name in this run.
        self.spent: dict[str, int] = {}

    def allows(self, candidate: Candidate) -> bool:
        """Whether ``candidate``'s upstream may be asked once more."""
        if self.spent.get(candidate.name, 0) >= self.limit:
            return False
        client = candidate.client
        remaining = client.rate_limit_remaining
        if remaining is not None and remaining <= self.min_remaining:
            return False
        return client.throttled_until() is None

    def spend(self, name: str, requests: int = 1) -> None:
        self.spent[name] = self.spent.get(name, 0) + requests


@dataclasses.dataclass
class RefreshReport:
    """What one run did."""

    groups: int = 0
    checked: int = 0
    moved: int = 0
    prefetched_bytes: int = 0
    skipped: int = 0
    failed: int = 0
    #: Upstream requests per upstream name.
    requests: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"Checked {self.checked} hot tags of {self.groups} groups: {self.moved} moved"
            f" ({self.prefetched_bytes} bytes fetched ahead), {self.skipped} skipped for"
            f" the upstream's budget, {self.failed} failed."
        )


class RefreshBusy(Exception):
    """Another refresh run holds the lease."""


class _NoProgress:
    def planned(self, plan: Plan) -> None:
        pass

    def advance(self, plan: Plan, nbytes: int) -> None:
        pass

    def finished(self, outcome: object) -> None:
        pass


class _PrefetchWarmer(Warmer):
    """A :class:`Warmer` that reads manifests by digest whatever cooldown they are in
    (the refresher fetches a held digest ahead; pulls still get the previous one)."""

    def _manifest(self, path: ProxyPath, reference: str) -> dict[str, t.Any]:
        import json

        try:
            result = self.cache.manifests.prefetch_manifest(self.group_id, path, reference)
        finally:
            self.cache.finish_request()
        try:
            document = json.loads(result.content)
        except ValueError:
            raise WarmError(f"the manifest {result.digest} is not JSON") from None
        if not isinstance(document, dict):
            raise WarmError(f"the manifest {result.digest} is not a JSON object")
        return document


CiImages = t.Callable[[int], t.Iterable[str]]


class TagRefresher:
    """Refreshes the hot tags of every group whose refresh is on.

    :param records: the pull counts and refresh states (:mod:`..models.hot_tags`).
    :param group_settings: a group's settings, ``None`` for a group without a row.
    :param refresh_groups: the group ids with a refresh setting of their own (those that
        are on are refreshed even without pulls, for what CI names).
    :param leases: the database leases (one run across the fleet).
    :param ci_images: the image references the host names for a group's CI, when the
        host implements :class:`~..host.CiImageSource`.
    """

    def __init__(
        self,
        cache: PullThroughCache,
        records: HotTagRecords,
        *,
        group_settings: t.Callable[[int], Settings | None],
        refresh_groups: t.Callable[[], t.Iterable[int]],
        leases: NamedLeases,
        defaults: RefreshDefaults,
        ci_images: CiImages | None = None,
        metrics: Metrics | None = None,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.cache = cache
        self.records = records
        self.group_settings = group_settings
        self.refresh_groups = refresh_groups
        self.leases = leases
        self.defaults = defaults
        self.ci_images = ci_images
        self.metrics = metrics or cache.metrics
        self.clock = clock

    # -- runs ---------------------------------------------------------------------------

    def run(self, *, force: bool = False, group_id: int | None = None) -> RefreshReport:
        """One run under the refresh lease.

        :param force: check every hot tag now, whatever its interval says.
        :param group_id: this group only (its refresh on or not).
        :raises RefreshBusy: another run holds the lease.
        """
        with held_lease(self.leases, REFRESH_LEASE, ttl=LEASE_TTL, clock=self.clock) as lease:
            if lease is None:
                raise RefreshBusy("another refresh is running; try again when it is done")
            return self._run(lease, force=force, only=group_id)

    def run_if_due(self, interval: dt.timedelta) -> RefreshReport | None:
        """A run unless one ran less than ``interval`` ago or is running."""
        with held_lease(
            self.leases, REFRESH_LEASE, ttl=LEASE_TTL, clock=self.clock, min_interval=interval
        ) as lease:
            return None if lease is None else self._run(lease, force=False, only=None)

    def _run(self, lease: HeldLease, *, force: bool, only: int | None) -> RefreshReport:
        report = RefreshReport()
        budget = UpstreamBudget(self.defaults.budget, self.defaults.min_rate_limit_remaining)
        for group_id, group_path, tags in self._groups(only):
            report.groups += 1
            settings = self.group_settings(group_id)
            _, _, interval = self.defaults.for_group(settings)
            for image, tag in self._hot_set(group_id, group_path, tags):
                lease.renew()
                self._refresh_tag(group_id, group_path, image, tag, interval, force, budget, report)
        report.requests = dict(budget.spent)
        log.info("dependency proxy refresh: %s", report.summary())
        return report

    def _groups(self, only: int | None) -> list[tuple[int, str, int]]:
        """``(group id, path, tags)`` of the groups to refresh."""
        since = self._since()
        with self.cache.database.phase("reading the groups to refresh"):
            pulled = dict(self.records.groups_pulled(since))
            own = set(self.refresh_groups())
            chosen: list[tuple[int, str, int]] = []
            for group_id in sorted(set(pulled) | own):
                if only is not None and group_id != only:
                    continue
                settings = self.group_settings(group_id)
                if settings is not None and not settings.enabled:
                    continue
                on, tags, _ = self.defaults.for_group(settings)
                if not (on or only is not None):
                    continue
                path = pulled.get(group_id) or self.records.group_path(group_id)
                if path is not None:
                    chosen.append((group_id, path, tags))
            self.cache.metadata.release()
        return chosen

    def _since(self) -> dt.date:
        return (self.clock() - dt.timedelta(days=self.defaults.window_days - 1)).date()

    def hot_set(self, group_id: int, group_path: str, tags: int) -> list[tuple[str, str]]:
        """The group's tags to keep warm: the most pulled, then what its CI names."""
        return self._hot_set(group_id, group_path, tags)

    def _hot_set(self, group_id: int, group_path: str, tags: int) -> list[tuple[str, str]]:
        with self.cache.database.phase("reading the hot tags"):
            hot = [(h.image, h.tag) for h in self.records.hot_tags(group_id, self._since(), tags)]
        chosen = list(dict.fromkeys(hot))
        if self.ci_images is not None:
            try:
                references = list(self.ci_images(group_id))
            except Exception:
                log.exception("the host's CI image references of group %s failed", group_id)
                references = []
            for reference in references:
                target = group_target(reference, group_path)
                if target is None or is_digest(target.reference):
                    continue
                key = (target.image, target.reference)
                if key not in chosen:
                    chosen.append(key)
        return chosen

    # -- one tag ------------------------------------------------------------------------

    def _refresh_tag(
        self,
        group_id: int,
        group_path: str,
        image: str,
        tag: str,
        interval: float,
        force: bool,
        budget: UpstreamBudget,
        report: RefreshReport,
    ) -> None:
        now = self.clock()
        try:
            path = parse_proxy_path(f"{group_path.lower()}{PROXY_SEPARATOR}{image}")
        except RegistryError:
            return
        try:
            with self.cache.database.phase("reading a hot tag"):
                state = self.records.state(group_id, image, tag)
                if (
                    not force
                    and state is not None
                    and state.checked_at is not None
                    and dt.timedelta(0) <= now - state.checked_at < dt.timedelta(seconds=interval)
                ):
                    self.cache.metadata.release()
                    return
                cached = self.cache.metadata.find_tag(group_id, image, tag)
                route = self.cache.routes.route(group_id, path)
                candidates = (
                    route.candidates
                    if cached is None
                    else route.sticky(self.cache.routes.source_of(cached))
                )
                pulled = self.records.pulled_digests(group_id, image, self._since())
                self.cache.metadata.release()
        except RegistryError as exc:
            log.info("%s:%s of group %s not refreshed: %s", image, tag, group_id, exc.message)
            self.cache.metadata.release()
            return
        if not candidates or not budget.allows(candidates[0]):
            report.skipped += 1
            self.metrics.tag_refreshed("skipped")
            return
        upstream = candidates[0].name
        platforms = _platforms(state, cached.content if cached is not None else None, pulled)
        report.checked += 1
        budget.spend(upstream)
        try:
            result = self._check(group_id, path, tag)
        except _FAILURES + (DatabaseUnavailable,) as exc:
            log.warning("refresh of %s:%s in group %s failed: %s", image, tag, group_id, exc)
            report.failed += 1
            self.metrics.tag_refreshed("failed")
            return
        new_digest = result.pending.digest if result.pending is not None else result.digest
        already = state is not None and state.refreshed_digest == new_digest
        moved = (cached is None or new_digest != cached.digest) and not already
        if not moved:
            self._save(group_id, image, tag, now, platforms)
            self.metrics.tag_refreshed("unchanged")
            return
        budget.spend(upstream)  # the new manifest's GET
        warmer = _PrefetchWarmer(
            self.cache,
            group_id,
            group_path.lower(),
            platforms=[parse_platform(label) for label in platforms],
        )
        try:
            plan = warmer.plan(Target(image, new_digest))
            budget.spend(upstream, len(plan.platforms))
            outcome = warmer._fetch(plan, _NoProgress())
        except _FAILURES + (DatabaseUnavailable,) as exc:
            log.warning("refresh of %s:%s in group %s failed: %s", image, tag, group_id, exc)
            report.failed += 1
            self.metrics.tag_refreshed("failed")
            return
        report.moved += 1
        report.prefetched_bytes += outcome.fetched_bytes
        self._save(
            group_id,
            image,
            tag,
            now,
            platforms or list(plan.platforms),
            refreshed_digest=new_digest,
            prefetched_bytes=outcome.fetched_bytes,
        )
        self.metrics.tag_refreshed("moved", outcome.fetched_bytes)
        log.info(
            "refreshed %s:%s of group %s: moved to %s, %s bytes fetched ahead%s",
            image,
            tag,
            group_id,
            new_digest,
            outcome.fetched_bytes,
            " (held back by the cooldown)" if result.pending is not None else "",
        )

    def _check(self, group_id: int, path: ProxyPath, tag: str) -> ManifestResult:
        try:
            return self.cache.manifests.get_manifest(
                group_id, path, tag, list(MANIFEST_MEDIA_TYPES), revalidate=True
            )
        finally:
            self.cache.finish_request()

    def _save(
        self,
        group_id: int,
        image: str,
        tag: str,
        now: dt.datetime,
        platforms: t.Sequence[str],
        *,
        refreshed_digest: str | None = None,
        prefetched_bytes: int = 0,
    ) -> None:
        try:
            with self.cache.database.phase("recording a refresh", has_fallback=True):
                self.records.save_state(
                    group_id,
                    image,
                    tag,
                    checked_at=now,
                    platforms=platforms,
                    refreshed_digest=refreshed_digest,
                    prefetched_bytes=prefetched_bytes,
                )
        except DatabaseUnavailable as exc:
            log.warning("refresh of %s:%s not recorded: %s", image, tag, exc)
        finally:
            self.cache.metadata.release()


def group_target(reference: str, group_path: str) -> Target | None:
    """The image and tag a reference names in the group's proxy: a reference through the
    group's image prefix (``[server/]group/dependency_proxy/containers/IMAGE:TAG``), or,
    with no registry host, ``IMAGE[:TAG]`` of the group. ``None`` for anything else
    (another group, another registry, a malformed reference).
    """
    text = reference.strip()
    if not text or any(c.isspace() for c in text):
        return None
    prefix = f"{group_path.lower()}{PROXY_SEPARATOR}"
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        text = rest  # a registry host: only the group's proxy path counts then
        if not text.lower().startswith(prefix):
            return None
    if text.lower().startswith(prefix):
        text = text[len(prefix) :]
    elif PROXY_SEPARATOR.strip("/") in text:
        return None  # another group's proxy path
    try:
        target = parse_target(text)
        parse_proxy_path(f"{group_path.lower()}{PROXY_SEPARATOR}{target.image}")
    except (WarmError, RegistryError):
        return None
    return target


def _platforms(state: RefreshState | None, content: bytes | None, pulled: set[str]) -> list[str]:
    """The platforms (``os/arch[/variant]``) the group's pulls of a tag chose: those of
    the cached index whose manifests it pulled, and those recorded before."""
    import json

    chosen = list(state.platforms) if state is not None else []
    if content is None:
        return chosen
    try:
        document = json.loads(content)
    except ValueError:
        return chosen
    if not isinstance(document, dict):
        return chosen
    if document.get("mediaType") not in _INDEX_TYPES and "manifests" not in document:
        return chosen
    entries = document.get("manifests")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("digest") not in pulled:
            continue
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
        if platform.get("variant"):
            parts.append(str(platform["variant"]))
        label = "/".join(parts)
        if label not in chosen:
            chosen.append(label)
    return chosen
