"""Registry token auth: a ``WWW-Authenticate: Bearer`` challenge, and the pull tokens
asked of its realm, kept until shortly before they expire.

The configured credentials go to a token realm named by a ``401`` of the upstream's own
origin only (the client never hands over a redirect target's challenge): an ``http://``
realm is refused for an ``https://`` upstream, its host must be the upstream's own or
one of its auth hosts, and its addresses must pass the :class:`~.address.AddressRule`.

A token is asked for once per realm, service, scope and credential, however many
threads need it; with a :class:`~.token_cache.TokenShare`, once per host (and fleet).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
import typing as t
from urllib.parse import urlsplit

import requests

from ..metrics import Metrics
from .address import AddressRule
from .credentials import credential_id
from .errors import UpstreamError, UpstreamRefused
from .token_cache import TokenShare

#: Tokens are dropped this many seconds before upstream says they expire.
_TOKEN_EXPIRY_MARGIN_SECONDS = 30
#: Docker Hub's tokens last 300 s; a token response without ``expires_in`` gets 60 s.
_DEFAULT_TOKEN_SECONDS = 60
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` value into its scheme and parameters.

    Parameter values may be quoted strings containing commas (``scope="repo:x:pull,push"``).
    """
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        key, quoted, bare = match.groups()
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
    return scheme.lower(), params


@dataclasses.dataclass
class _CachedToken:
    value: str
    expires_at: float


class BearerTokens:
    """The pull tokens of one upstream client (one upstream and credential).

    :param base_url: the upstream's base URL.
    :param credentials: optional ``(username, password)``, sent to the token realm only.
    :param address_rule: the client's rule for realm addresses.
    :param auth_hosts: hosts a token realm may be on besides the upstream's own.
    :param shared: tokens shared with the other worker processes of this host.
    :param clock: seconds since the epoch (token lifetimes, shared ones too).
    :param name: the upstream's label in metrics.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session,
        credentials: tuple[str, str] | None,
        timeout: tuple[float, float],
        address_rule: AddressRule,
        auth_hosts: t.Sequence[str] = (),
        shared: TokenShare | None = None,
        clock: t.Callable[[], float] = time.time,
        metrics: Metrics,
        name: str,
    ) -> None:
        self.credentials = credentials
        #: Tokens shared with the other worker processes of this host.
        self.shared = shared
        self._session = session
        self._timeout = timeout
        self._address_rule = address_rule
        self._clock = clock
        self._metrics = metrics
        self._name = name
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        host = (parts.hostname or "").lower()
        self._realm_hosts = frozenset({host, *(h.lower() for h in auth_hosts)})
        self._tokens: dict[str, _CachedToken] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        #: The last ``(realm, service)`` the upstream's own origin challenged with, so
        #: later repositories get a token before their first request instead of after a 401.
        self._realm: tuple[str, str] | None = None

    def before_request(self, repository: str) -> str | None:
        """A token to send with the first request for ``repository``, once a challenge
        named the realm; ``None`` before that."""
        realm = self._realm
        if realm is None:
            return None
        token = self._cached(self._key(*realm, repository))
        if token is None:
            token = self._fetch(repository, *realm, rejected=None)
        return token

    def challenged(self, realm: str, service: str, repository: str, *, rejected: str) -> str:
        """A token for ``repository`` from the realm a ``401`` of the upstream's own
        origin named (remembered for later requests).

        :param rejected: the token upstream just refused (``""`` for none sent); it is
            not handed out again.
        :raises UpstreamRefused: the realm is refused (see :meth:`checked_realm`).
        """
        named = (self.checked_realm(realm), service)
        self._realm = named
        return self._fetch(repository, *named, rejected=rejected)

    def checked_realm(self, realm: str) -> str:
        """The realm, if credentials and token requests may go there.

        :raises UpstreamRefused: not ``https`` for an ``https`` upstream, or on an
            address the address rule refuses.
        """
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamRefused(f"upstream named a token realm that is not a URL: {realm!r}")
        if self._https and parts.scheme != "https":
            raise UpstreamRefused(f"refused plain-http token realm {realm} of an https upstream")
        if parts.hostname.lower() not in self._realm_hosts:
            raise UpstreamRefused(
                f"refused token realm on {parts.hostname[:100]}: not the upstream's host "
                "or one of its auth hosts"
            )
        self._address_rule.check(parts.hostname)
        return realm

    def _key(self, realm: str, service: str, repository: str) -> str:
        """Tokens are kept per realm, service, scope and credential."""
        scope = f"repository:{repository}:pull"
        return f"{realm}|{service}|{scope}|{credential_id(self.credentials)}"

    def _cached(self, key: str) -> str | None:
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached.expires_at > self._clock():
            return cached.value
        return None

    def _fetch(self, repository: str, realm: str, service: str, *, rejected: str | None) -> str:
        """A pull token for ``repository``: from this process, from the other workers of
        the host (``shared``), or from the realm, in that order.

        :param rejected: a token upstream just refused (``""`` for none sent); it is not
            handed out again.
        """
        key = self._key(realm, service, repository)
        with self._lock:
            lock = self._token_locks.setdefault(key, threading.Lock())
        with lock:  # one token request per scope, whatever the number of threads
            cached = self._cached(key)
            if cached and cached != rejected:
                return cached
            shared = self.shared
            with shared.locked(key) if shared else contextlib.nullcontext():
                entry = shared.load(key) if shared else None
                if entry and entry[0] != rejected and entry[1] > self._clock():
                    value, expires = entry
                else:
                    value, expires = self._request(repository, realm, service)
                    if shared:
                        shared.save(key, value, expires)
            with self._lock:
                self._tokens[key] = _CachedToken(value, expires)
            return value

    def _request(self, repository: str, realm: str, service: str) -> tuple[str, float]:
        params = {"scope": f"repository:{repository}:pull"}
        if service:
            params["service"] = service
        started = time.monotonic()
        try:
            response = self._session.get(
                realm,
                params=params,
                auth=self.credentials,
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            self._metrics.upstream_request(self._name, "token", "error", time.monotonic() - started)
            raise UpstreamError(f"upstream token request failed: {exc}") from exc
        self._metrics.upstream_request(
            self._name, "token", str(response.status_code), time.monotonic() - started
        )
        self._address_rule.check_peer(response)
        with response:
            if response.status_code != 200:
                raise UpstreamError(
                    f"upstream token realm answered {response.status_code}",
                    status=502 if response.status_code < 500 else response.status_code,
                )
            try:
                body = response.json()
                value = body.get("token") or body["access_token"]
                lifetime = int(body.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UpstreamError("upstream token realm sent no token") from exc
        if not isinstance(value, str) or not value:
            raise UpstreamError("upstream token realm sent no token")
        return value, self._clock() + max(lifetime - _TOKEN_EXPIRY_MARGIN_SECONDS, 1)
