"""The platform's answer to the extension's questions (:class:`HostAdapter`).

Who may pull:

* admins, everywhere;
* users, with their password or a personal access token, where they hold at
  least ``DEPENDENCY_PROXY_MIN_READ_ROLE`` (default guest) in the group or an
  ancestor. A public group is no exception: pulling costs the group's storage and
  upstream quota, so it is for members;
* CI job tokens act as the job's user, but only inside the top-level group of
  the job's project (which is what ``CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX``
  points at), so a leaked job token cannot reach the user's other groups;
* deploy tokens, in their own group and its subgroups.

Who may administer a group's proxy: admins, and users holding
``DEPENDENCY_PROXY_ADMIN_ROLE`` (default owner) in the group or an ancestor.
Deploy and job tokens never administer.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import sqlalchemy as sa
import yaml
from flask import current_app, has_request_context
from flask_login import current_user

from flask_dependency_proxy import ci_variables
from flask_dependency_proxy.host import AuthFailure, Principal, PrincipalKind
from flask_dependency_proxy.host import Group as ProxyGroup

from . import tokens
from .models import (
    CiJob,
    DeployToken,
    Group,
    PersonalAccessToken,
    Project,
    Role,
    User,
    db,
    find_group,
    find_user,
    get_by_id,
    highest_role,
    usable_text,
    utcnow,
)
from .services import job_token_username, verify_password

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def ci_file_images(text: str) -> list[str]:
    """The image references a CI file names: ``image:`` and ``services:`` at the top
    level, under ``default:`` and in each job, as a string or as ``{name: ...}``."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(document, dict):
        return []
    found: list[str] = []

    def name(entry: object) -> str | None:
        if isinstance(entry, dict):
            entry = entry.get("name")
        return entry if isinstance(entry, str) and entry.strip() else None

    for section in [document, *document.values()]:
        if not isinstance(section, dict):
            continue
        image = name(section.get("image"))
        if image is not None:
            found.append(image.strip())
        services = section.get("services")
        for service in services if isinstance(services, list) else []:
            service_name = name(service)
            if service_name is not None:
                found.append(service_name.strip())
    return found


def _expand(reference: str, variables: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced as a job's shell would (unknown ones: empty)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), reference)


#: Default of ``DEPENDENCY_PROXY_MIN_READ_ROLE``.
MIN_READ_ROLE = Role.GUEST
#: Default of ``DEPENDENCY_PROXY_ADMIN_ROLE``.
ADMIN_ROLE = Role.OWNER
#: ``last_used_at`` of a personal access token is written at most this often.
LAST_USED_GRANULARITY = timedelta(minutes=10)


def _role_setting(key: str, default: Role) -> Role:
    return Role.parse(current_app.config.get(key, default))


def _has_registry_scopes(scopes: frozenset[str], *, api_counts: bool) -> bool:
    return tokens.REGISTRY_SCOPES <= scopes or (api_counts and "api" in scopes)


@dataclasses.dataclass(frozen=True)
class _Actor:
    """What a principal's subject resolves to right now."""

    #: The user whose rights apply (none for a deploy token).
    user: User | None = None
    personal_access_token: PersonalAccessToken | None = None
    deploy_token: DeployToken | None = None
    job: CiJob | None = None


class PlatformHost:
    """The example platform's :class:`flask_dependency_proxy.host.HostAdapter`, with
    :class:`~flask_dependency_proxy.host.TokenAuthenticator` so its tokens are never
    throttled, and :class:`~flask_dependency_proxy.host.CiImageSource`: the images the
    CI files of a group's projects pull, which the proxy keeps warm.

    It holds no state, so one instance serves every application; it reads the
    current app's config and database session on each call.
    """

    # -- groups -------------------------------------------------------------

    def find_group(self, full_path: str) -> ProxyGroup | None:
        return _proxy_group(find_group(full_path))

    def find_group_by_id(self, group_id: int) -> ProxyGroup | None:
        return _proxy_group(get_by_id(Group, group_id))

    # -- CI ------------------------------------------------------------------

    def ci_image_references(self, group: ProxyGroup) -> list[str]:
        """The ``image:`` and ``services:`` of the CI files of every project whose jobs
        pull through the group's proxy (its own and its subgroups' projects; a top-level
        group's also through ``CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX``), with the
        ``CI_DEPENDENCY_PROXY_*`` and ``CI_*`` variables a job gets resolved."""
        target = get_by_id(Group, group.id)
        if target is None:
            return []
        external_url = (
            current_app.config.get("DEPENDENCY_PROXY_EXTERNAL_URL") or "http://localhost:5000"
        )
        projects = db.session.scalars(
            sa.select(Project).where(
                Project.ci_file.is_not(None),
                sa.or_(
                    Project.full_path.startswith(target.full_path + "/"),
                    Project.full_path.startswith(target.top_level_path + "/"),
                ),
            )
        )
        found: list[str] = []
        for project in projects:
            variables = {
                **ci_variables(
                    external_url=external_url,
                    project_group_path=project.group.full_path,
                    job_token="",
                    username=job_token_username(),
                ),
                "CI_PROJECT_PATH": project.full_path,
                "CI_SERVER_URL": external_url.rstrip("/"),
            }
            for reference in ci_file_images(project.ci_file or ""):
                resolved = _expand(reference, variables)
                if resolved not in found:
                    found.append(resolved)
        return found

    # -- credentials --------------------------------------------------------

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        """Check a token, then a password.

        A secret that looks like a token but matches none is still tried as a
        password, so a password that happens to start with ``dppat-`` works.
        """
        token = self.authenticate_token(username, secret)
        if token is not None:
            return token
        return self._authenticate_password(username, secret)

    def authenticate_token(self, username: str, secret: str) -> Principal | AuthFailure | None:
        """Check a job, personal access or deploy token by digest; no password hash.

        The secret's prefix says which kind it claims to be. ``None`` when it is none
        of this user's tokens (it may be a password); the job token username has no
        password, so a bad secret for it is ``INVALID``.
        """
        if not username or not secret or not usable_text(username + secret):
            return AuthFailure.INVALID
        if username == job_token_username():
            return self._authenticate_job(secret)
        if secret.startswith(tokens.PERSONAL_ACCESS_TOKEN_PREFIX):
            return self._authenticate_personal_access_token(username, secret)
        if secret.startswith(tokens.DEPLOY_TOKEN_PREFIX):
            return self._authenticate_deploy_token(username, secret)
        return None

    def _authenticate_password(self, username: str, password: str) -> Principal | AuthFailure:
        user = verify_password(username, password)
        return AuthFailure.INVALID if user is None else _user_principal(user)

    def _authenticate_personal_access_token(
        self, username: str, secret: str
    ) -> Principal | AuthFailure | None:
        """``None`` when no token of this user matches (then try the password)."""
        user = find_user(username)
        if user is None:
            return None
        candidates = db.session.scalars(
            sa.select(PersonalAccessToken).where(PersonalAccessToken.user_id == user.id)
        )
        token = next((c for c in candidates if tokens.matches(secret, c.token_digest)), None)
        if token is None:
            return None
        if user.blocked or not token.is_usable():
            return AuthFailure.INVALID
        if not _has_registry_scopes(token.scope_set, api_counts=True):
            return AuthFailure.INSUFFICIENT_SCOPE
        _touch(token)
        return _pat_principal(token)

    def _authenticate_deploy_token(
        self, username: str, secret: str
    ) -> Principal | AuthFailure | None:
        """``None`` when no deploy token with this username matches."""
        candidates = db.session.scalars(
            sa.select(DeployToken).where(DeployToken.username == username)
        )
        token = next((c for c in candidates if tokens.matches(secret, c.token_digest)), None)
        if token is None:
            return None
        if not token.is_usable():
            return AuthFailure.INVALID
        if not _has_registry_scopes(token.scope_set, api_counts=False):
            return AuthFailure.INSUFFICIENT_SCOPE
        return _deploy_token_principal(token)

    def _authenticate_job(self, secret: str) -> Principal | AuthFailure:
        if not secret.startswith(tokens.JOB_TOKEN_PREFIX):
            return AuthFailure.INVALID
        # The username is the same for every job, so the secret's digest is the
        # key. Looking a 256-bit secret up by its digest reveals nothing usable.
        job = db.session.scalar(sa.select(CiJob).where(CiJob.token_digest == tokens.digest(secret)))
        if job is None or not job.is_running or job.user.blocked:
            return AuthFailure.INVALID
        return _job_principal(job)

    def authenticate_api_token(self, secret: str) -> Principal | AuthFailure:
        """A personal access token sent to the REST API; it needs the ``api`` scope.

        No username comes with an API token, so the secret's digest is the key.
        """
        if not secret.startswith(tokens.PERSONAL_ACCESS_TOKEN_PREFIX) or not usable_text(secret):
            return AuthFailure.INVALID
        token = db.session.scalar(
            sa.select(PersonalAccessToken).where(
                PersonalAccessToken.token_digest == tokens.digest(secret)
            )
        )
        if token is None or token.user.blocked or not token.is_usable():
            return AuthFailure.INVALID
        if "api" not in token.scope_set:
            return AuthFailure.INSUFFICIENT_SCOPE
        _touch(token)
        return _pat_principal(token)

    def current_principal(self) -> Principal | None:
        """The user signed in to the web session through Flask-Login."""
        if not has_request_context() or not current_user.is_authenticated:
            return None
        return _user_principal(current_user._get_current_object())

    def load_principal(self, subject: str) -> Principal | None:
        actor = _resolve(subject)
        if actor is None:
            return None
        if actor.job is not None:
            return _job_principal(actor.job)
        if actor.deploy_token is not None:
            return _deploy_token_principal(actor.deploy_token)
        if actor.personal_access_token is not None:
            return _pat_principal(actor.personal_access_token)
        assert actor.user is not None
        return _user_principal(actor.user)

    # -- access -------------------------------------------------------------

    def can_read(self, principal: Principal, group: ProxyGroup) -> bool:
        actor = _resolve(principal.subject)
        target = get_by_id(Group, group.id)
        if actor is None or target is None:
            return False
        if actor.deploy_token is not None:
            return target.is_within(actor.deploy_token.group)
        if (
            actor.job is not None
            and target.top_level_path != actor.job.project.group.top_level_path
        ):
            return False
        assert actor.user is not None
        if actor.user.is_admin:
            return True
        role = highest_role(actor.user, target)
        return role is not None and role >= _role_setting(
            "DEPENDENCY_PROXY_MIN_READ_ROLE", MIN_READ_ROLE
        )

    def can_admin(self, principal: Principal, group: ProxyGroup) -> bool:
        actor = _resolve(principal.subject)
        target = get_by_id(Group, group.id)
        if actor is None or target is None or actor.user is None or actor.job is not None:
            return False
        if actor.user.is_admin:
            return True
        role = highest_role(actor.user, target)
        return role is not None and role >= _role_setting("DEPENDENCY_PROXY_ADMIN_ROLE", ADMIN_ROLE)


def _proxy_group(group: Group | None) -> ProxyGroup | None:
    return None if group is None else ProxyGroup(id=group.id, full_path=group.full_path)


def _touch(token: PersonalAccessToken) -> None:
    """Record a token's use, at most every :data:`LAST_USED_GRANULARITY` (not a write per pull)."""
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        token.last_used_at = now
        db.session.commit()


def _resolve(subject: str) -> _Actor | None:
    """Re-read a subject; ``None`` if it is unknown or no longer valid."""
    kind, _, ident = subject.partition(":")
    if kind == "user":
        user = get_by_id(User, ident)
        if user is None or user.blocked:
            return None
        return _Actor(user=user)
    if kind == "pat":
        token = get_by_id(PersonalAccessToken, ident)
        if (
            token is None
            or not token.is_usable()
            or token.user.blocked
            or not _has_registry_scopes(token.scope_set, api_counts=True)
        ):
            return None
        return _Actor(user=token.user, personal_access_token=token)
    if kind == "deploy_token":
        deploy_token = get_by_id(DeployToken, ident)
        if (
            deploy_token is None
            or not deploy_token.is_usable()
            or not _has_registry_scopes(deploy_token.scope_set, api_counts=False)
        ):
            return None
        return _Actor(deploy_token=deploy_token)
    if kind == "job":
        job = get_by_id(CiJob, ident)
        if job is None or not job.is_running or job.user.blocked:
            return None
        return _Actor(user=job.user, job=job)
    return None


def _user_principal(user: User) -> Principal:
    return Principal(kind=PrincipalKind.USER, subject=f"user:{user.id}", username=user.username)


def _pat_principal(token: PersonalAccessToken) -> Principal:
    return Principal(
        kind=PrincipalKind.PERSONAL_ACCESS_TOKEN,
        subject=f"pat:{token.id}",
        username=token.user.username,
        scopes=token.scope_set,
    )


def _deploy_token_principal(token: DeployToken) -> Principal:
    return Principal(
        kind=PrincipalKind.DEPLOY_TOKEN,
        subject=f"deploy_token:{token.id}",
        username=token.username,
        scopes=token.scope_set,
    )


def _job_principal(job: CiJob) -> Principal:
    # What the proxy keeps with each of the job's pulls (its pull record).
    return Principal(
        kind=PrincipalKind.JOB_TOKEN,
        subject=f"job:{job.id}",
        username=job.user.username,
        context={"project": job.project.full_path, "job": str(job.id)},
    )
