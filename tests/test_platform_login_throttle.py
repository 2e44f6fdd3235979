"""The platform's sign-in form behind the login limiter: a refused attempt is answered
429 with the form and computes no password hash."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from examples.platform import auth, services
from tests.platform_fixtures import csrf_from

LIMIT = 3
ATTACKER, ELSEWHERE = "192.0.2.1", "192.0.2.2"


class CountingVerifier:
    """Wraps the platform's password check (the scrypt hash) and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, username: str, password: str) -> t.Any:
        self.calls += 1
        return services.verify_password(username, password)


@pytest.fixture
def verifier(monkeypatch: pytest.MonkeyPatch) -> CountingVerifier:
    counting = CountingVerifier()
    monkeypatch.setattr(auth, "verify_password", counting)
    return counting


@pytest.fixture
def platform_app(app_factory: t.Callable[..., Flask]) -> Flask:
    flask_app = app_factory(
        DEPENDENCY_PROXY_LOGIN_MAX_FAILURES=LIMIT, PASSWORD_HASH_METHOD="pbkdf2:sha256:1000"
    )
    with flask_app.app_context():
        services.create_user("alice", "alice password 1")
    return flask_app


def sign_in(flask_app: Flask, address: str, password: str) -> t.Any:
    client = flask_app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    token = csrf_from(client, "/users/sign_in")
    return client.post(
        "/users/sign_in",
        data={"username": "alice", "password": password, "csrf_token": token},
    )


def test_a_refused_sign_in_computes_no_hash(
    platform_app: Flask, verifier: CountingVerifier
) -> None:
    for _ in range(LIMIT):
        assert sign_in(platform_app, ATTACKER, "wrong").status_code == 401
    assert verifier.calls == LIMIT

    refused = sign_in(platform_app, ATTACKER, "alice password 1")
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 300
    page = refused.get_data(as_text=True)
    assert "Too many failed sign-ins from your address. Try again in 5 minutes." in page
    assert 'name="password"' in page
    assert verifier.calls == LIMIT

    assert sign_in(platform_app, ELSEWHERE, "alice password 1").status_code == 302
    assert verifier.calls == LIMIT + 1


def test_web_and_registry_failures_share_one_count(
    platform_app: Flask, verifier: CountingVerifier
) -> None:
    client = platform_app.test_client()
    for _ in range(LIMIT):
        response = client.get(
            "/jwt/auth?service=dependency_proxy",
            auth=("alice", "wrong"),
            environ_base={"REMOTE_ADDR": ATTACKER},
        )
        assert response.status_code == 401
    assert sign_in(platform_app, ATTACKER, "alice password 1").status_code == 429
    assert verifier.calls == 0
