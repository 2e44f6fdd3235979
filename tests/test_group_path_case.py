"""Mixed-case group paths and the host's own API scope name, through a small host in
process whose groups keep the case they were given (``Group.full_path`` ``"MyTeam"``).

Image names are lowercase, so ``myteam/dependency_proxy/containers/...`` pulls through
``MyTeam``; the pull prefix the pages and the API show is lowercase; two groups whose
paths differ only by case cannot both use the proxy, and the second is told why.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from jinja2 import DictLoader

from flask_dependency_proxy import DependencyProxy, state
from flask_dependency_proxy.host import AuthFailure, Group, Principal, PrincipalKind
from tests import lifecycle_fixtures as lf

ADMIN = Principal(PrincipalKind.USER, "user:1", "admin")
API_TOKEN = "api-token-of-the-admin"
NARROW_TOKEN = "token-without-the-api-scope"
BASE = (
    "<!doctype html><title>{% block title %}{% endblock %}</title>{% block head %}{% endblock %}"
    "{% for c, m in get_flashed_messages(with_categories=true) %}<p class='{{ c }}'>{{ m }}</p>"
    "{% endfor %}{% block content %}{% endblock %}"
)


class CaseKeepingHost:
    """Groups by id, matched by path case-insensitively; one user who may do anything."""

    def __init__(self, groups: dict[int, str]) -> None:
        self.groups = groups

    def find_group(self, full_path: str) -> Group | None:
        assert full_path == full_path.lower(), "the extension hands over lowercase paths"
        return next((Group(i, p) for i, p in self.groups.items() if p.lower() == full_path), None)

    def find_group_by_id(self, group_id: int) -> Group | None:
        path = self.groups.get(group_id)
        return None if path is None else Group(group_id, path)

    def authenticate(self, username: str, secret: str) -> Principal | AuthFailure:
        return ADMIN if (username, secret) == ("admin", "pw") else AuthFailure.INVALID

    def authenticate_api_token(self, secret: str) -> Principal | AuthFailure:
        if secret == NARROW_TOKEN:
            return AuthFailure.INSUFFICIENT_SCOPE
        return ADMIN if secret == API_TOKEN else AuthFailure.INVALID

    def current_principal(self) -> Principal | None:
        return ADMIN

    def load_principal(self, subject: str) -> Principal | None:
        return ADMIN if subject == ADMIN.subject else None

    def can_read(self, principal: Principal, group: Group) -> bool:
        return principal == ADMIN

    def can_admin(self, principal: Principal, group: Group) -> bool:
        return principal == ADMIN


class ScopedHost(CaseKeepingHost):
    api_scope_name = "write_everything"


def _make(tmp_path: Path, host: CaseKeepingHost) -> Flask:
    tmp_path.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/host.sqlite3",
        DEPENDENCY_PROXY_UPSTREAM_URL="http://127.0.0.1:9",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "store"),
        DEPENDENCY_PROXY_EXTERNAL_URL="https://registry.example.com",
    )
    app.jinja_loader = DictLoader({"base.html": BASE})
    db = SQLAlchemy()
    db.init_app(app)
    proxy = DependencyProxy(app, db=db, host=host)
    with app.app_context():
        proxy.create_all()
    return app


@pytest.fixture
def host() -> CaseKeepingHost:
    return CaseKeepingHost({7: "MyTeam"})


@pytest.fixture
def host_app(tmp_path: Path, host: CaseKeepingHost) -> t.Iterator[Flask]:
    app = _make(tmp_path, host)
    yield app
    with app.app_context():
        state(None).metadata.engine.dispose()


def _api(client: FlaskClient, ref: str, **kwargs: t.Any) -> t.Any:
    method = "PUT" if "json" in kwargs else "GET"
    return client.open(
        f"/api/v4/groups/{ref}/dependency_proxy/settings",
        method=method,
        headers={"PRIVATE-TOKEN": API_TOKEN},
        **kwargs,
    )


def test_a_mixed_case_group_pulls_under_its_lowercase_name(host_app: Flask) -> None:
    app = host_app
    client = app.test_client()
    enabled = _api(client, "MyTeam", json={"enabled": True})
    assert enabled.status_code == 200, enabled.get_data(as_text=True)
    body = enabled.get_json()
    assert body["group_full_path"] == "MyTeam"
    assert body["image_prefix"] == "registry.example.com/myteam/dependency_proxy/containers"

    page = client.get("/groups/MyTeam/-/dependency_proxy").get_data(as_text=True)
    assert "registry.example.com/myteam/dependency_proxy/containers" in page
    assert "registry.example.com/MyTeam/" not in page

    with app.app_context():
        lf.add_manifest(7, "alpine", "latest")
    token = client.get("/jwt/auth?service=dependency_proxy", auth=("admin", "pw")).get_json()
    pulled = client.get(
        "/v2/myteam/dependency_proxy/containers/alpine/manifests/latest",
        headers={"Authorization": f"Bearer {token['token']}"},
    )
    assert pulled.status_code == 200, pulled.get_data(as_text=True)


def test_two_groups_that_differ_only_by_case_cannot_both_be_enabled(
    host_app: Flask, host: CaseKeepingHost
) -> None:
    app = host_app
    client = app.test_client()
    assert _api(client, "7", json={"enabled": True}).status_code == 200
    host.groups[8] = "myTEAM"
    refused = _api(client, "8", json={"enabled": True})
    assert refused.status_code == 409, refused.get_data(as_text=True)
    message = refused.get_json()["message"]
    assert "'myTEAM'" in message and "'MyTeam'" in message and "7" in message
    assert _api(client, "8").get_json()["enabled"] is False

    # The first group deleted without telling the extension: its record still holds
    # the path, and the page says so when the second group is switched on.
    del host.groups[7]
    form = client.get("/groups/myteam/-/dependency_proxy").get_data(as_text=True)
    csrf = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', form)
    assert csrf is not None
    response = client.post(
        "/groups/myteam/-/dependency_proxy/settings",
        data={"enabled": "1", "dependency_proxy_csrf_token": csrf.group(1)},
        follow_redirects=True,
    )
    text = response.get_data(as_text=True)
    assert "forget_group(7)" in text, text
    assert _api(client, "8").get_json()["enabled"] is False

    with app.app_context():
        state(None).group_admin.forget_group(7)
    assert _api(client, "8", json={"enabled": True}).get_json()["enabled"] is True


def test_the_api_scope_is_named_as_the_host_names_it(tmp_path: Path) -> None:
    for host, scope in ((CaseKeepingHost({7: "a"}), "api"), (ScopedHost({7: "a"}), None)):
        scope = scope or ScopedHost.api_scope_name
        app = _make(tmp_path / scope, host)
        refused = app.test_client().get(
            "/api/v4/groups/a/dependency_proxy/settings", headers={"PRIVATE-TOKEN": NARROW_TOKEN}
        )
        assert refused.status_code == 403
        message = refused.get_json()["message"]
        assert f"the token lacks the host's API scope ('{scope}')" in message
        assert "needs the api scope" not in message
        assert f'scope="{scope}"' in refused.headers["WWW-Authenticate"]
        with app.app_context():
            state(None).metadata.engine.dispose()


def test_an_api_scope_name_that_cannot_be_quoted_fails_at_init_app(tmp_path: Path) -> None:
    class Quoting(CaseKeepingHost):
        api_scope_name = 'api" realm="elsewhere'

    with pytest.raises(TypeError, match="api_scope_name"):
        _make(tmp_path, Quoting({}))
