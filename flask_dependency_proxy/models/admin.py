"""Queries behind the group pages, the REST API and the cache life cycle.

Listing, counting and sizing a group's cache; group settings; marking rows for
deletion (purge, cleanup policy) and deleting them in batches; which blob digests rows
still reference; leases that keep two cleanups from running at once. Callers get
frozen records, never ORM objects.

Listings are newest first and paginated with ``LIMIT``/``OFFSET`` over the
``(group_id, id)`` index: the page's ids come from the index alone and only those rows
are read in full, and the total is one count over the same index. Manifests can also
be ordered by last pull, or by image size (computed from the documents, so that order
reads every matching row of the group), and filtered by a substring of the image name
(a bound ``LIKE`` parameter with its wildcards escaped).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import typing as t

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .tables import CachedBlob, CachedManifest, GroupSettings, Lease, LoginFailure, Status

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: Page size when none is asked for, and the largest one allowed.
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
#: Bounds of the cleanup policy's "not pulled for N days".
DEFAULT_CLEANUP_DAYS = 90
MIN_CLEANUP_DAYS = 1
MAX_CLEANUP_DAYS = 3650

#: How manifest listings can be ordered, and in which direction; the first is the default.
ORDER_BY = ("created_at", "last_pulled", "size")
SORTS = ("desc", "asc")
#: The longest image-name filter (a whole name is at most 255 characters).
MAX_SEARCH_LENGTH = 255
#: What a filter may hold: the characters of image names (any case).
_SEARCH = re.compile(r"[A-Za-z0-9._/-]*")

_Table = type[CachedManifest] | type[CachedBlob]
T = t.TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A group's proxy settings, with the defaults applied when it has no row yet."""

    group_id: int
    enabled: bool
    cleanup_enabled: bool
    cleanup_days: int
    purged_at: dt.datetime | None


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


@dataclasses.dataclass(frozen=True)
class ManifestItem:
    """A cached manifest as listed.

    :param size: the manifest document's own bytes.
    :param image_size: config and layers of an image manifest; for an index, the sum
        over the platform manifests the group has cached (``None`` if none or unknown).
    :param platforms: the number of entries of an index, ``None`` for an image manifest.
    """

    id: int
    image: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    image_size: int | None
    platforms: int | None
    status: Status
    created_at: dt.datetime
    updated_at: dt.datetime
    last_read_at: dt.datetime

    @property
    def pending_destruction(self) -> bool:
        return self.status is Status.PENDING_DESTRUCTION


@dataclasses.dataclass(frozen=True)
class BlobItem:
    id: int
    digest: str
    size: int
    status: Status
    created_at: dt.datetime
    last_read_at: dt.datetime

    @property
    def pending_destruction(self) -> bool:
        return self.status is Status.PENDING_DESTRUCTION


@dataclasses.dataclass(frozen=True)
class Page(t.Generic[T]):
    """One page of a listing; ``page`` counts from 1."""

    items: tuple[T, ...]
    page: int
    per_page: int
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.per_page)

    @property
    def next_page(self) -> int | None:
        return self.page + 1 if self.page < self.total_pages else None

    @property
    def prev_page(self) -> int | None:
        return self.page - 1 if self.page > 1 else None


def valid_search(search: str) -> bool:
    """Whether ``search`` can filter image names (characters of names, bounded length)."""
    return len(search) <= MAX_SEARCH_LENGTH and _SEARCH.fullmatch(search) is not None


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


def _document(content: bytes) -> dict[str, t.Any] | None:
    try:
        document = json.loads(content)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _descriptor_size(descriptor: t.Any) -> int:
    if isinstance(descriptor, dict):
        size = descriptor.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            return size
    return 0


def image_size(content: bytes) -> int | None:
    """Config plus layers of an image manifest; ``None`` for an index or a bad document."""
    document = _document(content)
    if document is None or not isinstance(document.get("layers"), list):
        return None
    return _descriptor_size(document.get("config")) + sum(
        _descriptor_size(layer) for layer in document["layers"]
    )


def blob_digests(content: bytes) -> set[str]:
    """Config and layer digests an image manifest references (none for anything else)."""
    document = _document(content)
    if document is None or not isinstance(document.get("layers"), list):
        return set()
    found = set()
    for descriptor in [document.get("config"), *document["layers"]]:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
            found.add(descriptor["digest"])
    return found


def index_children(content: bytes) -> list[str] | None:
    """Digests an index or manifest list points at; ``None`` for anything else."""
    document = _document(content)
    if document is None or not isinstance(document.get("manifests"), list):
        return None
    return [
        entry["digest"]
        for entry in document["manifests"]
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
    ]


class CacheAdmin:
    """The queries, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    """

    def __init__(self, session: t.Callable[[], Session]) -> None:
        self._session = session

    @property
    def session(self) -> Session:
        return self._session()

    # -- login failures ----------------------------------------------------------------------

    def forget_login_failures(self, window_started_before: dt.datetime) -> int:
        """Delete the failed-login counts whose window has ended; how many."""
        result = self.session.execute(
            sa.delete(LoginFailure).where(LoginFailure.window_started_at < window_started_before)
        )
        self.session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # -- settings --------------------------------------------------------------------------

    def settings(self, group_id: int, default_enabled: bool) -> Settings:
        row = self.session.get(GroupSettings, group_id)
        if row is None:
            return Settings(group_id, default_enabled, False, DEFAULT_CLEANUP_DAYS, None)
        return _settings(row)

    def update_settings(
        self,
        group_id: int,
        default_enabled: bool,
        now: dt.datetime,
        *,
        enabled: bool | None = None,
        cleanup_enabled: bool | None = None,
        cleanup_days: int | None = None,
    ) -> Settings:
        """Change the given fields (``None`` leaves one as it is) and commit."""
        for _attempt in range(2):
            row = self._settings_row(group_id, default_enabled)
            if enabled is not None:
                row.enabled = enabled
            if cleanup_enabled is not None:
                row.cleanup_enabled = cleanup_enabled
            if cleanup_days is not None:
                row.cleanup_days = cleanup_days
            row.updated_at = now
            try:
                self.session.commit()
            except IntegrityError:
                # Another request created the group's row at the same moment.
                self.session.rollback()
                continue
            return _settings(row)
        raise RuntimeError(f"could not save the settings of group {group_id}")

    def _settings_row(self, group_id: int, default_enabled: bool) -> GroupSettings:
        row = self.session.get(GroupSettings, group_id)
        if row is None:
            # A new row keeps the proxy as it was: on if groups have it on by default.
            row = GroupSettings(
                group_id=group_id,
                enabled=default_enabled,
                cleanup_enabled=False,
                cleanup_days=DEFAULT_CLEANUP_DAYS,
            )
            self.session.add(row)
        return row

    # -- purge -----------------------------------------------------------------------------

    def claim_purge(
        self, group_id: int, default_enabled: bool, now: dt.datetime, cooldown: dt.timedelta
    ) -> tuple[bool, dt.datetime | None, int, int]:
        """Record a purge and mark the group's rows pending destruction, in one transaction,
        unless the group was purged less than ``cooldown`` ago.

        A conditional ``UPDATE`` decides, so of two purges at the same moment one wins.

        :return: ``(done, previous purge time, manifests marked, blobs marked)``.
        """
        for _attempt in range(2):
            if self.session.get(GroupSettings, group_id) is None:
                self._settings_row(group_id, default_enabled)
                try:
                    self.session.commit()
                except IntegrityError:
                    self.session.rollback()
                    continue
            break
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
        if _rowcount(claimed) != 1:
            self.session.rollback()
            previous = self.session.execute(
                sa.select(GroupSettings.purged_at).where(GroupSettings.group_id == group_id)
            ).scalar_one_or_none()
            self.session.rollback()
            return False, previous, 0, 0
        manifests = self._mark(CachedManifest, CachedManifest.group_id == group_id)
        blobs = self._mark(CachedBlob, CachedBlob.group_id == group_id)
        self.session.commit()
        return True, None, manifests, blobs

    def _mark(self, table: _Table, *conditions: sa.ColumnElement[bool]) -> int:
        result = self.session.execute(
            sa.update(table)
            .where(table.status == Status.DEFAULT, *conditions)
            .values(status=Status.PENDING_DESTRUCTION)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result)

    def image_tags(self, group_id: int, image: str) -> list[str | None]:
        """Tags of the image's served manifests (``None`` for one pulled by digest only);
        empty when the group has no such image."""
        tags = (
            self.session.execute(
                sa.select(CachedManifest.tag)
                .where(
                    CachedManifest.group_id == group_id,
                    CachedManifest.image == image,
                    CachedManifest.status == Status.DEFAULT,
                )
                .order_by(CachedManifest.id)
            )
            .scalars()
            .all()
        )
        self.session.rollback()
        return list(tags)

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
        policies = self.session.execute(
            sa.select(GroupSettings.group_id, GroupSettings.cleanup_days)
            .where(GroupSettings.cleanup_enabled.is_(True))
            .order_by(GroupSettings.group_id)
        ).all()
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
            deleted += _rowcount(result)
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
        if _rowcount(result) == 1:
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
        return _rowcount(result) == 1

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

    # -- counts and sizes ------------------------------------------------------------------

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

    # -- listings --------------------------------------------------------------------------

    def list_manifests(
        self,
        group_id: int,
        page: int,
        per_page: int,
        *,
        order_by: str = ORDER_BY[0],
        sort: str = SORTS[0],
        search: str | None = None,
    ) -> Page[ManifestItem]:
        """One page of the group's manifests.

        :param order_by: one of :data:`ORDER_BY`; ``size`` is the image size.
        :param sort: ``desc`` or ``asc``; ties go by id in the same direction.
        :param search: only images whose name contains it (case-insensitive).
        """
        if order_by not in ORDER_BY or sort not in SORTS:
            raise ValueError(f"order_by must be one of {ORDER_BY} and sort one of {SORTS}")
        conditions = [CachedManifest.group_id == group_id]
        if search:
            conditions.append(CachedManifest.image.contains(search.lower(), autoescape=True))
        if order_by == "size":
            return self._manifests_by_size(group_id, conditions, page, per_page, sort)
        column = CachedManifest.last_read_at if order_by == "last_pulled" else CachedManifest.id
        order = (column.asc(), CachedManifest.id.asc())
        if sort == "desc":
            order = (column.desc(), CachedManifest.id.desc())
        total, ids = self._page_ids(
            CachedManifest, group_id, page, per_page, conditions=conditions, order=order
        )
        rows: t.Sequence[CachedManifest] = ()
        if ids:
            rows = (
                self.session.execute(
                    sa.select(CachedManifest).where(CachedManifest.id.in_(ids)).order_by(*order)
                )
                .scalars()
                .all()
            )
        items = self._items(rows, self._child_sizes(group_id, _children(rows)))
        self.session.rollback()
        return Page(tuple(items), page, per_page, total)

    def _manifests_by_size(
        self,
        group_id: int,
        conditions: list[sa.ColumnElement[bool]],
        page: int,
        per_page: int,
        sort: str,
    ) -> Page[ManifestItem]:
        """Sizes come from the documents: read the matching ones, sort, then load the
        page's rows. An index's platforms have its image name, so the same documents
        give their sizes."""
        found = self.session.execute(
            sa.select(
                CachedManifest.id,
                CachedManifest.image,
                CachedManifest.digest,
                CachedManifest.content,
            ).where(*conditions)
        ).all()
        own: dict[int, int | None] = {}
        child_sizes: dict[tuple[str, str], int] = {}
        indexes: dict[int, tuple[str, list[str]]] = {}
        for row_id, image, digest, content in found:
            size = image_size(content)
            own[row_id] = size
            if size is not None:
                child_sizes[(image, digest)] = size
            else:
                children = index_children(content)
                if children is not None:
                    indexes[row_id] = (image, children)
        for row_id, (image, children) in indexes.items():
            sizes = [child_sizes[(image, d)] for d in children if (image, d) in child_sizes]
            own[row_id] = sum(sizes) if sizes else None
        ranked = sorted(
            own, key=lambda i: (-1 if own[i] is None else own[i], i), reverse=sort == "desc"
        )
        start = (page - 1) * per_page
        ids = ranked[start : start + per_page]
        rows: t.Sequence[CachedManifest] = ()
        if ids:
            rows = (
                self.session.execute(sa.select(CachedManifest).where(CachedManifest.id.in_(ids)))
                .scalars()
                .all()
            )
        by_id = {row.id: row for row in rows}
        items = self._items([by_id[i] for i in ids if i in by_id], child_sizes)
        self.session.rollback()
        return Page(tuple(items), page, per_page, len(own))

    def _items(
        self, rows: t.Sequence[CachedManifest], child_sizes: dict[tuple[str, str], int]
    ) -> list[ManifestItem]:
        children = _children(rows)
        items = []
        for row in rows:
            if row.id in children:
                sizes = [
                    child_sizes[(row.image, d)]
                    for d in children[row.id]
                    if (row.image, d) in child_sizes
                ]
                size_of_image = sum(sizes) if sizes else None
                platforms: int | None = len(children[row.id])
            else:
                size_of_image = image_size(row.content)
                platforms = None
            items.append(
                ManifestItem(
                    id=row.id,
                    image=row.image,
                    tag=row.tag,
                    digest=row.digest,
                    media_type=row.media_type,
                    size=row.size,
                    image_size=size_of_image,
                    platforms=platforms,
                    status=Status(row.status),
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                    last_read_at=row.last_read_at,
                )
            )
        return items

    def _child_sizes(
        self, group_id: int, children: dict[int, list[str]]
    ) -> dict[tuple[str, str], int]:
        digests = {d for found in children.values() for d in found}
        if not digests:
            return {}
        sizes = {}
        for image, digest, content in self.session.execute(
            sa.select(CachedManifest.image, CachedManifest.digest, CachedManifest.content).where(
                CachedManifest.group_id == group_id, CachedManifest.digest.in_(sorted(digests))
            )
        ):
            size = image_size(content)
            if size is not None:
                sizes[(image, digest)] = size
        return sizes

    def list_blobs(self, group_id: int, page: int, per_page: int) -> Page[BlobItem]:
        total, ids = self._page_ids(CachedBlob, group_id, page, per_page)
        rows: t.Sequence[t.Any] = ()
        if ids:
            rows = self.session.execute(
                sa.select(
                    CachedBlob.id,
                    CachedBlob.digest,
                    CachedBlob.size,
                    CachedBlob.status,
                    CachedBlob.created_at,
                    CachedBlob.last_read_at,
                )
                .where(CachedBlob.id.in_(ids))
                .order_by(CachedBlob.id.desc())
            ).all()
        self.session.rollback()
        items = tuple(
            BlobItem(
                id=row.id,
                digest=row.digest,
                size=row.size,
                status=Status(row.status),
                created_at=row.created_at,
                last_read_at=row.last_read_at,
            )
            for row in rows
        )
        return Page(items, page, per_page, total)

    def _page_ids(
        self,
        table: _Table,
        group_id: int,
        page: int,
        per_page: int,
        *,
        conditions: t.Sequence[sa.ColumnElement[bool]] = (),
        order: t.Sequence[sa.UnaryExpression[t.Any]] = (),
    ) -> tuple[int, list[int]]:
        """The matching row count and the ids on one page (by default the group's rows,
        newest first, from the ``(group_id, id)`` index alone)."""
        where = list(conditions) or [table.group_id == group_id]
        total = self.session.execute(
            sa.select(sa.func.count()).select_from(table).where(*where)
        ).scalar_one()
        if total <= (page - 1) * per_page:
            return int(total), []
        ids = (
            self.session.execute(
                sa.select(table.id)
                .where(*where)
                .order_by(*(order or (table.id.desc(),)))
                .limit(per_page)
                .offset((page - 1) * per_page)
            )
            .scalars()
            .all()
        )
        return int(total), list(ids)


def _children(rows: t.Sequence[CachedManifest]) -> dict[int, list[str]]:
    """The platform digests of the indexes among ``rows``, by row id."""
    children = {}
    for row in rows:
        found = index_children(row.content)
        if found is not None:
            children[row.id] = found
    return children


def _settings(row: GroupSettings) -> Settings:
    return Settings(
        group_id=row.group_id,
        enabled=bool(row.enabled),
        cleanup_enabled=bool(row.cleanup_enabled),
        cleanup_days=int(row.cleanup_days),
        purged_at=row.purged_at,
    )


def _rowcount(result: t.Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
