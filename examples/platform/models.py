"""The platform's own tables: users, nested groups, projects and credentials.

These belong to the host, not to the extension. The extension keeps its tables
on its own metadata and sees this data only through :mod:`.host`.
"""

from __future__ import annotations

import enum
import re
import typing as t
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash


def utcnow() -> datetime:
    """The current time, timezone-aware, so comparisons never mix naive and aware."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Store aware UTC datetimes and read them back aware, on SQLite too.

    SQLite keeps no zone and returns naive values; PostgreSQL returns aware ones.
    Normalising here keeps ``expires_at <= utcnow()`` correct on both.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("Store aware datetimes only; use models.utcnow().")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


#: Werkzeug's hash for passwords; ``PASSWORD_HASH_METHOD`` overrides it (tests use a
#: cheap one, since scrypt is slow on purpose).
PASSWORD_HASH_METHOD = "scrypt"


def password_hash_method() -> str:
    return str(current_app.config.get("PASSWORD_HASH_METHOD", PASSWORD_HASH_METHOD))


class Role(enum.IntEnum):
    """Membership roles; a higher value includes every right of a lower one."""

    GUEST = 10
    REPORTER = 20
    DEVELOPER = 30
    MAINTAINER = 40
    OWNER = 50

    @classmethod
    def parse(cls, value: str | int) -> Role:
        """Accept a role as a name (``"owner"``) or a number (``50``, ``"50"``).

        :raises ValueError: listing the valid names.
        """
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            try:
                return cls(int(value))
            except ValueError:
                pass
        elif isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        names = ", ".join(role.name.lower() for role in cls)
        raise ValueError(f"Unknown role {value!r}; choose from {names}.")


#: A path segment must also be a valid image name component, because group
#: paths appear in image references (``org/team/dependency_proxy/containers/...``).
PATH_SEGMENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
#: Segments the registry routes give a meaning to.
RESERVED_SEGMENTS = frozenset({"dependency_proxy"})


def check_path_segment(segment: str) -> str:
    """Return the lowercased segment, or raise ``ValueError`` saying what is allowed."""
    lowered = segment.lower()
    if not PATH_SEGMENT.fullmatch(lowered) or len(lowered) > 255:
        raise ValueError(
            f"{segment!r} is not a valid path segment: use lowercase letters and digits,"
            " separated by '.', '_', '__' or dashes."
        )
    if lowered in RESERVED_SEGMENTS:
        raise ValueError(f"{segment!r} is reserved.")
    return lowered


class User(db.Model):  # type: ignore[name-defined,misc]
    """A person who signs in with a password and owns personal access tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    blocked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )
    personal_access_tokens: Mapped[list[PersonalAccessToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=password_hash_method())

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    # Flask-Login's user interface, spelled out instead of inheriting UserMixin.
    @property
    def is_active(self) -> bool:
        """Flask-Login refuses to sign in, and forgets, inactive (blocked) users."""
        return not self.blocked

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)


class Group(db.Model):  # type: ignore[name-defined,misc]
    """A namespace; groups nest, and rights granted on a group reach its subgroups."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The last path segment as it was typed (may have capitals).
    name: Mapped[str] = mapped_column(sa.String(255))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    #: ``parent/child``, always lowercase; what image names and URLs use.
    full_path: Mapped[str] = mapped_column(sa.String(1024), unique=True)
    private: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    parent: Mapped[Group | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[Group]] = relationship(back_populates="parent", order_by="Group.name")
    memberships: Mapped[list[Membership]] = relationship(
        back_populates="group", cascade="all, delete-orphan"
    )
    projects: Mapped[list[Project]] = relationship(back_populates="group", order_by="Project.name")
    deploy_tokens: Mapped[list[DeployToken]] = relationship(
        back_populates="group", cascade="all, delete-orphan"
    )

    def path_chain(self) -> list[str]:
        """Full paths of this group and its ancestors, ``["a", "a/b", "a/b/c"]``.

        Because full paths are unique, this finds every ancestor with one ``IN``
        query instead of walking ``parent_id`` row by row.
        """
        parts = self.full_path.split("/")
        return ["/".join(parts[: i + 1]) for i in range(len(parts))]

    def is_within(self, ancestor: Group) -> bool:
        """Whether this group is ``ancestor`` or one of its descendants."""
        return self.full_path == ancestor.full_path or self.full_path.startswith(
            ancestor.full_path + "/"
        )

    @property
    def top_level_path(self) -> str:
        return self.full_path.split("/", 1)[0]


class Membership(db.Model):  # type: ignore[name-defined,misc]
    """A user's role in a group (and, through it, in every subgroup)."""

    __tablename__ = "memberships"
    __table_args__ = (sa.UniqueConstraint("user_id", "group_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    role: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    group: Mapped[Group] = relationship(back_populates="memberships")

    @property
    def role_name(self) -> str:
        return Role(self.role).name.lower()


class _ExpiringToken:
    """Shared rules of the tokens a person can revoke or let expire."""

    if t.TYPE_CHECKING:
        scopes: str
        expires_at: datetime | None
        revoked_at: datetime | None

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())

    def is_usable(self, now: datetime | None = None) -> bool:
        return self.revoked_at is None and not self.is_expired(now)


class PersonalAccessToken(_ExpiringToken, db.Model):  # type: ignore[name-defined,misc]
    """A token a user creates to act as themselves from scripts and clients."""

    __tablename__ = "personal_access_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    scopes: Mapped[str] = mapped_column(sa.String(255))
    token_digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="personal_access_tokens")


class DeployToken(_ExpiringToken, db.Model):  # type: ignore[name-defined,misc]
    """A group's machine credential: no user behind it, reaches the group's subtree."""

    __tablename__ = "deploy_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    username: Mapped[str] = mapped_column(sa.String(255), index=True)
    scopes: Mapped[str] = mapped_column(sa.String(255))
    token_digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    group: Mapped[Group] = relationship(back_populates="deploy_tokens")


class Project(db.Model):  # type: ignore[name-defined,misc]
    """A repository in a group; CI jobs run for projects."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    full_path: Mapped[str] = mapped_column(sa.String(1280), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The project's CI definition (YAML, in the shape of a ``.gitlab-ci.yml``): the
    #: images its jobs pull, which the dependency proxy keeps warm.
    ci_file: Mapped[str | None] = mapped_column(sa.Text)

    group: Mapped[Group] = relationship(back_populates="projects")


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"


class CiJob(db.Model):  # type: ignore[name-defined,misc]
    """A CI job; its token works while the job runs and acts as the user who started it."""

    __tablename__ = "ci_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    token_digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.RUNNING.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    project: Mapped[Project] = relationship()
    user: Mapped[User] = relationship()

    @property
    def is_running(self) -> bool:
        return self.status == JobStatus.RUNNING.value


#: The largest id an ``INTEGER`` primary key holds on every backend; PostgreSQL
#: raises on a bigger one instead of finding nothing.
MAX_ID = 2**31 - 1

M = t.TypeVar("M")


def get_by_id(model: type[M], ident: int | str) -> M | None:
    """``db.session.get`` for ids from outside (URLs, CLI, token subjects).

    Anything that cannot be a row id finds nothing instead of raising.
    """
    if isinstance(ident, str):
        if not (ident.isascii() and ident.isdigit()):
            return None
        ident = int(ident)
    if not 0 < ident <= MAX_ID:
        return None
    return db.session.get(model, ident)


def usable_text(value: str) -> bool:
    """Whether a string can be looked up at all (PostgreSQL text cannot hold NUL)."""
    return "\x00" not in value


def highest_role(user: User, group: Group) -> Role | None:
    """The user's strongest role in the group or any of its ancestors, if any."""
    role = db.session.scalar(
        sa.select(sa.func.max(Membership.role))
        .join(Group, Membership.group_id == Group.id)
        .where(Membership.user_id == user.id, Group.full_path.in_(group.path_chain()))
    )
    return None if role is None else Role(role)


def find_group(full_path: str) -> Group | None:
    """Look a group up by full path, ignoring case (paths are stored lowercase)."""
    if not usable_text(full_path):
        return None
    return db.session.scalar(
        sa.select(Group).where(Group.full_path == full_path.strip("/").lower())
    )


def find_user(username: str) -> User | None:
    if not usable_text(username):
        return None
    return db.session.scalar(sa.select(User).where(User.username == username))


def find_project(full_path: str) -> Project | None:
    if not usable_text(full_path):
        return None
    return db.session.scalar(
        sa.select(Project).where(Project.full_path == full_path.strip("/").lower())
    )
