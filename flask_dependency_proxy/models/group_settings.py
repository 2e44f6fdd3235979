"""A group's proxy settings: the one writer of ``dependency_proxy_group_settings``.

A group has a row once something about it was set: the proxy switched on or off, a
cleanup policy, a size limit, a purge. Until then the defaults apply (the proxy on when
``GROUP_DEFAULT_ENABLED`` says so, no cleanup policy, no limit). Every write goes
through :meth:`GroupSettingsRecords.update` or :meth:`~GroupSettingsRecords.claim_purge`,
which create the row the same way and retry when another request created it at the same
moment (:func:`.transaction.commit_retrying`). The pull path reads the switch and the
limit directly (:meth:`.repository.CacheMetadata.group_enabled`,
:meth:`.quota.QuotaRecords.limit`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import typing as t

import sqlalchemy as sa

from .records import SessionRecords
from .tables import GroupSettings
from .transaction import commit_retrying, rowcount

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: Bounds of the cleanup policy's "not pulled for N days", and its default.
DEFAULT_CLEANUP_DAYS = 90
MIN_CLEANUP_DAYS = 1
MAX_CLEANUP_DAYS = 3650


class Keep(enum.Enum):
    """A setting :meth:`GroupSettingsRecords.update` leaves as it is (``None`` is a value:
    no size limit)."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclasses.dataclass(frozen=True)
class Settings:
    """A group's proxy settings, with the defaults applied when it has no row yet.

    :param size_limit: bytes the group may keep cached; ``None``: no limit.
    :param upstream_not_found: ``serve`` or ``refuse`` a cached tag upstream answers
        404 for; ``None``: the instance's default.
    """

    group_id: int
    enabled: bool
    cleanup_enabled: bool
    cleanup_days: int
    purged_at: dt.datetime | None
    size_limit: int | None = None
    upstream_not_found: str | None = None
    #: The tag cooldown's own values (``None``: the instance's default; see
    #: :mod:`..cache.cooldown`): seconds, brand-new tags, pulls by digest, exempt images.
    cooldown_seconds: int | None = None
    cooldown_new_tags: str | None = None
    cooldown_digest_pulls: str | None = None
    cooldown_exempt: tuple[str, ...] | None = None
    #: Predictive refresh (``None``: the instance's default; see :mod:`..cache.refresh`):
    #: on or off, how many hot tags, seconds between two checks of one.
    refresh_enabled: bool | None = None
    refresh_tags: int | None = None
    refresh_interval_seconds: int | None = None


#: Values of :attr:`Settings.upstream_not_found` besides ``None``.
NOT_FOUND_POLICIES = ("serve", "refuse")
#: Values of :attr:`Settings.cooldown_new_tags` and :attr:`Settings.cooldown_digest_pulls`.
NEW_TAG_POLICIES = ("serve", "refuse")
DIGEST_PULL_POLICIES = ("allow", "refuse")
#: Longest cooldown (a year) and most exempt image patterns of a group.
MAX_COOLDOWN_SECONDS = 366 * 24 * 3600
MAX_EXEMPT_PATTERNS = 100
#: Bounds of a group's refresh settings.
MAX_REFRESH_TAGS = 1000
MIN_REFRESH_INTERVAL_SECONDS = 60
MAX_REFRESH_INTERVAL_SECONDS = 7 * 24 * 3600


class GroupSettingsRecords(SessionRecords):
    """Reads and writes of the groups' settings through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    :param default_enabled: whether a group without a row has its proxy on; a row made
        for another setting keeps it so.
    """

    def __init__(self, session: t.Callable[[], Session], *, default_enabled: bool) -> None:
        super().__init__(session)
        self.default_enabled = default_enabled

    def get(self, group_id: int) -> Settings:
        row = self.session.get(GroupSettings, group_id)
        if row is None:
            return Settings(group_id, self.default_enabled, False, DEFAULT_CLEANUP_DAYS, None)
        return _settings(row)

    def update(
        self,
        group_id: int,
        now: dt.datetime,
        *,
        enabled: bool | Keep = KEEP,
        cleanup_enabled: bool | Keep = KEEP,
        cleanup_days: int | Keep = KEEP,
        size_limit: int | None | Keep = KEEP,
        upstream_not_found: str | None | Keep = KEEP,
        cooldown_seconds: int | None | Keep = KEEP,
        cooldown_new_tags: str | None | Keep = KEEP,
        cooldown_digest_pulls: str | None | Keep = KEEP,
        cooldown_exempt: t.Sequence[str] | None | Keep = KEEP,
        refresh_enabled: bool | None | Keep = KEEP,
        refresh_tags: int | None | Keep = KEEP,
        refresh_interval_seconds: int | None | Keep = KEEP,
    ) -> Settings:
        """Change the given settings in one transaction and commit; the others keep
        their values (their defaults when the group has no row yet).

        :raises ValueError: ``cleanup_days`` out of bounds, a size limit under 1, or an
            unknown policy.
        """
        for value, allowed in (
            (upstream_not_found, NOT_FOUND_POLICIES),
            (cooldown_new_tags, NEW_TAG_POLICIES),
            (cooldown_digest_pulls, DIGEST_PULL_POLICIES),
        ):
            if isinstance(value, str) and value not in allowed:
                raise ValueError(f"the policy must be one of {', '.join(allowed)}")
        if isinstance(cooldown_seconds, int) and not (
            0 <= cooldown_seconds <= MAX_COOLDOWN_SECONDS
        ):
            raise ValueError(f"a cooldown must be from 0 to {MAX_COOLDOWN_SECONDS} seconds")
        if isinstance(refresh_tags, int) and not 1 <= refresh_tags <= MAX_REFRESH_TAGS:
            raise ValueError(f"the refreshed tags must be from 1 to {MAX_REFRESH_TAGS}")
        if isinstance(refresh_interval_seconds, int) and not (
            MIN_REFRESH_INTERVAL_SECONDS <= refresh_interval_seconds <= MAX_REFRESH_INTERVAL_SECONDS
        ):
            raise ValueError(
                f"a refresh interval must be from {MIN_REFRESH_INTERVAL_SECONDS}"
                f" to {MAX_REFRESH_INTERVAL_SECONDS} seconds"
            )
        exempt: str | None | Keep = KEEP
        if cooldown_exempt is None:
            exempt = None
        elif not isinstance(cooldown_exempt, Keep):
            exempt = "\n".join(cooldown_exempt) or None
        if not isinstance(cleanup_days, Keep) and not (
            MIN_CLEANUP_DAYS <= cleanup_days <= MAX_CLEANUP_DAYS
        ):
            raise ValueError(f"cleanup days must be from {MIN_CLEANUP_DAYS} to {MAX_CLEANUP_DAYS}")
        if isinstance(size_limit, int) and size_limit < 1:
            raise ValueError("a size limit must be at least 1 byte")
        values: dict[str, t.Any] = {
            column: value
            for column, value in (
                ("enabled", enabled),
                ("cleanup_enabled", cleanup_enabled),
                ("cleanup_days", cleanup_days),
                ("size_limit_bytes", size_limit),
                ("upstream_not_found", upstream_not_found),
                ("cooldown_seconds", cooldown_seconds),
                ("cooldown_new_tags", cooldown_new_tags),
                ("cooldown_digest_pulls", cooldown_digest_pulls),
                ("cooldown_exempt", exempt),
                ("refresh_enabled", refresh_enabled),
                ("refresh_tags", refresh_tags),
                ("refresh_interval_seconds", refresh_interval_seconds),
            )
            if not isinstance(value, Keep)
        }

        def write() -> Settings:
            row = self._row(group_id)
            for column, value in values.items():
                setattr(row, column, value)
            row.updated_at = now
            self.session.flush()
            return _settings(row)

        return commit_retrying(self.session, write, what=f"the settings of group {group_id}")

    def claim_purge(
        self, group_id: int, now: dt.datetime, cooldown: dt.timedelta
    ) -> tuple[bool, dt.datetime | None]:
        """Record a purge at ``now`` unless the group was purged less than ``cooldown``
        ago. A conditional ``UPDATE`` decides, so of two purges at the same moment one
        wins.

        Claimed, the transaction stays open: the caller marks the group's rows in it and
        commits, so the purge time and the marks are saved together. Not claimed, it is
        rolled back.

        :return: ``(claimed, time of the purge that was too recent)``.
        """
        if self.session.get(GroupSettings, group_id) is None:
            commit_retrying(
                self.session,
                lambda: self._row(group_id),
                what=f"the settings of group {group_id}",
            )
        claimed = self.session.execute(
            sa.update(GroupSettings)
            .where(
                GroupSettings.group_id == group_id,
                sa.or_(
                    GroupSettings.purged_at.is_(None), GroupSettings.purged_at <= now - cooldown
                ),
            )
            .values(purged_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if rowcount(claimed) == 1:
            return True, None
        self.session.rollback()
        previous = self.session.execute(
            sa.select(GroupSettings.purged_at).where(GroupSettings.group_id == group_id)
        ).scalar_one_or_none()
        self.session.rollback()
        return False, previous

    def cooldown_rows(self) -> list[Settings]:
        """The settings of every group with a cooldown value of its own (what the pull
        path keeps in memory, :class:`..cache.cooldown.Cooldowns`)."""
        rows = self.session.execute(
            sa.select(GroupSettings).where(
                sa.or_(
                    GroupSettings.cooldown_seconds.is_not(None),
                    GroupSettings.cooldown_new_tags.is_not(None),
                    GroupSettings.cooldown_digest_pulls.is_not(None),
                    GroupSettings.cooldown_exempt.is_not(None),
                )
            )
        ).scalars()
        return [_settings(row) for row in rows]

    def refresh_rows(self) -> list[Settings]:
        """The settings of every group with a refresh value of its own."""
        rows = self.session.execute(
            sa.select(GroupSettings).where(
                sa.or_(
                    GroupSettings.refresh_enabled.is_not(None),
                    GroupSettings.refresh_tags.is_not(None),
                    GroupSettings.refresh_interval_seconds.is_not(None),
                )
            )
        ).scalars()
        return [_settings(row) for row in rows]

    def cleanup_policies(self) -> list[tuple[int, int]]:
        """``(group_id, days)`` of every group whose cleanup policy is on."""
        return [
            (int(group_id), int(days))
            for group_id, days in self.session.execute(
                sa.select(GroupSettings.group_id, GroupSettings.cleanup_days)
                .where(GroupSettings.cleanup_enabled.is_(True))
                .order_by(GroupSettings.group_id)
            )
        ]

    def _row(self, group_id: int) -> GroupSettings:
        """The group's row, added (not yet flushed) when it has none."""
        row = self.session.get(GroupSettings, group_id)
        if row is None:
            row = GroupSettings(
                group_id=group_id,
                enabled=self.default_enabled,
                cleanup_enabled=False,
                cleanup_days=DEFAULT_CLEANUP_DAYS,
            )
            self.session.add(row)
        return row


def _settings(row: GroupSettings) -> Settings:
    return Settings(
        group_id=row.group_id,
        enabled=bool(row.enabled),
        cleanup_enabled=bool(row.cleanup_enabled),
        cleanup_days=int(row.cleanup_days),
        purged_at=row.purged_at,
        size_limit=None if row.size_limit_bytes is None else int(row.size_limit_bytes),
        upstream_not_found=row.upstream_not_found,
        cooldown_seconds=row.cooldown_seconds,
        cooldown_new_tags=row.cooldown_new_tags,
        cooldown_digest_pulls=row.cooldown_digest_pulls,
        cooldown_exempt=(
            None if row.cooldown_exempt is None else tuple(row.cooldown_exempt.splitlines())
        ),
        refresh_enabled=row.refresh_enabled,
        refresh_tags=row.refresh_tags,
        refresh_interval_seconds=row.refresh_interval_seconds,
    )
