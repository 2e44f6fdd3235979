"""The tag cooldown on the cache's core (:mod:`flask_dependency_proxy.cache.cooldown`):
a moved tag keeps its previous digest until the new one is old enough (counted from
when the group's cache first saw it, on the core's clock), the new manifest is cached
meanwhile; brand-new tags and pulls by digest follow the group's policies; owners
release early (recorded); exempt images and groups without a cooldown are untouched,
and a tag not in cooldown costs no query of its own."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa

from flask_dependency_proxy.admin.supply_chain import InvalidCooldown, SupplyChainAdmin
from flask_dependency_proxy.cache.cooldown import CooldownPolicy, CooldownRefused
from flask_dependency_proxy.cache.results import Outcome
from flask_dependency_proxy.oci.errors import ErrorCode
from flask_dependency_proxy.oci.reference import (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    ProxyPath,
)
from tests.support.core import Core

GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/app"
PATH = ProxyPath("acme", IMAGE)
OTHER_PATH = ProxyPath("other", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX)
HOUR = 3600

MakeCore = t.Callable[..., Core]


def _admin(core: Core) -> SupplyChainAdmin:
    return SupplyChainAdmin(
        lambda: core.metadata.session,
        settings=core.group_settings(),
        blocks=t.cast(t.Any, None),
        serve_deleted_tags_default=False,
        cooldowns=core.cache.cooldowns,
        clock=core.clock,
    )


def _pull(core: Core, reference: str, group: int = GROUP, path: ProxyPath = PATH) -> t.Any:
    result = core.cache.get_manifest(group, path, reference, ACCEPT)
    core.metadata.release()
    return result


def test_a_moved_tag_serves_its_previous_digest_until_the_new_one_is_old_enough(
    make_core: MakeCore,
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=6 * HOUR))
    old = core.upstream.push_image(IMAGE, "1.0")
    assert _pull(core, "1.0").digest == old.digest  # a cached tag: its first digest

    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new release",))
    held = _pull(core, "1.0")
    assert (held.digest, held.outcome) == (old.digest, Outcome.COOLDOWN_PREVIOUS)
    assert held.pending.digest == new.digest
    first_release = held.pending.release_at
    assert abs((first_release - core.clock()).total_seconds() - 6 * HOUR) < 60
    # The new manifest is cached meanwhile: a pull by digest (allowed) asks upstream nothing.
    before = core.upstream.count()
    assert _pull(core, new.digest).digest == new.digest
    assert core.upstream.count() == before

    core.clock.advance(hours=5)
    again = _pull(core, "1.0")
    assert again.digest == old.digest and again.pending.release_at == first_release
    listed = _admin(core).held_tags(GROUP)
    assert [(h.hold.tag, h.hold.previous_digest, h.hold.pending_digest) for h in listed] == [
        ("1.0", old.digest, new.digest)
    ]

    core.clock.advance(hours=1, seconds=1)
    before = core.upstream.count("GET", "manifests")
    released = _pull(core, "1.0")
    assert (released.digest, released.pending) == (new.digest, None)
    assert core.upstream.count("GET", "manifests") == before, "warm: no GET at release"
    assert _admin(core).held_tags(GROUP) == []
    assert _pull(core, "1.0").outcome is Outcome.REVALIDATED


def test_a_third_digest_restarts_the_wait_and_moving_back_ends_it(make_core: MakeCore) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=HOUR))
    old = core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    core.upstream.push_image(IMAGE, "1.0", layers=(b"second",))
    first = _pull(core, "1.0").pending
    core.clock.advance(minutes=50)
    third = core.upstream.push_image(IMAGE, "1.0", layers=(b"third",))
    held = _pull(core, "1.0")
    assert held.digest == old.digest and held.pending.digest == third.digest
    assert held.pending.release_at > first.release_at

    core.upstream.push_manifest(IMAGE, old.manifest, tag="1.0")  # upstream moves back
    back = _pull(core, "1.0")
    assert (back.digest, back.outcome, back.pending) == (old.digest, Outcome.REVALIDATED, None)
    assert _admin(core).held_tags(GROUP) == []


def test_a_held_tag_is_checked_on_every_pull_despite_the_tag_check_interval(
    make_core: MakeCore,
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=HOUR), tag_check_interval=600)
    core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    core.clock.advance(seconds=601)
    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new",))
    assert _pull(core, "1.0").outcome is Outcome.COOLDOWN_PREVIOUS
    assert _pull(core, "1.0").outcome is Outcome.COOLDOWN_PREVIOUS  # not a plain hit
    core.clock.advance(hours=1)
    assert _pull(core, "1.0").digest == new.digest


@pytest.mark.parametrize("policy", ["serve", "refuse"])
def test_a_brand_new_tag_follows_the_group_policy(make_core: MakeCore, policy: str) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=HOUR))
    _admin(core).set_cooldown(GROUP, new_tags=policy)
    core.metadata.release()
    image = core.upstream.push_image(IMAGE, "fresh")
    if policy == "serve":
        assert _pull(core, "fresh").digest == image.digest
        assert _admin(core).held_tags(GROUP) == []
        return
    with pytest.raises(CooldownRefused) as caught:
        _pull(core, "fresh")
    refused = caught.value
    assert (refused.code, refused.status, refused.outcome) == (ErrorCode.DENIED, 403, "refused")
    assert "team/app:fresh" in refused.message and image.digest in refused.message
    assert "served from" in refused.message and refused.headers["Retry-After"].isdigit()
    assert 3500 < int(refused.headers["Retry-After"]) <= 3601
    [held] = _admin(core).held_tags(GROUP)
    assert held.hold.previous_digest is None
    core.clock.advance(minutes=30)
    with pytest.raises(CooldownRefused):
        _pull(core, "fresh")
    # Another group without a cooldown of its own follows the instance: serve at once.
    assert _pull(core, "fresh", OTHER_GROUP, OTHER_PATH).digest == image.digest
    core.clock.advance(minutes=31)
    assert _pull(core, "fresh").digest == image.digest


@pytest.mark.parametrize("policy", ["allow", "refuse"])
def test_a_pull_by_digest_in_cooldown_follows_the_group_policy(
    make_core: MakeCore, policy: str
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=HOUR))
    _admin(core).set_cooldown(GROUP, digest_pulls=policy)
    core.metadata.release()
    old = core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new",))
    _pull(core, "1.0")
    assert _pull(core, old.digest).digest == old.digest  # the previous one: always
    if policy == "allow":
        assert _pull(core, new.digest).digest == new.digest
    else:
        with pytest.raises(CooldownRefused) as caught:
            _pull(core, new.digest)
        assert caught.value.digest == new.digest
        core.clock.advance(hours=1, seconds=1)
        assert _pull(core, new.digest).digest == new.digest


def test_an_owner_releases_a_pending_digest_early_and_it_is_recorded(
    make_core: MakeCore,
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=24 * HOUR))
    core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new",))
    _pull(core, "1.0")
    admin = _admin(core)
    [held] = admin.held_tags(GROUP)
    assert admin.release(OTHER_GROUP, held.hold.id, by="mallory") is None
    released = admin.release(GROUP, held.hold.id, by="alice")
    assert released is not None and released.hold.released_by == "alice"
    assert admin.release(GROUP, held.hold.id, by="alice") is None, "released once"
    core.metadata.release()
    assert _pull(core, "1.0").digest == new.digest
    [event] = [e for e in admin.events(GROUP) if e.kind == "cooldown_released"]
    assert "alice" in event.message and new.digest in event.message
    assert (event.image, event.reference) == (IMAGE, "1.0")


def test_exempt_images_and_a_group_that_turns_it_off_get_the_new_digest_at_once(
    make_core: MakeCore,
) -> None:
    core = make_core(cooldown=CooldownPolicy(seconds=HOUR))
    admin = _admin(core)
    admin.set_cooldown(GROUP, exempt=["team/*"])
    core.metadata.release()
    core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new",))
    assert _pull(core, "1.0").digest == new.digest

    admin.set_cooldown(GROUP, exempt=[])
    core.metadata.release()
    newer = core.upstream.push_image(IMAGE, "1.0", layers=(b"newer",))
    assert _pull(core, "1.0").digest == new.digest
    assert len(admin.held_tags(GROUP)) == 1
    admin.set_cooldown(GROUP, seconds=0)
    assert admin.held_tags(GROUP) == [], "switched off: forgotten"
    core.metadata.release()
    assert _pull(core, "1.0").digest == newer.digest


def test_off_by_default(make_core: MakeCore) -> None:
    core = make_core(cooldown=CooldownPolicy())
    core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    new = core.upstream.push_image(IMAGE, "1.0", layers=(b"new",))
    assert _pull(core, "1.0").digest == new.digest
    assert _admin(core).cooldown(GROUP).effective.seconds == 0


def test_a_tag_not_in_cooldown_costs_no_query_of_its_own(make_core: MakeCore) -> None:
    core = make_core(
        cooldown=CooldownPolicy(seconds=HOUR), tag_check_interval=600, cooldown_refresh_seconds=60
    )
    core.upstream.push_image(IMAGE, "1.0")
    _pull(core, "1.0")
    statements: list[str] = []

    def count(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        statements.append(statement)

    engine = core.db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        hit = _pull(core, "1.0")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert hit.outcome is Outcome.HIT
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    assert "tag_cooldowns" in selects[0], "read with the tag, in its one query"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"seconds": -1}, "cooldown_hours"),
        ({"new_tags": "maybe"}, "new_tags"),
        ({"digest_pulls": "serve"}, "digest_pulls"),
        ({"exempt": ["Team/App"]}, "exempt"),
    ],
)
def test_malformed_cooldown_settings_are_refused_with_the_field(
    make_core: MakeCore, fields: dict[str, t.Any], field: str
) -> None:
    core = make_core(cooldown=CooldownPolicy())
    with pytest.raises(InvalidCooldown) as caught:
        _admin(core).set_cooldown(GROUP, **fields)
    assert field in caught.value.errors
