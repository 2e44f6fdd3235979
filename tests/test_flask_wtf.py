"""A host that protects its forms with Flask-WTF's ``CSRFProtect`` keeps the extension
working: the group pages accept their own token, ``docker login``'s form POST to
``/jwt/auth``, the registry and the REST API are not blocked, and the host's own forms
are still protected. Whichever of ``CSRFProtect`` and ``init_app`` comes first."""

from __future__ import annotations

import base64
import re
import typing as t
from pathlib import Path

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from jinja2 import ChoiceLoader, DictLoader
from wtforms import StringField

from examples.minimal import app as minimal
from flask_dependency_proxy import DependencyProxy

GROUP_PAGE = "/groups/acme/-/dependency_proxy"


class NameForm(FlaskForm):
    name = StringField()


PROFILE = """{% extends "base.html" %}{% block content %}<form method="post">
{{ form.csrf_token }}{{ form.name }}</form>{% endblock %}"""


class Host(t.NamedTuple):
    app: Flask
    token: str


@pytest.fixture(params=["csrf-first", "csrf-last"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Host:
    """The minimal example's models and adapter in an app with ``CSRFProtect``."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="flask-wtf-secret",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.db'}",
        DEPENDENCY_PROXY_LOGIN_VIEW="login",
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "store"),
        DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED=True,
    )
    app.jinja_loader = ChoiceLoader([DictLoader({"base.html": minimal.BASE})])
    csrf = CSRFProtect()
    if request.param == "csrf-first":
        csrf.init_app(app)
    minimal.db.init_app(app)
    DependencyProxy(app, db=minimal.db, host=minimal.Host())
    if request.param == "csrf-last":
        csrf.init_app(app)

    @app.route("/profile", methods=["GET", "POST"])
    def profile() -> str:
        form = NameForm()
        if form.validate_on_submit():
            return f"saved {form.name.data}"
        return render_template_string(PROFILE, form=form)

    runner = app.test_cli_runner()
    upgraded = runner.invoke(args=["dependency-proxy", "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    with app.app_context():
        minimal.db.create_all()
        user = minimal.User(username="alice", password_hash=minimal.generate_password_hash("pw"))
        minimal.db.session.add(user)
        minimal.db.session.flush()
        minimal.db.session.add(minimal.Team(path="acme", owner_id=user.id))
        secret = "alice-api-token"
        digest = minimal.hashlib.sha256(secret.encode()).hexdigest()
        minimal.db.session.add(minimal.ApiToken(user_id=user.id, digest=digest))
        minimal.db.session.commit()
    return Host(app, secret)


def _signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    with client.session_transaction() as session:
        session["user_id"] = 1
    return client


def test_the_group_page_forms_work_with_their_own_token(host: Host) -> None:
    client = _signed_in(host.app)
    page = client.get(GROUP_PAGE)
    assert page.status_code == 200
    token = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', page.text)
    assert token is not None, page.text
    changed = client.post(
        f"{GROUP_PAGE}/cleanup_policy",
        data={
            "dependency_proxy_csrf_token": token.group(1),
            "cleanup_enabled": "1",
            "cleanup_days": "30",
        },
        follow_redirects=True,
    )
    assert changed.status_code == 200, changed.text
    assert 'class="flash info"' in changed.text
    # The extension still checks its own token.
    forged = client.post(
        f"{GROUP_PAGE}/cleanup_policy", data={"cleanup_enabled": "1", "cleanup_days": "5"}
    )
    assert forged.status_code == 400
    assert "Form rejected" in forged.text


def test_registry_and_token_routes_are_not_blocked(host: Host) -> None:
    client = host.app.test_client()
    # containerd's docker login: the OAuth2 form, no cookie and no CSRF token.
    issued = client.post(
        "/jwt/auth",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "pw",
            "service": "dependency_proxy",
            "scope": "repository:acme/dependency_proxy/containers/alpine:pull",
        },
    )
    assert issued.status_code == 200, issued.text
    bearer = {"Authorization": f"Bearer {issued.json['token']}"}
    basic = base64.b64encode(b"alice:pw").decode()
    assert (
        client.get(
            "/jwt/auth?service=dependency_proxy", headers={"Authorization": f"Basic {basic}"}
        ).status_code
        == 200
    )
    assert client.get("/v2/", headers=bearer).status_code == 200
    assert client.head("/v2/", headers=bearer).status_code == 200
    # Push stays a registry error, not a CSRF page.
    pushed = client.put(
        "/v2/acme/dependency_proxy/containers/alpine/manifests/1", headers=bearer, data=b"{}"
    )
    assert pushed.status_code == 405
    assert pushed.json["errors"][0]["code"] == "UNSUPPORTED"


def test_the_rest_api_checks_its_own_credentials(host: Host) -> None:
    api = "/api/v4/groups/acme/dependency_proxy/settings"
    client = host.app.test_client()
    by_token = client.put(api, json={"enabled": True}, headers={"PRIVATE-TOKEN": host.token})
    assert by_token.status_code == 200, by_token.text

    browser = _signed_in(host.app)
    page = browser.get(GROUP_PAGE)
    meta = re.search(r'name="dependency-proxy-csrf-token" content="([^"]+)"', page.text)
    assert meta is not None, page.text
    by_session = browser.put(api, json={"enabled": True}, headers={"X-CSRF-Token": meta.group(1)})
    assert by_session.status_code == 200, by_session.text
    # A session request without the extension's token is still refused.
    assert browser.put(api, json={"enabled": True}).status_code == 403


def test_the_hosts_own_forms_stay_protected(host: Host) -> None:
    client = host.app.test_client()
    assert client.post("/profile", data={"name": "x"}).status_code == 400
    form = client.get("/profile")
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text)
    assert token is not None, form.text
    saved = client.post("/profile", data={"name": "x", "csrf_token": token.group(1)})
    assert saved.status_code == 200 and saved.text == "saved x"
