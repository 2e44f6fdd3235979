"""One request to an upstream registry, on behalf of the registry calls of
:class:`~.client.UpstreamClient`: the breaker and a ``429``'s hold first, then the token
or basic auth a challenge asks for, redirects under the address rule, retries, the
rate-limit headers, and the answer's status turned into an :class:`~.errors.UpstreamError`.

On a redirect, ``Authorization`` (and basic credentials) go to the upstream's own origin
only: a blob redirect to a CDN or object store carries its own signature. At most
``_MAX_REDIRECTS`` are followed, to ``http``/``https`` only, and a redirect target's
``401`` is never answered with the upstream's credentials.
"""

from __future__ import annotations

import logging
import re
import time
import typing as t
from urllib.parse import urljoin

import requests

from ..metrics import Metrics
from ..oci.digits import ascii_int
from .address import AddressRule, origin
from .bearer import BearerTokens, parse_challenge
from .breaker import MAX_RETRY_WAIT_SECONDS, CircuitBreaker, RetryAfterHold
from .errors import (
    UpstreamDown,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRefused,
)

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 5
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
#: ``RateLimit-Remaining`` at or below this is logged as a warning.
_LOW_RATE_LIMIT = 10


class Transport:
    """Sends the requests of one upstream client (one upstream and credential).

    :param breaker: shared by the clients of one upstream.
    :param tokens: the client's bearer tokens (and its credentials).
    :param address_rule: where redirects may lead.
    :param name: the upstream's label in metrics.
    :param on_answer: told the status of every upstream answer (``None``: none came).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session,
        timeout: tuple[float, float],
        retries: int,
        breaker: CircuitBreaker,
        tokens: BearerTokens,
        address_rule: AddressRule,
        name: str,
        metrics: Metrics,
        on_answer: t.Callable[[int | None], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.origin = origin(base_url)
        self.session = session
        self.credentials = tokens.credentials
        self.timeout = timeout
        self.retries = retries
        self.breaker = breaker
        self.hold = RetryAfterHold(self.origin)
        self.tokens = tokens
        self.name = name
        self.metrics = metrics
        self.on_answer = on_answer
        self._address_rule = address_rule
        #: Docker Hub's remaining pull quota, from its ``RateLimit-Remaining`` header.
        self.rate_limit_remaining: int | None = None
        #: The quota those pulls come from, from ``RateLimit-Limit``.
        self.rate_limit_limit: int | None = None
        #: The HTTP status of upstream's last answer; ``None`` when it failed to connect.
        self.last_status: int | None = None

    def request(
        self,
        method: str,
        path: str,
        repository: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Upstream's ``200`` or ``206`` answer to ``method path``, after retries.

        :raises UpstreamError: any other answer, or none (see the kinds of it).
        """
        url = self.base_url + path
        attempt = 0
        while True:
            if not self.breaker.allows():
                raise UpstreamDown(f"upstream {self.origin} is down; not asked for {path}")
            self.hold.check(path)
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
                self.hold.note(response.headers.get("Retry-After"))
            if (
                response.status_code in _RETRYABLE_STATUS
                and attempt < self.retries
                and not self.hold.holding()
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

    def _authorized(
        self, method: str, url: str, repository: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        token = self.tokens.before_request(repository)
        response = self._send(method, url, headers, token, stream)
        if response.status_code != 401 or origin(response.url) != self.origin:
            # A redirect target's challenge is not the upstream's: it surfaces as a 401.
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        response.close()
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            token = self.tokens.challenged(
                params["realm"], params.get("service", ""), repository, rejected=token or ""
            )
            return self._send(method, url, headers, token, stream)
        if scheme == "basic" and self.credentials:
            return self._send(method, url, headers, None, stream, basic=True)
        return self._send(method, url, headers, token, stream)  # surfaces as 401 below

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
            self._address_rule.check_redirect(url)
            # Blob redirects go to a CDN or object store whose URL carries its own
            # signature: the upstream's Authorization goes to the upstream's origin only.
            same_origin = origin(url) == self.origin
            response = self.session.request(
                "HEAD" if method == "HEAD" else "GET",
                url,
                headers=send_headers if same_origin else headers,
                auth=self.credentials if basic and same_origin else None,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
            )
            self._address_rule.check_peer(response)
        else:
            if response.status_code in _REDIRECT_STATUS:
                response.close()
                raise UpstreamRefused(f"more than {_MAX_REDIRECTS} redirects from upstream")
        return response

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
                self.origin,
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


def _leading_int(value: str | None) -> int | None:
    """``76`` from Docker Hub's ``76;w=21600``."""
    match = re.match(r"\s*([0-9]{1,18})", value or "")
    return int(match.group(1)) if match else None


def _retry_wait(retry_after: str | None, attempt: int) -> float:
    seconds = ascii_int(retry_after)
    if seconds is not None:
        return min(float(seconds), MAX_RETRY_WAIT_SECONDS)
    return min(0.2 * (attempt + 1) * 2, MAX_RETRY_WAIT_SECONDS)
