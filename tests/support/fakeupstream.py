"""A fake upstream registry client, for tests of the pull-through rules without a process.

:class:`FakeRegistry` holds one upstream's manifests, tags and blobs in dictionaries and
counts every call its clients get; :class:`FakeRegistryClient` is a
:class:`~flask_dependency_proxy.upstream.registry.RegistryClient` (the type checker holds
it to that Protocol) that answers the calls the cache makes with the same results and the
same errors as the real client. :func:`upstream_set` puts fakes behind a real
:class:`~flask_dependency_proxy.upstream.routing.UpstreamSet`, so routing, candidates and
sticky upstreams are the package's own.

What the real client guarantees, the fake keeps: a manifest returned by ``get_manifest``
hashes to its digest (otherwise :class:`UpstreamDigestMismatch`, which is how
:attr:`Failure.WRONG_DIGEST` shows for manifests); a blob's bytes are checked by the
fetcher, as for a real upstream. The failures are the exceptions the real client raises
after its own retries (:mod:`tests.support.fakeregistry` is the HTTP-level fake, for
tests of the client itself).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import json
import threading
import typing as t

from flask_dependency_proxy.oci.reference import MEDIA_TYPE_OCI_MANIFEST
from flask_dependency_proxy.upstream.breaker import CircuitBreaker
from flask_dependency_proxy.upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamDown,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
)
from flask_dependency_proxy.upstream.registry import (
    Manifest,
    ManifestHead,
    RegistryClient,
    TagPage,
)
from flask_dependency_proxy.upstream.routing import UpstreamEntry, UpstreamSet

#: Bytes per chunk of a blob stream.
CHUNK = 4096

#: What a call asks for: ``manifest``, ``blob`` or ``tags``.
Kind = t.Literal["manifest", "blob", "tags"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Failure(enum.Enum):
    """How the fake upstream fails, as the real client reports it."""

    #: It does not answer (connection refused, circuit breaker open): ``UpstreamDown``.
    DOWN = "down"
    #: It answers ``503`` (with a ``Retry-After``) on every retry: ``UpstreamError``.
    SERVER_ERROR = "5xx"
    #: It answers ``429`` with a ``Retry-After``: ``UpstreamRateLimited``.
    RATE_LIMITED = "429"
    #: It answers ``404`` for everything: ``UpstreamNotFound``.
    NOT_FOUND = "404"
    #: It sends bytes that do not hash to their digest (one byte changed).
    WRONG_DIGEST = "digest mismatch"


@dataclasses.dataclass(frozen=True)
class Call:
    """One call a client of the fake got."""

    method: str
    kind: Kind
    repository: str
    reference: str


@dataclasses.dataclass(frozen=True)
class Image:
    """What :meth:`FakeRegistry.push_image` pushed."""

    digest: str
    manifest: bytes = dataclasses.field(repr=False)
    config: str
    layers: tuple[str, ...]

    @property
    def blobs(self) -> tuple[str, ...]:
        return (self.config, *self.layers)


@dataclasses.dataclass
class _Failing:
    failure: Failure
    retry_after: str
    kinds: frozenset[str]
    methods: frozenset[str]


class FakeRegistry:
    """One upstream registry's content and the calls its clients got.

    :param name: the upstream's name in ``DEPENDENCY_PROXY_UPSTREAMS``.
    :param hosts: registry hosts that pin an image name to this upstream.
    """

    def __init__(self, name: str = "upstream", *, hosts: t.Sequence[str] = ()) -> None:
        self.name = name
        self.hosts = tuple(hosts)
        #: repository -> digest -> (media type, content)
        self.manifests: dict[str, dict[str, tuple[str, bytes]]] = collections.defaultdict(dict)
        #: repository -> tag -> digest
        self.tags: dict[str, dict[str, str]] = collections.defaultdict(dict)
        #: repository -> digest -> bytes
        self.blobs: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
        #: Every call, in order.
        self.calls: list[Call] = []
        self._failing: _Failing | None = None
        self._lock = threading.Lock()
        self._images = 0

    # -- content -------------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[repository][digest] = data
        return digest

    def push_manifest(
        self,
        repository: str,
        content: bytes,
        *,
        tag: str | None = None,
        media_type: str = MEDIA_TYPE_OCI_MANIFEST,
    ) -> str:
        digest = sha256(content)
        self.manifests[repository][digest] = (media_type, content)
        if tag is not None:
            self.tags[repository][tag] = digest
        return digest

    def push_image(
        self, repository: str, tag: str | None, layers: t.Sequence[bytes] = (b"layer",)
    ) -> Image:
        """An OCI image of these layers and a config of its own (a new image each call,
        so pushing again under the same tag moves the tag)."""
        self._images += 1
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": self._images}).encode()
        config_digest = self.push_blob(repository, config)
        layer_digests = tuple(self.push_blob(repository, layer) for layer in layers)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": _descriptor(
                    "application/vnd.oci.image.config.v1+json", config_digest, len(config)
                ),
                "layers": [
                    _descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, len(data))
                    for digest, data in zip(layer_digests, layers, strict=True)
                ],
            }
        ).encode()
        digest = self.push_manifest(repository, manifest, tag=tag)
        return Image(digest, manifest, config_digest, layer_digests)

    def delete_tag(self, repository: str, tag: str) -> None:
        del self.tags[repository][tag]

    # -- failures ------------------------------------------------------------------------

    def fail(
        self,
        failure: Failure,
        *,
        retry_after: str = "30",
        only: t.Collection[Kind] = (),
        methods: t.Collection[str] = (),
    ) -> None:
        """Fail every call from now on: of the ``only`` kinds and the ``methods``
        (``HEAD``, ``GET``) when given."""
        kinds = frozenset(only or ("manifest", "blob", "tags"))
        self._failing = _Failing(failure, retry_after, kinds, frozenset(methods or ("HEAD", "GET")))

    def recover(self) -> None:
        self._failing = None

    # -- counting ------------------------------------------------------------------------

    def count(self, method: str | None = None, kind: Kind | None = None) -> int:
        """Calls of ``method`` (``HEAD``/``GET``) for ``kind``; every call when ``None``."""
        with self._lock:
            return sum(
                1
                for call in self.calls
                if (method is None or call.method == method) and (kind is None or call.kind == kind)
            )

    def forget_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    # -- clients -------------------------------------------------------------------------

    def client(self, credentials: tuple[str, str] | None = None) -> FakeRegistryClient:
        return FakeRegistryClient(self, credentials)

    def _answer(self, method: str, kind: Kind, repository: str, reference: str) -> bool:
        """Record a call and raise the failure set for it; whether to send wrong bytes."""
        with self._lock:
            self.calls.append(Call(method, kind, repository, reference))
        failing = self._failing
        if failing is None or kind not in failing.kinds or method not in failing.methods:
            return False
        what = f"{method} {repository} {kind} {reference}"
        match failing.failure:
            case Failure.DOWN:
                raise UpstreamDown(f"upstream {self.name} is down; not asked for {what}")
            case Failure.SERVER_ERROR:
                raise UpstreamError(
                    f"upstream answered 503 to {what}", status=503, retry_after=failing.retry_after
                )
            case Failure.RATE_LIMITED:
                raise UpstreamRateLimited(
                    f"upstream answered 429 to {what}",
                    status=429,
                    retry_after=failing.retry_after,
                )
            case Failure.NOT_FOUND:
                raise UpstreamNotFound(f"upstream answered 404 to {what}", status=404)
        return failing.failure is Failure.WRONG_DIGEST


class FakeRegistryClient:
    """Answers what the cache asks of an upstream client, from a :class:`FakeRegistry`.

    :param credentials: the group's or instance's credential this client is for.
    """

    def __init__(self, registry: FakeRegistry, credentials: tuple[str, str] | None) -> None:
        self.registry = registry
        self.credentials = credentials
        self.name = registry.name
        self.base_url = f"https://{registry.name}.invalid"
        self.last_status: int | None = None
        self.rate_limit_limit: int | None = None
        self.rate_limit_remaining: int | None = None

    def throttled_until(self) -> float | None:
        return None

    def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        self.registry._answer("HEAD", "manifest", repository, reference)
        media_type, content = self._manifest(repository, reference)
        return ManifestHead(sha256(content), media_type, len(content))

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        wrong = self.registry._answer("GET", "manifest", repository, reference)
        media_type, content = self._manifest(repository, reference)
        announced = sha256(content)
        if wrong:
            content = _tampered(content)
        # The real client's check: the body hashes to what was asked for or announced.
        expected = reference if reference.startswith("sha256:") else announced
        if sha256(content) != expected:
            raise UpstreamDigestMismatch(
                f"manifest {repository}:{reference} hashes to {sha256(content)}, not {expected}"
            )
        return Manifest(expected, media_type, content)

    def list_tags(self, repository: str, n: int | None, last: str | None) -> TagPage:
        self.registry._answer("GET", "tags", repository, "list")
        if repository not in self.registry.tags:
            raise UpstreamNotFound(f"no repository {repository}", status=404)
        # Like distribution 2.8: every tag, in no particular order; the cache pages.
        return TagPage(tags=tuple(reversed(self.registry.tags[repository])), next_last=None)

    def get_referrers(self, repository: str, digest: str) -> bytes:
        # Like distribution 2.8: no referrers API, so the cache uses the tag schema.
        raise UpstreamNotFound(f"no referrers API for {repository}@{digest}", status=404)

    def head_blob(self, repository: str, digest: str) -> int | None:
        self.registry._answer("HEAD", "blob", repository, digest)
        return len(self._blob(repository, digest))

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> FakeBlobStream:
        wrong = self.registry._answer("GET", "blob", repository, digest)
        data = self._blob(repository, digest)
        return FakeBlobStream(_tampered(data) if wrong else data, offset)

    def _manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        digest = self.registry.tags.get(repository, {}).get(reference, reference)
        found = self.registry.manifests.get(repository, {}).get(digest)
        if found is None:
            self.last_status = 404
            raise UpstreamNotFound(f"no manifest {repository}:{reference}", status=404)
        self.last_status = 200
        return found

    def _blob(self, repository: str, digest: str) -> bytes:
        data = self.registry.blobs.get(repository, {}).get(digest)
        if data is None:
            self.last_status = 404
            raise UpstreamNotFound(f"no blob {digest} in {repository}", status=404)
        self.last_status = 200
        return data


class FakeBlobStream:
    """An open blob download, a :class:`~flask_dependency_proxy.upstream.registry.BlobStream`:
    a resumed one (``offset``) answers ``206`` with the rest of the bytes."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = data
        self.offset = offset
        self.status = 206 if offset else 200
        self.size: int | None = len(data)
        self.closed = False

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(self.offset, len(self._data), CHUNK):
            yield self._data[start : start + CHUNK]

    def close(self) -> None:
        self.closed = True


def upstream_set(*registries: FakeRegistry) -> UpstreamSet:
    """A real :class:`UpstreamSet` whose clients are fakes, in the order given (the first
    is the default upstream); names carry no library prefix."""
    by_name = {registry.name: registry for registry in registries}
    entries = [
        UpstreamEntry(
            name=registry.name, url=f"https://{registry.name}.invalid", hosts=registry.hosts
        )
        for registry in registries
    ]

    def client(
        entry: UpstreamEntry, credentials: tuple[str, str] | None, breaker: CircuitBreaker
    ) -> RegistryClient:
        return by_name[entry.name].client(credentials)

    return UpstreamSet(entries, client, lambda: CircuitBreaker(3, 5.0))


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, t.Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _tampered(data: bytes) -> bytes:
    """The same number of bytes, one of them changed."""
    if not data:
        return b"x"
    return bytes([data[0] ^ 0xFF]) + data[1:]
