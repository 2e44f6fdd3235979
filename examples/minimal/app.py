"""A complete, minimal host for the dependency proxy: session login, its own models.

flask --app examples.minimal.app dependency-proxy db upgrade
flask --app examples.minimal.app seed alice s3cret acme     # user, owned group, token
flask --app examples.minimal.app dependency-proxy enable acme  # the group's proxy on
gunicorn -w 2 -b 127.0.0.1:8000 'examples.minimal.app:create_app()'
"""

import hashlib
import os
import secrets

import click
from flask import Flask, flash, redirect, render_template, request, session
from flask_sqlalchemy import SQLAlchemy
from jinja2 import ChoiceLoader, DictLoader
from werkzeug.security import check_password_hash, generate_password_hash

from flask_dependency_proxy import DependencyProxy
from flask_dependency_proxy.host import AuthFailure, Group, Principal, PrincipalKind

db = SQLAlchemy()


class User(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(64), unique=True, nullable=False)
    password_hash = db.Column(db.String(256), nullable=False)


class Team(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    path = db.Column(db.String(255), unique=True, nullable=False)
    owner_id = db.Column(db.ForeignKey(User.id), nullable=False)


class ApiToken(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.ForeignKey(User.id), nullable=False)
    digest = db.Column(db.String(64), unique=True, nullable=False)  # sha256 of the token


def _principal(user: User, kind: PrincipalKind = PrincipalKind.USER) -> Principal:
    scopes = frozenset({"api", "read_registry"}) if kind is not PrincipalKind.USER else frozenset()
    return Principal(kind=kind, subject=f"{kind}:{user.id}", username=user.username, scopes=scopes)


def _token_user(secret: str) -> User | None:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    token = db.session.scalar(db.select(ApiToken).filter_by(digest=digest))
    return db.session.get(User, token.user_id) if token else None


class Host:
    """The host adapter: the only thing the extension knows of this app."""

    def find_group(self, full_path: str) -> Group | None:
        # The path comes lowercased (image names are); a team may be "MyTeam".
        team = db.session.scalar(db.select(Team).where(db.func.lower(Team.path) == full_path))
        return Group(id=team.id, full_path=team.path) if team else None

    def find_group_by_id(self, group_id: int) -> Group | None:
        team = db.session.get(Team, group_id)
        return Group(id=team.id, full_path=team.path) if team else None

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        user = db.session.scalar(db.select(User).filter_by(username=username))
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
        user = db.session.get(User, session["user_id"]) if "user_id" in session else None
        return _principal(user) if user else None

    def load_principal(self, subject: str) -> Principal | None:
        kind, _, user_id = subject.partition(":")
        user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
        return _principal(user, PrincipalKind(kind)) if user else None

    def can_read(self, principal: Principal, group: Group) -> bool:
        return self.can_admin(principal, group)  # owners only, to keep it short

    def can_admin(self, principal: Principal, group: Group) -> bool:
        team = db.session.get(Team, group.id)
        return team is not None and principal.subject.partition(":")[2] == str(team.owner_id)


BASE = """<!doctype html><html><head><title>{% block title %}{% endblock %}</title>
<style>body { font-family: sans-serif; margin: 2rem; }</style>{% block head %}{% endblock %}
</head><body>{% for category, message in get_flashed_messages(with_categories=true) %}
<p class="flash {{ category }}">{{ message }}</p>{% endfor %}{% block content %}{% endblock %}
</body></html>"""
LOGIN = """{% extends "base.html" %}{% block content %}<form method="post">
<input name="username" placeholder="username"><input name="password" type="password">
<button>Sign in</button></form>{% endblock %}"""


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///minimal.db")
    app.config["DEPENDENCY_PROXY_LOGIN_VIEW"] = "login"
    app.config.update((k, v) for k, v in os.environ.items() if k.startswith("DEPENDENCY_PROXY_"))
    app.jinja_loader = ChoiceLoader([DictLoader({"base.html": BASE, "login.html": LOGIN})])
    db.init_app(app)
    DependencyProxy(app, db=db, host=Host())

    @app.route("/login", methods=["GET", "POST"])
    def login():  # type: ignore[no-untyped-def]
        if request.method == "POST":
            user = db.session.scalar(db.select(User).filter_by(username=request.form["username"]))
            if user and check_password_hash(user.password_hash, request.form["password"]):
                session["user_id"] = user.id
                back = request.args.get("next", "/")  # a path of this site, nothing else
                return redirect(back if back.startswith("/") and back[1:2] != "/" else "/")
            flash("Wrong username or password.", "error")
        return render_template("login.html")

    @app.cli.command("seed")
    @click.argument("username")
    @click.argument("password")
    @click.argument("group")
    def seed(username: str, password: str, group: str) -> None:
        """Create the app's tables, a user, a group they own and an API token."""
        db.create_all()
        user = User(username=username, password_hash=generate_password_hash(password))
        db.session.add(user)
        db.session.flush()
        db.session.add(Team(path=group, owner_id=user.id))
        token = secrets.token_urlsafe(24)
        db.session.add(ApiToken(user_id=user.id, digest=hashlib.sha256(token.encode()).hexdigest()))
        db.session.commit()
        click.echo(token)

    return app
