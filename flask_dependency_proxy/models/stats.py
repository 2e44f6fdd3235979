"""How much a group's cache holds: counts and sizes of its rows, served and scheduled
for deletion, read through the ``group_id`` indexes; and how a size is written for
people (:func:`human_size`)."""

from __future__ import annotations

import dataclasses
import typing as t

import sqlalchemy as sa

from .records import SessionRecords
from .tables import CachedBlob, CachedManifest, Status

if t.TYPE_CHECKING:
    pass


@dataclasses.dataclass(frozen=True)
class Usage:
    """How many rows and how many bytes."""

    count: int = 0
    size: int = 0


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """What a group's cache holds; ``pending_*`` is scheduled for deletion."""

    images: int = 0
    manifests: Usage = Usage()
    blobs: Usage = Usage()
    pending_manifests: Usage = Usage()
    pending_blobs: Usage = Usage()

    @property
    def size(self) -> int:
        """Bytes served from the cache: manifests and blobs not scheduled for deletion."""
        return self.manifests.size + self.blobs.size

    @property
    def pending(self) -> int:
        return self.pending_manifests.count + self.pending_blobs.count


def human_size(size: int | None) -> str:
    """``1536`` → ``"1.5 KiB"``; binary units, as ``du -h`` and registries show them."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "bytes":
                return f"{int(value)} {'byte' if int(value) == 1 else 'bytes'}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class CacheStats(SessionRecords):
    """The counts, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    """

    def stats(self, group_id: int) -> GroupStats:
        """Counts and sizes of one group's cache."""
        return self._stats(group_id).get(group_id, GroupStats())

    def all_stats(self) -> dict[int, GroupStats]:
        """Counts and sizes of every group that has anything cached."""
        return self._stats(None)

    def _stats(self, group_id: int | None) -> dict[int, GroupStats]:
        usage: dict[int, dict[str, Usage]] = {}
        for table, kind in ((CachedManifest, "manifests"), (CachedBlob, "blobs")):
            query = sa.select(
                table.group_id,
                table.status,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(table.size), 0),
            ).group_by(table.group_id, table.status)
            if group_id is not None:
                query = query.where(table.group_id == group_id)
            for gid, status, count, size in self.session.execute(query):
                key = kind if status == Status.DEFAULT else f"pending_{kind}"
                usage.setdefault(gid, {})[key] = Usage(int(count), int(size))
        images_query = (
            sa.select(CachedManifest.group_id, sa.func.count(sa.distinct(CachedManifest.image)))
            .where(CachedManifest.status == Status.DEFAULT)
            .group_by(CachedManifest.group_id)
        )
        if group_id is not None:
            images_query = images_query.where(CachedManifest.group_id == group_id)
        images = {gid: count for gid, count in self.session.execute(images_query)}
        self.session.rollback()
        return {
            gid: GroupStats(images=int(images.get(gid, 0)), **parts)
            for gid, parts in sorted(usage.items())
        }
