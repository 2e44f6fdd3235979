"""HTTP client for an upstream registry (Docker Hub by default): the registry calls the
cache makes (:class:`~.registry.RegistryClient`) and the checks of their answers.

Knows the registry protocol; knows nothing of the database, storage or Flask. One client
per upstream and credential, shared by the application's threads: the
``requests.Session`` pools connections and the token cache is locked. Each request goes
through the client's :class:`~.transport.Transport` (breaker, retries, auth, redirects).

What an upstream (or whoever answers in its name) cannot make the client do:

- Send the configured credentials anywhere but a token realm named by a ``401`` of the
  upstream's own origin (:mod:`.bearer`).
- Connect to an internal address through a redirect or a realm (:mod:`.address`), or
  carry ``Authorization`` to another host on a redirect (:mod:`.transport`).
- Decode a compressed manifest (a decoding bomb) or buffer more than
  :data:`~.reference.MAX_MANIFEST_BYTES` of one; take a manifest served by a redirect
  target for a tag without a digest to check it against.
- Keep asking an upstream that fails to connect or asked to wait (:mod:`.breaker`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import requests

from ..metrics import Metrics
from ..oci.digits import ascii_int
from ..oci.reference import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_OCI_INDEX,
    UPSTREAM_MANIFEST_ACCEPT,
    is_tag,
)
from ..single_flight import SingleFlight
from .address import AddressRule, origin
from .bearer import BearerTokens
from .breaker import BREAKER_FAILURES, BREAKER_MAX_SECONDS, BREAKER_SECONDS, CircuitBreaker
from .errors import UpstreamDigestMismatch, UpstreamError, UpstreamRefused
from .registry import Manifest, ManifestHead, TagPage
from .token_cache import TokenShare
from .transport import Transport, requests_session

#: A tag list larger than this is refused rather than buffered.
MAX_TAG_LIST_BYTES = 4 * 1024 * 1024
_NEXT_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class UpstreamClient:
    """Pull-side registry client with bearer-token negotiation and retries.

    :param base_url: e.g. ``https://registry-1.docker.io``.
    :param session: a shared ``requests.Session`` (connection pool).
    :param credentials: optional ``(username, password)``, sent only to the token realm
        the upstream's own origin challenges with.
    :param shared_tokens: tokens shared with the other worker processes of this host.
    :param breaker: shared by the clients of one upstream (one per credential); made
        from ``breaker_failures``, ``breaker_seconds`` and ``breaker_max_seconds`` when
        not given.
    :param allow_private_redirects: blob redirects and token realms may lead to private
        and loopback addresses too (see :class:`~.address.AddressRule`).
    :param auth_hosts: hosts a token realm may be on besides the upstream's own.
    :param on_answer: told the status of every upstream answer (``None``: none came),
        e.g. for the request's log line.
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
        breaker_failures: int = BREAKER_FAILURES,
        breaker_seconds: float = BREAKER_SECONDS,
        breaker_max_seconds: float = BREAKER_MAX_SECONDS,
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
        self.credentials = credentials
        self.chunk_size = chunk_size
        self._single_flight = SingleFlight()
        session = session or requests_session()
        timeout = (connect_timeout, read_timeout)
        host = (urlsplit(self.base_url).hostname or "").lower()
        address_rule = AddressRule(host, allow_private=allow_private_redirects)
        tokens = BearerTokens(
            self.base_url,
            session=session,
            credentials=credentials,
            timeout=timeout,
            address_rule=address_rule,
            auth_hosts=auth_hosts,
            shared=shared_tokens,
            clock=clock,
            metrics=self.metrics,
            name=name,
        )
        self._transport = Transport(
            self.base_url,
            session=session,
            timeout=timeout,
            retries=retries,
            breaker=breaker
            or CircuitBreaker(breaker_failures, breaker_seconds, max_seconds=breaker_max_seconds),
            tokens=tokens,
            address_rule=address_rule,
            name=name,
            metrics=self.metrics,
            on_answer=on_answer,
        )

    @property
    def last_status(self) -> int | None:
        """The HTTP status of upstream's last answer; ``None`` when it failed to connect."""
        return self._transport.last_status

    @property
    def rate_limit_remaining(self) -> int | None:
        """Docker Hub's remaining pull quota, from its ``RateLimit-Remaining`` header."""
        return self._transport.rate_limit_remaining

    @property
    def rate_limit_limit(self) -> int | None:
        """The quota those pulls come from, from ``RateLimit-Limit``."""
        return self._transport.rate_limit_limit

    def throttled_until(self) -> float | None:
        """Seconds since the epoch until which a ``429`` holds requests back, or ``None``."""
        return self._transport.hold.until()

    # -- public API ---------------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        """Ask for a manifest's digest without spending Docker Hub pull quota.

        Concurrent calls for the same manifest share one upstream request.
        """
        return self._single_flight.do(
            ("HEAD", repository, reference), lambda: self._head_manifest(repository, reference)
        )

    def _head_manifest(self, repository: str, reference: str) -> ManifestHead:
        response = self._transport.request(
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
        response = self._transport.request(
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
        if is_tag(reference) and not announced and origin(response.url) != self._transport.origin:
            raise UpstreamRefused(
                f"manifest {repository}:{reference} came from {origin(response.url)} "
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
        response = self._transport.request("GET", path, repository, stream=True)
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

    def get_referrers(self, repository: str, digest: str) -> bytes:
        """Upstream's referrers API answer for ``digest``: an OCI image index, unfiltered
        (the cache keeps the whole list and filters it itself).

        :raises UpstreamNotFound: upstream has no referrers API (distribution 2.x, which
            answers ``404``); the caller falls back to the referrers tag schema.
        :raises UpstreamRefused: the answer is not an image index.
        """
        response = self._transport.request(
            "GET",
            f"/v2/{repository}/referrers/{digest}",
            repository,
            headers={"Accept": MEDIA_TYPE_OCI_INDEX},
            stream=True,
        )
        try:
            content = _read_identity(response, MAX_MANIFEST_BYTES, "referrers index")
        finally:
            response.close()
        try:
            document = json.loads(content)
        except ValueError as exc:
            raise UpstreamRefused("upstream sent a referrers answer that is not JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
            raise UpstreamRefused("upstream sent a referrers answer that is not an image index")
        return content

    def head_blob(self, repository: str, digest: str) -> int | None:
        """Confirm upstream serves this blob in this repository; returns its size if known."""
        response = self._transport.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        response.close()
        return ascii_int(response.headers.get("Content-Length"))

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> BlobResponse:
        """Start a blob download, or resume one at ``offset`` with a ``Range`` request.

        The returned stream's ``offset`` says where its bytes start: ``0`` when upstream
        ignored the range and sends the whole blob again.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        response = self._transport.request(
            "GET", f"/v2/{repository}/blobs/{digest}", repository, headers=headers, stream=True
        )
        start = 0
        if offset and response.status_code == 206:
            match = re.match(r"bytes ([0-9]{1,18})-", response.headers.get("Content-Range", ""))
            start = int(match.group(1)) if match else 0
            if start != offset:
                response.close()
                raise UpstreamError(f"upstream resumed {digest} at {start}, not {offset}")
        return BlobResponse(response, self.chunk_size, start)


class BlobResponse:
    """An open upstream blob response, as a :class:`~.registry.BlobStream`: iterate it
    once, then close it.

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


def _next_last(link: str | None) -> str | None:
    """The ``last`` parameter of a ``Link: <...>; rel="next"`` header."""
    match = _NEXT_LINK_RE.search(link or "")
    if not match:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("last")
    return values[0] if values else None
