"""Database phases: short, bounded in time, and never left open.

Every piece of the extension that talks to the database does so inside
:meth:`DatabaseGuard.phase`: the access checks, each metadata read and write of the
cache, the token login through the host adapter, the REST API and page views. A phase

- ends with the session's transaction ended, so its connection is back in the pool and
  no transaction stays open before anything else happens, an upstream request above all;
- turns "the database cannot be reached" (refused or dropped connections, a pool
  timeout, the deadline below) into :class:`DatabaseUnavailable`, which the blueprints
  answer with 503 and ``Retry-After``;
- under gevent, is bounded by ``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS``: a timer
  raises :class:`DeadlineExceeded` inside the database call that waits. A server that
  is hung (stopped, or frozen while its kernel still accepts and acknowledges) is only
  noticed that way: TCP keepalive, ``tcp_user_timeout`` and ``statement_timeout`` never
  fire then.

:class:`DeadlineExceeded` is a ``BaseException`` on purpose: SQLAlchemy treats such an
"exit exception" as a disconnect and invalidates the connection, instead of sending a
ROLLBACK to a server that will not answer it.

Without gevent (threaded or sync workers) there is no timer: a phase cannot interrupt a
thread blocked in the driver. What bounds a request then: the driver's connect timeout
for new connections (``connect_timeout``), the pool's checkout timeout (``pool_timeout``),
and for a connection already open to a hung server, only the WSGI server's worker timeout
(gunicorn's sync worker is restarted after ``timeout``; a ``gthread`` worker is not).

Phases nest: an inner phase runs inside the outer one's deadline and release. Once a
phase of a request failed, later phases of the same request fail at once, so one
request waits for the database at most once. A phase whose caller can do without the
database (``has_fallback``) is not even tried for a short while after a phase failed,
so during a hang only an occasional request waits out the deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import sqlite3
import threading
import time
import typing as t

import sqlalchemy.exc as sa_exc
from flask import g, has_app_context

from ..blocking import gevent_patched

log = logging.getLogger(__name__)

#: Seconds a client is told to wait before it retries a request the database failed.
RETRY_AFTER_SECONDS = 5
#: After a failure, phases with a fallback skip the database for this long (at least;
#: the deadline, if longer).
FALLBACK_SECONDS = 2.0
#: Where a request remembers that the database failed it (on ``flask.g``).
_FAILED_KEY = "_dependency_proxy_database_failed"

_depth: contextvars.ContextVar[int] = contextvars.ContextVar(
    "dependency_proxy_database_phase", default=0
)


class DatabaseUnavailable(Exception):
    """The database could not be reached, or did not answer within the deadline.

    :param reason: for logs and error messages; never contains a query's parameters.
    """

    retry_after = RETRY_AFTER_SECONDS

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadlineExceeded(BaseException):
    """Raised by a phase's timer inside the database call it interrupts.

    Not an :class:`Exception`: SQLAlchemy then invalidates the connection rather than
    trying a ROLLBACK on it, and no ``except Exception`` on the way swallows it. A phase
    always turns it into :class:`DatabaseUnavailable`.
    """


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached now (as opposed to a query
    or the data being wrong)."""
    if isinstance(error, DatabaseUnavailable) or _after_deadline(error):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    # Pool checkout timeout, a connection dropped by a pool event, and the next use of
    # a session whose connection was lost.
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(error, sa_exc.PendingRollbackError):
        return True
    # A driver error that reached us unwrapped (e.g. from a host's own connection code).
    return isinstance(error, sqlite3.OperationalError) or _is_psycopg_operational(error)


def _after_deadline(error: BaseException) -> bool:
    return _deadline_in(error) is not None


def _deadline_in(error: BaseException) -> DeadlineExceeded | None:
    """The deadline that interrupted the call ending in ``error``, if one did: the
    driver or SQLAlchemy may raise another error while cleaning up after it (psycopg
    cannot restore a setting on a connection interrupted mid-query, as in a pool
    pre-ping), with the deadline as its cause or context."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DeadlineExceeded):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _is_psycopg_operational(error: BaseException) -> bool:
    psycopg = _optional_module("psycopg")
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


def _optional_module(name: str) -> t.Any:
    import sys

    return sys.modules.get(name)


def cooperative() -> bool:
    """Whether the process runs under gevent's monkey patching (gunicorn's gevent
    worker): only then can a timer interrupt a database call that waits."""
    return gevent_patched()


def _describe(error: BaseException) -> str:
    deadline = _deadline_in(error)
    if deadline is not None:
        return str(deadline)
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        # The driver's message, without the statement and its parameters.
        text = str(error.orig).strip().splitlines()
        return f"{type(error.orig).__name__}: {text[0] if text else ''}".strip()
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


class DatabaseGuard:
    """Runs database phases for one application.

    :param release: ends the phase's transaction (returns its connection to the pool).
    :param invalidate: drops the session's connections without talking to the server;
        called instead of a normal end when the phase failed.
    :param timeout_seconds: the deadline of one phase; ``0`` sets none.
    :param use_timer: whether to arm the deadline timer; by default, when
        :func:`cooperative` is true at the phase's start.
    """

    def __init__(
        self,
        *,
        release: t.Callable[[], None] = lambda: None,
        invalidate: t.Callable[[], None] = lambda: None,
        timeout_seconds: float = 0,
        use_timer: bool | None = None,
    ) -> None:
        self._release = release
        self._invalidate = invalidate
        self.timeout_seconds = timeout_seconds
        self._use_timer = use_timer
        self._lock = threading.Lock()
        self._failing = False
        self._failed_at: float | None = None
        self._clock = time.monotonic

    @property
    def bounded(self) -> bool:
        """Whether phases started now have a deadline."""
        if not self.timeout_seconds:
            return False
        return cooperative() if self._use_timer is None else self._use_timer

    @contextlib.contextmanager
    def phase(
        self, what: str = "database access", *, has_fallback: bool = False
    ) -> t.Iterator[None]:
        """Run the block as one database phase (see the module's documentation).

        :param what: names the phase in the log.
        :param has_fallback: the caller answers without the database when the phase
            fails; then the phase fails at once while the database failed recently.
        :raises DatabaseUnavailable: the database could not be reached in time.
        """
        if _depth.get():
            yield  # the outer phase bounds, releases and translates
            return
        if _request_failed():
            raise DatabaseUnavailable("the database already failed this request")
        if has_fallback and self._failed_recently():
            raise DatabaseUnavailable("the database failed moments ago")
        token = _depth.set(1)
        timer = self._start_timer(what)
        failure: BaseException | None = None
        try:
            try:
                yield
            finally:
                # Ending the transaction talks to the server (ROLLBACK), so it runs
                # under the same deadline.
                self._release()
        except BaseException as exc:  # noqa: B036 - the timer's exception must be caught
            if not is_unavailable(exc):
                raise
            failure = exc
        finally:
            if timer is not None:
                timer.close()
            _depth.reset(token)
        if failure is None:
            self._succeeded()
            return
        self._drop_connections()
        reason = _describe(failure)
        self._failed(what, reason)
        raise DatabaseUnavailable(reason) from (
            None if isinstance(failure, DeadlineExceeded) else failure
        )

    def _start_timer(self, what: str) -> t.Any:
        if not self.bounded:
            return None
        gevent = importlib.import_module("gevent")
        exception = DeadlineExceeded(
            f"no answer from the database within {self.timeout_seconds:g} s ({what})"
        )
        timer = gevent.Timeout(self.timeout_seconds, exception)
        timer.start()
        return timer

    def _drop_connections(self) -> None:
        try:
            self._invalidate()
            self._release()
        except Exception:  # the session is gone either way
            log.debug("dropping the session after a database failure", exc_info=True)
        if has_app_context():
            setattr(g, _FAILED_KEY, True)

    def _failed_recently(self) -> bool:
        failed_at = self._failed_at
        window = max(FALLBACK_SECONDS, self.timeout_seconds)
        return failed_at is not None and self._clock() - failed_at < window

    def _failed(self, what: str, reason: str) -> None:
        with self._lock:
            self._failed_at = self._clock()
            first, self._failing = not self._failing, True
        if first:
            log.error("database unavailable during %s: %s; answering 503", what, reason)
        else:
            log.debug("database still unavailable during %s: %s", what, reason)

    def _succeeded(self) -> None:
        if not self._failing:
            return
        with self._lock:
            recovered, self._failing = self._failing, False
            self._failed_at = None
        if recovered:
            log.warning("database reachable again")


def _request_failed() -> bool:
    return has_app_context() and bool(g.get(_FAILED_KEY, False))
