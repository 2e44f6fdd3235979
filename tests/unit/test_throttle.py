"""The login limiter on a real database (SQLite and PostgreSQL) and a controlled clock,
and :meth:`AccessControl.login` in front of it: tokens first, no password checked
while an address is refused."""

from __future__ import annotations

import datetime as dt
import logging
import typing as t

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from flask_dependency_proxy.auth.access import AccessControl
from flask_dependency_proxy.auth.throttle import LoginRefused, LoginThrottle
from flask_dependency_proxy.host import AuthFailure, Principal, PrincipalKind
from flask_dependency_proxy.models.tables import LoginFailure, metadata
from flask_dependency_proxy.oci.errors import RegistryError

PAIR_LIMIT = 3
ADDRESS_LIMIT = 5
WINDOW = 300
A, B = "192.0.2.1", "192.0.2.2"
ALICE = Principal(kind=PrincipalKind.USER, subject="user:1", username="alice")
ALICE_PAT = Principal(kind=PrincipalKind.PERSONAL_ACCESS_TOKEN, subject="pat:1", username="alice")


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def session(fresh_database_url: str) -> t.Iterator[orm.Session]:
    engine = sa.create_engine(fresh_database_url)
    metadata.create_all(engine, tables=[LoginFailure.__table__])  # type: ignore[list-item]
    with orm.Session(engine) as db_session:
        yield db_session
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_throttle(session: orm.Session, clock: Clock, **limits: int) -> LoginThrottle:
    options = {"max_failures": PAIR_LIMIT, "max_failures_per_address": ADDRESS_LIMIT, **limits}
    return LoginThrottle(lambda: session, window_seconds=WINDOW, clock=clock, **options)


@pytest.fixture
def throttle(session: orm.Session, clock: Clock) -> LoginThrottle:
    return make_throttle(session, clock)


def fail(throttle: LoginThrottle, username: str, address: str | None, times: int = 1) -> None:
    for _ in range(times):
        throttle.record_failure(throttle.check(username, address))


def refusal(throttle: LoginThrottle, username: str, address: str | None) -> int | None:
    """Seconds to wait, or ``None`` when the attempt may go ahead."""
    try:
        throttle.check(username, address)
    except LoginRefused as refused:
        return refused.retry_after_seconds
    return None


def test_a_pair_is_refused_only_for_its_username_and_address(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", A, PAIR_LIMIT - 1)
    assert refusal(throttle, "alice", A) is None
    fail(throttle, "alice", A)
    assert refusal(throttle, "alice", A) == WINDOW
    assert refusal(throttle, "ALICE", A) == WINDOW
    assert refusal(throttle, "alice", B) is None
    assert refusal(throttle, "bob", A) is None


def test_an_address_is_refused_whatever_the_username(throttle: LoginThrottle) -> None:
    for number in range(ADDRESS_LIMIT):
        fail(throttle, f"guess{number}", A)
    assert refusal(throttle, "alice", A) == WINDOW
    assert refusal(throttle, "alice", B) is None


def test_a_refusal_ends_with_its_window(throttle: LoginThrottle, clock: Clock) -> None:
    fail(throttle, "alice", A, PAIR_LIMIT)
    clock.advance(WINDOW - 10.5)
    assert refusal(throttle, "alice", A) == 11
    clock.advance(10.5)
    assert refusal(throttle, "alice", A) is None
    # A new window starts with the next failure.
    fail(throttle, "alice", A, PAIR_LIMIT - 1)
    assert refusal(throttle, "alice", A) is None


def test_a_success_clears_its_pair_but_not_its_address(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", A, PAIR_LIMIT - 1)
    throttle.record_success(throttle.check("alice", A))
    fail(throttle, "alice", A, PAIR_LIMIT - 1)
    assert refusal(throttle, "alice", A) is None
    # Four failures from A before, one more now: the address's limit, success or not.
    fail(throttle, "carol", A)
    assert refusal(throttle, "carol", A) == WINDOW


def test_an_unknown_address_is_one_shared_address(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", None, PAIR_LIMIT)
    assert refusal(throttle, "alice", None) == WINDOW
    assert refusal(throttle, "alice", A) is None


def test_limits_can_be_turned_off(session: orm.Session, clock: Clock) -> None:
    off = make_throttle(session, clock, max_failures=0)
    fail(off, "alice", A, 20)
    assert refusal(off, "alice", A) is None
    assert session.scalar(sa.select(sa.func.count()).select_from(LoginFailure)) == 0

    per_pair_only = make_throttle(session, clock, max_failures_per_address=0)
    for number in range(ADDRESS_LIMIT * 2):
        fail(per_pair_only, f"guess{number}", B)
    assert refusal(per_pair_only, "alice", B) is None


def test_reaching_a_limit_logs_one_line_without_the_username(
    throttle: LoginThrottle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_dependency_proxy.throttle")
    fail(throttle, "pasted-secret", A, PAIR_LIMIT)
    for number in range(ADDRESS_LIMIT - PAIR_LIMIT):
        fail(throttle, f"guess{number}", A)
    messages = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("flask_dependency_proxy.throttle")
    ]
    assert len(messages) == 2, messages
    assert all(A in message and f"{WINDOW} s" in message for message in messages)
    assert "for one username" in messages[0]
    assert not any("pasted-secret" in message for message in messages)


# -- AccessControl.login -------------------------------------------------------------


class PasswordHost:
    """A host adapter that only knows passwords; counts how often one is checked."""

    def __init__(self) -> None:
        self.password_checks = 0

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        self.password_checks += 1
        if (username, secret) == ("alice", "right"):
            return ALICE
        if secret == "dppat-alice":
            return ALICE_PAT
        return AuthFailure.INVALID


class TokenHost(PasswordHost):
    """A host adapter that tells its tokens from passwords."""

    def __init__(self) -> None:
        super().__init__()
        self.token_checks = 0

    def authenticate_token(self, username: str, secret: str) -> Principal | AuthFailure | None:
        self.token_checks += 1
        if secret == "dppat-alice":
            return ALICE_PAT
        if secret == "dppat-narrow":
            return AuthFailure.INSUFFICIENT_SCOPE
        if username == "gitlab-ci-token":
            return AuthFailure.INVALID
        return None


def access_for(host: PasswordHost, throttle: LoginThrottle) -> AccessControl:
    unused = t.cast(t.Any, None)
    return AccessControl(
        t.cast(t.Any, host),
        unused,
        unused,
        throttle,
        recheck_seconds=30,
        group_default_enabled=False,
    )


def status(access: AccessControl, username: str, secret: str, address: str) -> int:
    try:
        access.login(username, secret, address)
    except RegistryError as error:
        return error.status
    return 200


def test_a_refused_address_costs_no_password_check(throttle: LoginThrottle) -> None:
    host = TokenHost()
    access = access_for(host, throttle)
    for _ in range(PAIR_LIMIT):
        assert status(access, "alice", "wrong", A) == 401
    assert host.password_checks == PAIR_LIMIT
    assert status(access, "alice", "right", A) == 429
    assert status(access, "alice", "wrong", A) == 429
    assert host.password_checks == PAIR_LIMIT
    assert status(access, "alice", "right", B) == 200


def test_tokens_are_checked_first_and_never_refused(throttle: LoginThrottle) -> None:
    host = TokenHost()
    access = access_for(host, throttle)
    for number in range(ADDRESS_LIMIT):
        assert status(access, f"guess{number}", "wrong", A) == 401
    assert status(access, "alice", "dppat-alice", A) == 200
    assert status(access, "alice", "dppat-narrow", A) == 403
    assert host.password_checks == ADDRESS_LIMIT


def test_a_token_that_cannot_be_valid_counts_without_a_password_check(
    throttle: LoginThrottle,
) -> None:
    host = TokenHost()
    access = access_for(host, throttle)
    for _ in range(PAIR_LIMIT):
        assert status(access, "gitlab-ci-token", "dpjob-guess", A) == 401
    assert status(access, "gitlab-ci-token", "dpjob-guess", A) == 429
    assert host.password_checks == 0
    assert status(access, "gitlab-ci-token", "dpjob-guess", B) == 401


def test_a_host_without_token_checks_is_throttled_per_address_only(
    throttle: LoginThrottle,
) -> None:
    host = PasswordHost()
    access = access_for(host, throttle)
    for _ in range(PAIR_LIMIT):
        assert status(access, "alice", "wrong", A) == 401
    assert status(access, "alice", "dppat-alice", A) == 429
    assert status(access, "alice", "dppat-alice", B) == 200
    assert status(access, "alice", "right", B) == 200


def test_workers_share_one_count(fresh_database_url: str, clock: Clock) -> None:
    engine = sa.create_engine(fresh_database_url)
    metadata.create_all(engine, tables=[LoginFailure.__table__])  # type: ignore[list-item]
    with orm.Session(engine) as first, orm.Session(engine) as second:
        workers = [make_throttle(first, clock), make_throttle(second, clock)]
        for number in range(PAIR_LIMIT):
            fail(workers[number % 2], "alice", A)
        assert refusal(workers[0], "alice", A) == WINDOW
        assert refusal(workers[1], "alice", A) == WINDOW
    engine.dispose()


def test_a_first_failure_racing_another_worker_is_counted(
    fresh_database_url: str, clock: Clock
) -> None:
    engine = sa.create_engine(fresh_database_url)
    metadata.create_all(engine, tables=[LoginFailure.__table__])  # type: ignore[list-item]
    with orm.Session(engine) as first, orm.Session(engine) as second:
        racing, other = make_throttle(first, clock), make_throttle(second, clock)
        attempt = racing.check("alice", A)

        # The other worker records the first failure of the same keys between this
        # worker's read and its insert.
        @sa.event.listens_for(first, "before_flush", once=True)
        def other_worker_first(*_: t.Any) -> None:
            other.record_failure(other.check("alice", A))

        racing.record_failure(attempt)
        counts = second.scalars(
            sa.select(LoginFailure.failures).execution_options(populate_existing=True)
        )
        assert sorted(counts) == [2, 2]
    engine.dispose()
