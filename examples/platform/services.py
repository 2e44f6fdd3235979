"""The platform's operations, shared by the CLI, the web pages and the tests.

Each function checks its input, commits one unit of work and raises
:class:`PlatformError` with a message fit to show an operator or a user.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from . import tokens
from .models import (
    CiJob,
    DeployToken,
    Group,
    JobStatus,
    Membership,
    PersonalAccessToken,
    Project,
    Role,
    User,
    check_path_segment,
    db,
    find_group,
    find_project,
    find_user,
    get_by_id,
    password_hash_method,
    utcnow,
)

DEFAULT_JOB_TOKEN_USERNAME = "gitlab-ci-token"
#: Deploy tokens without a chosen username are called ``deploy-token-<id>``; no user and
#: no chosen deploy-token username may start with it.
DEPLOY_TOKEN_USERNAME_PREFIX = "deploy-token-"


class PlatformError(ValueError):
    """An operation was refused; the message says why and what to do instead."""


def job_token_username() -> str:
    """The username CI job tokens log in with (``DEPENDENCY_PROXY_JOB_TOKEN_USERNAME``)."""
    return str(
        current_app.config.get("DEPENDENCY_PROXY_JOB_TOKEN_USERNAME", DEFAULT_JOB_TOKEN_USERNAME)
    )


def _expiry(expires_days: int | None) -> timedelta | None:
    if expires_days is None:
        return None
    if expires_days < 1:
        raise PlatformError("--expires-days must be at least 1.")
    return timedelta(days=expires_days)


def _check_text(value: str, what: str) -> str:
    """Refuse control characters in names people see and type (and NUL, which
    PostgreSQL cannot store)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PlatformError(f"The {what} must not contain control characters.")
    return value


def _scopes(scopes: str | Iterable[str], allowed: tuple[str, ...]) -> frozenset[str]:
    text = scopes if isinstance(scopes, str) else ",".join(scopes)
    try:
        return tokens.parse_scopes(text, allowed)
    except ValueError as e:
        raise PlatformError(str(e)) from None


@functools.cache
def _dummy_password_hash(method: str) -> str:
    return generate_password_hash("not anyone's password", method=method)


def verify_password(username: str, password: str) -> User | None:
    """Return the user if the password is theirs and they are not blocked.

    An unknown username costs a hash too, so response times do not tell an
    attacker which usernames exist.
    """
    user = find_user(username)
    if user is None:
        check_password_hash(_dummy_password_hash(password_hash_method()), password)
        return None
    if not user.check_password(password) or user.blocked:
        return None
    return user


def require_user(username: str) -> User:
    user = find_user(username)
    if user is None:
        raise PlatformError(f"No user named {username!r}.")
    return user


def require_group(full_path: str) -> Group:
    group = find_group(full_path)
    if group is None:
        raise PlatformError(f"No group at {full_path!r}.")
    return group


def create_user(username: str, password: str, *, is_admin: bool = False) -> User:
    _check_text(username, "username")
    if not username or username != username.strip() or "/" in username or ":" in username:
        raise PlatformError("A username must be non-empty, with no spaces around it, '/' or ':'.")
    if username == job_token_username():
        raise PlatformError(f"{username!r} is reserved for CI job tokens.")
    if username.lower().startswith(DEPLOY_TOKEN_USERNAME_PREFIX):
        raise PlatformError(
            f"Usernames starting with {DEPLOY_TOKEN_USERNAME_PREFIX!r} are reserved."
        )
    if _user_named(username) is not None:
        raise PlatformError(f"User {username!r} already exists.")
    if _deploy_token_named(username) is not None:
        raise PlatformError(f"A deploy token is called {username!r}: choose another username.")
    if not password:
        raise PlatformError("A password must not be empty.")
    user = User(username=username, is_admin=is_admin)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def block_user(username: str) -> User:
    """Block a user: their password, tokens, sessions and running jobs stop working."""
    user = require_user(username)
    user.blocked = True
    db.session.commit()
    return user


def create_group(full_path: str, *, private: bool = False) -> Group:
    """Create a group; its parent (all but the last segment) must exist already.

    A subgroup of a private group is private too: it cannot show more than its parent.
    """
    segments = full_path.strip("/").split("/")
    try:
        lowered = [check_path_segment(s) for s in segments]
    except ValueError as e:
        raise PlatformError(str(e)) from None
    path = "/".join(lowered)
    if find_group(path) is not None:
        raise PlatformError(f"Group {path!r} already exists.")
    parent = None
    if len(lowered) > 1:
        parent_path = "/".join(lowered[:-1])
        parent = find_group(parent_path)
        if parent is None:
            raise PlatformError(f"Parent group {parent_path!r} does not exist; create it first.")
    if find_project(path) is not None:
        raise PlatformError(f"A project already uses the path {path!r}.")
    private = private or (parent is not None and parent.private)
    group = Group(name=segments[-1], parent=parent, full_path=path, private=private)
    db.session.add(group)
    db.session.commit()
    return group


def delete_group(full_path: str) -> int:
    """Delete a group without subgroups or projects, and tell the dependency proxy.

    The proxy keys its data by group id, and a database may give this id to the next
    group created (SQLite does): ``forget_group`` drops the group's proxy settings,
    upstream credentials and cache, so that group starts afresh. It runs after the
    deletion is committed; were it to fail, the proxy refuses the id's next group
    until ``flask dependency-proxy forget-group ID`` is run.
    """
    from .extensions import proxy

    group = require_group(full_path)
    if group.children or group.projects:
        raise PlatformError(
            f"Group {group.full_path!r} has subgroups or projects; delete them first."
        )
    group_id = group.id
    db.session.delete(group)
    db.session.commit()
    proxy.forget_group(group_id)
    return group_id


def add_member(full_path: str, username: str, role: str | int | Role) -> Membership:
    """Give a user a role in a group, or change the role they have."""
    group = require_group(full_path)
    user = require_user(username)
    try:
        parsed = Role.parse(role)
    except ValueError as e:
        raise PlatformError(str(e)) from None
    membership = db.session.scalar(
        sa.select(Membership).where(Membership.user_id == user.id, Membership.group_id == group.id)
    )
    if membership is None:
        membership = Membership(user=user, group=group, role=int(parsed))
        db.session.add(membership)
    else:
        membership.role = int(parsed)
    db.session.commit()
    return membership


def create_personal_access_token(
    user: User,
    *,
    name: str,
    scopes: str | Iterable[str],
    expires_days: int | None = None,
) -> tuple[PersonalAccessToken, str]:
    """Create a token and return it with its secret, which is not stored anywhere."""
    scope_set = _scopes(scopes, tokens.PERSONAL_ACCESS_TOKEN_SCOPES)
    if not _check_text(name, "token name").strip():
        raise PlatformError("Give the token a name.")
    lifetime = _expiry(expires_days)
    secret = tokens.new_secret(tokens.PERSONAL_ACCESS_TOKEN_PREFIX)
    token = PersonalAccessToken(
        user=user,
        name=name.strip(),
        scopes=",".join(sorted(scope_set)),
        token_digest=tokens.digest(secret),
        expires_at=None if lifetime is None else utcnow() + lifetime,
    )
    db.session.add(token)
    db.session.commit()
    return token, secret


def revoke_personal_access_token(
    token_id: int, *, owner: User | None = None
) -> PersonalAccessToken:
    """Revoke a token; with ``owner``, only one of that user's tokens."""
    token = get_by_id(PersonalAccessToken, token_id)
    if token is None or (owner is not None and token.user_id != owner.id):
        raise PlatformError(f"No personal access token with id {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
    return token


def create_deploy_token(
    group: Group,
    *,
    scopes: str | Iterable[str],
    name: str | None = None,
    username: str | None = None,
    expires_days: int | None = None,
) -> tuple[DeployToken, str]:
    """Create a group deploy token and return it with its secret, shown once.

    Without ``username`` the token is called ``deploy-token-<id>``.
    """
    scope_set = _scopes(scopes, tokens.DEPLOY_TOKEN_SCOPES)
    lifetime = _expiry(expires_days)
    username = _check_text(username or "", "username").strip() or None
    name = _check_text(name or "", "token name")
    if username is not None:
        if username == job_token_username() or ":" in username:
            raise PlatformError(f"{username!r} cannot be a deploy token username.")
        if username.lower().startswith(DEPLOY_TOKEN_USERNAME_PREFIX):
            raise PlatformError(
                f"{DEPLOY_TOKEN_USERNAME_PREFIX!r} names are given to tokens without a username."
            )
        if _user_named(username) is not None:
            raise PlatformError(
                f"{username!r} is a user's name: a deploy token cannot log in as a user."
            )
    secret = tokens.new_secret(tokens.DEPLOY_TOKEN_PREFIX)
    token = DeployToken(
        group=group,
        name=(name or "").strip() or "deploy token",
        username=username or "",
        scopes=",".join(sorted(scope_set)),
        token_digest=tokens.digest(secret),
        expires_at=None if lifetime is None else utcnow() + lifetime,
    )
    db.session.add(token)
    db.session.flush()  # assigns the id the default username is made of
    if not token.username:
        token.username = f"deploy-token-{token.id}"
    db.session.commit()
    return token, secret


def _user_named(username: str) -> User | None:
    """The user whose name is ``username`` ignoring case (names that differ only in case
    would read as the same account in logs and lists)."""
    return db.session.scalars(
        sa.select(User).where(sa.func.lower(User.username) == username.lower()).limit(1)
    ).first()


def _deploy_token_named(username: str) -> DeployToken | None:
    return db.session.scalars(
        sa.select(DeployToken)
        .where(sa.func.lower(DeployToken.username) == username.lower())
        .limit(1)
    ).first()


def revoke_deploy_token(token_id: int, *, group: Group | None = None) -> DeployToken:
    """Revoke a deploy token; with ``group``, only one of that group's tokens."""
    token = get_by_id(DeployToken, token_id)
    if token is None or (group is not None and token.group_id != group.id):
        raise PlatformError(f"No deploy token with id {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
    return token


def set_ci_file(full_path: str, text: str | None) -> Project:
    """Store the project's CI definition (``None`` removes it).

    :raises PlatformError: no such project, or text that is not a YAML mapping.
    """
    import yaml

    project = find_project(full_path.strip("/").lower())
    if project is None:
        raise PlatformError(f"No project at {full_path!r}.")
    if text is not None:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlatformError(f"The CI file is not YAML: {exc}") from None
        if not isinstance(parsed, dict):
            raise PlatformError("The CI file must be a YAML mapping of jobs.")
    project.ci_file = text
    db.session.commit()
    return project


def create_project(full_path: str) -> Project:
    """Create a project at ``GROUP/NAME`` inside an existing group."""
    group_path, _, name = full_path.strip("/").rpartition("/")
    if not group_path:
        raise PlatformError("Give the project as GROUP/NAME.")
    group = require_group(group_path)
    try:
        lowered = check_path_segment(name)
    except ValueError as e:
        raise PlatformError(str(e)) from None
    path = f"{group.full_path}/{lowered}"
    if find_project(path) is not None:
        raise PlatformError(f"Project {path!r} already exists.")
    if find_group(path) is not None:
        raise PlatformError(f"A group already uses the path {path!r}.")
    project = Project(group=group, name=name, full_path=path)
    db.session.add(project)
    db.session.commit()
    return project


def start_job(project: Project, user: User) -> tuple[CiJob, str]:
    """Start a CI job for a user; return it with its job token."""
    if user.blocked:
        raise PlatformError(f"User {user.username!r} is blocked.")
    secret = tokens.new_secret(tokens.JOB_TOKEN_PREFIX)
    job = CiJob(project=project, user=user, token_digest=tokens.digest(secret))
    db.session.add(job)
    db.session.commit()
    return job, secret


def finish_job(job: CiJob) -> None:
    """Finish a job; from now on its token is refused."""
    job.status = JobStatus.FINISHED.value
    job.finished_at = utcnow()
    db.session.commit()
