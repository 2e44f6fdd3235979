"""What an administrator does with a group's proxy, whether from its page, the REST API
or the command line: settings (on/off, cleanup policy, size limit), listings and
counts (and what the store holds in all), deletion (the whole cache or one image),
warming images into the cache, the group's upstreams (order and own credentials), and
what the host says of its groups: that a group is gone (:meth:`GroupAdmin.forget_group`)
or was renamed (:meth:`GroupAdmin.confirm_group`; see :mod:`..auth.group_paths`).

:class:`GroupAdmin` is the one place these use cases live, so the three surfaces only
parse their input, call it and render its answer. It also owns what a change must
invalidate: switching a group's proxy on or off drops the access answers this process
remembers (:meth:`~..auth.access.AccessControl.forget`), so the switch takes effect
here at once and in the other workers within their recheck time.

Every method runs in the caller's database phase (see :mod:`..models.database`); writes
commit. Nothing here knows HTTP or Click, and no answer carries a secret.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import typing as t

from ..cache.quota import MAX_GROUP_LIMIT_BYTES
from ..cache.warm import Warmer
from ..models.group_settings import KEEP, Keep
from ..models.listings import ORDER_BY, SORTS, CacheListings
from ..models.quota import QuotaRecords
from ..models.stats import CacheStats
from ..models.tables import utcnow
from ..models.usage import read_usage
from .usage_chart import UsageSummary

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..auth.group_paths import GroupPaths
    from ..cache.pull_through import PullThroughCache
    from ..cache.warm import Outcome, Progress, Target
    from ..host import Group
    from ..models.group_settings import GroupSettingsRecords, Settings
    from ..models.listings import BlobItem, ManifestItem, Page
    from ..models.stats import GroupStats
    from ..models.upstreams import GroupUpstreamRecords, RotationResult
    from ..upstream.routing import UpstreamSet
    from .lifecycle import GroupForgotten, ImageDeleted, Lifecycle, PurgeResult

#: What an upstream name must look like before it is looked up (the grammar of the
#: names in ``DEPENDENCY_PROXY_UPSTREAMS``).
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class RemembersAccess(t.Protocol):
    """What keeps access answers that a settings change makes stale
    (:class:`~..auth.access.AccessControl`)."""

    def forget(self) -> None: ...


class HoldsBlobs(t.Protocol):
    """What the counts ask of the blob store (:class:`~..stores.base.BlobStore` and its
    :class:`~..stores.base.StoreJanitor` face)."""

    def describe(self) -> str: ...

    def usage(self) -> tuple[int, int]: ...


class GroupNotFound(LookupError):
    """The host has no group with this id."""


class ProxyDisabled(Exception):
    """The group's proxy is off: nothing is warmed into its cache."""


@dataclasses.dataclass(frozen=True)
class StoreUsage:
    """What the blob store holds for every group together.

    :param location: where (a directory, a bucket), as the store describes itself.
    :param blobs: files.
    :param size: bytes.
    """

    location: str
    blobs: int
    size: int


@dataclasses.dataclass(frozen=True)
class Quota:
    """A group's size limit and what counts against it.

    :param limit: bytes, ``None`` for no limit.
    :param used: bytes of manifests and blobs the group has cached (served ones).
    :param policy: ``evict`` or ``refuse``, the instance's setting.
    """

    limit: int | None
    used: int
    policy: str


@dataclasses.dataclass(frozen=True)
class UpstreamView:
    """One instance upstream for one group.

    :param position: 1-based place in the group's order; ``None``: the group does not use it.
    :param last_status: HTTP status of the last answer this process saw with the
        group's credential (``None``: none yet, or the last request did not connect).
    :param down_until: until when the upstream is not asked (outage backoff or a
        ``429``'s ``Retry-After``); ``None`` when it is asked.
    """

    name: str
    url: str
    hosts: tuple[str, ...]
    position: int | None
    credential_set: bool
    credential_unreadable: bool
    last_status: int | None
    rate_limit_limit: int | None
    rate_limit_remaining: int | None
    down_until: dt.datetime | None

    @property
    def used(self) -> bool:
        return self.position is not None


@dataclasses.dataclass(frozen=True)
class GroupUpstreamsView:
    """Every instance upstream for a group: those it uses first, in its order."""

    custom_order: bool
    upstreams: tuple[UpstreamView, ...]

    def find(self, name: str) -> UpstreamView | None:
        return next((u for u in self.upstreams if u.name == name), None)


class GroupAdmin:
    """The group use cases of one application.

    :param session: returns the host's database session (listings, counts, usage).
    :param settings: the one writer of the groups' settings rows.
    :param group_upstreams: the groups' upstream order and own credentials.
    :param upstreams: the instance's upstreams (their names, URLs, what was last seen).
    :param lifecycle: purge and deletion of one image.
    :param cache: the pull-through cache a warm-up fills, the way pulls do.
    :param store: the blob store, for its totals.
    :param access: forgets its answers when a group's proxy is switched on or off.
    :param quota_policy: ``evict`` or ``refuse``, shown beside a group's limit.
    :param paths: the path recorded for each group id.
    :param find_group: the host's :meth:`~..host.HostAdapter.find_group_by_id`.
    :param clock: naive UTC now (the last day of usage windows).
    """

    def __init__(
        self,
        session: t.Callable[[], Session],
        *,
        settings: GroupSettingsRecords,
        group_upstreams: GroupUpstreamRecords,
        upstreams: UpstreamSet,
        lifecycle: Lifecycle,
        cache: PullThroughCache,
        store: HoldsBlobs,
        access: RemembersAccess,
        quota_policy: str,
        paths: GroupPaths,
        find_group: t.Callable[[int], Group | None],
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._settings = settings
        self._group_upstreams = group_upstreams
        self._upstreams = upstreams
        self._lifecycle = lifecycle
        self._cache = cache
        self._store = store
        self._access = access
        self._quota_policy = quota_policy
        self._paths = paths
        self._find_group = find_group
        self._clock = clock
        self._listings = CacheListings(session)
        self._stats = CacheStats(session)
        self._quota = QuotaRecords(session)

    # -- the host's groups ---------------------------------------------------------------------

    def admit(self, group: Group, *, claim: bool = False) -> None:
        """Check that the group's id still names the path recorded for it (and record it
        the first time); every surface calls this before acting on a group it found.

        :param claim: about to save the group's settings: refuse a path that another
            group holds (compared lowercased) rather than leave it unrecorded.
        :raises GroupMoved: the id names another path than the one recorded.
        :raises GroupPathTaken: ``claim``, and another group holds the path.
        """
        self._paths.admit(group, claim=claim)

    def confirm_group(self, group_id: int) -> tuple[str | None, str]:
        """The host says the group is the same one, renamed: record its current path.

        :return: the path recorded before (``None``: none was) and the one recorded now.
        :raises GroupNotFound: the host has no group with this id.
        :raises GroupPathTaken: another group holds the path.
        """
        group = self._find_group(group_id)
        if group is None:
            raise GroupNotFound(f"the host has no group with id {group_id}")
        previous = self._paths.confirm(group)
        self._access.forget()
        return previous, group.full_path

    def forget_group(self, group_id: int) -> GroupForgotten:
        """The host deleted the group (or is about to give its id to another): schedule
        its cache for deletion as a purge does, and delete its settings, size limit,
        upstream credentials, usage and recorded path. Harmless for an unknown id."""
        forgotten = self._lifecycle.forget_group(group_id)
        self._cache.usage.drop(group_id)
        self._access.forget()
        return forgotten

    # -- settings ----------------------------------------------------------------------------

    def settings(self, group_id: int) -> Settings:
        """The group's settings, the defaults when it has none of its own."""
        return self._settings.get(group_id)

    def enabled(self, group_id: int) -> bool:
        return self._settings.get(group_id).enabled

    def set_enabled(self, group_id: int, enabled: bool) -> Settings:
        """Switch the group's proxy on or off (its cache is kept either way)."""
        return self.update_settings(group_id, enabled=enabled)

    def set_cleanup_policy(self, group_id: int, enabled: bool, days: int) -> Settings:
        """Delete what the group has not pulled for ``days`` days (when ``enabled``).

        :raises ValueError: ``days`` out of bounds.
        """
        return self.update_settings(group_id, cleanup_enabled=enabled, cleanup_days=days)

    def set_limit(self, group_id: int, limit: int | None) -> Settings:
        """Limit what the group may keep cached to ``limit`` bytes; ``None`` lifts it.

        :raises ValueError: a limit under 1 byte or over the largest one allowed.
        """
        return self.update_settings(group_id, size_limit=limit)

    def update_settings(
        self,
        group_id: int,
        *,
        enabled: bool | Keep = KEEP,
        cleanup_enabled: bool | Keep = KEEP,
        cleanup_days: int | Keep = KEEP,
        size_limit: int | None | Keep = KEEP,
    ) -> Settings:
        """Change the given settings together, in one transaction; the others stay.

        :raises ValueError: a value out of bounds (nothing is changed).
        """
        if isinstance(size_limit, int) and not 1 <= size_limit <= MAX_GROUP_LIMIT_BYTES:
            raise ValueError(f"a size limit must be from 1 to {MAX_GROUP_LIMIT_BYTES} bytes")
        updated = self._settings.update(
            group_id,
            self._clock(),
            enabled=enabled,
            cleanup_enabled=cleanup_enabled,
            cleanup_days=cleanup_days,
            size_limit=size_limit,
        )
        if not isinstance(enabled, Keep):
            self._access.forget()
        return updated

    def quota(self, group_id: int) -> Quota:
        return Quota(self._quota.limit(group_id), self._quota.usage(group_id), self._quota_policy)

    # -- what the cache holds ----------------------------------------------------------------

    def stats(self, group_id: int) -> GroupStats:
        return self._stats.stats(group_id)

    def all_stats(self) -> dict[int, GroupStats]:
        """Every group that has anything cached, by id."""
        return self._stats.all_stats()

    def manifests(
        self,
        group_id: int,
        page: int,
        per_page: int,
        *,
        order_by: str = ORDER_BY[0],
        sort: str = SORTS[0],
        search: str | None = None,
    ) -> Page[ManifestItem]:
        """One page of the group's manifests (see :mod:`..models.listings`)."""
        return self._listings.list_manifests(
            group_id, page, per_page, order_by=order_by, sort=sort, search=search
        )

    def blobs(self, group_id: int, page: int, per_page: int) -> Page[BlobItem]:
        return self._listings.list_blobs(group_id, page, per_page)

    def image_tags(self, group_id: int, image: str) -> list[str | None]:
        """Tags of the image's served manifests; empty when the group has no such image."""
        return self._listings.image_tags(group_id, image)

    def store_usage(self) -> StoreUsage:
        """Blob files in the store and their bytes, every group's together."""
        blobs, size = self._store.usage()
        return StoreUsage(self._store.describe(), blobs, size)

    def usage(self, group_id: int, days: int) -> UsageSummary:
        """What the cache saved the group over the last ``days`` UTC days, today included."""
        today = self._clock().date()
        since = today - dt.timedelta(days=days - 1)
        return UsageSummary.build(read_usage(self._session(), group_id, since), today, days)

    def warm(
        self,
        group_id: int,
        group_path: str,
        targets: t.Sequence[Target],
        progress: Progress,
        *,
        platforms: t.Collection[tuple[str, ...]] = (),
    ) -> list[Outcome]:
        """Fetch ``targets`` into the group's cache as pulls of them would (see
        :mod:`..cache.warm`); an image that fails comes back with its ``error``.

        :param platforms: the entries of an index to warm; empty: every one.
        :raises ProxyDisabled: the group's proxy is off.
        """
        if not self.enabled(group_id):
            raise ProxyDisabled(group_path)
        return Warmer(self._cache, group_id, group_path, platforms).warm(targets, progress)

    # -- deletion ----------------------------------------------------------------------------

    def purge(self, group_id: int, *, force: bool = False) -> PurgeResult:
        """Schedule the group's whole cache for deletion.

        :param force: ignore the cooldown between two purges (operators).
        :raises PurgeTooSoon: the group was purged less than the cooldown ago.
        """
        return self._lifecycle.purge(group_id, force=force)

    def delete_image(self, group_id: int, image: str) -> ImageDeleted | None:
        """Schedule one image for deletion; ``None`` when the group has it not cached."""
        return self._lifecycle.delete_image(group_id, image)

    # -- upstreams ---------------------------------------------------------------------------

    def instance_upstreams(self) -> list[str]:
        """The instance's upstreams, in the instance's order."""
        return self._upstreams.names()

    def is_upstream(self, name: str) -> bool:
        """Whether ``name`` (from a URL or a form) names an upstream of the instance."""
        return UPSTREAM_NAME.fullmatch(name) is not None and name in self._upstreams.names()

    def upstreams(self, group_id: int) -> GroupUpstreamsView:
        """Every instance upstream for the group: those it uses first, in its order."""
        names = self._upstreams.names()
        listing = self._group_upstreams.listing(group_id, names)
        own = {
            entry.name: (entry.username, entry.password)
            for entry in self._group_upstreams.ordered(group_id, names)
            if entry.username is not None and entry.password is not None
        }
        views = []
        for item in listing.items:
            entry = self._upstreams.entry(item.name)
            status = self._upstreams.status(item.name, own.get(item.name))
            down_until = None
            if status.down_until is not None:
                moment = dt.datetime.fromtimestamp(status.down_until, dt.UTC)
                down_until = moment.replace(tzinfo=None)
            views.append(
                UpstreamView(
                    name=item.name,
                    url=entry.url,
                    hosts=tuple(entry.hosts),
                    position=item.position,
                    credential_set=item.credential_set,
                    credential_unreadable=item.credential_unreadable,
                    last_status=status.last_status,
                    rate_limit_limit=status.rate_limit_limit,
                    rate_limit_remaining=status.rate_limit_remaining,
                    down_until=down_until,
                )
            )
        return GroupUpstreamsView(listing.custom_order, tuple(views))

    def set_upstream_order(self, group_id: int, order: t.Sequence[str] | None) -> None:
        """Narrow and reorder the group's upstreams; ``None`` goes back to every upstream
        of the instance in its order.

        :raises UpstreamListError: an empty order, a repeated or unknown name.
        """
        self._group_upstreams.set_order(group_id, order, instance_names=self._upstreams.names())

    def set_credentials(self, group_id: int, name: str, username: str, password: str) -> None:
        """Keep the group's own credential for upstream ``name`` (encrypted).

        :raises UpstreamListError: an unknown upstream or a credential out of bounds
            (the message says which, never quoting it).
        """
        self._group_upstreams.set_credentials(
            group_id, name, username, password, instance_names=self._upstreams.names()
        )

    def clear_credentials(self, group_id: int, name: str) -> bool:
        """Forget the group's own credential for ``name``; whether it had one."""
        return self._group_upstreams.clear_credentials(group_id, name)

    def rotate_credentials(self) -> RotationResult:
        """Re-encrypt every group's credentials with the newest configured key."""
        return self._group_upstreams.rotate_all()
