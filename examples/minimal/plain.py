"""The minimal host with plain SQLAlchemy: no Flask-SQLAlchemy, one session per request.

The session lives on ``flask.g`` only while a request runs (opened by the host's own
``before_request``, closed at the end of it), as in hosts such as Pagure. The extension
gets the same engine and the same session (``session=``, ``engine=``), so a registry
request holds one database connection, and ``outside_request=`` opens a session for
what the extension runs outside requests: its CLI commands and the cleanup scheduler.

flask --app examples.minimal.plain dependency-proxy db upgrade
flask --app examples.minimal.plain seed alice s3cret acme
flask --app examples.minimal.plain dependency-proxy enable acme
gunicorn -w 2 -b 127.0.0.1:8000 'examples.minimal.plain:create_app()'
"""

import contextlib
import hashlib
import os
import secrets
import typing as t

import click
import sqlalchemy as sa
from flask import Flask, flash, g, redirect, render_template_string, request, session
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from werkzeug.security import check_password_hash, generate_password_hash

from flask_dependency_proxy import DependencyProxy
from flask_dependency_proxy.host import AuthFailure, Group, Principal, PrincipalKind


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.String(255), unique=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id))


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id))
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)  # sha256 of the token


def db() -> Session:
    """The session of the current request (or of the extension's ``outside_request``)."""
    return t.cast(Session, g.session)


def _principal(user: User, kind: PrincipalKind = PrincipalKind.USER) -> Principal:
    scopes = frozenset({"api", "read_registry"}) if kind is not PrincipalKind.USER else frozenset()
    return Principal(kind=kind, subject=f"{kind}:{user.id}", username=user.username, scopes=scopes)


def _token_user(secret: str) -> User | None:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    token = db().scalar(sa.select(ApiToken).filter_by(digest=digest))
    return db().get(User, token.user_id) if token else None


class Host:
    """The host adapter: the only thing the extension knows of this app."""

    def find_group(self, full_path: str) -> Group | None:
        team = db().scalar(sa.select(Team).filter_by(path=full_path))
        return Group(id=team.id, full_path=team.path) if team else None

    def find_group_by_id(self, group_id: int) -> Group | None:
        team = db().get(Team, group_id)
        return Group(id=team.id, full_path=team.path) if team else None

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        user = db().scalar(sa.select(User).filter_by(username=username))
        if user and check_password_hash(user.password_hash, secret):
            return _principal(user)
        token_user = _token_user(secret)
        if token_user and token_user.username == username:
            return _principal(token_user, PrincipalKind.PERSONAL_ACCESS_TOKEN)
        return AuthFailure.INVALID

    def authenticate_api_token(self, secret: str) -> Principal | AuthFailure:
        user = _token_user(secret)
        return (
            _principal(user, PrincipalKind.PERSONAL_ACCESS_TOKEN) if user else AuthFailure.INVALID
        )

    def current_principal(self) -> Principal | None:
        user = db().get(User, session["user_id"]) if "user_id" in session else None
        return _principal(user) if user else None

    def load_principal(self, subject: str) -> Principal | None:
        kind, _, user_id = subject.partition(":")
        user = db().get(User, int(user_id)) if user_id.isdigit() else None
        return _principal(user, PrincipalKind(kind)) if user else None

    def can_read(self, principal: Principal, group: Group) -> bool:
        return self.can_admin(principal, group)  # owners only, to keep it short

    def can_admin(self, principal: Principal, group: Group) -> bool:
        team = db().get(Team, group.id)
        return team is not None and principal.subject.partition(":")[2] == str(team.owner_id)


BASE = """<!doctype html><html><head><title>{% block title %}{% endblock %}</title>
{% block head %}{% endblock %}</head><body>{% block content %}{% endblock %}</body></html>"""
LOGIN = """{% extends "base.html" %}{% block content %}<form method="post">
<input name="username" placeholder="username"><input name="password" type="password">
<button>Sign in</button></form>{% endblock %}"""


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY")
    app.config["DATABASE_URL"] = os.environ.get("DATABASE_URL", "sqlite:///minimal-plain.db")
    app.config["DEPENDENCY_PROXY_LOGIN_VIEW"] = "login"
    app.config.update((k, v) for k, v in os.environ.items() if k.startswith("DEPENDENCY_PROXY_"))
    app.config.update(config or {})
    from jinja2 import DictLoader

    app.jinja_loader = DictLoader({"base.html": BASE})

    engine = sa.create_engine(app.config["DATABASE_URL"])
    if engine.dialect.name == "sqlite":
        # The host's own engine options hold for the extension's queries too.
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))
    sessions = sessionmaker(bind=engine)

    @contextlib.contextmanager
    def request_session() -> t.Iterator[None]:
        """A session on ``g`` for the extension's work outside requests."""
        g.session = sessions()
        try:
            yield
        finally:
            g.pop("session").close()

    @app.before_request
    def open_session() -> None:
        g.session = sessions()

    @app.teardown_request
    def close_session(error: BaseException | None) -> None:
        opened = g.pop("session", None)
        if opened is not None:
            opened.close()

    DependencyProxy(
        app,
        session=db,
        engine=engine,
        host=Host(),
        outside_request=request_session,
    )

    @app.route("/login", methods=["GET", "POST"])
    def login():  # type: ignore[no-untyped-def]
        if request.method == "POST":
            user = db().scalar(sa.select(User).filter_by(username=request.form["username"]))
            if user and check_password_hash(user.password_hash, request.form["password"]):
                session["user_id"] = user.id
                back = request.args.get("next", "/")  # a path of this site, nothing else
                return redirect(back if back.startswith("/") and back[1:2] != "/" else "/")
            flash("Wrong username or password.", "error")
        return render_template_string(LOGIN)

    @app.cli.command("seed")
    @click.argument("username")
    @click.argument("password")
    @click.argument("group")
    def seed(username: str, password: str, group: str) -> None:
        """Create the app's tables, a user, a group they own and an API token."""
        Base.metadata.create_all(engine)
        with sessions() as new, new.begin():
            user = User(username=username, password_hash=generate_password_hash(password))
            new.add(user)
            new.flush()
            new.add(Team(path=group, owner_id=user.id))
            token = secrets.token_urlsafe(24)
            new.add(ApiToken(user_id=user.id, digest=hashlib.sha256(token.encode()).hexdigest()))
        click.echo(token)

    return app
