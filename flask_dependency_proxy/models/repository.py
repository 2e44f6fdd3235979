"""Reads and writes of cache metadata through the host's session (see :mod:`.binding`).

The cache service sees only the frozen records returned here, never ORM objects, so
nothing it holds can lazily reach back into the database while bytes stream.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import typing as t

import sqlalchemy as sa
from flask import has_app_context
from sqlalchemy.orm.attributes import flag_modified

from .database import DatabaseGuard
from .tables import CachedBlob, CachedManifest, GroupSettings, Status, utcnow
from .transaction import LOST_RACE, LostRace, commit_retrying

if t.TYPE_CHECKING:
    from .binding import DatabaseBinding


#: Buffered last-read times are written when this many seconds passed since the last write.
_READ_FLUSH_SECONDS = 5.0
#: Buffered last-read times kept while the database cannot take them.
_MAX_PENDING_READS = 100_000


@dataclasses.dataclass(frozen=True)
class ManifestRecord:
    id: int
    digest: str
    media_type: str
    content: bytes
    checked_at: dt.datetime
    last_read_at: dt.datetime
    #: The upstream that served it; ``None``: the default upstream.
    upstream: str | None = None


@dataclasses.dataclass(frozen=True)
class BlobRecord:
    id: int
    digest: str
    size: int
    last_read_at: dt.datetime


def _manifest_record(row: CachedManifest) -> ManifestRecord:
    return ManifestRecord(
        id=row.id,
        digest=row.digest,
        media_type=row.media_type,
        content=row.content,
        checked_at=row.checked_at,
        last_read_at=row.last_read_at,
        upstream=row.upstream,
    )


#: The columns of a :class:`ManifestRecord`, in its field order. The lookups below select
#: them rather than the ORM object: a record is all a caller gets, and building and
#: tracking an object it never sees cost a warm manifest GET more than its query.
_MANIFEST_COLUMNS = (
    CachedManifest.id,
    CachedManifest.digest,
    CachedManifest.media_type,
    CachedManifest.content,
    CachedManifest.checked_at,
    CachedManifest.last_read_at,
    CachedManifest.upstream,
)
#: The lookups, built once: a statement built per call costs its expression objects and
#: its compiled-cache key on every request, where this one computes its key once.
_FIND_TAG = sa.select(*_MANIFEST_COLUMNS).where(
    CachedManifest.group_id == sa.bindparam("group_id"),
    CachedManifest.image == sa.bindparam("image"),
    CachedManifest.tag == sa.bindparam("tag"),
    CachedManifest.status == Status.DEFAULT,
)
_FIND_DIGEST = (
    sa.select(*_MANIFEST_COLUMNS)
    .where(
        CachedManifest.group_id == sa.bindparam("group_id"),
        CachedManifest.image == sa.bindparam("image"),
        CachedManifest.digest == sa.bindparam("digest"),
        CachedManifest.status == Status.DEFAULT,
    )
    .limit(1)
)


def _write_status_anyway(row: CachedManifest | CachedBlob) -> None:
    """Make the next flush write the row's status even when it was read as served.

    A purge may mark the row between the pull's read and its write; the ORM writes only
    what changed since the read, which would leave the row marked and cleanup would
    delete what a pull completing after the purge just cached. Written, it brings the
    row back (cleanup's ``DELETE`` repeats the status condition).
    """
    flag_modified(row, "status")


def _forget(session: t.Any, rows: list[t.Any]) -> None:
    """Take the rows an earlier attempt read out of the session (see ``save_manifest``)."""
    for row in rows:
        if row in session:
            session.expunge(row)
    rows.clear()


class CacheMetadata:
    """Cache metadata of one application.

    :param binding: the host's session and engine; its context outside requests is
        entered for calls made outside a request (the thread that commits a fetched blob).
    :param read_granularity_seconds: a row's last-read time is rewritten at most this often.
    :param timeout_seconds: the deadline of one database phase (see :mod:`..database`).

    Callers run these methods inside :attr:`database` phases; :meth:`record_blob`, which
    may run outside a request, opens its own.
    """

    def __init__(
        self,
        binding: DatabaseBinding,
        *,
        read_granularity_seconds: float,
        timeout_seconds: float = 0,
    ) -> None:
        self.binding = binding
        #: Phases over the host's session: bounded, released, failures translated.
        self.database = DatabaseGuard(
            release=self.end_transaction,
            invalidate=self.invalidate,
            timeout_seconds=timeout_seconds,
        )
        self._read_granularity = dt.timedelta(seconds=read_granularity_seconds)
        self._pending_reads: dict[tuple[type, int], dt.datetime] = {}
        self._reads_lock = threading.Lock()
        self._last_flush = time.monotonic()

    @property
    def session(self) -> t.Any:
        return self.binding.session

    @property
    def engine(self) -> sa.Engine:
        """The host's engine, on which the extension's migrations run."""
        return self.binding.engine

    def release(self) -> None:
        """End the session: its connection goes back to the pool, no transaction stays open."""
        self.binding.release()

    def end_transaction(self) -> None:
        """End the session's transaction (what a database phase ends with): its connection
        goes back to the pool. Unlike :meth:`release`, objects the session loaded stay
        attached (expired), for a caller that shares the session."""
        self.binding.end_transaction()

    def invalidate(self) -> None:
        """Drop the session's connections without a word to the server (which may be
        hung); the pool opens new ones when they are needed again."""
        self.binding.invalidate()

    # -- group settings ---------------------------------------------------------------

    def group_enabled(self, group_id: int, default: bool) -> bool:
        enabled = self.session.execute(
            sa.select(GroupSettings.enabled).where(GroupSettings.group_id == group_id)
        ).scalar_one_or_none()
        return default if enabled is None else bool(enabled)

    # -- manifests --------------------------------------------------------------------

    def find_tag(self, group_id: int, image: str, tag: str) -> ManifestRecord | None:
        row = self.session.execute(
            _FIND_TAG, {"group_id": group_id, "image": image, "tag": tag}
        ).one_or_none()
        return None if row is None else ManifestRecord(*row)

    def find_digest(self, group_id: int, image: str, digest: str) -> ManifestRecord | None:
        row = self.session.execute(
            _FIND_DIGEST, {"group_id": group_id, "image": image, "digest": digest}
        ).one_or_none()
        return None if row is None else ManifestRecord(*row)

    def save_manifest(
        self,
        group_id: int,
        image: str,
        tag: str | None,
        *,
        digest: str,
        media_type: str,
        content: bytes,
        upstream: str | None = None,
    ) -> ManifestRecord:
        """Store a manifest pulled by tag (replacing the tag's previous digest) or by digest.

        :param upstream: the name of the upstream that served it.
        """
        now = utcnow()
        values = {
            "upstream": upstream,
            "digest": digest,
            "media_type": media_type,
            "content": content,
            "size": len(content),
            "status": Status.DEFAULT,
            "updated_at": now,
            "checked_at": now,
            "last_read_at": now,
        }
        if tag is None:
            query = (
                sa.select(CachedManifest)
                .where(
                    CachedManifest.group_id == group_id,
                    CachedManifest.image == image,
                    CachedManifest.digest == digest,
                )
                .limit(1)
            )
        else:
            query = sa.select(CachedManifest).where(
                CachedManifest.group_id == group_id,
                CachedManifest.image == image,
                CachedManifest.tag == tag,
            )

        read: list[CachedManifest] = []

        def write() -> ManifestRecord:
            # Read afresh on a retry: another worker inserted the same tag at the same
            # moment (update theirs), or cleanup deleted the row just read (insert it again).
            # The row a lost attempt read leaves the session first: a new row may get its
            # id again (SQLite reuses it), which SQLAlchemy 2.0 warns about.
            _forget(self.session, read)
            row = self.session.execute(query).scalar_one_or_none()
            if row is not None:
                read.append(row)
            if row is None:
                row = CachedManifest(group_id=group_id, image=image, tag=tag, created_at=now)
                self.session.add(row)
            elif row.digest != digest or row.status != Status.DEFAULT:
                row.created_at = now
            for key, value in values.items():
                setattr(row, key, value)
            _write_status_anyway(row)
            self.session.flush()
            # Taken before the commit: a purge and cleanup may delete the row right
            # after it, and the pull is answered all the same.
            return _manifest_record(row)

        return commit_retrying(
            self.session,
            write,
            what=f"manifest {image}:{tag or digest}",
            attempts=3,
            lost=LOST_RACE,
        )

    def image_upstream(self, group_id: int, image: str) -> tuple[bool, str | None]:
        """Whether the group holds a manifest of the image, and the upstream that served
        the newest one (``None``: the default upstream)."""
        row = self.session.execute(
            sa.select(CachedManifest.upstream)
            .where(
                CachedManifest.group_id == group_id,
                CachedManifest.image == image,
                CachedManifest.status == Status.DEFAULT,
            )
            .order_by(CachedManifest.updated_at.desc(), CachedManifest.id.desc())
            .limit(1)
        ).one_or_none()
        return (False, None) if row is None else (True, row.upstream)

    def cached_tags(self, group_id: int, image: str) -> list[str]:
        """The tags of the image the group holds, in lexical order."""
        return list(
            self.session.execute(
                sa.select(CachedManifest.tag)
                .where(
                    CachedManifest.group_id == group_id,
                    CachedManifest.image == image,
                    CachedManifest.tag.is_not(None),
                    CachedManifest.status == Status.DEFAULT,
                )
                .order_by(CachedManifest.tag)
            ).scalars()
        )

    def mark_checked(self, record: ManifestRecord) -> None:
        """Remember that upstream confirmed this tag now (used by the tag check interval)."""
        self.session.execute(
            sa.update(CachedManifest)
            .where(CachedManifest.id == record.id)
            .values(checked_at=utcnow())
        )
        self.session.commit()

    # -- blobs --------------------------------------------------------------------------

    def find_blob(self, group_id: int, digest: str) -> BlobRecord | None:
        row = self.session.execute(
            sa.select(CachedBlob.id, CachedBlob.size, CachedBlob.last_read_at).where(
                CachedBlob.group_id == group_id,
                CachedBlob.digest == digest,
                CachedBlob.status == Status.DEFAULT,
            )
        ).one_or_none()
        if row is None:
            return None
        return BlobRecord(id=row.id, digest=digest, size=row.size, last_read_at=row.last_read_at)

    def record_blob(self, group_id: int, digest: str, size: int) -> None:
        """Claim a committed blob file for a group; safe to call from any thread.

        :raises DatabaseUnavailable: the row could not be written.
        """
        if has_app_context():
            with self.database.phase("recording a blob"):
                self._upsert_blob(group_id, digest, size)
            return
        with self.binding.outside_request(), self.database.phase("recording a blob"):
            self._upsert_blob(group_id, digest, size)

    def _upsert_blob(self, group_id: int, digest: str, size: int) -> None:
        now = utcnow()

        def write() -> None:
            row = self.session.execute(
                sa.select(CachedBlob).where(
                    CachedBlob.group_id == group_id, CachedBlob.digest == digest
                )
            ).scalar_one_or_none()
            if row is None:
                self.session.add(
                    CachedBlob(
                        group_id=group_id,
                        digest=digest,
                        size=size,
                        created_at=now,
                        last_read_at=now,
                    )
                )
            else:
                if row.status != Status.DEFAULT:
                    row.created_at = now
                row.status = Status.DEFAULT
                _write_status_anyway(row)
                row.size = size
                row.last_read_at = now

        try:
            commit_retrying(self.session, write, what=f"blob {digest}", attempts=3, lost=LOST_RACE)
        except LostRace:
            # Three losses in a row: the file stays committed and the pull is answered;
            # without its row, the group's next pull of the digest records it again.
            pass

    # -- last-read times ----------------------------------------------------------------

    def touch_manifest(self, record: ManifestRecord) -> None:
        self._touch(CachedManifest, record.id, record.last_read_at)

    def touch_blob(self, record: BlobRecord) -> None:
        self._touch(CachedBlob, record.id, record.last_read_at)

    def _touch(self, table: type, row_id: int, last_read_at: dt.datetime) -> None:
        now = utcnow()
        if now - last_read_at < self._read_granularity:
            return
        with self._reads_lock:
            self._pending_reads[(table, row_id)] = now

    def flush_due(self) -> bool:
        """Whether :meth:`flush_reads` has something to write now."""
        with self._reads_lock:
            elapsed = time.monotonic() - self._last_flush
            return bool(self._pending_reads) and elapsed >= _READ_FLUSH_SECONDS

    def flush_reads(self, force: bool = False) -> int:
        """Write buffered last-read times, one UPDATE per table; returns the rows written.

        When the write fails the times stay buffered for the next flush.
        """
        with self._reads_lock:
            due = force or time.monotonic() - self._last_flush >= _READ_FLUSH_SECONDS
            if not due or not self._pending_reads:
                return 0
            pending, self._pending_reads = self._pending_reads, {}
            self._last_flush = time.monotonic()
        by_table: dict[type, list[int]] = {}
        for table, row_id in pending:
            by_table.setdefault(table, []).append(row_id)
        now = max(pending.values())
        try:
            for table, ids in by_table.items():
                column = table.id  # type: ignore[attr-defined]
                self.session.execute(
                    sa.update(table).where(column.in_(ids)).values(last_read_at=now)
                )
            self.session.commit()
        except BaseException:
            self._keep_pending(pending)
            raise
        return len(pending)

    def _keep_pending(self, pending: dict[tuple[type, int], dt.datetime]) -> None:
        with self._reads_lock:
            for key, moment in pending.items():
                newer = self._pending_reads.get(key)
                self._pending_reads[key] = moment if newer is None else max(newer, moment)
            if len(self._pending_reads) > _MAX_PENDING_READS:
                # A long outage: keep the newest times, the rest is a day's precision lost.
                newest = sorted(self._pending_reads.items(), key=lambda item: item[1])
                self._pending_reads = dict(newest[-_MAX_PENDING_READS:])
