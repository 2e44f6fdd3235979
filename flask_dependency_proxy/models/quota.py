"""A group's size limit and what counts against it, in the host's database.

The limit is one of the group's settings (:mod:`.group_settings` writes it); it is read
here, on the pull path.

Usage is the bytes of the group's manifests and blobs that are served (status
default), summed over the group's rows through the ``group_id`` indexes: a read of
one group's index range, never a scan of the tables, and never a counter that purge,
cleanup or a crashed pull could leave wrong. Eviction marks rows pending destruction,
as a purge does; cleanup deletes them and the files no row references any more.
"""

from __future__ import annotations

import datetime as dt
import heapq
import typing as t

import sqlalchemy as sa

from .records import SessionRecords
from .tables import CachedBlob, CachedManifest, GroupSettings, Status

if t.TYPE_CHECKING:
    pass

#: Rows read per table and round while choosing what to evict.
_EVICT_BATCH = 200

_Table = type[CachedManifest] | type[CachedBlob]
#: The tables eviction chooses from; candidates carry their index here.
_TABLES: tuple[_Table, _Table] = (CachedManifest, CachedBlob)


class QuotaRecords(SessionRecords):
    """Quota queries, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    """

    def limit(self, group_id: int) -> int | None:
        """The group's size limit in bytes; ``None`` when it has none."""
        value = self.session.execute(
            sa.select(GroupSettings.size_limit_bytes).where(GroupSettings.group_id == group_id)
        ).scalar_one_or_none()
        return None if value is None else int(value)

    def usage(self, group_id: int) -> int:
        """Bytes of the group's served manifests and blobs."""
        total = 0
        for table in (CachedManifest, CachedBlob):
            total += int(
                self.session.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(table.size), 0)).where(
                        table.group_id == group_id, table.status == Status.DEFAULT
                    )
                ).scalar_one()
            )
        return total

    def held_blobs(self, group_id: int, digests: t.Collection[str]) -> set[str]:
        """Which of ``digests`` the group already holds (one lookup on its unique index)."""
        if not digests:
            return set()
        found = self.session.execute(
            sa.select(CachedBlob.digest).where(
                CachedBlob.group_id == group_id,
                CachedBlob.digest.in_(sorted(digests)),
                CachedBlob.status == Status.DEFAULT,
            )
        ).scalars()
        return set(found)

    def evict(
        self,
        group_id: int,
        needed: int,
        *,
        keep_manifests: t.Collection[str] = (),
        keep_blobs: t.Collection[str] = (),
    ) -> int:
        """Mark the group's least recently pulled manifests and blobs pending
        destruction until at least ``needed`` bytes are freed, and commit.

        Rows whose digest is in ``keep_manifests``/``keep_blobs`` (what the pull in
        progress needs) are never chosen. Returns the bytes freed: less than
        ``needed`` when nothing else is left to evict.
        """
        freed = 0
        while freed < needed:
            candidates = heapq.merge(
                self._oldest(0, group_id, keep_manifests),
                self._oldest(1, group_id, keep_blobs),
            )
            chosen: tuple[list[int], list[int]] = ([], [])
            for _last_read, kind, row_id, size in candidates:
                if freed >= needed:
                    break
                chosen[kind].append(row_id)
                freed += size
            if not any(chosen):
                break
            for table, ids in zip(_TABLES, chosen, strict=True):
                if ids:
                    self.session.execute(
                        sa.update(table)
                        .where(table.id.in_(ids), table.status == Status.DEFAULT)
                        .values(status=Status.PENDING_DESTRUCTION)
                        .execution_options(synchronize_session=False)
                    )
            self.session.commit()
        return freed

    def _oldest(
        self, kind: int, group_id: int, keep: t.Collection[str]
    ) -> list[tuple[dt.datetime, int, int, int]]:
        """The group's least recently pulled rows of ``_TABLES[kind]``, oldest first."""
        table = _TABLES[kind]
        query = (
            sa.select(table.last_read_at, table.id, table.size)
            .where(table.group_id == group_id, table.status == Status.DEFAULT)
            .order_by(table.last_read_at, table.id)
            .limit(_EVICT_BATCH)
        )
        if keep:
            query = query.where(table.digest.not_in(sorted(keep)))
        return [
            (last_read, kind, row_id, int(size))
            for last_read, row_id, size in self.session.execute(query)
        ]
