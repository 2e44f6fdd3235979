"""How the extension reaches the host's database, whichever way the host set SQLAlchemy up.

A host hands :class:`~flask_dependency_proxy.DependencyProxy` either its Flask-SQLAlchemy
object (``db=``) or plain SQLAlchemy: a ``scoped_session``, or a zero-argument callable
that returns the session of the current request or app context (``session=``), with an
optional ``engine=``. :class:`DatabaseBinding` turns either form into the few things the
extension needs, and everything in the extension goes through it: the host's own
session, engine and pool, so a registry request holds one connection, not two.

A Flask-SQLAlchemy object is a ``scoped_session`` (``db.session``) with an engine
(``db.engine``), so both forms share one code path.

Ending the session (what :meth:`DatabaseBinding.release` does at the end of each
registry request and after each cleanup poll): its transaction ends and its connection
goes back to the pool. A ``scoped_session`` is removed, as Flask-SQLAlchemy's own
teardown would; the host's next use of it gets a fresh session. A session the host's
callable returns is only rolled back, never closed: the host opened it for its request
(or its ``outside_request`` context) and may still use it later in that request; it
closes it where it opened it.

Outside a request (CLI commands, the cleanup scheduler's thread, a blob recorded from a
fetch thread) :meth:`DatabaseBinding.outside_request` pushes an app context and enters
the host's ``outside_request`` context manager, in which a host whose session only
exists within a request opens one.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import typing as t

import sqlalchemy as sa
from flask import current_app, has_app_context, has_request_context
from sqlalchemy.orm import scoped_session

if t.TYPE_CHECKING:
    from flask import Flask

#: What ``session=`` accepts: a ``scoped_session``, or a callable returning the current
#: context's ``Session`` (or a ``scoped_session``, as some hosts keep one per request).
SessionSource = scoped_session[t.Any] | t.Callable[[], t.Any]
#: What ``engine=`` accepts: an engine, or a callable returning one.
EngineSource = sa.Engine | t.Callable[[], sa.Engine]
#: ``outside_request=``: a zero-argument callable returning a context manager.
OutsideRequest = t.Callable[[], t.ContextManager[object]]


def check_arguments(*, db: object, engine: object, session: object) -> None:
    """Refuse a database setup that names no database, or names it twice.

    :raises TypeError: with what to pass instead.
    """
    if db is not None and session is not None:
        raise TypeError(
            "DependencyProxy takes either db= (a Flask-SQLAlchemy object) or session="
            " (plain SQLAlchemy), not both."
        )
    if db is not None and engine is not None:
        raise TypeError(
            "DependencyProxy takes engine= only with session=: with db= it uses db.engine."
        )
    if db is None and session is None:
        hint = (
            " engine= alone is not enough: the extension needs the host's session."
            if (engine is not None)
            else ""
        )
        raise TypeError(
            "DependencyProxy needs the host's database: pass db=<Flask-SQLAlchemy object>,"
            " or session=<scoped_session, or a callable returning the current Session>"
            f" (and optionally engine=).{hint}"
        )
    if session is not None and not callable(session):
        raise TypeError(
            f"session= must be a scoped_session or a zero-argument callable returning the"
            f" current Session, not {type(session).__name__}."
        )
    if engine is not None and not (isinstance(engine, sa.Engine) or callable(engine)):
        raise TypeError(
            f"engine= must be an Engine or a zero-argument callable returning one,"
            f" not {type(engine).__name__}."
        )
    # ``db.engine`` needs an app context: look at the class, never at the property.
    if db is not None and not (
        isinstance(getattr(db, "session", None), scoped_session) and hasattr(type(db), "engine")
    ):
        raise TypeError(f"db= must be a Flask-SQLAlchemy object, not {type(db).__name__}.")


class DatabaseBinding:
    """The host's session and engine for one application (see the module's documentation).

    :param app: pushed as the app context of work outside a request.
    :param session: a ``scoped_session``, or a callable returning the current ``Session``.
    :param engine: the engine (or a callable returning it); by default the session's bind.
    :param outside_request: entered around work outside a request (see the module).
    """

    def __init__(
        self,
        app: Flask,
        *,
        session: SessionSource,
        engine: EngineSource | None = None,
        outside_request: OutsideRequest | None = None,
    ) -> None:
        check_arguments(db=None, engine=engine, session=session)
        if outside_request is not None and not callable(outside_request):
            raise TypeError(
                "outside_request= must be a zero-argument callable returning a context manager."
            )
        self._app = app
        self._scoped: scoped_session[t.Any] | None = (
            session if isinstance(session, scoped_session) else None
        )
        self._factory: t.Callable[[], t.Any] | None = None if self._scoped else session
        self._engine = engine if isinstance(engine, sa.Engine) else None
        self._engine_factory = None if isinstance(engine, sa.Engine) else engine
        self._outside = outside_request
        self._lock = threading.Lock()

    @classmethod
    def from_arguments(
        cls,
        app: Flask,
        *,
        db: t.Any = None,
        engine: EngineSource | None = None,
        session: SessionSource | None = None,
        outside_request: OutsideRequest | None = None,
    ) -> DatabaseBinding:
        """The binding for ``DependencyProxy``'s arguments: ``db=`` or ``session=``.

        :raises TypeError: for neither or both (see ``check_arguments``).
        :raises RuntimeError: for a Flask-SQLAlchemy object not registered on ``app``.
        """
        check_arguments(db=db, engine=engine, session=session)
        if db is None:
            assert session is not None
            return cls(app, session=session, engine=engine, outside_request=outside_request)
        if "sqlalchemy" not in app.extensions:
            raise RuntimeError(
                "Register Flask-SQLAlchemy (db.init_app(app)) before DependencyProxy,"
                " or pass plain SQLAlchemy with session= (and engine=)."
            )
        return cls(
            app, session=db.session, engine=lambda: db.engine, outside_request=outside_request
        )

    # -- the session ------------------------------------------------------------------

    @property
    def session(self) -> t.Any:
        """The session of the current context: the ``scoped_session`` itself (it stands
        for the current one), or what the host's callable returns.

        :raises RuntimeError: when the host's callable finds no session (outside a
            request, without an ``outside_request`` that opens one).
        """
        if self._scoped is not None:
            return self._scoped
        assert self._factory is not None
        try:
            current = self._factory()
        except (AttributeError, KeyError) as exc:
            raise RuntimeError(self._no_session(f"it raised {type(exc).__name__}: {exc}")) from exc
        if current is None:
            raise RuntimeError(self._no_session("it returned None"))
        return current

    def _no_session(self, what: str) -> str:
        where = "in this request" if has_request_context() else "outside a request"
        return (
            f"The host's session= callable gave no session {where} ({what})."
            " A host whose session exists only within its requests passes"
            " outside_request= to DependencyProxy, a context manager that opens one."
        )

    def release(self) -> None:
        """End the session's transaction and return its connection to the pool; a
        ``scoped_session`` is removed, a host's own session is left open (see the module)."""
        if self._scoped is not None:
            self._scoped.remove()
        else:
            self.session.rollback()

    def end_transaction(self) -> None:
        """End the session's transaction (what a database phase ends with): its connection
        goes back to the pool; objects the session loaded stay attached (expired), for a
        caller that shares the session."""
        self.session.rollback()

    def invalidate(self) -> None:
        """Drop the session's connections without a word to the server (which may be
        hung); the pool opens new ones when they are needed again."""
        if self._scoped is not None:
            registry = self._scoped.registry
            if registry.has():
                registry().invalidate()
            return
        self.session.invalidate()

    # -- the engine -------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The host's engine (found once, from any thread): it holds the extension's
        tables, runs its migrations, and serves the fleet's leases and shared tokens."""
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._find_engine()
                engine = self._engine
        return engine

    def _find_engine(self) -> sa.Engine:
        with self._app_context():
            if self._engine_factory is not None:
                return _engine_of(self._engine_factory(), "engine=")
            if self._scoped is not None:
                bind = self._scoped.session_factory.kw.get("bind")
                if bind is not None:
                    return _engine_of(bind, "the scoped_session's bind")
                had = self._scoped.registry.has()
                try:
                    return _engine_of(self._scoped.get_bind(), "the session's bind")
                finally:
                    if not had:
                        self._scoped.remove()
            opened = contextlib.nullcontext() if has_request_context() else self._outside_context()
            with opened:
                return _engine_of(self.session.get_bind(), "the session's bind")

    # -- outside requests -------------------------------------------------------------

    @contextlib.contextmanager
    def outside_request(self) -> t.Iterator[None]:
        """The context of work outside a request: this app's context (pushed unless it is
        current) and, within it, the host's ``outside_request`` context manager."""
        with self._app_context(), self._outside_context():
            yield

    @contextlib.contextmanager
    def _outside_context(self) -> t.Iterator[None]:
        """The host's ``outside_request`` context, entered once however deeply the
        extension's own work nests (a command that looks up the engine, say): a host's
        context manager that opens a session need not expect to be entered twice."""
        if self._outside is None or _inside_outside.get():
            yield
            return
        token = _inside_outside.set(True)
        try:
            with self._outside():
                yield
        finally:
            _inside_outside.reset(token)

    def _app_context(self) -> t.ContextManager[object]:
        if has_app_context() and current_app._get_current_object() is self._app:  # type: ignore[attr-defined]
            return contextlib.nullcontext()
        return self._app.app_context()


#: Whether the host's ``outside_request`` context is entered in this thread or greenlet.
_inside_outside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dependency_proxy_outside_request", default=False
)


def _engine_of(bind: object, what: str) -> sa.Engine:
    if isinstance(bind, sa.Engine):
        return bind
    if isinstance(bind, sa.Connection):
        return bind.engine
    raise TypeError(f"{what} is {type(bind).__name__}, not an SQLAlchemy Engine.")
