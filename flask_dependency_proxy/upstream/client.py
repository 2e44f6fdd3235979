"""HTTP client for the upstream registry (Docker Hub by default).

Knows the registry protocol and its token auth; knows nothing of the database,
storage or Flask. One client per application, shared by its threads: the
``requests.Session`` pools connections and the token cache is locked.

What an upstream (or whoever answers in its name) cannot make the client do:

- Send the configured credentials anywhere but a token realm named by a ``401`` of the
  upstream's own origin: a redirect target's challenge is never followed, an ``http://``
  realm is refused for an ``https://`` upstream, and a realm must pass the address rule.
- Connect to an internal address. The address rule: a redirect target or realm whose
  host resolves to a loopback, private, unique-local, link-local or unspecified address
  is refused unless the upstream's own host is in that same class (an on-premise
  registry on a private network, or a test upstream on 127.0.0.1). Every resolved
  address is checked before the request, and the address actually connected to is
  checked again before any byte of the answer is read: a DNS answer that changes
  between the two (rebinding) can get one request sent, never its answer used.
- Carry ``Authorization`` to another host on a redirect; follow more than
  ``_MAX_REDIRECTS`` of them, or a scheme other than ``http``/``https``.
- Decode a compressed manifest (a decoding bomb) or buffer more than
  :data:`~.reference.MAX_MANIFEST_BYTES` of one.

After ``breaker_failures`` connection failures in a row the upstream counts as down for
``breaker_seconds``: requests fail at once (cached tags are served stale) instead of
each waiting for its connect timeout, then the next request tries again; each failed
try doubles the wait, up to ``breaker_max_seconds``. After a ``429`` whose
``Retry-After`` is longer than a client request can wait, the client asks nothing of
the upstream until that time has passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import typing as t
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from ..metrics import Metrics
from ..oci.digits import ascii_int
from ..oci.reference import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    UPSTREAM_MANIFEST_ACCEPT,
    is_tag,
)
from .token_cache import TokenShare

log = logging.getLogger(__name__)

#: Tokens are dropped this many seconds before upstream says they expire.
_TOKEN_EXPIRY_MARGIN_SECONDS = 30
#: Docker Hub's tokens last 300 s; a token response without ``expires_in`` gets 60 s.
_DEFAULT_TOKEN_SECONDS = 60
#: Longest ``Retry-After`` honoured inside a single client request.
_MAX_RETRY_WAIT_SECONDS = 2.0
_MAX_REDIRECTS = 5
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
#: Connection failures in a row after which the upstream counts as down.
_BREAKER_FAILURES = 3
#: How long a down upstream is not asked before the next request tries again.
_BREAKER_SECONDS = 5.0
#: The longest such wait, however often the upstream failed again.
_BREAKER_MAX_SECONDS = 300.0
#: Longest ``Retry-After`` honoured between client requests (a day).
_MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
#: ``RateLimit-Remaining`` at or below this is logged as a warning.
_LOW_RATE_LIMIT = 10
#: A tag list larger than this is refused rather than buffered.
MAX_TAG_LIST_BYTES = 4 * 1024 * 1024
_NEXT_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class UpstreamError(Exception):
    """Upstream could not answer; a cached copy may be served instead."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class UpstreamNotFound(UpstreamError):
    """Upstream answered that the manifest or blob does not exist (or is not ours to see)."""


class UpstreamRateLimited(UpstreamError):
    """Upstream answered 429 on every attempt."""


class UpstreamDigestMismatch(UpstreamError):
    """Upstream's bytes do not hash to the digest it announced or was asked for."""


class UpstreamRefused(UpstreamError):
    """The client refused what upstream asked of it (a realm, a redirect, an encoding)."""


class UpstreamDown(UpstreamError):
    """Upstream failed to connect repeatedly and is not asked again for a few seconds."""


@dataclasses.dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int | None


@dataclasses.dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    content: bytes


class BlobStream:
    """An open upstream blob response; iterate it once, then close it.

    :param offset: where the bytes start in the blob (non-zero for a resumed download).
    """

    def __init__(self, response: requests.Response, chunk_size: int, offset: int = 0) -> None:
        self._response = response
        self._chunk_size = chunk_size
        self.offset = offset
        #: The status of upstream's answer (200, or 206 for a range).
        self.status = response.status_code
        remaining = ascii_int(response.headers.get("Content-Length"))
        #: The whole blob's size, when upstream said.
        self.size: int | None = None if remaining is None else offset + remaining

    def __iter__(self) -> t.Iterator[bytes]:
        # decode_content=False: blob bytes are hashed as sent, never gunzipped.
        chunks = self._response.raw.stream(self._chunk_size, decode_content=False)
        return t.cast("t.Iterator[bytes]", chunks)

    def close(self) -> None:
        self._response.close()


@dataclasses.dataclass(frozen=True)
class TagPage:
    """One page of upstream's tag list.

    :param next_last: the ``last`` value of the next page, when upstream has more.
    """

    tags: tuple[str, ...]
    next_last: str | None
    #: The tags a group has cached, served because upstream could not be asked.
    stale: bool = False


@dataclasses.dataclass
class _CachedToken:
    value: str
    expires_at: float


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


class UpstreamClient:
    """Pull-side registry client with bearer-token negotiation and retries.

    :param base_url: e.g. ``https://registry-1.docker.io``.
    :param session: a shared ``requests.Session`` (connection pool).
    :param credentials: optional ``(username, password)``, sent only to the token realm
        the upstream's own origin challenges with.
    :param breaker: shared by the clients of one upstream (one per credential); made
        from ``breaker_failures``, ``breaker_seconds`` and ``breaker_max_seconds`` when
        not given.
    :param allow_private_redirects: blob redirects and token realms may lead to private
        and loopback addresses too (see :class:`AddressRule`).
    :param auth_hosts: hosts a token realm may be on besides the upstream's own.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        credentials: tuple[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
        chunk_size: int = 1024 * 1024,
        shared_tokens: TokenShare | None = None,
        breaker: CircuitBreaker | None = None,
        breaker_failures: int = _BREAKER_FAILURES,
        breaker_seconds: float = _BREAKER_SECONDS,
        breaker_max_seconds: float = _BREAKER_MAX_SECONDS,
        allow_private_redirects: bool = False,
        auth_hosts: t.Sequence[str] = (),
        clock: t.Callable[[], float] = time.time,
        name: str = "upstream",
        metrics: Metrics | None = None,
        on_answer: t.Callable[[int | None], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: The instance's name for the upstream: its label in metrics.
        self.name = name
        self.metrics = metrics or Metrics()
        #: Told the status of every upstream answer (``None``: none came), e.g. for the
        #: request's log line.
        self.on_answer = on_answer
        self.session = session or requests_session()
        self.credentials = credentials
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.chunk_size = chunk_size
        self._clock = clock
        self._single_flight = _SingleFlight()
        #: Tokens shared with the other worker processes of this host.
        self.shared_tokens = shared_tokens
        self._tokens: dict[str, _CachedToken] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        #: The last ``(realm, service)`` the upstream's own origin challenged with, so
        #: later repositories get a token before their first request instead of after a 401.
        self._realm: tuple[str, str] | None = None
        #: Docker Hub's remaining pull quota, from its ``RateLimit-Remaining`` header.
        self.rate_limit_remaining: int | None = None
        #: The quota those pulls come from, from ``RateLimit-Limit``.
        self.rate_limit_limit: int | None = None
        #: The HTTP status of upstream's last answer; ``None`` when it failed to connect.
        self.last_status: int | None = None
        self.breaker = breaker or CircuitBreaker(
            breaker_failures, breaker_seconds, max_seconds=breaker_max_seconds
        )
        #: ``time.monotonic()`` until which a ``429``'s ``Retry-After`` holds requests back.
        self._throttled_until = 0.0
        self._origin = _origin(self.base_url)
        host = (urlsplit(self.base_url).hostname or "").lower()
        self._realm_hosts = frozenset({host, *(h.lower() for h in auth_hosts)})
        self._address_rule = AddressRule(host, allow_private=allow_private_redirects)

    # -- public API ---------------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        """Ask for a manifest's digest without spending Docker Hub pull quota.

        Concurrent calls for the same manifest share one upstream request.
        """
        return self._single_flight.do(
            ("HEAD", repository, reference), lambda: self._head_manifest(repository, reference)
        )

    def _head_manifest(self, repository: str, reference: str) -> ManifestHead:
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            headers={"Accept": UPSTREAM_MANIFEST_ACCEPT},
        )
        response.close()
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise UpstreamError("upstream HEAD answered without Docker-Content-Digest")
        return ManifestHead(
            digest=digest,
            media_type=_media_type(response),
            size=ascii_int(response.headers.get("Content-Length")),
        )

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch a manifest and check its bytes against the digest upstream announced.

        Concurrent calls for the same manifest share one upstream request (Docker Hub
        counts every manifest GET as a pull).

        :raises UpstreamDigestMismatch: when the body does not hash to that digest (or to
            ``reference`` when it is a digest).
        """
        return self._single_flight.do(
            ("GET", repository, reference), lambda: self._get_manifest(repository, reference)
        )

    def _get_manifest(self, repository: str, reference: str) -> Manifest:
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            headers={"Accept": UPSTREAM_MANIFEST_ACCEPT},
            stream=True,
        )
        try:
            content = _read_identity(response, MAX_MANIFEST_BYTES, "manifest")
        finally:
            response.close()
        announced = response.headers.get("Docker-Content-Digest")
        if is_tag(reference) and not announced and _origin(response.url) != self._origin:
            raise UpstreamRefused(
                f"manifest {repository}:{reference} came from {_origin(response.url)} "
                "without a digest to check it against"
            )
        expected = announced if is_tag(reference) else reference
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if expected and expected.startswith("sha512:"):
            actual = "sha512:" + hashlib.sha512(content).hexdigest()
        if expected and expected != actual:
            raise UpstreamDigestMismatch(
                f"manifest {repository}:{reference} hashes to {actual}, "
                f"upstream announced {expected}"
            )
        return Manifest(digest=actual, media_type=_media_type(response), content=content)

    def list_tags(self, repository: str, n: int | None, last: str | None) -> TagPage:
        """One page of the repository's tags, ``n`` at most, after ``last``.

        :raises UpstreamNotFound: upstream does not know the repository.
        """
        query = "&".join(
            f"{key}={value}" for key, value in (("n", n), ("last", last)) if value is not None
        )
        path = f"/v2/{repository}/tags/list" + (f"?{query}" if query else "")
        response = self._request("GET", path, repository, stream=True)
        try:
            body = _read_identity(response, MAX_TAG_LIST_BYTES, "tag list")
        finally:
            response.close()
        try:
            tags = json.loads(body).get("tags") or []
        except (ValueError, AttributeError) as exc:
            raise UpstreamError("upstream sent a tag list that is not JSON") from exc
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise UpstreamError("upstream sent a tag list that is not a list of names")
        return TagPage(tags=tuple(tags), next_last=_next_last(response.headers.get("Link")))

    def head_blob(self, repository: str, digest: str) -> int | None:
        """Confirm upstream serves this blob in this repository; returns its size if known."""
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        response.close()
        return ascii_int(response.headers.get("Content-Length"))

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> BlobStream:
        """Start a blob download, or resume one at ``offset`` with a ``Range`` request.

        The returned stream's ``offset`` says where its bytes start: ``0`` when upstream
        ignored the range and sends the whole blob again.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        response = self._request(
            "GET", f"/v2/{repository}/blobs/{digest}", repository, headers=headers, stream=True
        )
        start = 0
        if offset and response.status_code == 206:
            match = re.match(r"bytes ([0-9]{1,18})-", response.headers.get("Content-Range", ""))
            start = int(match.group(1)) if match else 0
            if start != offset:
                response.close()
                raise UpstreamError(f"upstream resumed {digest} at {start}, not {offset}")
        return BlobStream(response, self.chunk_size, start)

    # -- requests, retries, redirects ----------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        repository: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        url = self.base_url + path
        attempt = 0
        while True:
            if not self.breaker.allows():
                raise UpstreamDown(f"upstream {self._origin} is down; not asked for {path}")
            self._check_throttle(path)
            started = time.monotonic()
            try:
                response = self._authorized(method, url, repository, headers or {}, stream)
            except requests.RequestException as exc:
                self._observe(path, None, started)
                if isinstance(exc, requests.ConnectionError) and not isinstance(
                    exc, requests.ReadTimeout
                ):
                    self.last_status = None
                    self.breaker.failed()
                if attempt < self.retries and self.breaker.allows():
                    attempt += 1
                    time.sleep(0.2 * attempt)
                    continue
                raise UpstreamError(f"upstream {method} {path} failed: {exc}") from exc
            self.breaker.succeeded()
            self.last_status = response.status_code
            self._observe(path, response.status_code, started)
            if response.status_code == 429:
                self._note_retry_after(response.headers.get("Retry-After"))
            if (
                response.status_code in _RETRYABLE_STATUS
                and attempt < self.retries
                and self._throttled_until <= time.monotonic()
            ):
                wait = _retry_wait(response.headers.get("Retry-After"), attempt)
                response.close()
                attempt += 1
                time.sleep(wait)
                continue
            return self._check(response, method, path)

    def _observe(self, path: str, status: int | None, started: float) -> None:
        self.metrics.upstream_request(
            self.name,
            _request_kind(path),
            "error" if status is None else str(status),
            time.monotonic() - started,
        )
        if self.on_answer is not None:
            self.on_answer(status)

    def throttled_until(self) -> float | None:
        """Seconds since the epoch until which a ``429`` holds requests back, or ``None``."""
        left = self._throttled_until - time.monotonic()
        return time.time() + left if left > 0 else None

    def _check_throttle(self, path: str) -> None:
        left = self._throttled_until - time.monotonic()
        if left > 0:
            raise UpstreamRateLimited(
                f"upstream {self._origin} asked to wait {left:.0f} s more; not asked for {path}",
                status=429,
                retry_after=str(int(left) + 1),
            )

    def _note_retry_after(self, value: str | None) -> None:
        """Hold requests back for a ``Retry-After`` longer than a request waits itself."""
        seconds = retry_after_seconds(value, now=time.time())
        if seconds is None or seconds <= _MAX_RETRY_WAIT_SECONDS:
            return
        seconds = min(seconds, _MAX_RETRY_AFTER_SECONDS)
        log.warning("upstream %s answered 429; not asked for %.0f s", self._origin, seconds)
        self._throttled_until = max(self._throttled_until, time.monotonic() + seconds)

    def _authorized(
        self, method: str, url: str, repository: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        realm = self._realm
        token = None
        if realm is not None:
            token = self._cached_token(self._token_key(*realm, repository))
            if token is None:
                token = self._fetch_token(repository, *realm, rejected=None)
        response = self._send(method, url, headers, token, stream)
        if response.status_code != 401 or _origin(response.url) != self._origin:
            # A redirect target's challenge is not the upstream's: it surfaces as a 401.
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        response.close()
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            realm = (self._checked_realm(params["realm"]), params.get("service", ""))
            self._realm = realm
            token = self._fetch_token(repository, *realm, rejected=token or "")
            return self._send(method, url, headers, token, stream)
        if scheme == "basic" and self.credentials:
            return self._send(method, url, headers, None, stream, basic=True)
        return self._send(method, url, headers, token, stream)  # surfaces as 401 below

    def _checked_realm(self, realm: str) -> str:
        """The realm, if credentials and token requests may go there.

        :raises UpstreamRefused: not ``https`` for an ``https`` upstream, or on an
            address the address rule refuses.
        """
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamRefused(f"upstream named a token realm that is not a URL: {realm!r}")
        if urlsplit(self.base_url).scheme == "https" and parts.scheme != "https":
            raise UpstreamRefused(f"refused plain-http token realm {realm} of an https upstream")
        if parts.hostname.lower() not in self._realm_hosts:
            raise UpstreamRefused(
                f"refused token realm on {parts.hostname[:100]}: not the upstream's host "
                "or one of its auth hosts"
            )
        self._address_rule.check(parts.hostname)
        return realm

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        token: str | None,
        stream: bool,
        basic: bool = False,
    ) -> requests.Response:
        send_headers = dict(headers)
        if token:
            send_headers["Authorization"] = f"Bearer {token}"
        response = self.session.request(
            method,
            url,
            headers=send_headers,
            auth=self.credentials if basic else None,
            timeout=self.timeout,
            stream=stream,
            allow_redirects=False,
        )
        self._note_rate_limit(response)
        for _ in range(_MAX_REDIRECTS):
            if response.status_code not in _REDIRECT_STATUS:
                return response
            location = response.headers.get("Location")
            response.close()
            if not location:
                break
            url = urljoin(url, location)
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamRefused(f"refused redirect to {url[:200]}")
            self._address_rule.check(parts.hostname)
            # Blob redirects go to a CDN or object store whose URL carries its own
            # signature: the upstream's Authorization goes to the upstream's origin only.
            same_origin = _origin(url) == self._origin
            response = self.session.request(
                "HEAD" if method == "HEAD" else "GET",
                url,
                headers=send_headers if same_origin else headers,
                auth=self.credentials if basic and same_origin else None,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
            )
            self._check_peer(response)
        else:
            if response.status_code in _REDIRECT_STATUS:
                response.close()
                raise UpstreamRefused(f"more than {_MAX_REDIRECTS} redirects from upstream")
        return response

    def _check_peer(self, response: requests.Response) -> None:
        """Refuse an answer from an address the rule refuses, before reading any of it."""
        address = _peer_address(response)
        if address is None:
            return
        try:
            self._address_rule.check_address(address)
        except UpstreamRefused:
            response.close()
            raise

    def _note_rate_limit(self, response: requests.Response) -> None:
        remaining = _leading_int(response.headers.get("RateLimit-Remaining"))
        if remaining is None:
            return
        limit = _leading_int(response.headers.get("RateLimit-Limit"))
        if limit is not None:
            self.rate_limit_limit = limit
        self.metrics.upstream_rate_limit(self.name, remaining)
        if remaining <= _LOW_RATE_LIMIT and remaining != self.rate_limit_remaining:
            log.warning(
                "upstream %s: %s pulls left of %s in its rate limit window",
                self._origin,
                remaining,
                self.rate_limit_limit if self.rate_limit_limit is not None else "?",
            )
        self.rate_limit_remaining = remaining

    def _check(self, response: requests.Response, method: str, path: str) -> requests.Response:
        status = response.status_code
        if status in (200, 206):
            return response
        response.close()
        message = f"upstream {method} {path} answered {status}"
        if status in (401, 403, 404):
            raise UpstreamNotFound(message, status=status)
        if status == 429:
            raise UpstreamRateLimited(
                message, status=status, retry_after=response.headers.get("Retry-After")
            )
        raise UpstreamError(message, status=status, retry_after=response.headers.get("Retry-After"))

    # -- tokens -----------------------------------------------------------------------

    def _token_key(self, realm: str, service: str, repository: str) -> str:
        """Tokens are kept per realm, service, scope and credential."""
        scope = f"repository:{repository}:pull"
        return f"{realm}|{service}|{scope}|{credential_id(self.credentials)}"

    def _cached_token(self, key: str) -> str | None:
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached.expires_at > self._clock():
            return cached.value
        return None

    def _fetch_token(
        self, repository: str, realm: str, service: str, *, rejected: str | None
    ) -> str:
        """A pull token for ``repository``: from this process, from the other workers of
        the host (``shared``), or from the realm, in that order.

        :param rejected: a token upstream just refused (``""`` for none sent); it is not
            handed out again.
        """
        key = self._token_key(realm, service, repository)
        with self._lock:
            lock = self._token_locks.setdefault(key, threading.Lock())
        with lock:  # one token request per scope, whatever the number of threads
            cached = self._cached_token(key)
            if cached and cached != rejected:
                return cached
            shared = self.shared_tokens
            with shared.locked(key) if shared else contextlib.nullcontext():
                entry = shared.load(key) if shared else None
                if entry and entry[0] != rejected and entry[1] > self._clock():
                    value, expires = entry
                else:
                    value, expires = self._request_token(repository, realm, service)
                    if shared:
                        shared.save(key, value, expires)
            with self._lock:
                self._tokens[key] = _CachedToken(value, expires)
            return value

    def _request_token(self, repository: str, realm: str, service: str) -> tuple[str, float]:
        params = {"scope": f"repository:{repository}:pull"}
        if service:
            params["service"] = service
        started = time.monotonic()
        try:
            response = self.session.get(
                realm,
                params=params,
                auth=self.credentials,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            self.metrics.upstream_request(self.name, "token", "error", time.monotonic() - started)
            raise UpstreamError(f"upstream token request failed: {exc}") from exc
        self.metrics.upstream_request(
            self.name, "token", str(response.status_code), time.monotonic() - started
        )
        self._check_peer(response)
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


_T = t.TypeVar("_T")


class _Call(t.Generic[_T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None


class _SingleFlight:
    """Concurrent calls with the same key wait for the first one and share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[t.Hashable, _Call[t.Any]] = {}

    def do(self, key: t.Hashable, call: t.Callable[[], _T]) -> _T:
        with self._lock:
            running = self._calls.get(key)
            if running is None:
                mine: _Call[_T] = _Call()
                self._calls[key] = mine
        if running is not None:
            running.done.wait()
            if running.error is not None:
                raise running.error
            return t.cast(_T, running.result)
        try:
            mine.result = call()
            return mine.result
        except BaseException as exc:
            mine.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            mine.done.set()


def requests_session() -> requests.Session:
    """A connection pool for upstream clients: no transfer encodings, no credentials
    from the environment."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "flask-dependency-proxy"
    # Digests are of the bytes as stored upstream: never ask for a transfer encoding.
    session.headers["Accept-Encoding"] = "identity"
    # Never pick up credentials from ~/.netrc or proxies meant for other tools.
    session.trust_env = False
    return session


def _request_kind(path: str) -> str:
    """``manifest``, ``blob``, ``tags`` or ``other``: the label of an upstream path."""
    for marker, kind in (("/manifests/", "manifest"), ("/blobs/", "blob"), ("/tags/", "tags")):
        if marker in path:
            return kind
    return "other"


def _media_type(response: requests.Response) -> str:
    """The manifest's media type from upstream's ``Content-Type``.

    :raises UpstreamRefused: for anything but the manifest types the proxy asks for (a
        login page or an error page answered with ``200``): never cached, never served.
    """
    media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise UpstreamRefused(
            f"upstream answered a manifest as {media_type[:100] or 'no Content-Type'!r},"
            " which is not a manifest media type"
        )
    return media_type


def _read_identity(response: requests.Response, limit: int, what: str) -> bytes:
    """The body as sent, at most ``limit`` bytes, never decoded.

    :raises UpstreamRefused: a ``Content-Encoding`` other than ``identity`` (which the
        client never asks for), or a body larger than ``limit``.
    """
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UpstreamRefused(f"upstream sent a {what} with Content-Encoding {encoding[:40]}")
    length = ascii_int(response.headers.get("Content-Length"))
    if length is not None and length > limit:
        raise UpstreamRefused(f"upstream {what} is larger than {limit} bytes")
    content = bytearray()
    for chunk in response.raw.stream(64 * 1024, decode_content=False):
        content += chunk
        if len(content) > limit:
            raise UpstreamRefused(f"upstream {what} is larger than {limit} bytes")
    if length is not None and len(content) != length:
        raise UpstreamError(f"upstream {what} response was cut short")
    return bytes(content)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _peer_address(response: requests.Response) -> str | None:
    """The IP address the response's connection is connected to, while it is open: from
    urllib3's connection, or (when the server closes after the response, and http.client
    has let go of the connection) from the socket the body is read from."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is None:
        body = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(body, "raw", None), "_sock", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else None
    except (OSError, AttributeError, IndexError):
        return None


def _leading_int(value: str | None) -> int | None:
    """``76`` from Docker Hub's ``76;w=21600``."""
    match = re.match(r"\s*([0-9]{1,18})", value or "")
    return int(match.group(1)) if match else None


def _next_last(link: str | None) -> str | None:
    """The ``last`` parameter of a ``Link: <...>; rel="next"`` header."""
    match = _NEXT_LINK_RE.search(link or "")
    if not match:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("last")
    return values[0] if values else None


def credential_id(credentials: tuple[str, str] | None) -> str:
    """Tells credentials apart in a cache key without carrying the password."""
    if credentials is None:
        return ""
    username, password = credentials
    return f"{username}:{hashlib.sha256(password.encode()).hexdigest()[:32]}"


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` (seconds or an HTTP date) asks for."""
    value = (value or "").strip()
    seconds = ascii_int(value)
    if seconds is not None:
        return float(seconds)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)


def _retry_wait(retry_after: str | None, attempt: int) -> float:
    seconds = ascii_int(retry_after)
    if seconds is not None:
        return min(float(seconds), _MAX_RETRY_WAIT_SECONDS)
    return min(0.2 * (attempt + 1) * 2, _MAX_RETRY_WAIT_SECONDS)


class CircuitBreaker:
    """Counts connection failures in a row; after ``failures`` of them, :meth:`allows`
    answers no for ``seconds``, then lets requests try again. One more failure opens it
    again at once, for twice as long each time, up to ``max_seconds``; a success closes
    it and forgets the failures."""

    def __init__(
        self,
        failures: int,
        seconds: float,
        *,
        max_seconds: float | None = None,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.seconds = seconds
        self.max_seconds = max(seconds, max_seconds if max_seconds is not None else seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._open_until = 0.0

    def allows(self) -> bool:
        return self.failures <= 0 or self._clock() >= self._open_until

    def open_until(self) -> float | None:
        """Seconds since the epoch until which the upstream is not asked, or ``None``."""
        left = self._open_until - self._clock()
        return time.time() + left if left > 0 and self.failures > 0 else None

    def failed(self) -> None:
        with self._lock:
            self._in_a_row += 1
            if self.failures <= 0 or self._in_a_row < self.failures:
                return
            doublings = min(self._in_a_row - self.failures, 30)
            wait = min(self.seconds * 2**doublings, self.max_seconds)
            if self._clock() >= self._open_until:
                log.warning(
                    "upstream failed to connect %s times in a row; not asked for %.0f s",
                    self._in_a_row,
                    wait,
                )
            self._open_until = self._clock() + wait

    def succeeded(self) -> None:
        with self._lock:
            self._in_a_row = 0
            self._open_until = 0.0


def address_class(address: str) -> str:
    """``unspecified``, ``loopback``, ``link-local``, ``private`` (RFC 1918, unique-local
    ``fc00::/7`` and other non-global ranges), or ``public``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_global and not ip.is_multicast:
        return "public"
    return "private"


class AddressRule:
    """Which addresses a redirect or token realm may lead to: public ones, those in the
    same class as the upstream's own host (resolved once, on first use), and with
    ``allow_private`` private and loopback ones. Link-local addresses (cloud metadata
    services) and unspecified ones only for an upstream in that class itself.

    :param upstream_host: the host name or address of the configured upstream.
    """

    def __init__(self, upstream_host: str, *, allow_private: bool = False) -> None:
        self.upstream_host = upstream_host
        self._extra = frozenset({"private", "loopback"} if allow_private else ())
        self._allowed: frozenset[str] | None = None

    def allowed_classes(self) -> frozenset[str]:
        if self._allowed is None:
            try:
                own = {address_class(a) for a in resolve(self.upstream_host)}
            except UpstreamError:
                # Not cached: try resolving again next time.
                return frozenset({"public"}) | self._extra
            self._allowed = frozenset({"public"} | own) | self._extra
        return self._allowed

    def check(self, host: str) -> None:
        """:raises UpstreamRefused: when any address ``host`` resolves to is refused."""
        for address in resolve(host):
            self.check_address(address, host)

    def check_address(self, address: str, host: str | None = None) -> None:
        kind = address_class(address)
        if kind not in self.allowed_classes():
            raise UpstreamRefused(
                f"refused {host or address}: {address} is a {kind} address and the "
                f"upstream {self.upstream_host} is not"
            )


def resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (itself, for an address).

    :raises UpstreamError: the name does not resolve.
    """
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {host[:100]}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})
