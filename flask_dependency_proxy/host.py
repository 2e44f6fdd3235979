"""The one seam between the extension and the platform that hosts it.

The extension never imports the host's models. The host hands it an object that
satisfies :class:`HostAdapter`; the extension only ever sees the small value
objects defined here.
"""

from __future__ import annotations

import dataclasses
import enum
import typing as t


class PrincipalKind(enum.StrEnum):
    """What kind of credential a principal logged in with.

    The extension records it in logs and passes it back to the host's own methods; it
    decides nothing by it. Scopes, expiry and what a kind may do are the host's checks.
    """

    USER = "user"
    PERSONAL_ACCESS_TOKEN = "personal_access_token"
    DEPLOY_TOKEN = "deploy_token"
    JOB_TOKEN = "job_token"


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of the host platform, as the extension needs to see it.

    Build one from the host's own group row: ``Group(id=row.id, full_path=row.path)``.

    :param id: the host's primary key; stored in the extension's tables as a plain
        integer column (no foreign key). The extension records the path each id names:
        a host that deletes a group calls :meth:`~.DependencyProxy.forget_group`, and
        one that renames a group :meth:`~.DependencyProxy.confirm_group`; until then a
        group whose id names another path than the one recorded is refused, so a new
        group that gets a deleted group's id never inherits its settings or cache.
    :param full_path: ``parent/child`` path, in the case the host shows it
        (``"MyTeam/tools"``). Image names use it lowercased
        (``myteam/tools/dependency_proxy/containers/alpine``), and the extension
        compares paths lowercased: two groups whose paths differ only by case cannot
        both use the proxy.
    """

    id: int
    full_path: str


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a registry token, a page view or an API call belongs to.

    The host builds it in :meth:`HostAdapter.authenticate`,
    :meth:`~HostAdapter.authenticate_api_token`, :meth:`~HostAdapter.current_principal`
    and :meth:`~HostAdapter.load_principal`; the extension hands it back to
    :meth:`~HostAdapter.can_read` and :meth:`~HostAdapter.can_admin` and never looks
    inside except for logs.

    :param kind: the credential kind that authenticated.
    :param subject: a stable string the host can resolve again with
        :meth:`HostAdapter.load_principal`, e.g. ``"user:7"`` or ``"deploy_token:3"``.
        It is written into registry tokens, so it must never contain a secret.
    :param username: shown in logs and token responses.
    :param scopes: the credential's scopes; empty for a password login. The host
        checks them (``AuthFailure.INSUFFICIENT_SCOPE``): the extension keeps them for
        the host's ``can_*`` methods and decides nothing by them, not even the API scope.
    :param context: optional, what the host wants kept with every pull of this
        principal in the pull record, e.g. a CI job's ``{"project": "acme/app",
        "pipeline": "41", "job": "1207"}``. The extension stores it as given (strings,
        at most 16 keys) and never interprets it; ``project`` is also a filter of the
        pull record's queries.
    """

    kind: PrincipalKind
    subject: str
    username: str
    scopes: frozenset[str] = frozenset()
    context: t.Mapping[str, str] | None = dataclasses.field(default=None, compare=False, hash=False)


class AuthFailure(enum.Enum):
    """Why :meth:`HostAdapter.authenticate` refused a credential."""

    #: Unknown user, wrong secret, blocked user, expired or revoked token,
    #: finished job. Answered with 401.
    INVALID = "invalid"
    #: The credential is genuine but lacks the registry scopes. Answered with 403.
    INSUFFICIENT_SCOPE = "insufficient_scope"


@t.runtime_checkable
class HostAdapter(t.Protocol):
    """What the extension asks of its host platform: a :class:`typing.Protocol`, so any
    object with these methods will do, no subclassing.

    Every method is called inside an application context, but not always inside a
    request: the registry, token and page routes call them within a request (after the
    host's own ``before_request`` hooks), while the ``flask dependency-proxy`` commands
    call :meth:`find_group` (every command naming a group) and :meth:`find_group_by_id`
    (``stats``, ``rotate-credentials``) outside any request. The cleanup scheduler calls
    none. A host whose database session exists only within its requests passes
    ``outside_request=`` to :class:`~flask_dependency_proxy.DependencyProxy`, a context
    manager the extension enters around that work, in which it opens one.
    ``examples/minimal/app.py`` is a complete implementation in a few lines,
    ``examples/minimal/plain.py`` the same with plain SQLAlchemy and a per-request
    session, ``examples/platform/host.py`` a complete one for a bigger platform.

    An adapter may also have an attribute ``api_scope_name`` (a string, default
    ``"api"``): the name of the scope the host's tokens need for the REST API, which a
    refusal names (``the token lacks the host's API scope ('api')``) and
    ``WWW-Authenticate`` carries. It is not part of the protocol, so an adapter without
    it still is one.
    """

    def find_group(self, full_path: str) -> Group | None:
        """Return the group with this full path, or ``None``.

        The path comes lowercased, as image names are: match it case-insensitively
        when the host keeps its paths in mixed case (e.g. ``lower(path) = :full_path``).
        Called for pulls whose grant is not remembered, and for every page view and
        API call naming a group by path. ``None`` answers registry ``NAME_UNKNOWN``
        and 404 on the pages and in the API.
        """

    def find_group_by_id(self, group_id: int) -> Group | None:
        """Return the group with this id, or ``None`` (the REST API accepts ids)."""

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        """Check a username and a secret (password or any token the host issues).

        Only called for a client address that is not throttled. A host that also
        implements :class:`TokenAuthenticator` gets here only for secrets that
        :meth:`~TokenAuthenticator.authenticate_token` did not recognise as tokens.
        """

    def authenticate_api_token(self, secret: str) -> Principal | AuthFailure:
        """Check a token sent to the REST API (``PRIVATE-TOKEN`` or ``Bearer``).

        Return ``AuthFailure.INSUFFICIENT_SCOPE`` for a genuine token without the
        host's API scope (answered 403, naming ``api_scope_name``); the extension does
        not check scopes itself.
        The principal is then asked :meth:`can_admin` (and :meth:`can_read`, to
        answer 403 rather than 404) for the group it names.
        """

    def current_principal(self) -> Principal | None:
        """The principal logged in to the web session (e.g. Flask-Login's ``current_user``),
        or ``None`` for an anonymous visitor."""

    def load_principal(self, subject: str) -> Principal | None:
        """Resolve :attr:`Principal.subject` again; ``None`` once it is no longer valid
        (user blocked, token revoked or expired, job finished)."""

    def can_read(self, principal: Principal, group: Group) -> bool:
        """Whether the principal may pull through the group's proxy.

        Asked on a pull, and remembered for a few seconds per principal and group;
        ``False`` answers registry ``NAME_UNKNOWN``, as for a group that does not
        exist, so a response never tells which.
        """

    def can_admin(self, principal: Principal, group: Group) -> bool:
        """Whether the principal may change the group's proxy settings and purge its cache.

        Asked for every page view and every REST API call, for API-token principals
        too; ``False`` answers 404 on the pages and 403 or 404 in the API.
        """


@t.runtime_checkable
class TokenAuthenticator(t.Protocol):
    """An optional extra of a :class:`HostAdapter`: telling tokens from passwords.

    Failed logins are throttled per client address, and a throttled address gets no
    password checked (a password hash is a CPU cost an attacker could aim). Tokens
    with enough entropy cannot be guessed, so they need no throttle: a host whose
    adapter also has this method gets its valid tokens accepted from any address,
    throttled or not. The extension calls it first; only when it answers ``None``
    does it check the throttle and then call :meth:`HostAdapter.authenticate`.

    Without this method every credential is treated as a password: throttled per
    (username, client address) and per client address, never per username alone.
    """

    def authenticate_token(self, username: str, secret: str) -> Principal | AuthFailure | None:
        """Check a secret that is one of the host's tokens, with cheap lookups only.

        Return a :class:`Principal` for a valid token, ``AuthFailure.INSUFFICIENT_SCOPE``
        for a genuine one without the registry scopes, ``AuthFailure.INVALID`` for a
        credential that cannot be valid at all (it counts as a failure), and ``None``
        when the secret is no token of this host, so it may be a password. Never
        compute a password hash here.
        """


@t.runtime_checkable
class CiImageSource(t.Protocol):
    """An optional extra of a :class:`HostAdapter`: the images a group's CI will pull.

    The refresher (predictive refresh, ``REFRESH_*``) keeps a group's most pulled tags
    warm; a host whose adapter also has this method adds what its projects' CI
    definitions name, so the first pipeline after an upstream release finds it cached.
    Called from the refresher's thread inside the host's ``outside_request`` context,
    once per group and run.
    """

    def ci_image_references(self, group: Group) -> t.Iterable[str]:
        """The image references the CI definitions of the group's projects pull, with
        their variables resolved: ``[server/]group/dependency_proxy/containers/IMAGE:TAG``
        (references through another group or registry are left out by the extension)."""
