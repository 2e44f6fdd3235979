"""A group gets a blob it does not hold on its own route's word: the fetch a request
follows, with an in-memory upstream per route (which digests it serves to whom), a
real :class:`~flask_dependency_proxy.fetch.fetcher.BlobFetcher` and a store on disk."""

from __future__ import annotations

import hashlib
import threading
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.cache.confirmations import Confirmations, route_key
from flask_dependency_proxy.cache.pull_through import PullThroughCache
from flask_dependency_proxy.fetch.fetcher import BlobFetcher
from flask_dependency_proxy.stores.filesystem import FilesystemStore
from flask_dependency_proxy.upstream.errors import UpstreamError, UpstreamNotFound
from flask_dependency_proxy.upstream.routing import Candidate

DATA = bytes(range(256)) * 400
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class FakeStream:
    """An upstream blob response; its bytes wait for ``gate`` after the first piece."""

    def __init__(self, data: bytes, gate: threading.Event | None) -> None:
        self.data = data
        self.offset = 0
        self.status = 200
        self.size: int | None = len(data)
        self.gate = gate

    def __iter__(self) -> t.Iterator[bytes]:
        for start in range(0, len(self.data), 10_000):
            if start and self.gate is not None:
                self.gate.wait(10)
            yield self.data[start : start + 10_000]

    def close(self) -> None:
        pass


class FakeClient:
    """One upstream seen with one credential: serves ``blobs`` (none when ``None``)."""

    def __init__(
        self,
        blobs: dict[str, bytes] | None,
        *,
        base_url: str = "https://registry.example",
        credentials: tuple[str, str] | None = None,
        gate: threading.Event | None = None,
        opened: threading.Event | None = None,
        refuse_after: threading.Event | None = None,
    ) -> None:
        self.blobs = blobs or {}
        self.base_url = base_url
        self.credentials = credentials
        self.gate = gate
        self.opened = opened
        self.refuse_after = refuse_after
        self.heads: list[str] = []
        self.gets: list[str] = []
        self._lock = threading.Lock()

    def head_blob(self, repository: str, digest: str) -> int:
        with self._lock:
            self.heads.append(digest)
        if digest not in self.blobs:
            raise UpstreamNotFound(f"no {digest}", status=404)
        return len(self.blobs[digest])

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> FakeStream:
        with self._lock:
            self.gets.append(digest)
        if self.opened is not None:
            self.opened.set()
        if self.refuse_after is not None:
            self.refuse_after.wait(10)
        if digest not in self.blobs:
            raise UpstreamNotFound(f"no {digest}", status=404)
        return FakeStream(self.blobs[digest], self.gate)


def _candidates(client: FakeClient, repository: str = "vendor/app") -> tuple[Candidate, ...]:
    return (Candidate("vendor", repository, t.cast(t.Any, client)),)


def _cache(tmp_path: Path) -> PullThroughCache:
    """Just what :meth:`PullThroughCache._fetch_blob` uses: a fetcher and the
    worker's confirmations (a new worker on the same store each time)."""
    cache = object.__new__(PullThroughCache)
    cache.fetcher = BlobFetcher(FilesystemStore(str(tmp_path)), start_timeout=10)
    cache.confirmations = Confirmations()
    return cache


def _read(fetch: t.Any, cache: PullThroughCache) -> bytes:
    return b"".join(fetch.follow(cache.fetcher.store, until_committed=True))


def test_a_route_without_the_blob_does_not_follow_another_routes_fetch(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    gate = threading.Event()
    private = FakeClient({DIGEST: DATA}, credentials=("bot", "secret"), gate=gate)
    anonymous = FakeClient(None)

    fetch = cache._fetch_blob(_candidates(private), DIGEST)
    with pytest.raises(UpstreamNotFound):
        cache._fetch_blob(_candidates(anonymous), DIGEST)
    gate.set()

    assert fetch is not None and _read(fetch, cache) == DATA
    assert anonymous.heads == [DIGEST] and anonymous.gets == []
    # Committed before another worker's request takes the fetch lock: its route is
    # asked too, and still says no.
    with pytest.raises(UpstreamNotFound):
        _cache(tmp_path)._fetch_blob(_candidates(anonymous), DIGEST)
    assert anonymous.heads == [DIGEST] * 2 and anonymous.gets == []


def test_a_route_with_the_blob_is_not_failed_by_another_routes_failing_fetch(
    tmp_path: Path,
) -> None:
    cache = _cache(tmp_path)
    opened, refuse = threading.Event(), threading.Event()
    anonymous = FakeClient(None, opened=opened, refuse_after=refuse)
    private = FakeClient({DIGEST: DATA}, credentials=("bot", "secret"))
    failed: list[BaseException] = []

    def doomed() -> None:
        try:
            cache._fetch_blob(_candidates(anonymous), DIGEST)
        except UpstreamError as exc:
            failed.append(exc)

    thread = threading.Thread(target=doomed)
    thread.start()
    assert opened.wait(5)
    # The anonymous fetch is running: a request of the private route joins it.
    threading.Timer(0.2, refuse.set).start()
    fetch = cache._fetch_blob(_candidates(private), DIGEST)
    thread.join(5)

    assert [type(exc) for exc in failed] == [UpstreamNotFound]
    assert fetch is not None and _read(fetch, cache) == DATA
    assert private.heads == [DIGEST] and private.gets == [DIGEST]


def test_a_herd_of_one_route_asks_no_head(tmp_path: Path) -> None:
    """Followers of a fetch their own route opened take its word: one GET, no HEAD."""
    cache = _cache(tmp_path)
    gate = threading.Event()
    route = FakeClient({DIGEST: DATA}, gate=gate)
    fetches = [cache._fetch_blob(_candidates(route), DIGEST)]
    results: list[bytes] = []

    def follow() -> None:
        fetch = cache._fetch_blob(_candidates(route), DIGEST)
        results.append(_read(fetch, cache))

    herd = [threading.Thread(target=follow) for _ in range(20)]
    for thread in herd:
        thread.start()
    gate.set()
    results.append(_read(fetches[0], cache))
    for thread in herd:
        thread.join(10)

    assert results == [DATA] * 21
    assert route.gets == [DIGEST] and route.heads == []


def test_concurrent_confirmations_of_one_route_share_one_head() -> None:
    confirmations = Confirmations()
    slow = threading.Event()
    route = FakeClient({DIGEST: DATA})
    head = route.head_blob

    def slow_head(repository: str, digest: str) -> int:
        slow.wait(5)
        return head(repository, digest)

    route.head_blob = slow_head  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=confirmations.confirm, args=(_candidates(route), DIGEST))
        for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    slow.set()
    for thread in threads:
        thread.join(5)
    confirmations.confirm(_candidates(route), DIGEST)

    assert route.heads == [DIGEST]


def test_a_refusal_is_not_remembered_and_a_confirmation_expires() -> None:
    now = [0.0]
    confirmations = Confirmations(seconds=60, clock=lambda: now[0])
    route = FakeClient({})
    with pytest.raises(UpstreamNotFound):
        confirmations.confirm(_candidates(route), DIGEST)
    route.blobs[DIGEST] = DATA
    confirmations.confirm(_candidates(route), DIGEST)
    confirmations.confirm(_candidates(route), DIGEST)
    now[0] = 61
    confirmations.confirm(_candidates(route), DIGEST)

    assert route.heads == [DIGEST] * 3


def test_a_route_is_its_upstream_repository_and_credential() -> None:
    def key(client: FakeClient, repository: str = "vendor/app") -> t.Any:
        return route_key(_candidates(client, repository)[0])

    public = key(FakeClient(None))
    assert key(FakeClient(None)) == public
    assert key(FakeClient(None, credentials=("bot", "secret"))) != public
    assert key(FakeClient(None, credentials=("bot", "secret"))) != key(
        FakeClient(None, credentials=("bot", "other"))
    )
    assert key(FakeClient(None), "vendor/other") != public
    assert key(FakeClient(None, base_url="https://mirror.example")) != public
    # The password itself is not kept in the key.
    assert "secret" not in repr(key(FakeClient(None, credentials=("bot", "secret"))))
