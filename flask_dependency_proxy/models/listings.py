"""What a group's cache holds, one page at a time, for its page and the REST API.

Listings are newest first and paginated with ``LIMIT``/``OFFSET`` over the
``(group_id, id)`` index: the page's ids come from the index alone and only those rows
are read in full, and the total is one count over the same index. Manifests can also
be ordered by last pull, or by image size (computed from the documents, so that order
reads every matching row of the group), and filtered by a substring of the image name
(a bound ``LIKE`` parameter with its wildcards escaped). Callers get frozen records,
never ORM objects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import typing as t

import sqlalchemy as sa

from .documents import image_size, index_children
from .records import SessionRecords
from .tables import CachedBlob, CachedManifest, Status

if t.TYPE_CHECKING:
    pass

#: Page size when none is asked for, and the largest one allowed.
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
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


class CacheListings(SessionRecords):
    """The listings, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    """

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
