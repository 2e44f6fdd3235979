"""Rows of ``dependency_proxy_blocked_images`` and ``dependency_proxy_group_events``.

A block names a manifest digest, or an image name and a tag pattern, for one group or
(``group_id`` ``NULL``) for every group. Lifting a block keeps its row, with who lifted
it and when. The pull path never queries these tables: it matches the rules of
:meth:`BlockRecords.active_rules`, which :mod:`..cache.blocks` reloads every few seconds.
A digest block of an index also blocks the platform manifests it lists, as far as any
group's cached copy of the index tells them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from .documents import index_children
from .records import SessionRecords
from .tables import BlockedImage, CachedManifest, GroupEvent

#: Longest reason kept with a block.
MAX_REASON_LENGTH = 500
#: Longest tag pattern (a tag is at most 128 characters).
MAX_PATTERN_LENGTH = 128

#: Kinds of :class:`Event`.
EVENT_UPSTREAM_NOT_FOUND = "upstream_not_found"
EVENT_BLOCKED = "blocked"
EVENT_UNBLOCKED = "unblocked"


@dataclasses.dataclass(frozen=True)
class Block:
    """A block as the pages, the API and the CLI show it.

    :param group_id: ``None``: it applies to every group.
    """

    id: int
    group_id: int | None
    digest: str | None
    image: str | None
    tag_pattern: str | None
    reason: str
    created_at: dt.datetime
    created_by: str
    removed_at: dt.datetime | None = None
    removed_by: str | None = None

    @property
    def active(self) -> bool:
        return self.removed_at is None

    @property
    def target(self) -> str:
        """``sha256:...`` or ``image:pattern``."""
        return self.digest or f"{self.image}:{self.tag_pattern}"


@dataclasses.dataclass(frozen=True)
class BlockRule:
    """What the pull path matches: a block, or the platform manifest of a blocked index
    (``index`` names the index)."""

    block_id: int
    group_id: int | None
    digest: str | None
    image: str | None
    tag_pattern: str | None
    reason: str
    index: str | None = None


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    group_id: int | None
    at: dt.datetime
    kind: str
    image: str | None
    reference: str | None
    message: str


def _block(row: BlockedImage) -> Block:
    return Block(
        id=row.id,
        group_id=row.group_id,
        digest=row.digest,
        image=row.image,
        tag_pattern=row.tag_pattern,
        reason=row.reason,
        created_at=row.created_at,
        created_by=row.created_by,
        removed_at=row.removed_at,
        removed_by=row.removed_by,
    )


class BlockRecords(SessionRecords):
    """Blocks and the groups' events, through the host's session; writes commit."""

    def add(
        self,
        *,
        group_id: int | None,
        digest: str | None,
        image: str | None,
        tag_pattern: str | None,
        reason: str,
        by: str,
        now: dt.datetime,
    ) -> Block:
        """Record a block (and its event); the caller has validated the values."""
        row = BlockedImage(
            group_id=group_id,
            digest=digest,
            image=image,
            tag_pattern=tag_pattern,
            reason=reason[:MAX_REASON_LENGTH],
            created_at=now,
            created_by=by[:255],
        )
        self.session.add(row)
        self.session.flush()
        block = _block(row)
        self._event(
            group_id,
            EVENT_BLOCKED,
            image,
            digest or tag_pattern,
            now,
            f"{block.target} blocked by {by}: {reason}",
        )
        self.session.commit()
        return block

    def remove(
        self, block_id: int, *, group_id: int | None, by: str, now: dt.datetime
    ) -> Block | None:
        """Lift an active block; ``None`` when there is no such active block for
        ``group_id`` (``None``: an instance administrator, any block)."""
        query = sa.select(BlockedImage).where(
            BlockedImage.id == block_id, BlockedImage.removed_at.is_(None)
        )
        if group_id is not None:
            query = query.where(BlockedImage.group_id == group_id)
        row = self.session.execute(query).scalar_one_or_none()
        if row is None:
            self.session.rollback()
            return None
        row.removed_at, row.removed_by = now, by[:255]
        block = _block(row)
        self._event(
            block.group_id,
            EVENT_UNBLOCKED,
            block.image,
            block.digest or block.tag_pattern,
            now,
            f"{block.target} unblocked by {by}",
        )
        self.session.commit()
        return block

    def get(self, block_id: int) -> Block | None:
        row = self.session.get(BlockedImage, block_id)
        return None if row is None else _block(row)

    def listing(self, group_id: int | None, *, removed: bool = False) -> list[Block]:
        """The blocks that apply to a group (its own and every group's), or with
        ``group_id`` ``None`` every block; newest first. ``removed``: lifted ones too."""
        query = sa.select(BlockedImage).order_by(BlockedImage.id.desc())
        if group_id is not None:
            query = query.where(
                sa.or_(BlockedImage.group_id == group_id, BlockedImage.group_id.is_(None))
            )
        if not removed:
            query = query.where(BlockedImage.removed_at.is_(None))
        return [_block(row) for row in self.session.execute(query).scalars()]

    def active_rules(self) -> list[BlockRule]:
        """Every active block, plus a rule per platform manifest of each blocked index
        that some group has cached."""
        rows = self.session.execute(
            sa.select(BlockedImage).where(BlockedImage.removed_at.is_(None))
        ).scalars()
        rules = [
            BlockRule(row.id, row.group_id, row.digest, row.image, row.tag_pattern, row.reason)
            for row in rows
        ]
        digests = {rule.digest: rule for rule in rules if rule.digest is not None}
        if not digests:
            return rules
        contents = self.session.execute(
            sa.select(CachedManifest.digest, CachedManifest.content)
            .where(CachedManifest.digest.in_(list(digests)))
            .distinct()
        )
        children: list[BlockRule] = []
        for digest, content in contents:
            for child in index_children(content) or ():
                for rule in rules:
                    if rule.digest == digest:
                        children.append(dataclasses.replace(rule, digest=child, index=digest))
        return rules + children

    # -- events --------------------------------------------------------------------------

    def record_event(
        self,
        group_id: int | None,
        kind: str,
        image: str | None,
        reference: str | None,
        message: str,
        now: dt.datetime,
    ) -> None:
        """Record one event and commit."""
        self._event(group_id, kind, image, reference, now, message)
        self.session.commit()

    def _event(
        self,
        group_id: int | None,
        kind: str,
        image: str | None,
        reference: str | None,
        now: dt.datetime,
        message: str,
    ) -> None:
        self.session.add(
            GroupEvent(
                group_id=group_id,
                at=now,
                kind=kind,
                image=image,
                reference=reference,
                message=message[:1000],
            )
        )

    def events(self, group_id: int, limit: int = 20) -> list[Event]:
        """The group's newest events, every group's included."""
        rows = self.session.execute(
            sa.select(GroupEvent)
            .where(sa.or_(GroupEvent.group_id == group_id, GroupEvent.group_id.is_(None)))
            .order_by(GroupEvent.id.desc())
            .limit(limit)
        ).scalars()
        return [
            Event(row.id, row.group_id, row.at, row.kind, row.image, row.reference, row.message)
            for row in rows
        ]
