"""The forge as the extension sees it: :class:`ForgeHost`, a
:class:`flask_dependency_proxy.HostAdapter` (and a ``TokenAuthenticator``).

=====================  ===============================================================
extension              forge
=====================  ===============================================================
group                  a :class:`~.models.Group`; ``full_path`` is its name as created
                       (``DevOps``), found by the lowercase path of an image name
pull (``can_read``)    the group's owner, its members, the forge's admins
admin (``can_admin``)  the group's owner and the forge's admins (``FORGE_ADMINS``)
password login         a user who is not blocked, with their password
token login            an API token of the user named, with the ``pull_images`` ACL
REST API               an API token with the ``group_modify`` ACL (``api_scope_name``)
web session            ``session["user_id"]`` set by the forge's login page
=====================  ===============================================================

Every method reads ``g.session``: in a request the forge's hooks open it, and outside
one (``flask dependency-proxy ...``, the cleanup scheduler) the extension enters
:func:`.hooks.outside_request` first. Subjects are ``user:ID`` and ``token:ID``: a
blocked user, or an expired or deleted token, resolves to ``None``.
"""

from __future__ import annotations

from flask import current_app, session
from werkzeug.security import check_password_hash

from flask_dependency_proxy import AuthFailure, Group, Principal, PrincipalKind

from . import models, services


class ForgeHost:
    """Maps the forge's users, groups and tokens onto the extension's questions."""

    #: The ACL the extension names when a token may not use its REST API.
    api_scope_name = models.API_ACL

    def find_group(self, full_path: str) -> Group | None:
        group = services.group_named(full_path)
        return _group(group) if group else None

    def find_group_by_id(self, group_id: int) -> Group | None:
        group = services.db().get(models.Group, group_id)
        return _group(group) if group else None

    def authenticate_token(self, username: str, secret: str) -> Principal | AuthFailure | None:
        if not services.looks_like_token(secret):
            return None
        token = services.token_for(secret)
        if token is None:
            return None  # the shape of a token, but it may be a password after all
        if not token.valid or token.user.username != username:
            return AuthFailure.INVALID
        if models.PULL_ACL not in token.acl_names:
            return AuthFailure.INSUFFICIENT_SCOPE
        return _token_principal(token)

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        user = services.user_named(username)
        if user is None or user.blocked or not check_password_hash(user.password_hash, secret):
            return AuthFailure.INVALID
        return _user_principal(user)

    def authenticate_api_token(self, secret: str) -> Principal | AuthFailure:
        token = services.token_for(secret) if services.looks_like_token(secret) else None
        if token is None or not token.valid:
            return AuthFailure.INVALID
        if models.API_ACL not in token.acl_names:
            return AuthFailure.INSUFFICIENT_SCOPE
        return _token_principal(token)

    def current_principal(self) -> Principal | None:
        user_id = session.get("user_id")
        user = services.db().get(models.User, user_id) if isinstance(user_id, int) else None
        return _user_principal(user) if user and not user.blocked else None

    def load_principal(self, subject: str) -> Principal | None:
        kind, _, number = subject.partition(":")
        if not number.isdigit():
            return None
        if kind == "user":
            user = services.db().get(models.User, int(number))
            return _user_principal(user) if user and not user.blocked else None
        if kind == "token":
            token = services.db().get(models.ApiToken, int(number))
            return _token_principal(token) if token and token.valid else None
        return None

    def can_read(self, principal: Principal, group: Group) -> bool:
        user, forge_group = _user_of(principal), services.db().get(models.Group, group.id)
        if user is None or forge_group is None:
            return False
        return _is_admin(user) or services.is_member(user, forge_group)

    def can_admin(self, principal: Principal, group: Group) -> bool:
        user, forge_group = _user_of(principal), services.db().get(models.Group, group.id)
        if user is None or forge_group is None:
            return False
        return _is_admin(user) or forge_group.owner_id == user.id


def _group(group: models.Group) -> Group:
    return Group(id=group.id, full_path=group.name)


def _user_principal(user: models.User) -> Principal:
    return Principal(kind=PrincipalKind.USER, subject=f"user:{user.id}", username=user.username)


def _token_principal(token: models.ApiToken) -> Principal:
    return Principal(
        kind=PrincipalKind.PERSONAL_ACCESS_TOKEN,
        subject=f"token:{token.id}",
        username=token.user.username,
        scopes=token.acl_names,
    )


def _user_of(principal: Principal) -> models.User | None:
    """The user behind a principal; a token acts for its owner."""
    kind, _, number = principal.subject.partition(":")
    if kind == "token":
        token = services.db().get(models.ApiToken, int(number))
        return token.user if token and token.valid else None
    user = services.db().get(models.User, int(number))
    return user if user and not user.blocked else None


def _is_admin(user: models.User) -> bool:
    return user.username in current_app.config["FORGE_ADMINS"]
