"""Builders for tests of the example platform (``examples/platform``).

Plain functions, not fixtures: each ``tests/test_platform_*.py`` wraps them in the
fixtures it needs, so nothing here depends on ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing as t
from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from examples.platform import create_app, services
from examples.platform.models import db, utcnow

#: Environment keys that configure the platform; tests start without them.
_PLATFORM_ENV = re.compile(r"^(DEPENDENCY_PROXY_.*|DATABASE_URL|SECRET_KEY)$")


def platform_env_keys() -> list[str]:
    """Keys of the current environment that would change the platform's config."""
    return [key for key in os.environ if _PLATFORM_ENV.match(key)]


def make_app(tmp_path: Path, database_url: str | None = None, **config: t.Any) -> Flask:
    """A platform app on its own database (SQLite in ``tmp_path`` unless given), tables made."""
    url = database_url or f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "SQLALCHEMY_DATABASE_URI": url,
            # Port 9 (discard) is closed: nothing reaches a real upstream by accident.
            "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
            "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / "store"),
            # scrypt is slow on purpose; a test hashes many passwords.
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            **config,
        }
    )
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    return app


def dispose(app: Flask) -> None:
    """Close the app's database connections (a test's SQLite file or PostgreSQL database)."""
    with app.app_context():
        db.session.remove()
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()


def fresh_platform(tmp_path: Path, monkeypatch: t.Any, **config: t.Any) -> t.Iterator[Flask]:
    """Body of a ``platform_app`` fixture: a fresh platform on SQLite in ``tmp_path``,
    configured by ``config`` alone (the environment's platform keys are removed).

    Name the fixture ``platform_app``, not ``app``: pytest-flask would then push one
    request context around the whole test, and every request would share its ``g`` and
    database session.
    """
    for key in platform_env_keys():
        monkeypatch.delenv(key)
    flask_app = make_app(tmp_path, **config)
    yield flask_app
    dispose(flask_app)


@dataclasses.dataclass
class World:
    """A populated platform; ids and secrets the tests refer to.

    Groups: ``org`` (public) > ``org/team`` (private) > ``org/team/sub``;
    ``other`` (private). Projects: ``org/team/app``, ``other/tool``.
    Users: ``root`` (admin, no memberships); ``gus``, guest of ``org``;
    ``dev``, developer of ``org/team``; ``owner``, owner of ``org``;
    ``maint``, maintainer of ``org``; ``out``, member of nothing; ``both``,
    developer of ``org`` and of ``other``.
    """

    passwords: dict[str, str]
    group_ids: dict[str, int]
    user_ids: dict[str, int]


PASSWORD = "correct horse battery staple"


def build_world() -> World:
    """Create the :class:`World` (inside an app context)."""
    users = {}
    for name in ("root", "gus", "dev", "owner", "maint", "out", "both"):
        users[name] = services.create_user(name, f"{PASSWORD} {name}", is_admin=name == "root").id
    groups = {}
    for path, private in (
        ("org", False),
        ("org/team", True),
        ("org/team/sub", True),
        ("other", True),
    ):
        groups[path] = services.create_group(path, private=private).id
    for path, user, role in (
        ("org", "gus", "guest"),
        ("org/team", "dev", "developer"),
        ("org", "owner", "owner"),
        ("org", "maint", "maintainer"),
        ("org", "both", "developer"),
        ("other", "both", "developer"),
    ):
        services.add_member(path, user, role)
    services.create_project("org/team/app")
    services.create_project("other/tool")
    return World(
        passwords={name: f"{PASSWORD} {name}" for name in users},
        group_ids=groups,
        user_ids=users,
    )


def expire(token: t.Any) -> None:
    """Move a token's expiry into the past."""
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(client: FlaskClient, path: str) -> str:
    """The CSRF token a page's form carries, as a browser would submit it."""
    response = client.get(path)
    found = _CSRF.search(response.get_data(as_text=True))
    assert found, f"no CSRF field on {path} ({response.status_code})"
    return found.group(1)


def login(client: FlaskClient, username: str, password: str) -> None:
    token = csrf_from(client, "/users/sign_in")
    response = client.post(
        "/users/sign_in",
        data={"username": username, "password": password, "csrf_token": token},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
