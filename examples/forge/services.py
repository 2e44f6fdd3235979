"""The forge's operations, shared by its CLI and its pages; all on ``g.session``."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import sqlalchemy as sa
from flask import current_app, g
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from flask_dependency_proxy import DependencyProxy

from .models import ACLS, ApiToken, Group, Membership, User, utcnow

#: Where :func:`examples.forge.create_app` keeps the extension and the engine.
PROXY = "forge.proxy"
ENGINE = "forge.engine"


class ForgeError(ValueError):
    """An operation refused, with a message for the user."""


def db() -> Session:
    """The session of the current request or command (:mod:`.hooks`)."""
    return g.session  # type: ignore[no-any-return]


def proxy() -> DependencyProxy:
    return current_app.extensions[PROXY]  # type: ignore[no-any-return]


def user_named(username: str) -> User | None:
    return db().scalar(sa.select(User).where(User.username == username))


def group_named(name: str) -> Group | None:
    """The group whose name is ``name`` in any case (image paths are lowercase)."""
    return db().scalar(sa.select(Group).where(sa.func.lower(Group.name) == name.lower()))


def token_for(secret: str) -> ApiToken | None:
    return db().scalar(sa.select(ApiToken).where(ApiToken.digest == _digest(secret)))


def is_member(user: User, group: Group) -> bool:
    return user.id == group.owner_id or bool(
        db().get(Membership, {"group_id": group.id, "user_id": user.id})
    )


def create_user(username: str, password: str) -> User:
    if user_named(username) is not None:
        raise ForgeError(f"User {username} exists already.")
    method = current_app.config.get("PASSWORD_HASH_METHOD", "scrypt")
    user = User(username=username, password_hash=generate_password_hash(password, method))
    db().add(user)
    db().commit()
    return user


def create_group(name: str, owner: str) -> Group:
    """A group owned by ``owner``; refused when a group has the name in another case."""
    existing = group_named(name)
    if existing is not None:
        raise ForgeError(f"Group {existing.name} exists already.")
    user = _user(owner)
    group = Group(name=name, owner_id=user.id)
    db().add(group)
    db().commit()
    return group


def add_member(name: str, username: str) -> Group:
    group, user = _group(name), _user(username)
    if not is_member(user, group):
        db().add(Membership(group_id=group.id, user_id=user.id))
        db().commit()
    return group


def delete_group(name: str) -> int:
    """Delete the group, and tell the extension it is gone: its proxy settings, upstream
    credentials, quota and cache go with it, and never reach a group that gets its id."""
    group = _group(name)
    group_id = group.id
    db().delete(group)
    db().commit()
    # Once the deletion is committed. Were this call lost, the extension would refuse
    # the id's next group until told (it records the path each id names).
    proxy().forget_group(group_id)
    return group_id


def set_blocked(username: str, blocked: bool) -> None:
    _user(username).blocked = blocked
    db().commit()


def create_token(username: str, acls: list[str], days: int = 30) -> tuple[ApiToken, str]:
    """A new API token; its secret is returned once and stored only as a digest."""
    unknown = sorted(set(acls) - set(ACLS))
    if unknown:
        raise ForgeError(f"Unknown ACL {', '.join(unknown)}; known: {', '.join(ACLS)}.")
    secret = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))
    token = ApiToken(
        user_id=_user(username).id,
        digest=_digest(secret),
        acls=",".join(acls),
        expires_at=utcnow() + dt.timedelta(days=days),
    )
    db().add(token)
    db().commit()
    return token, secret


#: Tokens look like Pagure's: 64 characters, upper-case letters and digits.
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_LENGTH = 64


def looks_like_token(secret: str) -> bool:
    return len(secret) == TOKEN_LENGTH and all(c in TOKEN_ALPHABET for c in secret)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(username: str) -> User:
    user = user_named(username)
    if user is None:
        raise ForgeError(f"No user {username}.")
    return user


def _group(name: str) -> Group:
    group = group_named(name)
    if group is None:
        raise ForgeError(f"No group {name}.")
    return group
