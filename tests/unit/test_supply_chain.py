"""The supply-chain controls on the cache's core: blocked images (by digest, by tag
pattern, an index and its platform manifests, while upstream is down, in another
group), a cached tag upstream deleted under each group policy, and the pull record's
buffer and queries (:mod:`flask_dependency_proxy.cache.blocks`,
:mod:`flask_dependency_proxy.cache.audit`, :mod:`flask_dependency_proxy.admin.supply_chain`)."""

from __future__ import annotations

import datetime as dt
import json
import typing as t

import pytest

from flask_dependency_proxy.admin.supply_chain import InvalidBlock, SupplyChainAdmin
from flask_dependency_proxy.cache.audit import PullAudit
from flask_dependency_proxy.cache.blocks import ImageBlocked
from flask_dependency_proxy.cache.manifests import DeletedTags
from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.models.blocks import BlockRecords
from flask_dependency_proxy.models.group_settings import GroupSettingsRecords
from flask_dependency_proxy.models.pulls import PullEntry, PullFilter, write_pulls
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.oci.errors import ErrorCode, RegistryError
from flask_dependency_proxy.oci.reference import (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    ProxyPath,
)
from tests.support.core import Core
from tests.support.fakeupstream import Failure

GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/app"
PATH = ProxyPath("acme", IMAGE)
OTHER_PATH = ProxyPath("other", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX)

MakeCore = t.Callable[..., Core]


def _admin(core: Core) -> SupplyChainAdmin:
    assert core.cache.blocks is not None
    return SupplyChainAdmin(
        lambda: core.metadata.session,
        settings=core.group_settings(),
        blocks=core.cache.blocks,
        serve_deleted_tags_default=False,
    )


def _refused(core: Core, group: int, path: ProxyPath, reference: str) -> ImageBlocked:
    with pytest.raises(ImageBlocked) as caught:
        core.cache.get_manifest(group, path, reference, ACCEPT)
    assert (caught.value.code, caught.value.status) == (ErrorCode.DENIED, 403)
    return caught.value


def test_a_blocked_digest_is_refused_by_tag_digest_stale_and_in_every_group(
    make_core: MakeCore,
) -> None:
    core = make_core(block_refresh_seconds=60)
    image = core.upstream.push_image(IMAGE, "1.0")
    for group, path in ((GROUP, PATH), (OTHER_GROUP, OTHER_PATH)):
        assert core.cache.get_manifest(group, path, "1.0", ACCEPT).digest == image.digest

    created = _admin(core).block(
        None, digest=image.digest, reason="CVE-2026-0001 backdoor", by="root"
    )
    assert created.block.active and created.block.group_id is None

    for group, path in ((GROUP, PATH), (OTHER_GROUP, OTHER_PATH)):
        refused = _refused(core, group, path, "1.0")
        assert "CVE-2026-0001 backdoor" in refused.message
        assert refused.digest == image.digest
        _refused(core, group, path, image.digest)
    core.upstream.fail(Failure.DOWN)
    _refused(core, GROUP, PATH, "1.0")  # the cached copy, upstream down: still refused

    assert _admin(core).unblock(created.block.id, None, by="root") is not None
    stale = core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    assert (stale.digest, stale.outcome) == (image.digest, Outcome.STALE)
    listed = _admin(core).blocks(GROUP, removed=True)
    assert [(b.id, b.removed_by) for b in listed] == [(created.block.id, "root")]
    kinds = [event.kind for event in _admin(core).events(GROUP)]
    assert kinds == ["unblocked", "blocked"]


def test_a_group_block_leaves_other_groups_alone(make_core: MakeCore) -> None:
    core = make_core(block_refresh_seconds=60)
    image = core.upstream.push_image(IMAGE, "1.0")
    _admin(core).block(GROUP, digest=image.digest, reason="ours", by="alice")
    _refused(core, GROUP, PATH, "1.0")
    assert core.cache.get_manifest(OTHER_GROUP, OTHER_PATH, "1.0", ACCEPT).digest == image.digest
    # A group's owners cannot lift another group's or the instance's block.
    block = _admin(core).blocks(GROUP)[0]
    assert _admin(core).unblock(block.id, OTHER_GROUP, by="mallory") is None


def test_a_digest_block_ends_when_the_tag_moves_a_tag_block_does_not(
    make_core: MakeCore,
) -> None:
    core = make_core(block_refresh_seconds=60)
    bad = core.upstream.push_image(IMAGE, "1.0")
    core.upstream.push_image("team/other", "2.0")
    admin = _admin(core)
    admin.block(GROUP, digest=bad.digest, reason="bad build", by="alice")
    _refused(core, GROUP, PATH, "1.0")
    clean = core.upstream.push_image(IMAGE, "1.0", layers=(b"fixed",))
    assert core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT).digest == clean.digest

    admin.block(GROUP, image="team/other", tag_pattern="2.*", reason="bad series", by="alice")
    refused = _refused(core, GROUP, ProxyPath("acme", "team/other"), "2.0")
    assert refused.digest is None and "bad series" in refused.message
    core.upstream.push_image("team/other", "2.0", layers=(b"fixed",))
    _refused(core, GROUP, ProxyPath("acme", "team/other"), "2.0")
    before = core.upstream.count()
    _refused(core, GROUP, ProxyPath("acme", "team/other"), "2.0")
    assert core.upstream.count() == before, "a tag block refuses before upstream is asked"


def test_an_index_block_blocks_its_platform_manifests(make_core: MakeCore) -> None:
    core = make_core(block_refresh_seconds=60)
    child = core.upstream.push_image(IMAGE, None)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    index_digest = core.upstream.push_manifest(
        IMAGE, index, tag="multi", media_type=MEDIA_TYPE_OCI_INDEX
    )
    assert core.cache.get_manifest(GROUP, PATH, "multi", ACCEPT).digest == index_digest
    created = _admin(core).block(None, digest=index_digest, reason="bad index", by="root")
    assert sorted(core.cache.blocks.digests_of(created.block.id)) == sorted(  # type: ignore[union-attr]
        [index_digest, child.digest]
    )
    refused = _refused(core, OTHER_GROUP, OTHER_PATH, child.digest)
    assert index_digest in refused.message


def test_blocks_reach_other_processes_within_the_refresh(make_core: MakeCore) -> None:
    core = make_core(block_refresh_seconds=0.2)
    image = core.upstream.push_image(IMAGE, "1.0")
    core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    # Another process blocks: straight into the table, this process's list untouched.
    BlockRecords(lambda: core.metadata.session).add(
        group_id=None, digest=image.digest, image=None, tag_pattern=None,
        reason="elsewhere", by="root", now=utcnow(),
    )  # fmt: skip
    core.metadata.release()
    assert core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT).digest == image.digest
    import time

    time.sleep(0.25)
    _refused(core, GROUP, PATH, "1.0")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"digest": "sha256:nothex"}, "digest"),
        ({"image": "Team/App", "tag_pattern": "1.*"}, "image"),
        ({"image": "team/app", "tag_pattern": "1 0"}, "tag_pattern"),
        ({"image": "team/app"}, "image"),
        ({"digest": "sha256:" + "a" * 64, "image": "team/app"}, "digest"),
    ],
)
def test_a_malformed_block_is_refused_with_the_field(
    make_core: MakeCore, fields: dict[str, str], field: str
) -> None:
    core = make_core(block_refresh_seconds=60)
    with pytest.raises(InvalidBlock) as caught:
        _admin(core).block(GROUP, reason="why", by="alice", **fields)
    assert field in caught.value.errors
    with pytest.raises(InvalidBlock) as caught:
        _admin(core).block(GROUP, digest="sha256:" + "a" * 64, reason=" ", by="alice")
    assert "reason" in caught.value.errors


@pytest.mark.parametrize("policy", ["serve", "refuse"])
def test_a_tag_deleted_upstream_follows_the_group_policy_and_is_recorded(
    make_core: MakeCore, policy: str
) -> None:
    def deleted_tags(metadata: t.Any) -> DeletedTags:
        records = BlockRecords(lambda: metadata.session)
        settings = GroupSettingsRecords(lambda: metadata.session, default_enabled=True)

        def serve(group_id: int) -> bool:
            return settings.get(group_id).upstream_not_found == "serve"

        def record(group_id: int, image: str, tag: str, digest: str, served: bool) -> None:
            records.record_event(group_id, "upstream_not_found", image, tag, f"{served}", utcnow())

        return DeletedTags(serve, record, metadata.database)

    core = make_core(block_refresh_seconds=60, deleted_tags=deleted_tags)
    image = core.upstream.push_image(IMAGE, "1.0")
    core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
    _admin(core).set_deleted_tag_policy(GROUP, policy)
    core.metadata.release()
    core.upstream.delete_tag(IMAGE, "1.0")
    for _ in range(2):
        if policy == "serve":
            served = core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
            assert (served.digest, served.outcome) == (image.digest, Outcome.STALE)
        else:
            with pytest.raises(RegistryError) as caught:
                core.cache.get_manifest(GROUP, PATH, "1.0", ACCEPT)
            assert caught.value.code is ErrorCode.MANIFEST_UNKNOWN
    events = _admin(core).events(GROUP)
    assert [(e.kind, e.image, e.reference) for e in events] == [
        ("upstream_not_found", IMAGE, "1.0")
    ], "recorded once, not per pull"


def _entry(**fields: t.Any) -> PullEntry:
    values: dict[str, t.Any] = {
        "pulled_at": utcnow(),
        "group_id": GROUP,
        "image": IMAGE,
        "reference": "1.0",
        "digest": "sha256:" + "1" * 64,
        "outcome": "hit",
        "principal_kind": "job_token",
        "subject": "job:7",
        "username": "dev",
        "context": {"project": "acme/app", "job": "7"},
    }
    values.update(fields)
    return PullEntry(**values)


def test_the_pull_buffer_writes_in_batches_and_keeps_a_failed_batch() -> None:
    now = [0.0]
    lost: list[int] = []
    audit = PullAudit(flush_seconds=5, max_pending=3, monotonic=lambda: now[0], on_lost=lost.append)
    written: list[list[PullEntry]] = []
    audit.add(_entry())
    assert audit.flush(written.append) == 1  # the first after a quiet spell goes at once
    audit.add(_entry(reference="2"))
    assert not audit.flush_due() and audit.flush(written.append) == 0

    now[0] = 6.0

    def broken(batch: list[PullEntry]) -> None:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        audit.flush(broken)
    assert audit.pending() == 1
    for reference in ("3", "4", "5"):
        audit.add(_entry(reference=reference))
    assert audit.pending() == 3 and lost == [1] and audit.dropped == 1
    assert audit.flush(written.append, force=True) == 3
    assert [e.reference for e in written[1]] == ["3", "4", "5"]


def test_the_pull_record_is_found_by_digest_project_and_time_and_forgotten(
    make_core: MakeCore,
) -> None:
    core = make_core(block_refresh_seconds=60)
    session = core.metadata.session
    old = utcnow() - dt.timedelta(days=100)
    bad = "sha256:" + "b" * 64
    write_pulls(
        session,
        [
            _entry(pulled_at=old, digest=bad),
            _entry(digest=bad, context={"project": "acme/web", "job": "8"}),
            _entry(digest=bad, group_id=OTHER_GROUP, context=None, subject="user:1"),
            _entry(),
        ],
    )
    admin = _admin(core)
    page = admin.pulls(PullFilter(digest=bad), 1, 10)
    assert page.total == 3
    assert {item.subject: item.context for item in page.items[:2]} == {
        "user:1": None,
        "job:7": {"project": "acme/web", "job": "8"},
    }
    assert admin.pulls(PullFilter(group_id=GROUP, digest=bad), 1, 10).total == 2
    assert admin.pulls(PullFilter(project="acme/web"), 1, 10).total == 1
    recent = PullFilter(digest=bad, since=utcnow() - dt.timedelta(days=1))
    assert admin.pulls(recent, 1, 10).total == 2
    assert admin.pulls(PullFilter(subject="user:1"), 1, 10).total == 1

    created = admin.block(None, digest=bad, reason="compromised", by="root")
    assert created.pulled.count == 2  # the last 30 days, every group
    assert created.pulled.projects == ("acme/web",)

    assert admin.forget_pulls(90) == 1
    assert admin.pulls(PullFilter(), 1, 10).total == 3
