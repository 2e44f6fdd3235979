"""Rows of ``dependency_proxy_tag_pulls`` and ``dependency_proxy_tag_refreshes``: how
often each group pulled each manifest reference, and what the refresher last did per
hot tag.

A batch of pull counts is written in one upsert with the usage counters
(:mod:`..cache.usage`); the refresher (:mod:`..cache.refresh`) reads the group's most
pulled tags, the platform manifests its pulls chose (references that are digests), and
writes one row per tag it checked. The pages and the API read the latter.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

import sqlalchemy as sa

from .records import SessionRecords
from .tables import GroupPath, TagPullDay, TagRefresh
from .upsert import insert_for

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: A group, an image, a manifest reference (tag or digest) and a UTC day.
ReferenceKey = tuple[int, str, str, dt.date]


@dataclasses.dataclass(frozen=True)
class HotTag:
    """One of a group's most pulled tags."""

    image: str
    tag: str
    pulls: int


@dataclasses.dataclass(frozen=True)
class RefreshState:
    """What the refresher last did with one tag of a group."""

    image: str
    tag: str
    checked_at: dt.datetime | None
    refreshed_at: dt.datetime | None
    refreshed_digest: str | None
    prefetched_bytes: int
    platforms: tuple[str, ...]


def write_reference_pulls(session: Session, batch: dict[ReferenceKey, int]) -> None:
    """Add ``batch`` to the stored counts in one statement, then commit."""
    if not batch:
        return
    insert = insert_for(session.get_bind(mapper=TagPullDay).dialect.name)
    statement = insert(TagPullDay).values(
        [
            {
                "group_id": group_id,
                "image": image[:255],
                "reference": ref[:135],
                "day": day,
                "pulls": pulls,
            }
            for (group_id, image, ref, day), pulls in sorted(batch.items())
        ]
    )
    table = TagPullDay.__table__
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.group_id, table.c.image, table.c.reference, table.c.day],
        set_={"pulls": table.c.pulls + statement.excluded.pulls},
    )
    try:
        session.execute(statement)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _is_digest(reference: sa.orm.InstrumentedAttribute[str]) -> sa.ColumnElement[bool]:
    """Tags have no ``:``; digests do (``sha256:...``)."""
    return reference.like("%:%")


class HotTagRecords(SessionRecords):
    """Reads and writes of the pull counts and the refresh states."""

    def groups_pulled(self, since: dt.date) -> list[tuple[int, str]]:
        """``(group_id, recorded path)`` of every group with tag pulls since ``since``."""
        rows = self.session.execute(
            sa.select(TagPullDay.group_id, GroupPath.path)
            .join(GroupPath, GroupPath.group_id == TagPullDay.group_id)
            .where(TagPullDay.day >= since)
            .group_by(TagPullDay.group_id, GroupPath.path)
            .order_by(TagPullDay.group_id)
        )
        return [(int(group_id), str(path)) for group_id, path in rows]

    def group_path(self, group_id: int) -> str | None:
        row = self.session.get(GroupPath, group_id)
        return None if row is None else str(row.path)

    def hot_tags(self, group_id: int, since: dt.date, limit: int) -> list[HotTag]:
        """The group's ``limit`` tags pulled most since ``since``, most first."""
        total = sa.func.sum(TagPullDay.pulls)
        rows = self.session.execute(
            sa.select(TagPullDay.image, TagPullDay.reference, total)
            .where(
                TagPullDay.group_id == group_id,
                TagPullDay.day >= since,
                sa.not_(_is_digest(TagPullDay.reference)),
            )
            .group_by(TagPullDay.image, TagPullDay.reference)
            .order_by(total.desc(), TagPullDay.image, TagPullDay.reference)
            .limit(limit)
        )
        return [HotTag(str(image), str(tag), int(pulls)) for image, tag, pulls in rows]

    def pulled_digests(self, group_id: int, image: str, since: dt.date) -> set[str]:
        """The manifests of ``image`` the group pulled by digest since ``since``."""
        rows = self.session.execute(
            sa.select(TagPullDay.reference)
            .where(
                TagPullDay.group_id == group_id,
                TagPullDay.image == image,
                TagPullDay.day >= since,
                _is_digest(TagPullDay.reference),
            )
            .distinct()
        ).scalars()
        return set(rows)

    def states(self, group_id: int) -> list[RefreshState]:
        """What the refresher last did with each tag of the group, by image and tag."""
        rows = self.session.execute(
            sa.select(TagRefresh)
            .where(TagRefresh.group_id == group_id)
            .order_by(TagRefresh.image, TagRefresh.tag)
        ).scalars()
        return [_state(row) for row in rows]

    def state(self, group_id: int, image: str, tag: str) -> RefreshState | None:
        row = self.session.get(TagRefresh, (group_id, image, tag))
        return None if row is None else _state(row)

    def save_state(
        self,
        group_id: int,
        image: str,
        tag: str,
        *,
        checked_at: dt.datetime,
        platforms: t.Sequence[str],
        refreshed_digest: str | None = None,
        prefetched_bytes: int = 0,
    ) -> None:
        """Record a check of the tag (and, with ``refreshed_digest``, the move it
        fetched), then commit."""
        try:
            row = self.session.get(TagRefresh, (group_id, image, tag))
            if row is None:
                row = TagRefresh(group_id=group_id, image=image, tag=tag, prefetched_bytes=0)
                self.session.add(row)
            row.checked_at = checked_at
            row.platforms = "\n".join(platforms) or None
            if refreshed_digest is not None:
                row.refreshed_at = checked_at
                row.refreshed_digest = refreshed_digest
                row.prefetched_bytes = prefetched_bytes
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise


def _state(row: TagRefresh) -> RefreshState:
    return RefreshState(
        image=row.image,
        tag=row.tag,
        checked_at=row.checked_at,
        refreshed_at=row.refreshed_at,
        refreshed_digest=row.refreshed_digest,
        prefetched_bytes=int(row.prefetched_bytes or 0),
        platforms=tuple((row.platforms or "").splitlines()),
    )
