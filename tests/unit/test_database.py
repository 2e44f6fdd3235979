"""Database phases (:mod:`flask_dependency_proxy.models.database`): what counts as an outage,
how a phase ends, the deadline, and how failures are remembered."""

from __future__ import annotations

import logging
import sqlite3
import time
import typing as t
from pathlib import Path

import gevent  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask
from sqlalchemy.util import is_exit_exception

from flask_dependency_proxy.models import database
from flask_dependency_proxy.models.database import (
    DatabaseGuard,
    DatabaseUnavailable,
    DeadlineExceeded,
    is_unavailable,
)


class Calls:
    def __init__(self) -> None:
        self.released = 0
        self.invalidated = 0

    def release(self) -> None:
        self.released += 1

    def invalidate(self) -> None:
        self.invalidated += 1

    def guard(self, **options: t.Any) -> DatabaseGuard:
        return DatabaseGuard(release=self.release, invalidate=self.invalidate, **options)


def _operational() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open"))


def _deadline_then_programming_error() -> sa_exc.ProgrammingError:
    """What psycopg raises when a pre-ping is interrupted: its cleanup fails, with the
    deadline as the context."""
    try:
        try:
            try:
                raise DeadlineExceeded("no answer")
            finally:
                raise RuntimeError("can't change 'autocommit' now")
        except RuntimeError as exc:
            raise sa_exc.ProgrammingError("SELECT 1", {}, exc) from exc
    except sa_exc.ProgrammingError as wrapped:
        return wrapped


# -- what counts as an outage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        _operational(),
        sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
        sa_exc.TimeoutError("QueuePool limit reached"),
        sa_exc.DisconnectionError("dropped"),
        sa_exc.PendingRollbackError("rolled back after a lost connection"),
        sqlite3.OperationalError("unable to open database file"),
        DeadlineExceeded("no answer"),
        DatabaseUnavailable("down"),
        _deadline_then_programming_error(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_outages(error: BaseException) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        sa_exc.ProgrammingError("SELECT", {}, Exception("syntax error")),
        ValueError("a bug"),
        KeyboardInterrupt(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_not_outages(error: BaseException) -> None:
    assert not is_unavailable(error)


def test_deadline_is_an_exit_exception_for_sqlalchemy() -> None:
    error = DeadlineExceeded("no answer")
    assert not isinstance(error, Exception)
    assert is_exit_exception(error)


def test_deadline_inside_a_query_invalidates_the_connection(tmp_path: Path) -> None:
    """SQLAlchemy drops a connection whose query was interrupted by the deadline instead
    of rolling it back (the server may not answer a ROLLBACK)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")

    def interrupt(*args: t.Any) -> None:
        raise DeadlineExceeded("no answer")

    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        # Where the deadline strikes: in the driver's call (SQLAlchemy 2.0 handles an
        # exception raised by a ``before_cursor_execute`` hook apart from it).
        sa.event.listen(engine, "do_execute", interrupt)
        with pytest.raises(DeadlineExceeded):
            conn.execute(sa.text("SELECT 2"))
        assert conn.invalidated
    engine.dispose()


# -- how a phase ends -----------------------------------------------------------------------


def test_a_phase_ends_its_transaction() -> None:
    calls = Calls()
    with calls.guard().phase():
        assert calls.released == 0
    assert (calls.released, calls.invalidated) == (1, 0)


def test_other_errors_pass_through_after_the_release() -> None:
    calls = Calls()
    with pytest.raises(ValueError), calls.guard().phase():
        raise ValueError("a bug")
    assert (calls.released, calls.invalidated) == (1, 0)


def test_an_outage_drops_the_connections_and_raises_unavailable() -> None:
    calls = Calls()
    with pytest.raises(DatabaseUnavailable) as caught, calls.guard().phase():
        raise _operational()
    assert calls.invalidated == 1
    assert "unable to open" in caught.value.reason
    assert "SELECT" not in caught.value.reason  # no statement, no parameters


def test_a_failing_release_is_an_outage_too() -> None:
    def release() -> None:
        raise _operational()

    guard = DatabaseGuard(release=release)
    with pytest.raises(DatabaseUnavailable), guard.phase():
        pass


def test_nested_phases_release_once() -> None:
    calls = Calls()
    guard = calls.guard()
    with pytest.raises(DatabaseUnavailable), guard.phase("outer"):
        with guard.phase("inner"):
            assert calls.released == 0
        assert calls.released == 0
        with guard.phase("inner"):
            raise _operational()
    assert (calls.released, calls.invalidated) == (2, 1)  # the end, then the cleanup


def test_an_outage_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    guard = Calls().guard()
    caplog.set_level(logging.DEBUG, database.__name__)
    for _attempt in range(3):
        with pytest.raises(DatabaseUnavailable), guard.phase("reading"):
            raise _operational()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "reading" in errors[0].getMessage()
    with guard.phase():
        pass
    assert "reachable again" in caplog.records[-1].getMessage()


# -- failures remembered --------------------------------------------------------------------


def test_a_request_waits_for_the_database_once() -> None:
    guard = Calls().guard()
    ran = []
    with Flask(__name__).app_context():
        with pytest.raises(DatabaseUnavailable), guard.phase():
            raise _operational()
        with pytest.raises(DatabaseUnavailable), guard.phase():
            ran.append(True)
    assert not ran
    with Flask(__name__).app_context(), guard.phase():  # the next request tries again
        ran.append(True)
    assert ran


def test_phases_with_a_fallback_skip_a_database_that_just_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    guard = Calls().guard()
    monkeypatch.setattr(guard, "_clock", lambda: now[0])
    with pytest.raises(DatabaseUnavailable), guard.phase():
        raise _operational()
    ran = []
    with pytest.raises(DatabaseUnavailable), guard.phase(has_fallback=True):
        ran.append("skipped")
    with guard.phase():  # without a fallback: the database is asked
        ran.append("asked")
    assert ran == ["asked"]

    with pytest.raises(DatabaseUnavailable), guard.phase():
        raise _operational()
    now[0] += database.FALLBACK_SECONDS
    with guard.phase(has_fallback=True):  # the window is over
        ran.append("asked again")
    assert ran == ["asked", "asked again"]


# -- the deadline ---------------------------------------------------------------------------


def test_no_deadline_without_gevent_patching_or_with_zero() -> None:
    assert not database.cooperative()  # pytest runs unpatched
    assert not Calls().guard(timeout_seconds=5).bounded
    assert not Calls().guard(timeout_seconds=0, use_timer=True).bounded
    assert Calls().guard(timeout_seconds=5, use_timer=True).bounded


def test_the_deadline_interrupts_a_wait() -> None:
    calls = Calls()
    guard = calls.guard(timeout_seconds=0.2, use_timer=True)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught, guard.phase("a hung query"):
        gevent.sleep(10)  # what psycopg's cooperative wait does on a hung server
    assert time.monotonic() - started < 1
    assert "within 0.2 s (a hung query)" in caught.value.reason
    assert calls.invalidated == 1


def test_the_deadline_covers_the_end_of_the_transaction() -> None:
    calls = Calls()

    def hung_rollback() -> None:
        calls.released += 1
        if calls.released == 1:
            gevent.sleep(10)

    guard = DatabaseGuard(
        release=hung_rollback, invalidate=calls.invalidate, timeout_seconds=0.2, use_timer=True
    )
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable), guard.phase():
        pass
    assert time.monotonic() - started < 1
    assert calls.invalidated == 1


def test_the_deadline_ends_with_the_phase() -> None:
    guard = Calls().guard(timeout_seconds=0.2, use_timer=True)
    with guard.phase():
        gevent.sleep(0.05)
    gevent.sleep(0.3)  # no timer left to fire outside the phase
