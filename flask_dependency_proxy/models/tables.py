"""The extension's tables, on their own metadata, in the host's database.

Group ids are plain integer columns (no foreign key), so the host keeps its schema
and its migrations to itself.
"""

from __future__ import annotations

import datetime as dt
import enum

import sqlalchemy as sa
from sqlalchemy import orm

#: Every table of the extension starts with this, so it never collides with the host's.
TABLE_PREFIX = "dependency_proxy_"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utcnow() -> dt.datetime:
    """Naive UTC, stored the same way on SQLite and PostgreSQL."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(orm.DeclarativeBase):
    metadata = metadata


class Status(enum.IntEnum):
    """Life cycle of a cached row. Rows pending destruction are never served."""

    DEFAULT = 0
    PENDING_DESTRUCTION = 1


class GroupSettings(Base):
    __tablename__ = f"{TABLE_PREFIX}group_settings"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    enabled: orm.Mapped[bool] = orm.mapped_column(sa.Boolean, default=False)
    cleanup_enabled: orm.Mapped[bool] = orm.mapped_column(sa.Boolean, default=False)
    cleanup_days: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=90)
    purged_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    #: Bytes of manifests and blobs the group may keep cached; ``NULL``: no limit.
    size_limit_bytes: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)


class CachedManifest(Base):
    """A manifest a group pulled. ``tag`` is ``NULL`` for manifests pulled by digest only
    (such as the platform manifests of an index)."""

    __tablename__ = f"{TABLE_PREFIX}manifests"
    __table_args__ = (
        sa.UniqueConstraint("group_id", "image", "tag", name=f"uq_{TABLE_PREFIX}manifests_tag"),
        sa.Index(f"ix_{TABLE_PREFIX}manifests_digest", "group_id", "image", "digest"),
        # A group's usage (its size limit) is summed from this index alone.
        sa.Index(f"ix_{TABLE_PREFIX}manifests_usage", "group_id", "status", "size"),
    )

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    group_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, index=True)
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    tag: orm.Mapped[str | None] = orm.mapped_column(sa.String(128))
    digest: orm.Mapped[str] = orm.mapped_column(sa.String(135))
    media_type: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    size: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    content: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    status: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, default=Status.DEFAULT)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    #: When upstream last confirmed this tag's digest (drives the tag check interval).
    checked_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    last_read_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    #: Name of the instance upstream that served the manifest; ``NULL``: the default one.
    upstream: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))


class CachedBlob(Base):
    """A group's claim on a content-addressed blob file; files are shared between groups."""

    __tablename__ = f"{TABLE_PREFIX}blobs"
    __table_args__ = (
        sa.UniqueConstraint("group_id", "digest", name=f"uq_{TABLE_PREFIX}blobs_digest"),
        sa.Index(f"ix_{TABLE_PREFIX}blobs_file", "digest"),
        sa.Index(f"ix_{TABLE_PREFIX}blobs_usage", "group_id", "status", "size"),
    )

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    group_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    digest: orm.Mapped[str] = orm.mapped_column(sa.String(135))
    size: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    status: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, default=Status.DEFAULT)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    last_read_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)


class LoginFailure(Base):
    """Recent failed logins per throttling key: a hash of a username with a client address,
    or of a client address alone."""

    __tablename__ = f"{TABLE_PREFIX}login_failures"

    key: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    failures: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0)
    window_started_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)


# -- pages, REST API and cache life cycle ---------------------------------------------
# Listing a group's rows newest first (and counting them) reads one index range; cleanup
# finds rows pending destruction without scanning the tables.
sa.Index(f"ix_{TABLE_PREFIX}manifests_group_list", CachedManifest.group_id, CachedManifest.id)
sa.Index(f"ix_{TABLE_PREFIX}manifests_status", CachedManifest.status, CachedManifest.id)
sa.Index(f"ix_{TABLE_PREFIX}blobs_group_list", CachedBlob.group_id, CachedBlob.id)
sa.Index(f"ix_{TABLE_PREFIX}blobs_status", CachedBlob.status, CachedBlob.id)


class Lease(Base):
    """A named, expiring lock held through the database, so that one process at a time
    runs a job such as cleanup, whichever host it is on."""

    __tablename__ = f"{TABLE_PREFIX}leases"

    name: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    holder: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    expires_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime)
    #: When the job last finished (the scheduler waits an interval after it).
    finished_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)


class FetchLease(Base):
    """The host fetching a blob from upstream, while it fetches: other hosts that need
    the blob stream it from ``peer_url`` instead of asking upstream. ``heartbeat_at`` is
    renewed while the fetch runs; a lease not renewed for ``FETCH_LEASE_SECONDS`` is
    taken over by the next host that needs the blob."""

    __tablename__ = f"{TABLE_PREFIX}fetch_leases"

    digest: orm.Mapped[str] = orm.mapped_column(sa.String(140), primary_key=True)
    holder: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    peer_url: orm.Mapped[str] = orm.mapped_column(sa.String(500))
    heartbeat_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime)


class UpstreamToken(Base):
    """An upstream bearer token shared by the hosts of a fleet (``PEER_URL`` set), so
    that a repository costs one token request per token lifetime across them all."""

    __tablename__ = f"{TABLE_PREFIX}upstream_tokens"

    #: SHA-256 of the realm, service, repository and upstream username.
    key: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    token: orm.Mapped[str] = orm.mapped_column(sa.Text)
    #: Seconds since the epoch.
    expires_at: orm.Mapped[float] = orm.mapped_column(sa.Float)


class GroupUpstreamRow(Base):
    """A group's place for an instance upstream in its own order, and its own credential
    for it (Fernet tokens, see ``credentials.py``).

    A group with no positioned rows uses every instance upstream in the order defined;
    a row without a position only keeps a credential (the upstream is used in the
    default order, or was narrowed out of the group's own)."""

    __tablename__ = f"{TABLE_PREFIX}group_upstreams"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    #: Name of the entry in ``DEPENDENCY_PROXY_UPSTREAMS``.
    upstream: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    #: 0 is tried first; ``NULL``: not in the group's own order.
    position: orm.Mapped[int | None] = orm.mapped_column(sa.Integer)
    username_encrypted: orm.Mapped[bytes | None] = orm.mapped_column(sa.LargeBinary)
    password_encrypted: orm.Mapped[bytes | None] = orm.mapped_column(sa.LargeBinary)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)


class UsageDay(Base):
    """What a group's pulls took from the cache and from upstream on one UTC day
    (written in batches by :mod:`..usage`)."""

    __tablename__ = f"{TABLE_PREFIX}usage_days"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    day: orm.Mapped[dt.date] = orm.mapped_column(sa.Date, primary_key=True)
    #: Manifest GETs answered from the cache (hit, revalidated or stale).
    pulls_cached: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    #: Manifest GETs fetched from upstream.
    pulls_upstream: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    #: Blob bytes served from the cache.
    bytes_cached: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    #: Blob bytes fetched from upstream.
    bytes_upstream: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)


class SignaturePolicyRow(Base):
    """A group's signature policy: its mode and the signers it trusts (a JSON document,
    see :mod:`..cache.signing`). A group without a row checks nothing."""

    __tablename__ = f"{TABLE_PREFIX}signature_policies"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    #: ``off``, ``warn`` or ``enforce``.
    mode: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    document: orm.Mapped[str] = orm.mapped_column(sa.Text)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)


class SignatureVerdictRow(Base):
    """Who signed a digest of a group's image, under one policy (its fingerprint): what a
    pull found, so the next pull on any worker reads it instead of verifying again."""

    __tablename__ = f"{TABLE_PREFIX}signature_verdicts"
    __table_args__ = (
        sa.UniqueConstraint(
            "group_id",
            "image",
            "digest",
            "fingerprint",
            name=f"uq_{TABLE_PREFIX}signature_verdicts",
        ),
    )

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    group_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    digest: orm.Mapped[str] = orm.mapped_column(sa.String(135))
    fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    #: ``Verdict.to_json()``.
    verdict: orm.Mapped[str] = orm.mapped_column(sa.Text)
    checked_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
