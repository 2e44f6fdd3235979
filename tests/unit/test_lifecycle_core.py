"""The cache's life cycle (:class:`~flask_dependency_proxy.admin.lifecycle.Lifecycle`) on the
core alone: purge and its cooldown, cleanup policies, deletion of one image, and the two
steps by which a blob no row references leaves the store (set aside, then deleted or put
back), with the life cycle's clock moved instead of waiting.

Content gets in the way production puts it there, through the pull-through cache, on
the in-memory store (:mod:`tests.support.core`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import typing as t

import pytest

from flask_dependency_proxy.admin.lifecycle import CLEANUP_LEASE, CleanupBusy, PurgeTooSoon
from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.oci.reference import MEDIA_TYPE_OCI_MANIFEST, ProxyPath
from tests.support.core import Core, received

GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/app"
PATH = ProxyPath("acme", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST,)
GRACE = 60

MakeCore = t.Callable[..., Core]


def _pull(core: Core, group_id: int, tag: str, path: ProxyPath = PATH) -> None:
    """Pull a tag and every blob of its image for a group, as a client does."""
    result = core.cache.get_manifest(group_id, path, tag, ACCEPT)
    for digest in _blobs_of(core, result.digest, path.image):
        received(core.cache.get_blob(group_id, path, digest))
    core.settle()


def _blobs_of(core: Core, digest: str, image: str) -> tuple[str, ...]:
    _media_type, content = core.upstream.manifests[image][digest]
    document = json.loads(content)
    return (document["config"]["digest"], *(layer["digest"] for layer in document["layers"]))


def test_purge_stops_serving_and_cleanup_removes_rows_then_files_after_the_grace(
    make_core: MakeCore,
) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, "latest", [b"a" * 300, b"b" * 500])
    _pull(core, GROUP, "latest")
    lifecycle = core.lifecycle(file_grace_seconds=GRACE)

    purged = lifecycle.purge(GROUP)

    assert (purged.manifests, purged.blobs) == (1, 3)
    assert core.metadata.find_tag(GROUP, IMAGE, "latest") is None
    assert all(core.metadata.find_blob(GROUP, d) is None for d in image.blobs)

    first = lifecycle.cleanup()
    assert (first.manifests_deleted, first.blobs_deleted) == (1, 3)
    assert (first.files_recent, first.files_set_aside) == (3, 0), "committed within the grace"
    assert core.store.usage()[0] == 3

    core.clock.advance(seconds=GRACE + 1)
    second = lifecycle.cleanup()
    assert (second.files_set_aside, second.files_deleted) == (3, 0)
    assert core.store.usage() == (0, 0), "set aside: no longer served"

    core.clock.advance(seconds=GRACE + 1)
    third = lifecycle.cleanup()
    stored = sum(len(core.upstream.blobs[IMAGE][d]) for d in image.blobs)
    assert (third.files_deleted, third.bytes_deleted) == (3, stored)
    assert list(core.store.set_aside_blobs()) == []

    # The next pull asks upstream again and gets the bytes back.
    gets = core.upstream.count("GET", "blob")
    again = core.cache.get_manifest(GROUP, PATH, "latest", ACCEPT)
    assert again.outcome is Outcome.MISS
    _pull(core, GROUP, "latest")
    assert core.upstream.count("GET", "blob") == gets + 3
    assert core.store.data(image.layers[1]) == b"b" * 500


def test_a_purge_within_the_cooldown_is_refused_unless_forced(make_core: MakeCore) -> None:
    core = make_core()
    lifecycle = core.lifecycle(purge_cooldown_seconds=3600)
    lifecycle.purge(GROUP)

    core.clock.advance(seconds=600)
    with pytest.raises(PurgeTooSoon) as refused:
        lifecycle.purge(GROUP)
    assert refused.value.retry_after_seconds == 3000
    lifecycle.purge(OTHER_GROUP)  # each group has its own cooldown

    lifecycle.purge(GROUP, force=True)
    core.clock.advance(seconds=3601)
    lifecycle.purge(GROUP)


def test_a_cleanup_policy_removes_what_the_group_did_not_pull_for_its_days(
    make_core: MakeCore,
) -> None:
    core = make_core()
    image = core.upstream.push_image(IMAGE, "latest")
    _pull(core, GROUP, "latest")
    _pull(core, OTHER_GROUP, "latest")
    core.group_settings().update(GROUP, utcnow(), cleanup_enabled=True, cleanup_days=7)
    lifecycle = core.lifecycle(file_grace_seconds=GRACE)

    core.clock.advance(days=6)
    assert lifecycle.cleanup().manifests_marked == 0

    core.clock.advance(days=2)
    report = lifecycle.cleanup()

    assert (report.manifests_marked, report.blobs_marked) == (1, 2)
    assert (report.manifests_deleted, report.blobs_deleted) == (1, 2)
    assert core.metadata.find_tag(GROUP, IMAGE, "latest") is None
    # The other group has no policy: its rows stay, and so do the files they reference.
    assert core.metadata.find_tag(OTHER_GROUP, IMAGE, "latest") is not None
    assert report.files_set_aside == 0
    assert all(core.store.size(d) is not None for d in image.blobs)


def test_deleting_an_image_keeps_the_blobs_another_image_of_the_group_uses(
    make_core: MakeCore,
) -> None:
    core = make_core()
    shared = b"shared base layer" * 10
    gone = core.upstream.push_image(IMAGE, "latest", [shared, b"own layer"])
    kept = core.upstream.push_image("team/other", "latest", [shared])
    _pull(core, GROUP, "latest")
    _pull(core, GROUP, "latest", ProxyPath("acme", "team/other"))
    lifecycle = core.lifecycle()

    deleted = lifecycle.delete_image(GROUP, IMAGE)

    assert deleted is not None and (deleted.manifests, deleted.blobs) == (1, 2)
    assert core.metadata.find_blob(GROUP, gone.layers[0]) is not None, "shared"
    assert core.metadata.find_blob(GROUP, gone.layers[1]) is None
    assert core.metadata.find_blob(GROUP, gone.config) is None
    assert core.metadata.find_blob(GROUP, kept.config) is not None
    assert lifecycle.delete_image(GROUP, IMAGE) is None


def test_a_set_aside_blob_a_row_claims_again_is_put_back(make_core: MakeCore) -> None:
    """A pull that saw the file just before it was set aside records its row: the next
    cleanup restores the file instead of deleting it."""
    core = make_core()
    data = b"claimed again" * 100
    digest = core.upstream.push_blob(IMAGE, data)
    received(core.cache.get_blob(GROUP, PATH, digest))
    core.settle()
    lifecycle = core.lifecycle(file_grace_seconds=GRACE)
    lifecycle.purge(GROUP)
    core.clock.advance(seconds=GRACE + 1)
    assert lifecycle.cleanup().files_set_aside == 1
    assert core.store.size(digest) is None

    core.metadata.record_blob(GROUP, digest, len(data))
    core.clock.advance(seconds=GRACE + 1)
    report = lifecycle.cleanup()

    assert (report.files_restored, report.files_deleted) == (1, 0)
    hit = core.cache.get_blob(GROUP, PATH, digest)
    assert hit.outcome is Outcome.HIT
    assert b"".join(hit.location.open()) == data  # type: ignore[union-attr]
    assert core.upstream.count("GET", "blob") == 1


def test_a_cleanup_waits_for_the_one_that_holds_the_lease(make_core: MakeCore) -> None:
    core = make_core()
    lifecycle = core.lifecycle()
    records = core.cleanup_records()
    assert records.acquire_lease(CLEANUP_LEASE, "elsewhere", core.clock(), dt.timedelta(minutes=15))

    with pytest.raises(CleanupBusy):
        lifecycle.cleanup()
    assert lifecycle.run_if_due(dt.timedelta(0)) is None

    records.release_lease(CLEANUP_LEASE, "elsewhere", core.clock(), finished=True)
    assert lifecycle.cleanup().manifests_deleted == 0


def test_cleanup_removes_spool_files_a_killed_fetch_left(make_core: MakeCore) -> None:
    core = make_core()
    digest = "sha256:" + "ab" * 32
    left = core.store.spool.path(digest)
    with open(left, "wb") as file:
        file.write(b"half a blob")
    two_hours_ago = time.time() - 7200
    os.utime(left, (two_hours_ago, two_hours_ago))
    fresh = core.store.spool.path("sha256:" + "cd" * 32)
    with open(fresh, "wb") as file:
        file.write(b"a fetch in progress")

    report = core.lifecycle().cleanup()

    assert report.staging_removed == 1
    assert (os.path.exists(left), os.path.exists(fresh)) == (False, True)
