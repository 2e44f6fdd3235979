"""The pull-through rules of
:class:`~flask_dependency_proxy.cache.pull_through.PullThroughCache`, on the core alone:
when a tag is asked upstream (a HEAD, and a GET only for a new digest),
what is served while upstream cannot answer, digests and blobs served without asking,
one fetch per blob, group size limits, and how each answer is counted (its outcome).

The cache, its fetcher and its database records are the package's own; the store
keeps blobs in memory and the upstream is a fake client that counts its calls
(:mod:`tests.support.core`)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

import pytest

from flask_dependency_proxy.cache.quota import QuotaPolicy
from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.fetch.errors import FetchFailed
from flask_dependency_proxy.fetch.fetcher import Committed
from flask_dependency_proxy.models.tables import CachedBlob, CachedManifest, Status
from flask_dependency_proxy.oci.errors import ErrorCode, RegistryError
from flask_dependency_proxy.oci.reference import MEDIA_TYPE_OCI_MANIFEST, ProxyPath
from flask_dependency_proxy.stores.base import ByteStream, Following
from tests.support.core import Core, received
from tests.support.fakeupstream import Failure, FakeRegistry

GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/app"
PATH = ProxyPath("acme", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST,)

MakeCore = t.Callable[..., Core]


def _statuses(core: Core, table: type[CachedManifest] | type[CachedBlob]) -> list[Status]:
    session = core.metadata.session
    found = [Status(row.status) for row in session.query(table).order_by(table.id)]
    core.metadata.release()
    return found


# -- tags ------------------------------------------------------------------------------


def test_a_tag_is_trusted_for_the_check_interval_then_checked_with_a_head(
    make_core: MakeCore,
) -> None:
    core = make_core(tag_check_interval=60)
    image = core.upstream.push_image(IMAGE, "1.0")

    first = core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    assert (first.digest, first.outcome) == (image.digest, Outcome.MISS)
    assert (core.upstream.count("HEAD"), core.upstream.count("GET")) == (1, 1)

    core.clock.advance(seconds=59)
    within = core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    assert (within.digest, within.outcome) == (image.digest, Outcome.HIT)
    assert core.upstream.count() == 2, "no request upstream within the interval"

    core.clock.advance(seconds=2)
    after = core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    assert (after.digest, after.outcome) == (image.digest, Outcome.REVALIDATED)
    assert (core.upstream.count("HEAD"), core.upstream.count("GET")) == (2, 1)


def test_without_an_interval_every_tag_pull_costs_a_head_and_no_get(make_core: MakeCore) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, "latest")
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    for _ in range(3):
        again = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
        assert (again.digest, again.outcome) == (image.digest, Outcome.REVALIDATED)
    assert (core.upstream.count("HEAD", "manifest"), core.upstream.count("GET", "manifest")) == (
        4,
        1,
    )


def test_a_herd_asking_for_one_tag_at_once_shares_one_check_and_one_save(
    make_core: MakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve requests for the same tag arrive together (CI jobs started by one push):
    one reads the tag, asks upstream and saves; the others wait for its answer instead
    of each taking a connection, and queueing for the row's lock, for the same work."""
    core = make_core()
    image = core.upstream.push_image(IMAGE, "latest")
    client_type = type(core.upstream.client())
    head_manifest = client_type.head_manifest
    everyone_asked = threading.Event()

    def slow_head(self: t.Any, repository: str, reference: str) -> t.Any:
        everyone_asked.wait(5)
        return head_manifest(self, repository, reference)

    monkeypatch.setattr(client_type, "head_manifest", slow_head)
    saves = []
    save_manifest = core.metadata.save_manifest

    def counted_save(*args: t.Any, **kwargs: t.Any) -> t.Any:
        saves.append(args)
        return save_manifest(*args, **kwargs)

    monkeypatch.setattr(core.metadata, "save_manifest", counted_save)

    def pull() -> str:
        with core.app.app_context():
            return core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT).digest

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        pulls = [pool.submit(pull) for _ in range(12)]
        time.sleep(0.3)
        everyone_asked.set()
        assert {f.result(timeout=10) for f in pulls} == {image.digest}
    assert (core.upstream.count("HEAD", "manifest"), core.upstream.count("GET", "manifest")) == (
        1,
        1,
    )
    assert len(saves) == 1


@pytest.mark.parametrize("interval", [0, 60])
def test_a_tag_checked_in_this_clock_s_future_is_checked_again(
    make_core: MakeCore, interval: int
) -> None:
    """Another host whose clock runs ahead wrote the check time (or this clock stepped
    back): trusting the row would skip the HEAD for as long as the clocks disagree."""
    core = make_core(tag_check_interval=interval)
    core.upstream.push_image(IMAGE, "latest")
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)

    core.clock.advance(seconds=-1)
    again = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)

    assert again.outcome is Outcome.REVALIDATED
    assert core.upstream.count("HEAD", "manifest") == 2


def test_a_moved_tag_is_fetched_by_the_digest_its_head_announced(make_core: MakeCore) -> None:
    core = make_core()
    old = core.upstream.push_image(IMAGE, "latest", [b"old layer"])
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    new = core.upstream.push_image(IMAGE, "latest", [b"new layer"])

    moved = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)

    assert (moved.digest, moved.content, moved.outcome) == (new.digest, new.manifest, Outcome.MISS)
    last_get = [call for call in core.upstream.calls if call.method == "GET"][-1]
    assert last_get.reference == new.digest, "the GET names the digest, not the tag"
    record = core.metadata.find_tag(GROUP, IMAGE, "latest")
    assert record is not None and record.digest == new.digest
    # The old manifest is not kept under the tag any more.
    assert core.metadata.find_digest(GROUP, IMAGE, old.digest) is None


def test_a_tag_moved_to_a_manifest_held_by_digest_costs_no_get(make_core: MakeCore) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, None)
    core.cache.get_manifest(GROUP, PATH, image.digest, ACCEPT)
    core.upstream.tags[IMAGE]["stable"] = image.digest
    gets = core.upstream.count("GET")

    tagged = core.cache.get_manifest(GROUP, PATH, "stable", ACCEPT)

    assert (tagged.digest, tagged.outcome) == (image.digest, Outcome.REVALIDATED)
    assert core.upstream.count("GET") == gets


@pytest.mark.parametrize(
    ("failure", "code", "headers"),
    [
        (Failure.DOWN, ErrorCode.UNAVAILABLE, {}),
        (Failure.SERVER_ERROR, ErrorCode.UNAVAILABLE, {"Retry-After": "42"}),
        (Failure.RATE_LIMITED, ErrorCode.TOOMANYREQUESTS, {"Retry-After": "42"}),
    ],
)
def test_a_cached_tag_is_served_stale_while_upstream_cannot_answer(
    make_core: MakeCore, failure: Failure, code: ErrorCode, headers: dict[str, str]
) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, "latest")
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    core.upstream.push_image(IMAGE, "uncached")
    core.upstream.fail(failure, retry_after="42")

    stale = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    assert (stale.digest, stale.content, stale.outcome) == (
        image.digest,
        image.manifest,
        Outcome.STALE,
    )
    assert stale.stale

    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "uncached", ACCEPT)
    assert raised.value.code is code
    assert raised.value.headers == headers


@pytest.mark.parametrize("failure", [Failure.SERVER_ERROR, Failure.DOWN])
def test_a_moved_tag_whose_get_fails_is_served_stale(make_core: MakeCore, failure: Failure) -> None:
    core = make_core()
    old = core.upstream.push_image(IMAGE, "latest", [b"old"])
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    core.upstream.push_image(IMAGE, "latest", [b"new"])
    core.upstream.fail(failure, methods=["GET"])

    stale = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)

    assert (stale.digest, stale.outcome) == (old.digest, Outcome.STALE)


def test_a_moved_tag_with_a_wrong_digest_is_an_error_not_stale(make_core: MakeCore) -> None:
    """Bytes that do not match their digest are an attack or a broken upstream: the pull
    fails rather than hide it, and nothing is saved."""
    core = make_core()
    old = core.upstream.push_image(IMAGE, "latest", [b"old"])
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    new = core.upstream.push_image(IMAGE, "latest", [b"new"])
    core.upstream.fail(Failure.WRONG_DIGEST)

    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)

    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert core.metadata.find_digest(GROUP, IMAGE, new.digest) is None
    record = core.metadata.find_tag(GROUP, IMAGE, "latest")
    assert record is not None and record.digest == old.digest


def test_a_tag_upstream_deleted_is_unknown_by_default(make_core: MakeCore) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "gone")
    core.cache.get_manifest(GROUP, PATH, "gone", ACCEPT)
    core.upstream.delete_tag(IMAGE, "gone")

    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "gone", ACCEPT)

    assert raised.value.code is ErrorCode.MANIFEST_UNKNOWN


def test_a_tag_upstream_deleted_is_served_stale_when_configured(make_core: MakeCore) -> None:
    core = make_core(serve_stale_on_not_found=True)
    image = core.upstream.push_image(IMAGE, "gone")
    core.cache.get_manifest(GROUP, PATH, "gone", ACCEPT)
    core.upstream.delete_tag(IMAGE, "gone")

    stale = core.cache.get_manifest(GROUP, PATH, "gone", ACCEPT)

    assert (stale.digest, stale.outcome) == (image.digest, Outcome.STALE)


def test_an_unknown_tag_is_unknown_even_with_stale_serving(make_core: MakeCore) -> None:
    core = make_core(serve_stale_on_not_found=True)
    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "never", ACCEPT)
    assert raised.value.code is ErrorCode.MANIFEST_UNKNOWN


def test_tags_are_cached_per_group(make_core: MakeCore) -> None:
    core = make_core(tag_check_interval=60)
    core.upstream.push_image(IMAGE, "1.0")
    core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    other = core.cache.get_manifest(OTHER_GROUP, PATH, "1.0", ACCEPT)
    assert other.outcome is Outcome.MISS
    assert core.upstream.count("GET", "manifest") == 2


# -- digests ---------------------------------------------------------------------------


def test_a_manifest_by_digest_is_served_without_asking_upstream_again(
    make_core: MakeCore,
) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, None)

    first = core.cache.get_manifest(GROUP, PATH, image.digest, ACCEPT)
    core.upstream.fail(Failure.DOWN)
    again = core.cache.get_manifest(GROUP, PATH, image.digest, ACCEPT)

    assert (first.outcome, again.outcome) == (Outcome.MISS, Outcome.HIT)
    assert again.content == image.manifest
    assert core.upstream.count() == 1


def test_a_manifest_by_digest_with_wrong_bytes_is_not_stored(make_core: MakeCore) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, None)
    core.upstream.fail(Failure.WRONG_DIGEST)

    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, image.digest, ACCEPT)

    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert core.metadata.find_digest(GROUP, IMAGE, image.digest) is None


def test_a_manifest_the_client_cannot_accept_is_unknown(make_core: MakeCore) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest")
    docker_only = ("application/vnd.docker.distribution.manifest.v2+json",)
    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "latest", docker_only)
    assert raised.value.code is ErrorCode.MANIFEST_UNKNOWN


# -- blobs -----------------------------------------------------------------------------


def test_a_blob_is_fetched_once_then_served_from_the_store(make_core: MakeCore) -> None:
    core = make_core()
    data = bytes(range(256)) * 100
    digest = core.upstream.push_blob(IMAGE, data)

    miss = core.cache.get_blob(GROUP, PATH, digest)
    assert (miss.outcome, miss.size, miss.upstream_status) == (Outcome.MISS, len(data), 200)
    assert received(miss) == data
    core.settle()

    hit = core.cache.get_blob(GROUP, PATH, digest)
    assert (hit.outcome, hit.size) == (Outcome.HIT, len(data))
    assert isinstance(hit.location, ByteStream)
    assert received(hit) == data
    assert core.upstream.count("GET", "blob") == 1
    assert core.store.commits == [digest]
    assert core.cache.head_blob(GROUP, PATH, digest) == len(data)
    assert core.upstream.count() == 1


def test_a_herd_asking_for_one_cold_blob_at_once_shares_its_lookups(
    make_core: MakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve requests for the same cold blob arrive together (the clients of one CI
    push): the group's row, the store and the group's quota are asked by one request
    for all that wait meanwhile, not by each, and upstream sends the blob once. (Each
    answer takes a fifth of a second here; the requests that waited for one answer
    reach the next question together.)"""
    core = make_core()
    data = bytes(range(256)) * 100
    digest = core.upstream.push_blob(IMAGE, data)
    asked: dict[str, int] = {"row": 0, "store": 0, "quota": 0}

    def counted(name: str, call: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        def slow(*args: t.Any) -> t.Any:
            asked[name] += 1
            time.sleep(0.2)
            return call(*args)

        return slow

    monkeypatch.setattr(core.metadata, "find_blob", counted("row", core.metadata.find_blob))
    monkeypatch.setattr(core.store, "size", counted("store", core.store.size))
    records = core.cache.quotas.records
    monkeypatch.setattr(records, "limit", counted("quota", records.limit))
    start = threading.Barrier(12)

    def pull() -> bytes:
        start.wait(5)
        with core.app.app_context():
            return received(core.cache.get_blob(GROUP, PATH, digest))

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        pulls = [pool.submit(pull) for _ in range(12)]
        assert all(f.result(timeout=20) == data for f in pulls)
    core.settle()
    # Twelve each before; a request held up by the machine may ask once more.
    assert asked["row"] <= 2 and asked["quota"] <= 2
    # The requests, and the fetch before it asks upstream.
    assert asked["store"] <= 3
    assert core.upstream.count("GET", "blob") == 1


def test_a_blob_with_wrong_bytes_breaks_the_transfer_and_is_not_stored(
    make_core: MakeCore,
) -> None:
    core = make_core()
    data = b"x" * 10_000
    digest = core.upstream.push_blob(IMAGE, data)
    core.upstream.fail(Failure.WRONG_DIGEST, only=["blob"])

    miss = core.cache.get_blob(GROUP, PATH, digest)
    assert isinstance(miss.location, Following)
    with pytest.raises(FetchFailed) as raised:
        b"".join(miss.location.chunks)
    assert raised.value.reason == "digest_mismatch"
    core.settle()

    assert core.store.size(digest) is None
    assert core.metadata.find_blob(GROUP, digest) is None
    core.upstream.recover()
    assert received(core.cache.get_blob(GROUP, PATH, digest)) == data


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Failure.NOT_FOUND, ErrorCode.BLOB_UNKNOWN),
        (Failure.DOWN, ErrorCode.UNAVAILABLE),
        (Failure.RATE_LIMITED, ErrorCode.TOOMANYREQUESTS),
    ],
)
def test_a_blob_upstream_cannot_send_is_a_registry_error(
    make_core: MakeCore, failure: Failure, code: ErrorCode
) -> None:
    core = make_core()
    digest = core.upstream.push_blob(IMAGE, b"blob")
    core.upstream.fail(failure)
    with pytest.raises(RegistryError) as raised:
        core.cache.get_blob(GROUP, PATH, digest)
    assert raised.value.code is code
    core.settle()
    assert core.store.size(digest) is None


@pytest.mark.parametrize("same_worker", [True, False])
def test_a_blob_another_group_cached_is_claimed_on_its_route_s_word_without_a_download(
    make_core: MakeCore, same_worker: bool
) -> None:
    """The route that just served the digest vouches for it in this worker (both groups
    send the very same request upstream); a worker that has not seen it asks a HEAD."""
    core = make_core()
    data = b"shared layer" * 100
    digest = core.upstream.push_blob(IMAGE, data)
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()
    if not same_worker:
        core.cache.confirmations = type(core.cache.confirmations)()

    claimed = core.cache.get_blob(OTHER_GROUP, PATH, digest)

    assert received(claimed) == data
    heads = 0 if same_worker else 1
    assert (core.upstream.count("GET", "blob"), core.upstream.count("HEAD", "blob")) == (1, heads)
    assert core.metadata.find_blob(OTHER_GROUP, digest) is not None


def test_a_blob_another_group_cached_is_not_served_when_upstream_does_not_have_it(
    make_core: MakeCore,
) -> None:
    """The bytes are in the store, but this group's image upstream does not serve them:
    the store must not leak one group's blobs to another."""
    core = make_core()
    digest = core.upstream.push_blob(IMAGE, b"private layer")
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()

    with pytest.raises(RegistryError) as raised:
        core.cache.get_blob(OTHER_GROUP, ProxyPath("other", "someone/else"), digest)

    assert raised.value.code is ErrorCode.BLOB_UNKNOWN
    assert core.metadata.find_blob(OTHER_GROUP, digest) is None


def test_a_blob_head_asks_upstream_without_downloading(make_core: MakeCore) -> None:
    core = make_core()
    digest = core.upstream.push_blob(IMAGE, b"12345")
    assert core.cache.head_blob(GROUP, PATH, digest) == 5
    assert (core.upstream.count("HEAD", "blob"), core.upstream.count("GET")) == (1, 0)
    assert core.store.size(digest) is None


def test_a_blob_gone_from_the_store_is_fetched_again(make_core: MakeCore) -> None:
    core = make_core()
    data = b"lost" * 1000
    digest = core.upstream.push_blob(IMAGE, data)
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()
    core.store.delete(digest)

    again = core.cache.get_blob(GROUP, PATH, digest)

    assert again.outcome is Outcome.MISS
    assert received(again) == data
    assert core.upstream.count("GET", "blob") == 2


@pytest.mark.parametrize("same_worker", [True, False])
def test_a_blob_committed_while_a_request_looked_is_served_on_the_fetchers_word(
    make_core: MakeCore, monkeypatch: pytest.MonkeyPatch, same_worker: bool
) -> None:
    """A fetch commits the blob between a request's lookup and its own fetch: the
    fetcher answers that it is committed, and the cache serves it from the store without
    asking again, unless the route's confirmation took a round trip upstream (then the
    fetcher is asked once more: a cleanup may have taken the blob meanwhile)."""
    core = make_core()
    data = b"raced" * 1000
    digest = core.upstream.push_blob(IMAGE, data)
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()
    if not same_worker:
        core.cache.confirmations = type(core.cache.confirmations)()
    asked: list[int | None] = []
    committed_size = core.fetcher.committed_size

    def looked_too_early(digest: str) -> int | None:
        size = committed_size(digest) if asked else None
        asked.append(size)
        return size

    monkeypatch.setattr(core.fetcher, "committed_size", looked_too_early)

    claimed = core.cache.get_blob(OTHER_GROUP, PATH, digest)

    assert isinstance(claimed.location, ByteStream)
    assert received(claimed) == data
    assert asked == ([None] if same_worker else [None, len(data)])
    assert core.upstream.count("GET", "blob") == 1
    assert core.metadata.find_blob(OTHER_GROUP, digest) is not None


def test_a_blob_committed_and_taken_again_while_its_route_confirmed_it_is_fetched_again(
    make_core: MakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetcher answers that the blob is committed; while the group's route confirms
    the digest, a cleanup without a grace period takes it away. The request fetches it
    once more instead of answering from a store that no longer holds it."""
    core = make_core()
    data = b"purged" * 1000
    digest = core.upstream.push_blob(IMAGE, data)
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()
    core.cache.confirmations = type(core.cache.confirmations)()
    committed_size = core.fetcher.committed_size
    looked: list[str] = []

    def looked_too_early(digest: str) -> int | None:
        looked.append(digest)
        return committed_size(digest) if len(looked) > 1 else None

    confirm = core.cache.confirmations.confirm

    def confirm_then_clean_up(*args: t.Any) -> bool:
        answered = confirm(*args)
        core.store.delete(digest)
        return answered

    fetch = core.fetcher.fetch
    fetched: list[str] = []

    def committed_meanwhile(digest: str, opener: t.Any) -> t.Any:
        """The first fetch finds the blob committed by another request."""
        fetched.append(digest)
        return Committed(len(data)) if len(fetched) == 1 else fetch(digest, opener)

    monkeypatch.setattr(core.fetcher, "committed_size", looked_too_early)
    monkeypatch.setattr(core.fetcher, "fetch", committed_meanwhile)
    monkeypatch.setattr(core.cache.confirmations, "confirm", confirm_then_clean_up)

    again = core.cache.get_blob(OTHER_GROUP, PATH, digest)

    assert again.outcome is Outcome.MISS
    assert isinstance(again.location, Following)
    assert received(again) == data
    core.settle()
    assert core.upstream.count("GET", "blob") == 2
    assert core.store.data(digest) == data


# -- limits ----------------------------------------------------------------------------


def test_a_group_over_its_limit_is_refused_new_content_and_keeps_its_cache(
    make_core: MakeCore,
) -> None:
    core = make_core(quota_policy=QuotaPolicy.REFUSE)
    small = core.upstream.push_image(IMAGE, "small", [b"s" * 100])
    big = core.upstream.push_image(IMAGE, "big", [b"b" * 5000])
    core.cache.get_manifest(GROUP, PATH, "small", ACCEPT)
    for blob in small.blobs:
        received(core.cache.get_blob(GROUP, PATH, blob))
    core.settle()
    core.set_limit(GROUP, core.quota_records().usage(GROUP) - 1)

    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "big", ACCEPT)
    assert raised.value.code is ErrorCode.DENIED
    with pytest.raises(RegistryError) as raised:
        core.cache.get_blob(GROUP, PATH, big.layers[0])
    assert raised.value.code is ErrorCode.DENIED
    assert core.upstream.count("GET", "blob") == len(small.blobs), "refused before a download"

    assert core.cache.get_manifest(GROUP, PATH, "small", ACCEPT).digest == small.digest
    assert received(core.cache.get_blob(GROUP, PATH, small.layers[0])) == b"s" * 100
    # Another group has no limit.
    assert core.cache.get_manifest(OTHER_GROUP, PATH, "big", ACCEPT).outcome is Outcome.MISS


def test_a_blob_of_unknown_size_is_admitted_while_the_group_is_under_its_limit(
    make_core: MakeCore,
) -> None:
    """Pulled without its manifest, a blob's size is known only once it arrives: it is
    admitted while the group is under its limit (the module docstring of quota.py)."""
    core = make_core(quota_policy=QuotaPolicy.REFUSE)
    digest = core.upstream.push_blob(IMAGE, b"z" * 5000)
    core.set_limit(GROUP, 1000)
    assert received(core.cache.get_blob(GROUP, PATH, digest)) == b"z" * 5000


def test_a_group_over_its_limit_evicts_its_least_recently_pulled_content(
    make_core: MakeCore,
) -> None:
    core = make_core(quota_policy=QuotaPolicy.EVICT)
    old = core.upstream.push_image(IMAGE, "old", [b"o" * 1500])
    new = core.upstream.push_image(IMAGE, "new", [b"n" * 1500])
    core.cache.get_manifest(GROUP, PATH, "old", ACCEPT)
    for blob in old.blobs:
        received(core.cache.get_blob(GROUP, PATH, blob))
    core.settle()
    core.set_limit(GROUP, 3000)

    pulled = core.cache.get_manifest(GROUP, PATH, "new", ACCEPT)
    for blob in new.blobs:
        received(core.cache.get_blob(GROUP, PATH, blob))
    core.settle()

    assert pulled.outcome is Outcome.MISS
    assert core.metadata.find_tag(GROUP, IMAGE, "old") is None, "evicted"
    assert core.metadata.find_blob(GROUP, old.layers[0]) is None
    assert core.metadata.find_blob(GROUP, new.layers[0]) is not None
    assert core.quota_records().usage(GROUP) <= 3000
    assert Status.PENDING_DESTRUCTION in _statuses(core, CachedManifest)


def test_an_image_larger_than_the_limit_is_refused_even_when_evicting(
    make_core: MakeCore,
) -> None:
    core = make_core(quota_policy=QuotaPolicy.EVICT)
    core.upstream.push_image(IMAGE, "huge", [b"h" * 5000])
    core.set_limit(GROUP, 1000)
    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "huge", ACCEPT)
    assert raised.value.code is ErrorCode.DENIED
    assert core.metadata.find_tag(GROUP, IMAGE, "huge") is None


def test_a_blob_over_the_instance_limit_is_refused_before_a_download(
    make_core: MakeCore,
) -> None:
    core = make_core(max_blob_size=1000)
    image = core.upstream.push_image(IMAGE, "fat", [b"f" * 2000])
    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "fat", ACCEPT)
    assert raised.value.code is ErrorCode.DENIED
    with pytest.raises(RegistryError) as raised:
        received(core.cache.get_blob(GROUP, PATH, image.layers[0]))
    assert raised.value.code is ErrorCode.DENIED
    core.settle()
    assert core.store.size(image.layers[0]) is None


# -- upstreams and tag lists -----------------------------------------------------------


def test_an_image_sticks_to_the_upstream_that_served_it(make_core: MakeCore) -> None:
    first, second = FakeRegistry("first"), FakeRegistry("second")
    core = make_core(registries=[first, second])
    image = second.push_image(IMAGE, "latest")

    pulled = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    assert pulled.digest == image.digest
    assert first.count("HEAD", "manifest") == 1, "a 404 moves on to the next upstream"
    record = core.metadata.find_tag(GROUP, IMAGE, "latest")
    assert record is not None and record.upstream == "second"

    first.forget_calls()
    core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    received(core.cache.get_blob(GROUP, PATH, image.layers[0]))
    assert first.calls == [], "refreshes and blobs go back where the image came from"


def test_an_outage_of_the_first_upstream_does_not_move_on(make_core: MakeCore) -> None:
    first, second = FakeRegistry("first"), FakeRegistry("second")
    core = make_core(registries=[first, second])
    second.push_image(IMAGE, "latest")
    first.fail(Failure.DOWN)
    with pytest.raises(RegistryError) as raised:
        core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert second.calls == []


def test_tag_lists_are_paged_and_fall_back_to_cached_tags(make_core: MakeCore) -> None:
    core = make_core()
    for tag in ("b", "a", "c"):
        core.upstream.push_image(IMAGE, tag)
    page = core.cache.list_tags(GROUP, PATH, 2, None)
    assert (page.tags, page.next_last, page.stale) == (("a", "b"), "b", False)

    core.cache.get_manifest(GROUP, PATH, "c", ACCEPT)
    core.upstream.fail(Failure.SERVER_ERROR)
    stale = core.cache.list_tags(GROUP, PATH, None, None)
    assert (stale.tags, stale.stale) == (("c",), True)

    with pytest.raises(RegistryError) as raised:
        core.cache.list_tags(GROUP, ProxyPath("acme", "nothing/cached"), None, None)
    assert raised.value.code is ErrorCode.UNAVAILABLE


def test_tags_of_an_image_no_upstream_knows_are_name_unknown(make_core: MakeCore) -> None:
    core = make_core()
    with pytest.raises(RegistryError) as raised:
        core.cache.list_tags(GROUP, PATH, None, None)
    assert raised.value.code is ErrorCode.NAME_UNKNOWN
