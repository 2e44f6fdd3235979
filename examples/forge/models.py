"""The forge's tables: plain SQLAlchemy declarative models, no Flask-SQLAlchemy.

Users (who can be blocked), flat groups whose names keep their case (``DevOps``), the
members of each group, and API tokens that carry an ACL list, the way Pagure's do. The
engine is the forge's own, with SQLite's foreign keys switched on for every
connection: the extension is handed this engine, so its queries go through the same
pool and the same connection settings.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: A token with this ACL may ``docker login`` and pull through its owner's groups.
PULL_ACL = "pull_images"
#: A token with this ACL may use the extension's REST API (the adapter's API scope).
API_ACL = "group_modify"
ACLS = (PULL_ACL, API_ACL)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "forge_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    #: A blocked user cannot sign in, log in to the registry, or use a token.
    blocked: Mapped[bool] = mapped_column(default=False)


class Group(Base):
    """A group; ``name`` is shown as created (``DevOps``) and unique whatever its case.

    The id is SQLite's rowid: deleting the newest group frees its id for the next one.
    """

    __tablename__ = "forge_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: The creator administers the group, as in Pagure.
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id, ondelete="CASCADE"))

    owner: Mapped[User] = relationship()
    members: Mapped[list[User]] = relationship(secondary="forge_memberships", viewonly=True)


class Membership(Base):
    __tablename__ = "forge_memberships"

    group_id: Mapped[int] = mapped_column(
        sa.ForeignKey(Group.id, ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey(User.id, ondelete="CASCADE"), primary_key=True
    )


class ApiToken(Base):
    """An API token of a user; only the SHA-256 of its secret is stored."""

    __tablename__ = "forge_api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id, ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: Comma-separated ACL names, e.g. ``pull_images,group_modify``.
    acls: Mapped[str] = mapped_column(sa.String(255))
    expires_at: Mapped[dt.datetime]

    user: Mapped[User] = relationship()

    @property
    def acl_names(self) -> frozenset[str]:
        return frozenset(name for name in self.acls.split(",") if name)

    @property
    def valid(self) -> bool:
        return not self.user.blocked and self.expires_at > utcnow()


def make_engine(url: str) -> sa.Engine:
    """The forge's engine; on SQLite every connection enforces foreign keys."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection: t.Any, _record: t.Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
