"""Who may pull what: credentials to principals, tokens to principals, principals to groups.

Every registry request goes through :meth:`AccessControl.authorize_pull`, cache hits
included. Answers from the host are remembered for ``PRINCIPAL_RECHECK_SECONDS`` so a
warm pull does not cost the host several queries; that is also the bound on how long a
blocked user or a revoked token keeps pulling with a registry token it already has.

The first time a grant is checked, and each time it is checked again, the group's id
is checked against the path recorded for it (:mod:`.group_paths`): a group whose id
now names another path is refused with ``DENIED``, saying what the host calls.

Every question to the host or the database runs in a database phase (:mod:`.database`),
which ends before the cache talks to upstream. While the database is unavailable, a
principal and a grant checked within ``PRINCIPAL_RECHECK_SECONDS`` still hold, and so
does the last known state of the group's proxy switch; anything else answers 503.
"""

from __future__ import annotations

import threading
import time
import typing as t

from ..host import AuthFailure, Group, HostAdapter, Principal, TokenAuthenticator
from ..models.database import DatabaseGuard, DatabaseUnavailable
from ..oci.errors import ErrorCode, RegistryError
from ..single_flight import SingleFlight
from .group_paths import GroupPathProblem
from .throttle import LoginRefused, LoginThrottle
from .tokens import InvalidToken, TokenIssuer

if t.TYPE_CHECKING:
    from ..models.repository import CacheMetadata
    from .group_paths import GroupPaths

_Entry = tuple[float, t.Any]


class _TTLCache:
    """A small thread-safe map whose entries expire; bounded so it cannot grow without end."""

    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: t.Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._data: dict[t.Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: t.Hashable) -> tuple[bool, t.Any]:
        with self._lock:
            entry = self._data.get(key)
        if entry is None or entry[0] <= self._clock():
            return False, None
        return True, entry[1]

    def put(self, key: t.Hashable, value: t.Any) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (self._clock() + self.ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


#: Longest reuse of the host's refusal (unknown group, no access). Short, so a member
#: just added can pull at once in every worker; long enough that a client retrying in a
#: loop does not reach the host on each request.
DENIAL_RECHECK_SECONDS = 2.0
#: Longest reuse of a group's proxy on/off switch. It is the extension's own row, cheap
#: to read, so switching the proxy on or off reaches every worker within this time.
SWITCH_RECHECK_SECONDS = 2.0


class AccessControl:
    """Checks credentials and group access through the host adapter.

    The host's answers are reused for ``recheck_seconds``: the bound on how long a
    blocked user or a revoked membership keeps pulling. Its refusals are reused for at
    most :data:`DENIAL_RECHECK_SECONDS`, a group's on/off switch for at most
    :data:`SWITCH_RECHECK_SECONDS`.

    :param group_default_enabled: whether a group without settings has its proxy on.
    :param database: runs the host's and the database's answers as database phases.
    :param paths: checks (and records) the path of each group id a grant is checked for.
    """

    def __init__(
        self,
        host: HostAdapter,
        issuer: TokenIssuer,
        metadata: CacheMetadata,
        throttle: LoginThrottle,
        *,
        recheck_seconds: float,
        group_default_enabled: bool,
        database: DatabaseGuard | None = None,
        paths: GroupPaths | None = None,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database or DatabaseGuard()
        self.paths = paths
        self.host = host
        self.issuer = issuer
        self.metadata = metadata
        self.throttle = throttle
        self.group_default_enabled = group_default_enabled
        self._principals = _TTLCache(recheck_seconds, clock=clock)
        self._grants = _TTLCache(recheck_seconds, clock=clock)
        self._denials = _TTLCache(min(recheck_seconds, DENIAL_RECHECK_SECONDS), clock=clock)
        self._switches = _TTLCache(min(recheck_seconds, SWITCH_RECHECK_SECONDS), clock=clock)
        #: The switch as last read, for as long as a grant holds: the answer while the
        #: database cannot be asked.
        self._known_switches = _TTLCache(recheck_seconds, clock=clock)
        # Requests that miss the same remembered answer at once (a herd of CI jobs at a
        # fresh worker) share one question to the host or the database.
        self._lookups = SingleFlight()

    def login(self, username: str, secret: str, address: str | None = None) -> Principal:
        """Check a ``docker login`` credential from the client at ``address``.

        A host token (see :class:`~.host.TokenAuthenticator`) is checked first and a
        valid one is never refused. Anything else is a password: refused unchecked
        while the (username, address) pair or the address is throttled, and counted
        against both when wrong.

        :raises RegistryError: ``UNAUTHORIZED`` (401) for a bad credential, ``DENIED``
            (403) for a genuine one without the registry scopes, ``TOOMANYREQUESTS``
            (429) with ``Retry-After`` after too many failures from the address.
        :raises DatabaseUnavailable: the credential could not be checked.
        """
        with self.database.phase("checking a login"):
            outcome: Principal | AuthFailure | None = None
            if isinstance(self.host, TokenAuthenticator):
                outcome = self.host.authenticate_token(username, secret)
            if outcome is None or outcome is AuthFailure.INVALID:
                outcome = self._throttled_login(username, secret, address, outcome)
        if outcome is AuthFailure.INSUFFICIENT_SCOPE:
            raise RegistryError(ErrorCode.DENIED, "the credential lacks the registry scopes")
        if not isinstance(outcome, Principal):
            raise RegistryError(ErrorCode.UNAUTHORIZED, "invalid username or password")
        return outcome

    def _throttled_login(
        self, username: str, secret: str, address: str | None, token_failure: AuthFailure | None
    ) -> Principal | AuthFailure:
        """A password, or a failed token: refused unchecked while the client address is
        throttled, else checked and counted."""
        try:
            attempt = self.throttle.check(username, address)
        except LoginRefused as refused:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                "too many failed logins from this address; try again later",
                headers={"Retry-After": str(refused.retry_after_seconds)},
            ) from None
        outcome: Principal | AuthFailure = (
            token_failure if token_failure is not None else self.host.authenticate(username, secret)
        )
        if isinstance(outcome, Principal):
            self.throttle.record_success(attempt)
        elif outcome is not AuthFailure.INSUFFICIENT_SCOPE:
            self.throttle.record_failure(attempt)
        return outcome

    def principal_for_token(self, token: str | None) -> Principal:
        """:raises RegistryError: ``UNAUTHORIZED`` for a missing, bad or expired token, or a
        principal the host no longer accepts."""
        if not token:
            raise RegistryError(ErrorCode.UNAUTHORIZED)
        try:
            claims = self.issuer.verify(token)
        except InvalidToken as exc:
            raise RegistryError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        subject = claims.subject
        found, principal = self._principals.get(subject)
        if not found:
            principal = self._lookups.do(("principal", subject), lambda: self._principal(subject))
        if principal is None:
            raise RegistryError(ErrorCode.UNAUTHORIZED, "the credential is no longer valid")
        return t.cast(Principal, principal)

    def _principal(self, subject: str) -> Principal | None:
        with self.database.phase("loading a token's principal"):
            principal = self.host.load_principal(subject)
        self._principals.put(subject, principal)
        return principal

    def authorize_pull(self, principal: Principal, group_path: str) -> Group:
        """The group a principal may pull through.

        :raises RegistryError: ``NAME_UNKNOWN`` alike for an unknown group, no access, and
            a disabled proxy, so a response never tells which; ``DENIED`` to a principal
            who may read the group when its id now names another path than the one
            recorded (:mod:`.group_paths`), or another group holds its path.
        """
        key = (principal.subject, group_path)
        found, group = self._grants.get(key)
        if not found:
            denied, _ = self._denials.get(key)
            if not denied:
                group = self._lookups.do(
                    ("group", *key), lambda: self._remembered_group(principal, group_path)
                )
        if group is None or not self._proxy_enabled(group):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"group": group_path})
        return t.cast(Group, group)

    def _remembered_group(self, principal: Principal, group_path: str) -> Group | None:
        """The readable group, remembered as a grant or a denial."""
        key = (principal.subject, group_path)
        group = self._readable_group(principal, group_path)
        if group is not None:
            self._grants.put(key, group)
        else:
            self._denials.put(key, True)
        return group

    def _readable_group(self, principal: Principal, group_path: str) -> Group | None:
        with self.database.phase("checking group access"):
            group = self.host.find_group(group_path)
            if group is None or not self.host.can_read(principal, group):
                return None
            if self.paths is not None:
                try:
                    self.paths.admit(group, claim=True)
                except GroupPathProblem as problem:
                    raise RegistryError(ErrorCode.DENIED, str(problem)) from None
        return group

    def _proxy_enabled(self, group: Group) -> bool:
        found, enabled = self._switches.get(group.id)
        if found:
            return bool(enabled)
        known, last_known = self._known_switches.get(group.id)
        try:
            return self._lookups.do(("switch", group.id), lambda: self._read_switch(group, known))
        except DatabaseUnavailable:
            if not known:
                raise
            return bool(last_known)

    def _read_switch(self, group: Group, known: bool) -> bool:
        with self.database.phase("reading the proxy switch", has_fallback=known):
            enabled = self.metadata.group_enabled(group.id, self.group_default_enabled)
        self._switches.put(group.id, enabled)
        self._known_switches.put(group.id, enabled)
        return bool(enabled)

    def forget(self) -> None:
        """Drop remembered answers, e.g. after a group's proxy was switched off here."""
        self._principals.clear()
        self._grants.clear()
        self._denials.clear()
        self._switches.clear()
        self._known_switches.clear()
