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
    #: When upstream answers 404 for a cached tag: ``serve`` the cached copy or
    #: ``refuse`` (``MANIFEST_UNKNOWN``); ``NULL``: the instance's default.
    upstream_not_found: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    #: Seconds a tag's new upstream digest waits before it is served (the tag cooldown);
    #: ``0``: off; ``NULL``: the instance's default.
    cooldown_seconds: orm.Mapped[int | None] = orm.mapped_column(sa.Integer)
    #: A brand-new tag during the cooldown: ``serve`` it at once or ``refuse`` it until its
    #: digest has waited; ``NULL``: the instance's default.
    cooldown_new_tags: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    #: A pull by digest of an image still in cooldown: ``allow`` or ``refuse``;
    #: ``NULL``: the instance's default.
    cooldown_digest_pulls: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    #: Image-name patterns exempt from the cooldown, one a line; ``NULL``: none.
    cooldown_exempt: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    #: Predictive refresh of the group's hot tags on or off; ``NULL``: the instance's default.
    refresh_enabled: orm.Mapped[bool | None] = orm.mapped_column(sa.Boolean)
    #: How many hot tags the refresher keeps warm; ``NULL``: the instance's default.
    refresh_tags: orm.Mapped[int | None] = orm.mapped_column(sa.Integer)
    #: Seconds between two checks of one hot tag; ``NULL``: the instance's default.
    refresh_interval_seconds: orm.Mapped[int | None] = orm.mapped_column(sa.Integer)


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


class GroupPath(Base):
    """The path a group id named when the extension first saw it.

    Group ids are the host's; a host may give a deleted group's id to a new group. A
    group whose id now names another path (compared lowercased) is refused until the
    host says whether it is the same group renamed (``confirm_group``) or a new one
    (``forget_group``), so a new group never inherits an old one's settings and cache.
    """

    __tablename__ = f"{TABLE_PREFIX}group_paths"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    #: As the host's adapter gave it (case kept, for messages).
    path: orm.Mapped[str] = orm.mapped_column(sa.String(1024))
    #: Lowercased: what image names use, and what paths are compared by.
    path_lower: orm.Mapped[str] = orm.mapped_column(sa.String(1024), index=True)
    recorded_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)


# -- supply-chain controls: blocked images, the pull record, group events ------------------


class BlockedImage(Base):
    """A block: a manifest digest, or an image name and tag pattern, that is never served.

    ``group_id`` ``NULL`` blocks it for every group (an instance administrator's block).
    A block is lifted by setting ``removed_at``; the row stays, so unblocking is recorded.
    """

    __tablename__ = f"{TABLE_PREFIX}blocked_images"
    __table_args__ = (sa.Index(f"ix_{TABLE_PREFIX}blocked_images_active", "removed_at", "id"),)

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    #: ``NULL``: every group.
    group_id: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    digest: orm.Mapped[str | None] = orm.mapped_column(sa.String(135))
    image: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    #: A shell-style pattern (``*``, ``?``, ``[...]``) that tags of ``image`` match.
    tag_pattern: orm.Mapped[str | None] = orm.mapped_column(sa.String(128))
    reason: orm.Mapped[str] = orm.mapped_column(sa.String(500))
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    created_by: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    removed_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    removed_by: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))


class PullRecord(Base):
    """One manifest pull: who pulled what, and what the cache answered (written in
    batches by :mod:`..cache.audit`, kept for ``PULL_RECORD_RETENTION_DAYS``)."""

    __tablename__ = f"{TABLE_PREFIX}pulls"
    __table_args__ = (
        sa.Index(f"ix_{TABLE_PREFIX}pulls_group", "group_id", "pulled_at"),
        sa.Index(f"ix_{TABLE_PREFIX}pulls_digest", "digest", "pulled_at"),
        sa.Index(f"ix_{TABLE_PREFIX}pulls_time", "pulled_at"),
    )

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    pulled_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime)
    group_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    #: The tag or digest the client asked for.
    reference: orm.Mapped[str] = orm.mapped_column(sa.String(135))
    #: The digest served (or refused); ``NULL`` when no digest was known.
    digest: orm.Mapped[str | None] = orm.mapped_column(sa.String(135))
    #: hit, revalidated, miss, stale, cooldown-previous, refused or blocked.
    outcome: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    principal_kind: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    subject: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    username: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    #: ``context["project"]`` of the principal, kept apart so pulls can be found by it.
    project: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    #: The host's job context (JSON object of strings), stored as the host gave it.
    context: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    client_address: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    user_agent: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))


class GroupEvent(Base):
    """Something the supply-chain controls did in a group, shown on its page: upstream
    answered 404 for a cached tag, an image blocked or unblocked."""

    __tablename__ = f"{TABLE_PREFIX}group_events"
    __table_args__ = (sa.Index(f"ix_{TABLE_PREFIX}group_events_group", "group_id", "id"),)

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    #: ``NULL``: every group (an instance administrator's block).
    group_id: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime, default=utcnow)
    kind: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    image: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    reference: orm.Mapped[str | None] = orm.mapped_column(sa.String(135))
    message: orm.Mapped[str] = orm.mapped_column(sa.String(1000))


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


class TagCooldown(Base):
    """A tag whose upstream digest changed while the group's cooldown is on: the digest
    it moved to (``pending_digest``) is served once it is old enough, counted from
    ``first_seen_at`` (when this group's cache first saw the tag point at it), or once an
    owner released it early (``released_at``). ``previous_digest`` ``NULL``: a brand-new
    tag. The row goes when the tag serves the pending digest, or upstream moves back."""

    __tablename__ = f"{TABLE_PREFIX}tag_cooldowns"
    __table_args__ = (
        sa.UniqueConstraint("group_id", "image", "tag", name=f"uq_{TABLE_PREFIX}tag_cooldowns_tag"),
        sa.Index(f"ix_{TABLE_PREFIX}tag_cooldowns_digest", "group_id", "pending_digest"),
    )

    id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    group_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    tag: orm.Mapped[str] = orm.mapped_column(sa.String(128))
    previous_digest: orm.Mapped[str | None] = orm.mapped_column(sa.String(135))
    pending_digest: orm.Mapped[str] = orm.mapped_column(sa.String(135))
    first_seen_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime)
    released_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    released_by: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))


class TagPullDay(Base):
    """How often a group pulled one manifest reference (a tag, or a digest: the platform
    manifests an index's pulls chose) of an image on one UTC day; written in batches with
    the usage counters. What ranks the tags the refresher keeps warm."""

    __tablename__ = f"{TABLE_PREFIX}tag_pulls"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
    reference: orm.Mapped[str] = orm.mapped_column(sa.String(135), primary_key=True)
    day: orm.Mapped[dt.date] = orm.mapped_column(sa.Date, primary_key=True)
    pulls: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)


class TagRefresh(Base):
    """What the refresher last did with one hot tag of a group: when it checked it
    upstream, when it found it moved and fetched the new digest (and how many bytes), and
    the platforms (``os/arch[/variant]``, one a line) the group's pulls of it chose."""

    __tablename__ = f"{TABLE_PREFIX}tag_refreshes"

    group_id: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    image: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
    tag: orm.Mapped[str] = orm.mapped_column(sa.String(128), primary_key=True)
    checked_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    refreshed_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    #: The digest the tag moved to, fetched by the refresher at ``refreshed_at``.
    refreshed_digest: orm.Mapped[str | None] = orm.mapped_column(sa.String(135))
    prefetched_bytes: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    platforms: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
