"""Predictive refresh on the cache's core (:mod:`flask_dependency_proxy.cache.refresh`):
a group's most pulled tags are checked upstream with HEADs and, when one moved, its new
manifest and blobs are fetched ahead, so the next pull makes no upstream blob GET; the
tag cooldown still holds the new digest back; each upstream's budget (its
``RateLimit-Remaining``, the per-run limit) stops the HEADs; the hot set ranks tags by
pulls and adds what the host names for its CI."""

from __future__ import annotations

import typing as t

import pytest

from flask_dependency_proxy.cache.cooldown import CooldownPolicy
from flask_dependency_proxy.cache.refresh import (
    RefreshDefaults,
    TagRefresher,
    group_target,
)
from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.models.group_paths import GroupPathRecords
from flask_dependency_proxy.models.hot_tags import HotTagRecords, write_reference_pulls
from flask_dependency_proxy.models.tables import utcnow
from flask_dependency_proxy.models.usage import write_usage
from flask_dependency_proxy.oci.reference import (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    ProxyPath,
)
from tests.support.core import Core, received

GROUP = 1
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX)
HOUR = 3600

MakeCore = t.Callable[..., Core]


def _refresher(core: Core, ci: t.Sequence[str] = (), **defaults: t.Any) -> TagRefresher:
    GroupPathRecords(lambda: core.metadata.session).record(GROUP, "acme", utcnow())
    settings = core.group_settings()
    return TagRefresher(
        core.cache,
        HotTagRecords(lambda: core.metadata.session),
        group_settings=settings.get,
        refresh_groups=lambda: [],
        leases=core.cleanup_records(),
        defaults=RefreshDefaults(enabled=True, **defaults),
        ci_images=(lambda group_id: list(ci)) if ci else None,
        clock=core.clock,
    )


def _pull(core: Core, image: str, tag: str, times: int = 1) -> tuple[str, Outcome]:
    """A client's pull of ``image:tag``: the manifest and every blob, counted as the
    registry's request log counts it, and the counts written."""
    path = ProxyPath("acme", image)
    for _ in range(times):
        result = core.cache.get_manifest(GROUP, path, tag, ACCEPT)
        core.cache.usage.count_reference(GROUP, image, tag)
        core.metadata.release()
    for digest in _blobs(core, image, result.digest):
        received(core.cache.get_blob(GROUP, path, digest))
        core.settle()
    core.cache.usage.flush(
        lambda batch: write_usage(core.metadata.session, batch),
        force=True,
        references=lambda refs: write_reference_pulls(core.metadata.session, refs),
    )
    core.metadata.release()
    return result.digest, result.outcome


def _blobs(core: Core, image: str, digest: str) -> list[str]:
    import json

    _, content = core.upstream.manifests[image][digest]
    document = json.loads(content)
    return [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]


def test_a_moved_hot_tag_is_fetched_ahead_so_the_next_pull_gets_no_blob_upstream(
    make_core: MakeCore,
) -> None:
    core = make_core()
    core.upstream.push_image("team/app", "1.0", layers=(b"old layer",))
    _pull(core, "team/app", "1.0")
    new = core.upstream.push_image("team/app", "1.0", layers=(b"new layer", b"second"))
    refresher = _refresher(core)

    report = refresher.run(force=True)

    assert (report.checked, report.moved) == (1, 1)
    assert report.prefetched_bytes == len(b"new layer") + len(b"second") + len(
        core.upstream.blobs["team/app"][new.config]
    )
    core.upstream.forget_calls()
    digest, outcome = _pull(core, "team/app", "1.0")
    assert digest == new.digest
    assert outcome in (Outcome.HIT, Outcome.REVALIDATED)
    assert core.upstream.count("GET", "blob") == 0
    assert core.upstream.count("GET", "manifest") == 0
    state = HotTagRecords(lambda: core.metadata.session).state(GROUP, "team/app", "1.0")
    assert state is not None and state.refreshed_digest == new.digest

    # Nothing moved since: one HEAD, nothing fetched; within the interval, not even that.
    core.upstream.forget_calls()
    again = refresher.run(force=True)
    assert (again.checked, again.moved) == (1, 0)
    assert core.upstream.count() == 1
    core.upstream.forget_calls()
    assert refresher.run().checked == 0
    assert core.upstream.count() == 0


def test_in_cooldown_the_new_digest_is_fetched_but_the_tag_serves_the_previous_one(
    make_core: MakeCore,
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=6 * HOUR))
    old = core.upstream.push_image("team/app", "1.0", layers=(b"old",))
    _pull(core, "team/app", "1.0")
    new = core.upstream.push_image("team/app", "1.0", layers=(b"new in cooldown",))

    report = _refresher(core).run(force=True)

    assert report.moved == 1
    assert report.prefetched_bytes >= len(b"new in cooldown")
    core.upstream.forget_calls()
    digest, outcome = _pull(core, "team/app", "1.0")
    assert (digest, outcome) == (old.digest, Outcome.COOLDOWN_PREVIOUS)
    core.clock.advance(hours=7)
    core.upstream.forget_calls()
    digest, _ = _pull(core, "team/app", "1.0")
    assert digest == new.digest
    assert core.upstream.count("GET", "blob") == 0


def test_the_budget_stops_heads_when_the_upstream_has_no_rate_limit_left(
    make_core: MakeCore,
) -> None:
    core = make_core()
    for n in range(3):
        core.upstream.push_image(f"team/app{n}", "1.0")
        _pull(core, f"team/app{n}", "1.0")
    client = core.cache.upstreams.client(core.upstream.name)
    refresher = _refresher(core, budget=2)

    client.rate_limit_remaining = 0  # type: ignore[misc]
    core.upstream.forget_calls()
    report = refresher.run(force=True)
    assert core.upstream.count("HEAD") == 0
    assert (report.checked, report.skipped) == (0, 3)

    client.rate_limit_remaining = 100  # type: ignore[misc]
    report = refresher.run(force=True)
    assert core.upstream.count("HEAD") == 2  # the per-run budget
    assert (report.checked, report.skipped) == (2, 1)
    assert report.requests == {core.upstream.name: 2}


def test_the_hot_set_ranks_by_pulls_and_adds_what_ci_names(make_core: MakeCore) -> None:
    core = make_core()
    for n, times in ((0, 1), (1, 3), (2, 2)):
        core.upstream.push_image(f"team/app{n}", "1.0")
        _pull(core, f"team/app{n}", "1.0", times=times)
    ci = [
        "proxy.example:5000/acme/dependency_proxy/containers/tools/lint:2",
        "other/dependency_proxy/containers/tools/lint:3",  # another group's
        "docker.io/library/alpine:3",  # not through the proxy
        "acme/dependency_proxy/containers/team/app1:1.0",  # already hot
        "not a reference",
    ]
    refresher = _refresher(core, ci=ci)

    assert refresher.hot_set(GROUP, "acme", 2) == [
        ("team/app1", "1.0"),
        ("team/app2", "1.0"),
        ("tools/lint", "2"),
    ]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("alpine", ("alpine", "latest")),
        ("library/node:22", ("library/node", "22")),
        ("h.example/acme/dependency_proxy/containers/node:22", ("node", "22")),
        ("localhost:5000/acme/dependency_proxy/containers/a/b:1", ("a/b", "1")),
        ("ACME/dependency_proxy/containers/node:22", ("node", "22")),
        ("h.example/other/dependency_proxy/containers/node:22", None),
        ("ghcr.io/owner/tool:1", None),
        ("node:bad tag", None),
        ("", None),
    ],
)
def test_group_target(reference: str, expected: tuple[str, str] | None) -> None:
    target = group_target(reference, "acme")
    assert (None if target is None else (target.image, target.reference)) == expected


def test_requests_per_hour_follow_the_schedule_the_tag_count_and_the_budget() -> None:
    defaults = RefreshDefaults(tags=10, interval_seconds=900, budget=100)
    assert defaults.requests_per_hour(4) == 16
    assert defaults.requests_per_hour(16) == 40  # the 10 hottest
    assert RefreshDefaults(tags=50, interval_seconds=3600, budget=20).requests_per_hour(50) == 20
