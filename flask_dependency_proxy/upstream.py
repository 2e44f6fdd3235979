"""HTTP client for the upstream registry (Docker Hub by default).

Knows the registry protocol and its token auth; knows nothing of the database,
storage or Flask. One client per application, shared by its threads: the
``requests.Session`` pools connections and the token cache is locked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
import typing as t
from urllib.parse import urljoin, urlsplit

import requests

from .reference import MAX_MANIFEST_BYTES, UPSTREAM_MANIFEST_ACCEPT
from .tokencache import TokenShare

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
        length = response.headers.get("Content-Length", "")
        remaining = int(length) if length.isdigit() else None
        #: The whole blob's size, when upstream said.
        self.size: int | None = None if remaining is None else offset + remaining

    def __iter__(self) -> t.Iterator[bytes]:
        # decode_content=False: blob bytes are hashed as sent, never gunzipped.
        chunks = self._response.raw.stream(self._chunk_size, decode_content=False)
        return t.cast("t.Iterator[bytes]", chunks)

    def close(self) -> None:
        self._response.close()


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
    :param credentials: optional ``(username, password)`` sent to the token realm.
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
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or _new_session()
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
        #: The last ``(realm, service)`` upstream challenged with, so later repositories
        #: get a token before their first request instead of after a 401.
        self._realm: tuple[str, str] | None = None
        #: Docker Hub's remaining pull quota, from its ``RateLimit-Remaining`` header.
        self.rate_limit_remaining: str | None = None

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
        length = response.headers.get("Content-Length", "")
        return ManifestHead(
            digest=digest,
            media_type=_media_type(response),
            size=int(length) if length.isdigit() else None,
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
            content = _read_limited(response, MAX_MANIFEST_BYTES)
        finally:
            response.close()
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        expected = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha512:"):
            actual = "sha512:" + hashlib.sha512(content).hexdigest()
        if expected and expected != actual:
            raise UpstreamDigestMismatch(
                f"manifest {repository}:{reference} hashes to {actual}, "
                f"upstream announced {expected}"
            )
        return Manifest(digest=actual, media_type=_media_type(response), content=content)

    def head_blob(self, repository: str, digest: str) -> int | None:
        """Confirm upstream serves this blob in this repository; returns its size if known."""
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        response.close()
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

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
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
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
            try:
                response = self._authorized(method, url, repository, headers or {}, stream)
            except requests.RequestException as exc:
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(0.2 * attempt)
                    continue
                raise UpstreamError(f"upstream {method} {path} failed: {exc}") from exc
            if response.status_code in _RETRYABLE_STATUS and attempt < self.retries:
                wait = _retry_wait(response.headers.get("Retry-After"), attempt)
                response.close()
                attempt += 1
                time.sleep(wait)
                continue
            return self._check(response, method, path)

    def _authorized(
        self, method: str, url: str, repository: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        token = self._cached_token(repository)
        if token is None and self._realm is not None:
            token = self._fetch_token(repository, *self._realm, rejected=None)
        response = self._send(method, url, headers, token, stream)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        response.close()
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            self._realm = (params["realm"], params.get("service", ""))
            token = self._fetch_token(repository, *self._realm, rejected=token or "")
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
        remaining = response.headers.get("RateLimit-Remaining")
        if remaining is not None:
            self.rate_limit_remaining = remaining
        for _ in range(_MAX_REDIRECTS):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location")
            response.close()
            if not location:
                break
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                break
            # Blob redirects go to a CDN or object store whose URL carries its own
            # signature: the upstream's Authorization must not follow.
            response = self.session.request(
                "HEAD" if method == "HEAD" else "GET",
                url,
                headers=headers,
                timeout=self.timeout,
                stream=stream,
                allow_redirects=False,
            )
        return response

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

    def _cached_token(self, repository: str) -> str | None:
        with self._lock:
            cached = self._tokens.get(repository)
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
        with self._lock:
            lock = self._token_locks.setdefault(repository, threading.Lock())
        key = f"{realm}|{service}|{repository}|{self.credentials[0] if self.credentials else ''}"
        with lock:  # one token request per repository, whatever the number of threads
            cached = self._cached_token(repository)
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
                self._tokens[repository] = _CachedToken(value, expires)
            return value

    def _request_token(self, repository: str, realm: str, service: str) -> tuple[str, float]:
        params = {"scope": f"repository:{repository}:pull"}
        if service:
            params["service"] = service
        try:
            response = self.session.get(
                realm, params=params, auth=self.credentials, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise UpstreamError(f"upstream token request failed: {exc}") from exc
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


def _new_session() -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "flask-dependency-proxy"
    # Digests are of the bytes as stored upstream: never ask for a transfer encoding.
    session.headers["Accept-Encoding"] = "identity"
    # Never pick up credentials from ~/.netrc or proxies meant for other tools.
    session.trust_env = False
    return session


def _media_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip()


def _read_limited(response: requests.Response, limit: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise UpstreamError(f"upstream manifest is larger than {limit} bytes")
    content = response.raw.read(limit + 1, decode_content=True)
    if len(content) > limit:
        raise UpstreamError(f"upstream manifest is larger than {limit} bytes")
    if length.isdigit() and len(content) != int(length):
        raise UpstreamError("upstream manifest response was cut short")
    return t.cast(bytes, content)


def _retry_wait(retry_after: str | None, attempt: int) -> float:
    if retry_after and retry_after.isdigit():
        return min(float(retry_after), _MAX_RETRY_WAIT_SECONDS)
    return min(0.2 * (attempt + 1) * 2, _MAX_RETRY_WAIT_SECONDS)
