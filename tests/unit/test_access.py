"""How long :class:`AccessControl` reuses grants and refusals, on a controlled clock."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

import pytest
import sqlalchemy.exc as sa_exc

from flask_dependency_proxy.auth.access import (
    DENIAL_RECHECK_SECONDS,
    SWITCH_RECHECK_SECONDS,
    AccessControl,
)
from flask_dependency_proxy.host import Group, Principal, PrincipalKind
from flask_dependency_proxy.models.database import DatabaseUnavailable
from flask_dependency_proxy.oci.errors import RegistryError

ALICE = Principal(kind=PrincipalKind.USER, subject="user:1", username="alice")
TEAM = Group(id=7, full_path="team")
RECHECK = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    """The host's and the database's answers, with a count of how often each was asked."""

    def __init__(self) -> None:
        self.members = {ALICE.subject}
        self.enabled = False
        self.host_lookups = 0
        self.switch_reads = 0
        #: The database is down: every question to the host or the database fails.
        self.down = False

    def _ask(self) -> None:
        if self.down:
            raise sa_exc.OperationalError("SELECT", {}, Exception("connection refused"))

    # host adapter
    def find_group(self, path: str) -> Group | None:
        self._ask()
        self.host_lookups += 1
        return TEAM if path == TEAM.full_path else None

    def can_read(self, principal: Principal, group: Group) -> bool:
        return principal.subject in self.members

    # cache metadata
    def group_enabled(self, group_id: int, default: bool) -> bool:
        self._ask()
        self.switch_reads += 1
        return self.enabled


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def access(world: World, clock: Clock) -> AccessControl:
    unused = t.cast(t.Any, None)
    return AccessControl(
        t.cast(t.Any, world),
        unused,
        t.cast(t.Any, world),
        unused,
        recheck_seconds=RECHECK,
        group_default_enabled=False,
        clock=clock,
    )


def _allowed(access: AccessControl) -> bool:
    try:
        return access.authorize_pull(ALICE, TEAM.full_path) == TEAM
    except RegistryError:
        return False


def test_switching_the_proxy_on_and_off_takes_effect_within_the_switch_window(
    access: AccessControl, world: World, clock: Clock
) -> None:
    assert not _allowed(access)
    world.enabled = True
    assert not _allowed(access)  # the switch is reused for a moment ...
    clock.now += SWITCH_RECHECK_SECONDS + 0.01
    assert _allowed(access)  # ... not for the whole recheck interval
    world.enabled = False
    assert _allowed(access)
    clock.now += SWITCH_RECHECK_SECONDS + 0.01
    assert not _allowed(access)
    assert world.switch_reads == 3
    assert world.host_lookups == 1  # the membership answer still holds


def test_a_refusal_by_the_host_spares_it_within_its_window(
    access: AccessControl, world: World, clock: Clock
) -> None:
    world.enabled = True
    world.members.clear()
    for _ in range(5):
        assert not _allowed(access)
    assert world.host_lookups == 1
    world.members.add(ALICE.subject)  # a member just added ...
    assert not _allowed(access)
    clock.now += DENIAL_RECHECK_SECONDS + 0.01
    assert _allowed(access)  # ... pulls without waiting for the recheck interval
    assert world.host_lookups == 2


def test_a_grant_lasts_the_recheck_interval(
    access: AccessControl, world: World, clock: Clock
) -> None:
    world.enabled = True
    assert _allowed(access)
    world.members.clear()
    clock.now += RECHECK - 1
    assert _allowed(access)
    assert world.host_lookups == 1
    clock.now += 1.01
    assert not _allowed(access)


def test_forget_drops_grants_and_refusals(access: AccessControl, world: World) -> None:
    assert not _allowed(access)
    world.enabled = True
    access.forget()
    assert _allowed(access)
    world.enabled = False
    access.forget()
    assert not _allowed(access)


# -- the database is down -------------------------------------------------------------------


def test_a_recent_grant_and_the_last_known_switch_hold_during_an_outage(
    access: AccessControl, world: World, clock: Clock
) -> None:
    world.enabled = True
    assert _allowed(access)
    world.down = True
    clock.now += SWITCH_RECHECK_SECONDS + 0.01  # the switch would be read again
    assert _allowed(access)
    clock.now += RECHECK  # past the recheck interval: nothing is known any more
    with pytest.raises(DatabaseUnavailable):
        access.authorize_pull(ALICE, TEAM.full_path)
    world.down = False
    assert _allowed(access)


def test_a_proxy_known_to_be_off_stays_off_during_an_outage(
    access: AccessControl, world: World, clock: Clock
) -> None:
    assert not _allowed(access)  # granted, but the proxy is off
    world.down = True
    clock.now += SWITCH_RECHECK_SECONDS + 0.01
    with pytest.raises(RegistryError) as refused:
        access.authorize_pull(ALICE, TEAM.full_path)
    assert refused.value.code.name == "NAME_UNKNOWN"


def test_an_unknown_grant_during_an_outage_is_unavailable_not_a_refusal(
    access: AccessControl, world: World
) -> None:
    world.down = True
    with pytest.raises(DatabaseUnavailable):
        access.authorize_pull(ALICE, TEAM.full_path)
    world.down = False
    world.enabled = True
    assert _allowed(access)  # the outage was not remembered as a refusal


def test_a_herd_missing_the_same_answers_asks_the_host_and_the_database_once(
    access: AccessControl, world: World
) -> None:
    """Clients arriving together at a worker that remembers nothing yet (a CI fleet's
    first pull after a restart) wait for one lookup of the grant and one of the switch,
    instead of each taking a database connection for the same answer."""
    world.enabled = True
    arrived = threading.Barrier(20)
    release = threading.Event()
    find_group = world.find_group

    def slow_find_group(path: str) -> Group | None:
        release.wait(5)
        return find_group(path)

    world.find_group = slow_find_group  # type: ignore[method-assign]

    def pull() -> bool:
        arrived.wait(5)
        return _allowed(access)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        pulls = [pool.submit(pull) for _ in range(20)]
        time.sleep(0.2)  # every client is past the barrier, waiting on the first lookup
        release.set()
        assert all(f.result(timeout=10) for f in pulls)
    assert world.host_lookups == 1
    assert world.switch_reads == 1
