"""Rows of ``dependency_proxy_tag_cooldowns``: tags whose new upstream digest waits.

A row is written when a tag's upstream digest changes while the group's cooldown is on
(:mod:`..cache.cooldown` decides), and deleted when the tag serves the pending digest or
upstream moves the tag back. The pull path reads a tag's row together with its cached
manifest (:meth:`TagHoldRecords.find_tag`, one query), so a tag that is not in cooldown
costs no query of its own; early releases set ``released_at`` and are recorded as group
events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from .blocks import BlockRecords
from .records import SessionRecords
from .repository import ManifestRecord, _manifest_record
from .tables import CachedManifest, Status, TagCooldown
from .transaction import commit_retrying

#: Kind of the group event an early release records.
EVENT_COOLDOWN_RELEASED = "cooldown_released"


@dataclasses.dataclass(frozen=True)
class Hold:
    """A tag in cooldown.

    :param previous_digest: what the tag serves meanwhile; ``None``: a brand-new tag.
    :param first_seen_at: when this group's cache first saw the tag point at
        ``pending_digest``: the cooldown counts from here.
    """

    id: int
    group_id: int
    image: str
    tag: str
    previous_digest: str | None
    pending_digest: str
    first_seen_at: dt.datetime
    released_at: dt.datetime | None = None
    released_by: str | None = None


def _hold(row: TagCooldown) -> Hold:
    return Hold(
        id=row.id,
        group_id=row.group_id,
        image=row.image,
        tag=row.tag,
        previous_digest=row.previous_digest,
        pending_digest=row.pending_digest,
        first_seen_at=row.first_seen_at,
        released_at=row.released_at,
        released_by=row.released_by,
    )


def _where(group_id: int, image: str, tag: str) -> list[sa.ColumnElement[bool]]:
    return [TagCooldown.group_id == group_id, TagCooldown.image == image, TagCooldown.tag == tag]


class TagHoldRecords(SessionRecords):
    """Reads and writes of the tags in cooldown, through the host's session."""

    def find_tag(
        self, group_id: int, image: str, tag: str
    ) -> tuple[ManifestRecord | None, Hold | None]:
        """The tag's cached manifest and its hold, in one query. A brand-new tag held
        back has no cached manifest: its hold is read by :meth:`find`."""
        row = self.session.execute(
            sa.select(CachedManifest, TagCooldown)
            .outerjoin(
                TagCooldown,
                sa.and_(
                    TagCooldown.group_id == CachedManifest.group_id,
                    TagCooldown.image == CachedManifest.image,
                    TagCooldown.tag == CachedManifest.tag,
                ),
            )
            .where(
                CachedManifest.group_id == group_id,
                CachedManifest.image == image,
                CachedManifest.tag == tag,
                CachedManifest.status == Status.DEFAULT,
            )
        ).one_or_none()
        if row is None:
            return None, None
        manifest, hold = row
        return _manifest_record(manifest), None if hold is None else _hold(hold)

    def find(self, group_id: int, image: str, tag: str) -> Hold | None:
        row = self.session.execute(
            sa.select(TagCooldown).where(*_where(group_id, image, tag))
        ).scalar_one_or_none()
        return None if row is None else _hold(row)

    def hold(
        self,
        group_id: int,
        image: str,
        tag: str,
        *,
        previous_digest: str | None,
        pending_digest: str,
        now: dt.datetime,
    ) -> Hold:
        """Hold ``pending_digest`` back from the tag from ``now`` on (replacing a hold of
        another digest), and commit. A hold of the same digest is kept as it is: the
        cooldown counts from when the digest was first seen."""

        def write() -> Hold:
            row = self.session.execute(
                sa.select(TagCooldown).where(*_where(group_id, image, tag))
            ).scalar_one_or_none()
            if row is not None and row.pending_digest == pending_digest:
                return _hold(row)
            if row is None:
                row = TagCooldown(group_id=group_id, image=image[:255], tag=tag)
                self.session.add(row)
            row.previous_digest = previous_digest
            row.pending_digest = pending_digest
            row.first_seen_at = now
            row.released_at = row.released_by = None
            self.session.flush()
            return _hold(row)

        return commit_retrying(self.session, write, what=f"the cooldown of {image}:{tag}")

    def drop(self, group_id: int, image: str, tag: str) -> None:
        """Forget the tag's hold (it serves the pending digest, or upstream moved back)."""
        self.session.execute(
            sa.delete(TagCooldown)
            .where(*_where(group_id, image, tag))
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def drop_group(self, group_id: int) -> None:
        """Forget every hold of the group (its cooldown was switched off)."""
        self.session.execute(
            sa.delete(TagCooldown)
            .where(TagCooldown.group_id == group_id)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def holding(self, group_id: int, digest: str) -> list[Hold]:
        """The group's unreleased holds of ``digest`` (a pull by digest during the
        cooldown)."""
        rows = self.session.execute(
            sa.select(TagCooldown).where(
                TagCooldown.group_id == group_id,
                TagCooldown.pending_digest == digest,
                TagCooldown.released_at.is_(None),
            )
        ).scalars()
        return [_hold(row) for row in rows]

    def listing(self, group_id: int) -> list[Hold]:
        """The group's tags in cooldown (released early ones too, until a pull serves
        them), oldest first."""
        rows = self.session.execute(
            sa.select(TagCooldown)
            .where(TagCooldown.group_id == group_id)
            .order_by(TagCooldown.first_seen_at, TagCooldown.id)
        ).scalars()
        return [_hold(row) for row in rows]

    def release(self, hold_id: int, group_id: int, *, by: str, now: dt.datetime) -> Hold | None:
        """Release a pending digest early: the next pull of the tag serves it. Recorded
        as a group event with who released it; commits. ``None``: the group has no such
        unreleased hold."""
        row = self.session.execute(
            sa.select(TagCooldown).where(
                TagCooldown.id == hold_id,
                TagCooldown.group_id == group_id,
                TagCooldown.released_at.is_(None),
            )
        ).scalar_one_or_none()
        if row is None:
            self.session.rollback()
            return None
        row.released_at, row.released_by = now, by[:255]
        hold = _hold(row)
        # One commit: the release and its event.
        BlockRecords(lambda: self.session).record_event(
            group_id,
            EVENT_COOLDOWN_RELEASED,
            hold.image,
            hold.tag,
            f"{hold.image}:{hold.tag} released from cooldown early by {by}:"
            f" {hold.pending_digest} is served from the next pull",
            now,
        )
        return hold
