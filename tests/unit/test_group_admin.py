"""The group use cases (:class:`~flask_dependency_proxy.admin.groups.GroupAdmin`) on the
core alone: settings and their one writer, the access answers a switch invalidates,
limits, listings, deletion, and the group's upstreams and credentials.

Content gets in through the pull-through cache on the in-memory store, as in
production (:mod:`tests.support.core`); the database is a migrated SQLite file.
"""

from __future__ import annotations

import json
import typing as t

import pytest
import sqlalchemy as sa

from flask_dependency_proxy.admin.groups import GroupAdmin, ProxyDisabled
from flask_dependency_proxy.admin.lifecycle import PurgeTooSoon
from flask_dependency_proxy.auth.group_paths import GroupPaths
from flask_dependency_proxy.cache.quota import MAX_GROUP_LIMIT_BYTES
from flask_dependency_proxy.cache.warm import Outcome, Plan, parse_target
from flask_dependency_proxy.host import Group
from flask_dependency_proxy.models.group_paths import GroupPathRecords
from flask_dependency_proxy.models.group_settings import (
    DEFAULT_CLEANUP_DAYS,
    MAX_CLEANUP_DAYS,
    GroupSettingsRecords,
)
from flask_dependency_proxy.models.tables import GroupSettings, GroupUpstreamRow
from flask_dependency_proxy.models.upstreams import GroupUpstreamRecords, UpstreamListError
from flask_dependency_proxy.oci.reference import MEDIA_TYPE_OCI_MANIFEST, ProxyPath
from flask_dependency_proxy.upstream.credentials import CredentialCipher
from tests.support.core import Core, received
from tests.support.fakeupstream import FakeRegistry

GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/app"
PATH = ProxyPath("acme", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST,)
COOLDOWN = 3600

MakeCore = t.Callable[..., Core]


class Access:
    """Stands for the access control: counts how often its answers were dropped."""

    def __init__(self) -> None:
        self.forgotten = 0

    def forget(self) -> None:
        self.forgotten += 1


def _no_group(group_id: int) -> Group | None:
    """The host's answer for these tests' group ids: they name no group of its."""
    return None


def _paths(session: t.Callable[[], t.Any]) -> GroupPaths:
    return GroupPaths(GroupPathRecords(session), t.cast(t.Any, _NoGroups()))


class _NoGroups:
    def find_group_by_id(self, group_id: int) -> Group | None:
        return _no_group(group_id)


def _admin(
    core: Core, access: Access, *, default_enabled: bool = True, cipher_secret: str = "s1"
) -> GroupAdmin:
    def session() -> t.Any:
        return core.metadata.session

    return GroupAdmin(
        session,
        settings=GroupSettingsRecords(session, default_enabled=default_enabled),
        group_upstreams=GroupUpstreamRecords(
            session, CredentialCipher.from_secrets([cipher_secret])
        ),
        upstreams=core.cache.upstreams,
        lifecycle=core.lifecycle(purge_cooldown_seconds=COOLDOWN),
        cache=core.cache,
        store=core.store,
        access=access,
        quota_policy="refuse",
        paths=_paths(session),
        find_group=_no_group,
        clock=core.clock,
    )


def _pull(core: Core, group_id: int, tag: str, image: str = IMAGE) -> None:
    """Pull a tag and every blob of its image for a group, as a client does."""
    path = ProxyPath("acme", image)
    result = core.cache.get_manifest(group_id, path, tag, ACCEPT)
    _media_type, content = core.upstream.manifests[image][result.digest]
    document = json.loads(content)
    for digest in (document["config"]["digest"], *(d["digest"] for d in document["layers"])):
        received(core.cache.get_blob(group_id, path, digest))
    core.settle()


def _rows(core: Core) -> list[tuple[int, bool, int | None]]:
    rows = core.metadata.session.execute(
        sa.select(GroupSettings.group_id, GroupSettings.enabled, GroupSettings.size_limit_bytes)
    ).all()
    core.metadata.session.rollback()
    return [(int(g), bool(e), s) for g, e, s in rows]


# -- settings -----------------------------------------------------------------------------------


def test_a_group_without_settings_has_the_defaults_and_no_row(make_core: MakeCore) -> None:
    core = make_core()
    admin = _admin(core, Access(), default_enabled=False)

    settings = admin.settings(GROUP)

    assert (settings.enabled, settings.cleanup_enabled, settings.cleanup_days) == (
        False,
        False,
        DEFAULT_CLEANUP_DAYS,
    )
    assert settings.purged_at is None and settings.size_limit is None
    assert not admin.enabled(GROUP)
    assert _rows(core) == []


def test_switching_the_proxy_saves_it_and_drops_remembered_access(make_core: MakeCore) -> None:
    core = make_core()
    access = Access()
    admin = _admin(core, access)

    assert not admin.set_enabled(GROUP, False).enabled
    assert access.forgotten == 1
    assert not admin.enabled(GROUP) and admin.enabled(OTHER_GROUP)

    admin.set_enabled(GROUP, True)
    assert access.forgotten == 2
    assert _rows(core) == [(GROUP, True, None)]


def test_other_settings_keep_the_switch_and_remembered_access(make_core: MakeCore) -> None:
    """A row made for a cleanup policy or a limit keeps the proxy as the default had it."""
    core = make_core()
    access = Access()
    admin = _admin(core, access, default_enabled=False)

    admin.set_cleanup_policy(GROUP, True, 7)
    admin.set_limit(OTHER_GROUP, 5000)

    assert access.forgotten == 0
    settings = admin.settings(GROUP)
    assert (settings.enabled, settings.cleanup_enabled, settings.cleanup_days) == (False, True, 7)
    assert admin.settings(OTHER_GROUP).size_limit == 5000
    assert sorted(_rows(core)) == [(GROUP, False, None), (OTHER_GROUP, False, 5000)]


def test_several_settings_change_together_and_the_others_stay(make_core: MakeCore) -> None:
    core = make_core()
    admin = _admin(core, Access())
    admin.set_cleanup_policy(GROUP, True, 30)

    updated = admin.update_settings(GROUP, enabled=False, size_limit=10_000)

    assert (updated.enabled, updated.size_limit) == (False, 10_000)
    assert (updated.cleanup_enabled, updated.cleanup_days) == (True, 30)
    assert admin.settings(GROUP) == updated
    admin.set_limit(GROUP, None)
    assert admin.settings(GROUP).size_limit is None


@pytest.mark.parametrize(
    "change",
    [
        {"cleanup_days": 0},
        {"cleanup_days": MAX_CLEANUP_DAYS + 1},
        {"size_limit": 0},
        {"size_limit": MAX_GROUP_LIMIT_BYTES + 1},
        # One bad value spoils the whole change: the switch is not saved either.
        {"enabled": False, "cleanup_days": -1},
    ],
)
def test_values_out_of_bounds_change_nothing(make_core: MakeCore, change: dict[str, t.Any]) -> None:
    core = make_core()
    access = Access()
    admin = _admin(core, access)

    with pytest.raises(ValueError):
        admin.update_settings(GROUP, **change)

    assert _rows(core) == [] and access.forgotten == 0


def test_a_row_created_meanwhile_by_another_request_is_updated_not_duplicated(
    make_core: MakeCore,
) -> None:
    """Two requests change a group without settings at the same moment: both see no row;
    the one that commits second loses the insert, reads the winner's row and changes it,
    keeping what the winner saved."""
    core = make_core()
    access = Access()
    admin = _admin(core, access, default_enabled=False)
    session = core.metadata.session()
    inserted = []

    @sa.event.listens_for(session, "before_flush")
    def another_request_first(*_args: t.Any) -> None:
        if inserted:
            return
        inserted.append(True)
        with core.db.engine.begin() as other:
            other.execute(
                sa.insert(GroupSettings).values(
                    group_id=GROUP, enabled=False, cleanup_enabled=False, size_limit_bytes=777
                )
            )

    settings = admin.set_enabled(GROUP, True)

    assert inserted and settings.enabled and settings.size_limit == 777
    assert _rows(core) == [(GROUP, True, 777)]
    assert access.forgotten == 1


def test_quota_shows_the_limit_what_counts_against_it_and_the_policy(
    make_core: MakeCore,
) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest", [b"a" * 300])
    admin = _admin(core, Access())
    assert admin.quota(GROUP).used == 0

    _pull(core, GROUP, "latest")
    admin.set_limit(GROUP, 1_000_000)

    quota = admin.quota(GROUP)
    assert quota.limit == 1_000_000 and quota.policy == "refuse"
    assert quota.used == admin.stats(GROUP).size > 300


# -- what the cache holds, and deletion --------------------------------------------------------


def test_listings_and_counts_of_what_the_group_pulled(make_core: MakeCore) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest", [b"a" * 300, b"b" * 500])
    core.upstream.push_image("team/tool", "1.0", [b"c" * 100])
    admin = _admin(core, Access())
    _pull(core, GROUP, "latest")
    _pull(core, GROUP, "1.0", image="team/tool")

    stats = admin.stats(GROUP)
    assert (stats.images, stats.manifests.count, stats.blobs.count) == (2, 2, 5)
    assert admin.all_stats() == {GROUP: stats}

    page = admin.manifests(GROUP, 1, 1, order_by="size", sort="desc")
    assert page.total == 2 and [item.image for item in page.items] == [IMAGE]
    assert page.next_page == 2
    found = admin.manifests(GROUP, 1, 20, search="TOOL")
    assert [(item.image, item.tag) for item in found.items] == [("team/tool", "1.0")]
    assert admin.blobs(GROUP, 1, 20).total == 5
    assert admin.manifests(OTHER_GROUP, 1, 20).total == 0
    assert admin.image_tags(GROUP, IMAGE) == ["latest"]
    assert admin.image_tags(OTHER_GROUP, IMAGE) == []


class Finished:
    """A warm-up's progress that keeps only the outcomes it was told of."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def planned(self, plan: Plan) -> None:
        pass

    def advance(self, plan: Plan, nbytes: int) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def test_warming_fills_a_group_whose_proxy_is_on_and_the_store_counts_it(
    make_core: MakeCore,
) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest", [b"a" * 300, b"b" * 500])
    admin = _admin(core, Access())
    admin.set_enabled(OTHER_GROUP, False)
    assert (admin.store_usage().blobs, admin.store_usage().size) == (0, 0)

    with pytest.raises(ProxyDisabled):
        admin.warm(OTHER_GROUP, "other", [parse_target(IMAGE)], Finished())
    assert admin.stats(OTHER_GROUP).images == 0 and admin.store_usage().blobs == 0

    progress = Finished()
    outcomes = admin.warm(GROUP, "acme", [parse_target(IMAGE)], progress)
    core.settle()

    assert [(o.target.label, o.error, o.fetched) for o in outcomes] == [
        (f"{IMAGE}:latest", None, 3)
    ]
    assert progress.outcomes == outcomes
    stats = admin.stats(GROUP)
    assert (stats.images, stats.blobs.count) == (1, 3)
    usage = admin.store_usage()
    assert usage.location == core.store.describe()
    assert usage.blobs == 3 and usage.size == stats.blobs.size


def test_deleting_one_image_keeps_the_blobs_another_image_shares(make_core: MakeCore) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest", [b"shared", b"own"])
    core.upstream.push_image("team/tool", "1.0", [b"shared"])
    admin = _admin(core, Access())
    _pull(core, GROUP, "latest")
    _pull(core, GROUP, "1.0", image="team/tool")

    deleted = admin.delete_image(GROUP, IMAGE)

    assert deleted is not None
    assert (deleted.image, deleted.manifests, deleted.blobs) == (IMAGE, 1, 2)  # config, own
    assert admin.image_tags(GROUP, IMAGE) == []
    assert admin.stats(GROUP).images == 1
    assert admin.delete_image(GROUP, IMAGE) is None
    assert admin.delete_image(GROUP, "team/never-pulled") is None


def test_purge_schedules_everything_once_per_cooldown_unless_forced(
    make_core: MakeCore,
) -> None:
    core = make_core()
    core.upstream.push_image(IMAGE, "latest", [b"a" * 300])
    admin = _admin(core, Access())
    _pull(core, GROUP, "latest")
    _pull(core, OTHER_GROUP, "latest")

    result = admin.purge(GROUP)

    assert (result.manifests, result.blobs) == (1, 2)
    stats = admin.stats(GROUP)
    assert stats.size == 0 and stats.pending == 3
    assert admin.settings(GROUP).purged_at == result.purged_at
    assert admin.stats(OTHER_GROUP).pending == 0
    core.clock.advance(seconds=COOLDOWN - 10)
    with pytest.raises(PurgeTooSoon) as refused:
        admin.purge(GROUP)
    assert 0 < refused.value.retry_after_seconds <= 10
    assert admin.purge(GROUP, force=True).manifests == 0


def test_usage_covers_the_days_asked_for(make_core: MakeCore) -> None:
    core = make_core()
    admin = _admin(core, Access())

    summary = admin.usage(GROUP, 7)

    assert len(summary.days) == 7
    assert summary.days[-1].day == core.clock().date()
    assert summary.pulls_cached == summary.pulls_upstream == 0


# -- upstreams ---------------------------------------------------------------------------------


def _two_upstreams(make_core: MakeCore) -> Core:
    return make_core(registries=[FakeRegistry("dockerhub"), FakeRegistry("ghcr")])


def test_a_group_narrows_and_reorders_the_instance_upstreams(make_core: MakeCore) -> None:
    core = _two_upstreams(make_core)
    admin = _admin(core, Access())
    assert admin.instance_upstreams() == ["dockerhub", "ghcr"]
    view = admin.upstreams(GROUP)
    assert not view.custom_order
    assert [(u.name, u.position) for u in view.upstreams] == [("dockerhub", 1), ("ghcr", 2)]

    admin.set_upstream_order(GROUP, ["ghcr"])

    view = admin.upstreams(GROUP)
    assert view.custom_order
    assert [(u.name, u.position, u.used) for u in view.upstreams] == [
        ("ghcr", 1, True),
        ("dockerhub", None, False),
    ]
    assert view.find("ghcr") is view.upstreams[0] and view.find("quay") is None
    assert admin.upstreams(OTHER_GROUP).custom_order is False

    admin.set_upstream_order(GROUP, None)
    assert not admin.upstreams(GROUP).custom_order


@pytest.mark.parametrize("order", [[], ["ghcr", "ghcr"], ["quay"]])
def test_an_order_the_group_cannot_have_is_refused(make_core: MakeCore, order: list[str]) -> None:
    core = _two_upstreams(make_core)
    admin = _admin(core, Access())

    with pytest.raises(UpstreamListError):
        admin.set_upstream_order(GROUP, order)

    assert not admin.upstreams(GROUP).custom_order


def test_upstream_names_from_urls_are_checked_against_the_instance(make_core: MakeCore) -> None:
    core = _two_upstreams(make_core)
    admin = _admin(core, Access())

    assert admin.is_upstream("ghcr")
    assert not admin.is_upstream("quay")
    assert not admin.is_upstream("GHCR")
    assert not admin.is_upstream("../ghcr")


def test_a_group_credential_is_kept_encrypted_and_never_shown(make_core: MakeCore) -> None:
    core = _two_upstreams(make_core)
    admin = _admin(core, Access())

    admin.set_credentials(GROUP, "ghcr", "robot", "s3cret-token")

    view = admin.upstreams(GROUP).find("ghcr")
    assert view is not None and view.credential_set and not view.credential_unreadable
    assert "s3cret-token" not in repr(admin.upstreams(GROUP))
    stored = core.metadata.session.execute(sa.select(GroupUpstreamRow.password_encrypted))
    assert all(b"s3cret-token" not in (value or b"") for (value,) in stored)
    core.metadata.session.rollback()
    assert not admin.upstreams(GROUP).custom_order, "a credential leaves the order alone"

    assert admin.clear_credentials(GROUP, "ghcr")
    assert not admin.clear_credentials(GROUP, "ghcr")
    found = admin.upstreams(GROUP).find("ghcr")
    assert found is not None and not found.credential_set


@pytest.mark.parametrize(
    ("username", "password", "problem"),
    [("", "x", "username"), ("a:b", "x", "username"), ("robot", "", "password")],
)
def test_a_credential_out_of_bounds_is_refused_without_quoting_it(
    make_core: MakeCore, username: str, password: str, problem: str
) -> None:
    core = _two_upstreams(make_core)
    admin = _admin(core, Access())

    with pytest.raises(UpstreamListError) as refused:
        admin.set_credentials(GROUP, "ghcr", username, password)

    assert problem in str(refused.value)
    assert username not in str(refused.value) or not username
    found = admin.upstreams(GROUP).find("ghcr")
    assert found is not None and not found.credential_set


def test_rotation_re_encrypts_what_the_keys_read_and_names_the_rest(
    make_core: MakeCore,
) -> None:
    core = _two_upstreams(make_core)
    old = _admin(core, Access(), cipher_secret="old")
    old.set_credentials(GROUP, "ghcr", "robot", "token")
    other = _admin(core, Access(), cipher_secret="lost")
    other.set_credentials(OTHER_GROUP, "dockerhub", "robot", "token")
    session = core.metadata.session
    both = GroupUpstreamRecords(lambda: session, CredentialCipher.from_secrets(["new", "old"]))
    admin = GroupAdmin(
        lambda: session,
        settings=GroupSettingsRecords(lambda: session, default_enabled=True),
        group_upstreams=both,
        upstreams=core.cache.upstreams,
        lifecycle=core.lifecycle(),
        cache=core.cache,
        store=core.store,
        access=Access(),
        quota_policy="evict",
        paths=_paths(lambda: session),
        find_group=_no_group,
    )

    result = admin.rotate_credentials()

    assert result.rotated == 1
    assert result.unreadable == ((OTHER_GROUP, "dockerhub"),)
    readable = _admin(core, Access(), cipher_secret="new").upstreams(GROUP).find("ghcr")
    assert readable is not None and not readable.credential_unreadable
    unread = admin.upstreams(OTHER_GROUP).find("dockerhub")
    assert unread is not None and unread.credential_unreadable
