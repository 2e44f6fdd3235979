"""What purge and cleanup read and write: marking rows pending destruction (a purge,
one image, the groups' cleanup policies, a group forgotten, whose other rows go at
once), deleting them in batches, which blob digests rows still reference, the lease
that keeps two cleanups from running at once, and failed-login counts whose window
has ended.

A row marked pending destruction is no longer served; cleanup deletes it later, unless
a pull brought it back meanwhile (every ``DELETE`` repeats the status condition).
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .documents import blob_digests
from .records import SessionRecords
from .tables import (
    BlockedImage,
    CachedBlob,
    CachedManifest,
    GroupEvent,
    GroupPath,
    GroupSettings,
    GroupUpstreamRow,
    Lease,
    LoginFailure,
    PullRecord,
    SignaturePolicyRow,
    SignatureVerdictRow,
    Status,
    TagCooldown,
    TagPullDay,
    TagRefresh,
    UsageDay,
)
from .transaction import rowcount

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .group_settings import GroupSettingsRecords

_Table = type[CachedManifest] | type[CachedBlob]

#: Every table keyed by a group id: what :meth:`CleanupRecords.forget_group` deletes.
FORGOTTEN_TABLES: tuple[t.Any, ...] = (
    CachedManifest,
    CachedBlob,
    GroupSettings,
    GroupUpstreamRow,
    UsageDay,
    GroupPath,
    BlockedImage,
    GroupEvent,
    PullRecord,
    SignaturePolicyRow,
    SignatureVerdictRow,
    TagCooldown,
    TagPullDay,
    TagRefresh,
)


class CleanupRecords(SessionRecords):
    """The queries, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    :param settings: the groups' settings (purge times and cleanup policies).
    """

    def __init__(self, session: t.Callable[[], Session], settings: GroupSettingsRecords) -> None:
        super().__init__(session)
        self.settings = settings

    # -- login failures ----------------------------------------------------------------------

    def forget_login_failures(self, window_started_before: dt.datetime) -> int:
        """Delete the failed-login counts whose window has ended; how many."""
        result = self.session.execute(
            sa.delete(LoginFailure).where(LoginFailure.window_started_at < window_started_before)
        )
        self.session.commit()
        return rowcount(result)

    # -- purge -----------------------------------------------------------------------------

    def claim_purge(
        self, group_id: int, now: dt.datetime, cooldown: dt.timedelta
    ) -> tuple[bool, dt.datetime | None, int, int]:
        """Record a purge and mark the group's rows pending destruction, in one transaction,
        unless the group was purged less than ``cooldown`` ago (see
        :meth:`.group_settings.GroupSettingsRecords.claim_purge`).

        :return: ``(done, previous purge time, manifests marked, blobs marked)``.
        """
        claimed, previous = self.settings.claim_purge(group_id, now, cooldown)
        if not claimed:
            return False, previous, 0, 0
        manifests = self._mark(CachedManifest, CachedManifest.group_id == group_id)
        blobs = self._mark(CachedBlob, CachedBlob.group_id == group_id)
        self.session.commit()
        return True, None, manifests, blobs

    def forget_group(self, group_id: int) -> tuple[int, int]:
        """Delete every row the extension keeps for the group (:data:`FORGOTTEN_TABLES`)
        in one transaction. The cached manifests and blobs go at once rather than being
        marked as a purge marks them, so a new group given the same id never lists them;
        their files, no longer referenced, go with the next cleanup's sweep.

        :return: ``(manifests deleted, blobs deleted)``.
        """
        deleted = {
            table: rowcount(
                self.session.execute(
                    sa.delete(table)
                    .where(table.group_id == group_id)
                    .execution_options(synchronize_session=False)
                )
            )
            for table in FORGOTTEN_TABLES
        }
        self.session.commit()
        return deleted[CachedManifest], deleted[CachedBlob]

    def _mark(self, table: _Table, *conditions: sa.ColumnElement[bool]) -> int:
        result = self.session.execute(
            sa.update(table)
            .where(table.status == Status.DEFAULT, *conditions)
            .values(status=Status.PENDING_DESTRUCTION)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result)

    def mark_image(self, group_id: int, image: str) -> tuple[int, int] | None:
        """Mark one image of the group pending destruction: its manifests (every tag and
        platform), and the blobs they reference that no other manifest of the group in
        the default status references. One transaction.

        :return: ``(manifests marked, blobs marked)``, ``None`` if the group has no
            manifest of ``image`` that is still served.
        """
        rows = self.session.execute(
            sa.select(CachedManifest.content, CachedManifest.status).where(
                CachedManifest.group_id == group_id, CachedManifest.image == image
            )
        ).all()
        if not any(status == Status.DEFAULT for _content, status in rows):
            self.session.rollback()
            return None
        digests: set[str] = set()
        for content, _status in rows:
            digests |= blob_digests(content)
        others = self.session.execute(
            sa.select(CachedManifest.content).where(
                CachedManifest.group_id == group_id,
                CachedManifest.image != image,
                CachedManifest.status == Status.DEFAULT,
            )
        ).scalars()
        for content in others:
            digests -= blob_digests(content)
            if not digests:
                break
        manifests = self._mark(
            CachedManifest, CachedManifest.group_id == group_id, CachedManifest.image == image
        )
        blobs = 0
        ordered = sorted(digests)
        for start in range(0, len(ordered), 500):
            blobs += self._mark(
                CachedBlob,
                CachedBlob.group_id == group_id,
                CachedBlob.digest.in_(ordered[start : start + 500]),
            )
        self.session.commit()
        return manifests, blobs

    # -- cleanup ---------------------------------------------------------------------------

    def mark_expired(self, now: dt.datetime) -> tuple[int, int]:
        """Apply every group's cleanup policy: mark rows last read more than the policy's
        days ago, one transaction per group. Returns (manifests, blobs) marked."""
        policies = self.settings.cleanup_policies()
        self.session.rollback()
        manifests = blobs = 0
        for group_id, days in policies:
            cutoff = now - dt.timedelta(days=days)
            manifests += self._mark(
                CachedManifest,
                CachedManifest.group_id == group_id,
                CachedManifest.last_read_at < cutoff,
            )
            blobs += self._mark(
                CachedBlob, CachedBlob.group_id == group_id, CachedBlob.last_read_at < cutoff
            )
            self.session.commit()
        return manifests, blobs

    def delete_marked(
        self,
        table: _Table,
        batch_size: int,
        on_batch: t.Callable[[], None] | None = None,
    ) -> int:
        """Delete rows pending destruction, ``batch_size`` per transaction.

        A row a pull brought back to life meanwhile (status reset) is not deleted: the
        ``DELETE`` repeats the status condition.
        """
        deleted = 0
        while True:
            ids = (
                self.session.execute(
                    sa.select(table.id)
                    .where(table.status == Status.PENDING_DESTRUCTION)
                    .order_by(table.id)
                    .limit(batch_size)
                )
                .scalars()
                .all()
            )
            if not ids:
                self.session.rollback()
                return deleted
            result = self.session.execute(
                sa.delete(table)
                .where(table.id.in_(ids), table.status == Status.PENDING_DESTRUCTION)
                .execution_options(synchronize_session=False)
            )
            self.session.commit()
            deleted += rowcount(result)
            if on_batch is not None:
                on_batch()
            if len(ids) < batch_size:
                return deleted

    def referenced(self, digests: t.Collection[str]) -> set[str]:
        """The digests some blob row (any group, any status) still references."""
        if not digests:
            return set()
        found = (
            self.session.execute(
                sa.select(CachedBlob.digest).where(CachedBlob.digest.in_(list(digests))).distinct()
            )
            .scalars()
            .all()
        )
        self.session.rollback()
        return set(found)

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(
        self,
        name: str,
        holder: str,
        now: dt.datetime,
        ttl: dt.timedelta,
        *,
        min_interval: dt.timedelta | None = None,
    ) -> bool:
        """Take the lease unless someone holds it (or, with ``min_interval``, unless the
        job finished less than that long ago)."""
        conditions = [Lease.name == name, Lease.expires_at <= now]
        if min_interval is not None:
            conditions.append(
                sa.or_(Lease.finished_at.is_(None), Lease.finished_at <= now - min_interval)
            )
        result = self.session.execute(
            sa.update(Lease)
            .where(*conditions)
            .values(holder=holder, expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) == 1:
            self.session.commit()
            return True
        exists = self.session.execute(
            sa.select(Lease.name).where(Lease.name == name)
        ).scalar_one_or_none()
        if exists is not None:
            self.session.rollback()
            return False
        self.session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            return False
        return True

    def renew_lease(self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        result = self.session.execute(
            sa.update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return rowcount(result) == 1

    def release_lease(self, name: str, holder: str, now: dt.datetime, *, finished: bool) -> None:
        values: dict[str, t.Any] = {"expires_at": now}
        if finished:
            values["finished_at"] = now
        self.session.execute(
            sa.update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
