"""A host with plain SQLAlchemy (``examples/minimal/plain.py``): no Flask-SQLAlchemy, its
session on ``flask.g`` only within a request, ``outside_request=`` for the rest.

- The extension uses the host's engine and pool: one connection per registry request.
- Ending a registry request's database work leaves the host's session usable for the
  host's own hooks later in the request.
- The CLI commands and the cleanup scheduler run through ``outside_request``.
- Docker's and containerd's logins (``POST /jwt/auth``) work on the declared Flask.
"""

from __future__ import annotations

import contextlib
import threading
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask, g
from flask.testing import FlaskClient
from sqlalchemy.orm import scoped_session, sessionmaker

from examples.minimal import plain
from flask_dependency_proxy import DependencyProxy, state
from flask_dependency_proxy.models.binding import DatabaseBinding
from flask_dependency_proxy.models.database import DatabaseUnavailable
from flask_dependency_proxy.models.tables import CachedManifest

PASSWORD = "alice-password-0001"
SERVICE = "dependency_proxy"
SCOPE = "repository:acme/dependency_proxy/containers/alpine:pull"


class Host(t.NamedTuple):
    app: Flask
    engine: sa.Engine
    token: str


def _config(tmp_path: Path, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "SECRET_KEY": "plain-secret",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'plain.sqlite3'}",
        "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
        "DEPENDENCY_PROXY_UPSTREAM_RETRIES": 0,
        "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / "store"),
        **extra,
    }


def _cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """The plain host, set up with its CLI: migrations, a user owning ``acme``, the proxy
    on for it (each command an ``outside_request`` of the extension)."""
    app = plain.create_app(_config(tmp_path))
    _cli(app, "dependency-proxy", "db", "upgrade")
    token = _cli(app, "seed", "alice", PASSWORD, "acme").strip()
    assert "enabled for acme" in _cli(app, "dependency-proxy", "enable", "acme")
    return Host(app, state(app).binding.engine, token)


def _login(client: FlaskClient) -> str:
    answer = client.get(f"/jwt/auth?service={SERVICE}&scope={SCOPE}", auth=("alice", PASSWORD))
    assert answer.status_code == 200, answer.text
    return t.cast(str, answer.json["token"])  # type: ignore[index]


def _registry_error(response: t.Any, code: str) -> None:
    """A registry JSON error with ``code`` (what the pull of an unreachable upstream gets)."""
    assert response.is_json and response.status_code < 500 or response.status_code in (502, 503)
    assert [error["code"] for error in response.json["errors"]] == [code], response.text


@contextlib.contextmanager
def _pool_use() -> t.Iterator[dict[str, t.Any]]:
    """Watch every SQLAlchemy pool of the process for this thread's requests (the test
    client serves them in it; the periodic jobs of other tests' apps run in threads of
    their own): which pools lend connections, and the most connections out at once."""
    seen: dict[str, t.Any] = {"pools": set(), "out": 0, "most": 0}
    mine = threading.get_ident()

    def checkout(dbapi: object, record: object, proxy: t.Any) -> None:
        if threading.get_ident() != mine:
            return
        seen["pools"].add(proxy._pool)
        seen["out"] += 1
        seen["most"] = max(seen["most"], seen["out"])

    def checkin(dbapi: object, record: object) -> None:
        if threading.get_ident() != mine:
            return
        seen["out"] -= 1

    sa.event.listen(sa.pool.Pool, "checkout", checkout)
    sa.event.listen(sa.pool.Pool, "checkin", checkin)
    try:
        yield seen
    finally:
        sa.event.remove(sa.pool.Pool, "checkout", checkout)
        sa.event.remove(sa.pool.Pool, "checkin", checkin)


def test_a_registry_request_uses_the_hosts_pool_and_one_connection(host: Host) -> None:
    """The login, the version check and a manifest pull (whose upstream is down): each
    takes its connections from the host's own pool, one at a time, and gives it back."""
    client = host.app.test_client()
    with _pool_use() as seen:
        token = _login(client)
        assert client.get("/v2/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        pulled = client.get(
            "/v2/acme/dependency_proxy/containers/alpine/manifests/3.19",
            headers={"Authorization": f"Bearer {token}"},
        )
    _registry_error(pulled, "UNAVAILABLE")
    assert seen["pools"] == {host.engine.pool}
    assert seen["most"] == 1
    assert seen["out"] == 0
    assert host.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_the_hosts_session_is_usable_after_the_registry_is_done_with_it(host: Host) -> None:
    """The registry route ends its transaction and frees the connection when its work is
    done, but leaves the session the host opened for the request open: the host's own
    ``after_request`` hook still reads through it."""
    after: list[object] = []

    @host.app.after_request
    def count_users(response: t.Any) -> t.Any:
        after.append(g.session.scalar(sa.select(sa.func.count()).select_from(plain.User)))
        return response

    client = host.app.test_client()
    token = _login(client)
    pulled = client.get(
        "/v2/acme/dependency_proxy/containers/alpine/manifests/3.19",
        headers={"Authorization": f"Bearer {token}"},
    )
    _registry_error(pulled, "UNAVAILABLE")
    assert after == [1, 1]


def test_a_failed_phase_drops_the_connection_and_keeps_the_hosts_session(host: Host) -> None:
    """When the database fails a phase, the binding invalidates the host's session's
    connection and ends its transaction (nothing is left checked out); the session the
    host holds still works once the database answers."""
    with host.app.test_request_context("/"):
        host.app.preprocess_request()  # the host's before_request opens g.session
        session = g.session
        proxy = state(host.app)
        with pytest.raises(DatabaseUnavailable):
            with proxy.database.phase("a phase that fails"):
                proxy.metadata.session.execute(sa.select(CachedManifest.id)).all()
                assert host.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
                raise sa.exc.OperationalError("SELECT 1", {}, Exception("server went away"))
        assert host.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        g.pop("_dependency_proxy_database_failed")
        assert session.scalar(sa.select(sa.func.count()).select_from(plain.User)) == 1
        host.app.do_teardown_request()


def test_cli_commands_run_in_outside_request(host: Host) -> None:
    """The session exists only within a request or the host's ``outside_request``: the
    commands that call the adapter and the extension's tables work through it."""
    assert "disabled for acme" in _cli(host.app, "dependency-proxy", "disable", "acme")
    assert "enabled for acme" in _cli(host.app, "dependency-proxy", "enable", "acme")
    assert "acme" in _cli(host.app, "dependency-proxy", "stats", "acme")
    assert "nothing to do" in _cli(host.app, "dependency-proxy", "init-db")
    assert "Scheduled 0 manifests" in _cli(host.app, "dependency-proxy", "purge", "acme")
    assert "Deleted 0 manifests" in _cli(host.app, "dependency-proxy", "cleanup")


def test_without_outside_request_a_command_says_what_is_missing(tmp_path: Path) -> None:
    """A host whose session is request-bound but gives no ``outside_request``: the
    command fails naming the setting, not with an ``AttributeError`` from ``g``."""
    app = Flask(__name__)
    app.config.update(_config(tmp_path))
    engine = sa.create_engine(app.config["DATABASE_URL"])
    DependencyProxy(app, session=lambda: g.session, engine=engine, host=plain.Host())
    _cli(app, "dependency-proxy", "db", "upgrade")  # the engine alone: no session needed
    result = app.test_cli_runner().invoke(args=["dependency-proxy", "cleanup"])
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    assert "outside_request=" in str(result.exception)


def test_the_cleanup_scheduler_runs_in_outside_request(tmp_path: Path) -> None:
    """The scheduler's thread has no request: its runs open the host's session through
    ``outside_request`` (a run that failed would answer ``None`` and log it)."""
    app = plain.create_app(
        _config(
            tmp_path,
            DEPENDENCY_PROXY_CLEANUP_SCHEDULER=True,
            DEPENDENCY_PROXY_CLEANUP_INTERVAL_SECONDS=3600,
        )
    )
    _cli(app, "dependency-proxy", "db", "upgrade")
    scheduler = state(app).scheduler
    assert scheduler is not None
    reports: list[object] = []
    thread = threading.Thread(target=lambda: reports.append(scheduler.run_once()))
    thread.start()
    thread.join(30)
    assert reports and reports[0] is not None
    assert state(app).binding.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_containerd_and_docker_logins_post_to_the_token_route(host: Host) -> None:
    """containerd's password grant and docker's refresh-token grant are form POSTs to
    ``/jwt/auth`` (the body bound must work on every declared Flask version)."""
    client = host.app.test_client()
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORD,
        "service": SERVICE,
        "scope": SCOPE,
        "client_id": "containerd-client",
        "access_type": "offline",
    }
    answer = client.post("/jwt/auth", data=form)
    assert answer.status_code == 200, answer.text
    refresh_token = answer.json["refresh_token"]  # type: ignore[index]
    refreshed = client.post(
        "/jwt/auth",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": SERVICE,
            "scope": SCOPE,
            "client_id": "docker",
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json["access_token"]  # type: ignore[index]
    assert client.get("/v2/", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- the binding itself -------------------------------------------------------------------


def _flask_sqlalchemy_app(tmp_path: Path) -> tuple[Flask, t.Any]:
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'fsa.sqlite3'}"
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


def test_binding_of_a_flask_sqlalchemy_object(tmp_path: Path) -> None:
    app, db = _flask_sqlalchemy_app(tmp_path)
    binding = DatabaseBinding.from_arguments(app, db=db)
    engine = binding.engine  # from outside any app context, as the fleet's threads ask
    with app.app_context():
        assert engine is db.engine
        assert binding.session is db.session
        binding.session.execute(sa.text("SELECT 1"))
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        binding.release()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert not db.session.registry.has()
    with pytest.raises(RuntimeError, match="Flask-SQLAlchemy"):
        DatabaseBinding.from_arguments(Flask("bare"), db=db)


def test_binding_of_a_scoped_session(tmp_path: Path) -> None:
    """The engine is the session factory's bind; release removes the thread's session."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'scoped.sqlite3'}")
    sessions = scoped_session(sessionmaker(bind=engine))
    binding = DatabaseBinding.from_arguments(Flask(__name__), session=sessions)
    assert binding.engine is engine
    binding.session.execute(sa.text("SELECT 1"))
    assert sessions.registry.has() and engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    binding.release()
    assert not sessions.registry.has() and engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_binding_of_a_session_callable(tmp_path: Path) -> None:
    """Without ``engine=`` the engine is the session's bind, found in the host's
    ``outside_request``; release ends the transaction but keeps the host's session open."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'callable.sqlite3'}")
    sessions = sessionmaker(bind=engine)
    opened: list[object] = []

    @contextlib.contextmanager
    def outside() -> t.Iterator[None]:
        g.session = sessions()
        opened.append(g.session)
        try:
            yield
        finally:
            g.pop("session").close()

    app = Flask(__name__)
    binding = DatabaseBinding.from_arguments(
        app, session=lambda: g.get("session"), outside_request=outside
    )
    assert binding.engine is engine
    assert len(opened) == 1
    with binding.outside_request():
        session = binding.session
        assert session is g.session
        session.execute(sa.text("SELECT 1"))
        binding.release()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert not session.in_transaction()
        session.execute(sa.text("SELECT 1"))  # still the host's, still usable
        assert binding.session is session
    with app.app_context(), pytest.raises(RuntimeError, match="outside_request="):
        binding.session  # noqa: B018


def test_the_hosts_outside_request_is_entered_once_when_work_nests(tmp_path: Path) -> None:
    """A command runs in ``outside_request`` and then finds the engine, which needs the
    session: the host's context manager, written to be entered once, is not entered again."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'nested.sqlite3'}")
    sessions = sessionmaker(bind=engine)
    entered: list[int] = []

    @contextlib.contextmanager
    def outside() -> t.Iterator[None]:
        assert "session" not in g, "entered again inside itself"
        g.session = sessions()
        entered.append(1)
        try:
            yield
        finally:
            g.pop("session").close()

    app = Flask(__name__)
    binding = DatabaseBinding.from_arguments(
        app, session=lambda: g.get("session"), outside_request=outside
    )
    with binding.outside_request():
        assert binding.engine is engine
        with binding.outside_request():
            binding.session.execute(sa.text("SELECT 1"))
    assert entered == [1]


def test_binding_with_an_engine_callable(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.sqlite3'}")
    calls: list[int] = []

    def find() -> sa.Engine:
        calls.append(1)
        return engine

    binding = DatabaseBinding.from_arguments(
        Flask(__name__), session=scoped_session(sessionmaker()), engine=find
    )
    assert binding.engine is engine and binding.engine is engine
    assert calls == [1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "needs the host's database"),
        ({"engine": "E"}, "engine= alone is not enough"),
        ({"db": "DB", "session": "S"}, "not both"),
        ({"db": "DB", "engine": "E"}, "engine= only with session="),
        ({"session": "not callable"}, "session= must be a scoped_session"),
        ({"session": "S", "engine": 42}, "engine= must be an Engine"),
        ({"db": object()}, "db= must be a Flask-SQLAlchemy object"),
    ],
    ids=[
        "none",
        "engine-alone",
        "db-and-session",
        "db-and-engine",
        "bad-session",
        "bad-engine",
        "bad-db",
    ],
)
def test_database_arguments_are_checked_at_once(arguments: dict[str, t.Any], message: str) -> None:
    """Refused by the constructor, before any app is at hand, with what to pass."""
    placeholders = {
        "DB": _flask_sqlalchemy_app(Path("/nonexistent"))[1],
        "S": scoped_session(sessionmaker()),
        "E": sa.create_engine("sqlite://"),
    }
    given = {
        key: placeholders.get(value, value) if isinstance(value, str) else value
        for key, value in arguments.items()
    }
    if arguments.get("session") == "not callable":
        given["session"] = "not callable"
    with pytest.raises(TypeError, match=message):
        DependencyProxy(host=plain.Host(), **given)
