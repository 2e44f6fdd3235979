"""The example platform on both database backends (SQLite and PostgreSQL, through the
suite's ``fresh_database_url``): time zones, and input a database could choke on.
"""

from __future__ import annotations

import typing as t
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from examples.platform import services
from examples.platform.host import PlatformHost
from examples.platform.models import PersonalAccessToken, db, utcnow
from flask_dependency_proxy.host import AuthFailure, Principal
from flask_dependency_proxy.host import Group as ProxyGroup
from tests.platform_fixtures import (
    World,
    build_world,
    csrf_from,
    dispose,
    login,
    make_app,
    platform_env_keys,
)

host = PlatformHost()
JOB_USER = "gitlab-ci-token"


@pytest.fixture
def platform_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> t.Iterator[Flask]:
    for key in platform_env_keys():
        monkeypatch.delenv(key)
    flask_app = make_app(tmp_path, fresh_database_url)
    yield flask_app
    dispose(flask_app)


@pytest.fixture
def world(platform_app: Flask) -> t.Iterator[World]:
    with platform_app.app_context():
        yield build_world()


def test_expiry_is_compared_in_utc(world: World) -> None:
    user = services.require_user("gus")
    token, secret = services.create_personal_access_token(
        user, name="t", scopes="api", expires_days=1
    )
    db.session.expire_all()  # read expires_at back from the database
    stored = db.session.get(PersonalAccessToken, token.id)
    assert stored is not None and stored.expires_at is not None
    assert stored.expires_at.utcoffset() == timedelta(0)
    assert timedelta(hours=23) < stored.expires_at - utcnow() <= timedelta(days=1)
    assert isinstance(host.authenticate("gus", secret), Principal)

    stored.expires_at = utcnow() - timedelta(seconds=5)
    db.session.commit()
    db.session.expire_all()
    assert host.authenticate("gus", secret) is AuthFailure.INVALID


@pytest.mark.parametrize(
    "subject", ["user:99999999999", "user:²", "job:0", "pat:2147483648", "deploy_token:-3"]
)
def test_subjects_out_of_range_find_nothing(world: World, subject: str) -> None:
    assert host.load_principal(subject) is None
    principal = Principal(kind=t.cast(t.Any, "user"), subject=subject, username="x")
    assert not host.can_read(principal, host.find_group("org"))  # type: ignore[arg-type]


def test_hostile_lookups_find_nothing(world: World) -> None:
    assert host.find_group("org\x00") is None
    assert host.find_group_by_id(2**40) is None
    assert host.find_group_by_id(0) is None
    assert not host.can_read(
        host.load_principal(f"user:{world.user_ids['root']}"),  # type: ignore[arg-type]
        ProxyGroup(id=2**40, full_path="x"),
    )
    for username, secret in (
        ("gus\x00", world.passwords["gus"]),
        ("gus", "dppat-\x00"),
        ("deploy-token-1", "dpdt-\x00"),
        (JOB_USER, "dpjob-\x00"),
        ("gus", world.passwords["gus"] + "\x00"),
    ):
        assert host.authenticate(username, secret) is AuthFailure.INVALID
    assert host.authenticate_api_token("dppat-\x00") is AuthFailure.INVALID


def test_hostile_web_input_is_refused_without_errors(platform_app: Flask, world: World) -> None:
    client = platform_app.test_client()
    token = csrf_from(client, "/users/sign_in")
    response = client.post(
        "/users/sign_in", data={"username": "gus\x00", "password": "x", "csrf_token": token}
    )
    assert response.status_code == 401
    login(client, "gus", world.passwords["gus"])
    page = "/-/user_settings/personal_access_tokens"
    token = csrf_from(client, page)
    response = client.post(page, data={"name": "a\x00b", "scopes": "api", "csrf_token": token})
    assert response.status_code == 200
    assert "must not contain control characters" in response.get_data(as_text=True)
    response = client.post(f"{page}/99999999999/revoke", data={"csrf_token": token})
    assert response.status_code == 404
    assert client.get("/groups/org%00").status_code == 404


def test_hostile_cli_input_is_refused_without_errors(platform_app: Flask, world: World) -> None:
    runner = platform_app.test_cli_runner()
    for args in (
        ["token", "revoke", "99999999999"],
        ["deploy-token", "revoke", "99999999999"],
        ["user", "create", "a\x00b", "--password", "x"],
        ["group", "add-member", "org\x00", "gus", "--role", "guest"],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert result.output.startswith("Error:")
