"""Security headers of the live platform: registry and token responses are never
sniffed as another type, and no page can be framed (clickjacking its one-click forms)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from flask import Flask, Response
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy

from examples.platform.host import PlatformHost
from flask_dependency_proxy import DependencyProxy
from tests.support import seed
from tests.support.platform import Platform

pytestmark = pytest.mark.e2e
#: The subject is the response headers, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
NO_FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def assert_nosniff(response: requests.Response) -> None:
    assert response.headers.get("X-Content-Type-Options") == "nosniff", (
        response.request.method,
        response.url,
        response.status_code,
        dict(response.headers),
    )


def assert_not_framable(response: requests.Response) -> None:
    for name, value in NO_FRAMING.items():
        # requests joins repeated headers with ", ": equality also rules out duplicates.
        assert response.headers.get(name) == value, (response.url, dict(response.headers))


def signed_in(platform: Platform, account: seed.Account) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{platform.url}/users/sign_in", timeout=30)
    found = _CSRF.search(form.text)
    assert found, form.text
    response = session.post(
        f"{platform.url}/users/sign_in",
        data={"username": account.username, "password": account.password, "csrf_token": found[1]},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302, response.text
    return session


def test_registry_and_token_responses_are_nosniff(platform: Platform) -> None:
    user = seed.ALICE
    base = f"{platform.url}/v2/{platform.repository(seed.ACME, 'x')}"
    token = platform.token(user.username, user.password)
    headers = {"Authorization": f"Bearer {token.json()['token']}"}
    responses = [
        token,
        platform.token(user.username, "wrong password"),
        requests.get(f"{platform.url}/jwt/auth", params={"service": "other"}, timeout=30),
        requests.get(f"{platform.url}/v2/", timeout=30),
        requests.get(f"{platform.url}/v2/", headers=headers, timeout=30),
        requests.get(f"{base}/manifests/1", headers=headers, timeout=30),
        requests.head(f"{base}/blobs/sha256:{'0' * 64}", headers=headers, timeout=30),
        requests.put(f"{base}/manifests/1", headers=headers, data=b"{}", timeout=30),
        requests.get(f"{platform.url}/v2/UPPER/manifests/1", headers=headers, timeout=30),
    ]
    assert {response.status_code for response in responses} >= {200, 401, 404, 405}
    for response in responses:
        assert_nosniff(response)


def test_pages_cannot_be_framed(platform: Platform) -> None:
    anonymous = requests.get(f"{platform.url}/users/sign_in", timeout=30)
    assert anonymous.status_code == 200
    assert_not_framable(anonymous)

    session = signed_in(platform, seed.ROOT)
    for path in ("/", f"/groups/{seed.ACME}", f"/groups/{seed.ACME}/-/dependency_proxy"):
        response = session.get(f"{platform.url}{path}", timeout=30)
        assert response.status_code == 200, (path, response.status_code)
        assert_not_framable(response)
    clear = session.get(f"{platform.url}/groups/{seed.ACME}/-/dependency_proxy/clear", timeout=30)
    assert clear.status_code == 200
    assert_not_framable(clear)


def test_the_extensions_pages_forbid_framing_in_any_host(tmp_path: Path) -> None:
    """A host that sets no framing headers of its own, and one content policy."""
    app = Flask("bare_host", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="k", SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/db.sqlite")
    db = SQLAlchemy()
    db.init_app(app)
    LoginManager(app).user_loader(lambda user_id: None)
    DependencyProxy(app, db=db, host=PlatformHost())

    @app.after_request
    def host_policy(response: Response) -> Response:
        response.headers.add("Content-Security-Policy", "default-src 'self'")
        return response

    # Anonymous: the host's login answers (401 here, without a login view), from the page.
    response = app.test_client().get(f"/groups/{seed.ACME}/-/dependency_proxy")
    assert response.status_code == 401
    assert response.headers["X-Frame-Options"] == "DENY"
    assert sorted(response.headers.getlist("Content-Security-Policy")) == [
        "default-src 'self'",
        "frame-ancestors 'none'",
    ]
