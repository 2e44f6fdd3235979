"""The example platform's pages: sign-in with CSRF, groups, and tokens shown once."""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.platform import services
from examples.platform.host import PlatformHost
from flask_dependency_proxy.host import AuthFailure, Principal, PrincipalKind
from tests.platform_fixtures import (
    World,
    build_world,
    csrf_from,
    dispose,
    fresh_platform,
    login,
    make_app,
)

host = PlatformHost()
PAT_PAGE = "/-/user_settings/personal_access_tokens"


@pytest.fixture
def platform_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    """A fresh platform on SQLite in ``tmp_path``."""
    yield from fresh_platform(tmp_path, monkeypatch)


@pytest.fixture
def world(platform_app: Flask) -> World:
    with platform_app.app_context():
        return build_world()


@pytest.fixture
def client(platform_app: Flask) -> FlaskClient:
    return platform_app.test_client()


def as_user(client: FlaskClient, world: World, username: str) -> FlaskClient:
    login(client, username, world.passwords[username])
    return client


def text(response: t.Any) -> str:
    return t.cast(str, response.get_data(as_text=True))


# -- signing in ----------------------------------------------------------------------


def test_pages_need_a_signed_in_user(client: FlaskClient, world: World) -> None:
    for path in ("/", "/groups/org", PAT_PAGE, "/groups/org/-/deploy_tokens"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.location.startswith("/users/sign_in?next=")


def test_sign_in_and_out(client: FlaskClient, world: World) -> None:
    as_user(client, world, "gus")
    home = text(client.get("/"))
    assert "Your groups" in home and "gus" in home and "/groups/org" in home
    token = csrf_from(client, "/")
    assert client.post("/users/sign_out", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_sign_in_refuses_wrong_password_and_blocked_user(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    token = csrf_from(client, "/users/sign_in")
    response = client.post(
        "/users/sign_in", data={"username": "gus", "password": "wrong", "csrf_token": token}
    )
    assert response.status_code == 401
    assert "Invalid username or password." in text(response)
    with platform_app.app_context():
        services.block_user("dev")
    response = client.post(
        "/users/sign_in",
        data={"username": "dev", "password": world.passwords["dev"], "csrf_token": token},
    )
    assert response.status_code == 401


def test_blocking_ends_an_open_session(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    as_user(client, world, "gus")
    assert client.get("/").status_code == 200
    with platform_app.app_context():
        services.block_user("gus")
    assert client.get("/").status_code == 302


def test_posts_without_the_csrf_token_are_refused(client: FlaskClient, world: World) -> None:
    form = {"username": "gus", "password": world.passwords["gus"]}
    assert client.post("/users/sign_in", data=form).status_code == 400
    assert client.post("/users/sign_in", data={**form, "csrf_token": "forged"}).status_code == 400
    assert client.post("/users/sign_in", data={**form, "csrf_token": "é"}).status_code == 400
    as_user(client, world, "gus")
    assert client.post("/users/sign_out").status_code == 400
    assert client.post(PAT_PAGE, data={"name": "x", "scopes": "api"}).status_code == 400
    assert client.get("/").status_code == 200  # still signed in


@pytest.mark.parametrize(
    ("next_url", "lands_on"),
    [
        ("/groups/org", "/groups/org"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
    ],
)
def test_sign_in_follows_only_local_next(
    client: FlaskClient, world: World, next_url: str, lands_on: str
) -> None:
    token = csrf_from(client, "/users/sign_in")
    response = client.post(
        "/users/sign_in",
        query_string={"next": next_url},
        data={"username": "gus", "password": world.passwords["gus"], "csrf_token": token},
    )
    assert response.status_code == 302
    assert response.location == lands_on


# -- groups --------------------------------------------------------------------------


def test_group_page_lists_subgroups_projects_members_and_the_proxy_link(
    client: FlaskClient, world: World
) -> None:
    page = text(as_user(client, world, "dev").get("/groups/ORG/team"))
    assert 'href="/groups/org/team/-/dependency_proxy"' in page
    assert 'href="/groups/org/team/sub"' in page
    assert "org/team/app" in page
    assert re.search(r"dev</td>\s*<td>developer</td>\s*<td>direct", page)
    assert re.search(r"owner</td>\s*<td>owner</td>\s*<td>inherited from", page)
    assert "Deploy tokens" not in page  # developers do not manage them


def test_private_groups_are_hidden_from_non_members(client: FlaskClient, world: World) -> None:
    as_user(client, world, "out")
    assert client.get("/groups/org").status_code == 200  # public
    assert client.get("/groups/org/team").status_code == 404
    assert client.get("/groups/other").status_code == 404
    assert client.get("/groups/nope").status_code == 404


def test_admin_home_lists_every_group(client: FlaskClient, world: World) -> None:
    page = text(as_user(client, world, "root").get("/"))
    for path in ("org", "org/team", "org/team/sub", "other"):
        assert f'href="/groups/{path}"' in page


# -- personal access tokens -------------------------------------------------------------


def create_pat(client: FlaskClient, **form: t.Any) -> t.Any:
    form.setdefault("csrf_token", csrf_from(client, PAT_PAGE))
    return client.post(PAT_PAGE, data=form)


def shown_secret(response: t.Any) -> str:
    found = re.search(r'data-testid="new-secret">([^<]+)<', text(response))
    assert found, text(response)
    return found.group(1)


def test_personal_access_token_is_shown_once_and_works(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    as_user(client, world, "gus")
    response = create_pat(
        client, name="laptop", scopes=["read_registry", "write_registry"], expires_days="30"
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    secret = shown_secret(response)
    with platform_app.app_context():
        principal = host.authenticate("gus", secret)
    assert isinstance(principal, Principal)
    assert principal.kind is PrincipalKind.PERSONAL_ACCESS_TOKEN

    listing = text(client.get(PAT_PAGE))
    assert "laptop" in listing and secret not in listing
    with client.session_transaction() as session:
        assert secret not in repr(dict(session))


def test_personal_access_token_form_errors(client: FlaskClient, world: World) -> None:
    as_user(client, world, "gus")
    for form, message in (
        ({"name": "x"}, "at least one scope"),
        ({"name": "", "scopes": "api"}, "Give the token a name"),
        ({"name": "x", "scopes": "api", "expires_days": "soon"}, "whole number of days"),
        ({"name": "x", "scopes": "sudo"}, "Unknown scope(s) sudo"),
    ):
        page = text(create_pat(client, **form))
        assert message in page, form
        assert "new-secret" not in page


def test_personal_access_token_revoke(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    as_user(client, world, "gus")
    secret = shown_secret(create_pat(client, name="ci", scopes="api"))
    token_id = re.search(r"personal_access_tokens/(\d+)/revoke", text(client.get(PAT_PAGE))).group(
        1
    )  # type: ignore[union-attr]

    csrf = csrf_from(client, PAT_PAGE)
    response = client.post(f"{PAT_PAGE}/{token_id}/revoke", data={"csrf_token": csrf})
    assert response.status_code == 302
    with platform_app.app_context():
        assert host.authenticate("gus", secret) is AuthFailure.INVALID
    assert "revoked" in text(client.get(PAT_PAGE))


def test_cannot_revoke_someone_elses_token(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    with platform_app.app_context():
        user = services.require_user("dev")
        token, secret = services.create_personal_access_token(user, name="mine", scopes="api")
        token_id = token.id
    as_user(client, world, "gus")
    csrf = csrf_from(client, PAT_PAGE)
    assert (
        client.post(f"{PAT_PAGE}/{token_id}/revoke", data={"csrf_token": csrf}).status_code == 404
    )
    with platform_app.app_context():
        assert isinstance(host.authenticate("dev", secret), Principal)


# -- deploy tokens ----------------------------------------------------------------------


def test_owner_creates_and_revokes_deploy_tokens(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    as_user(client, world, "owner")
    page = "/groups/org/team/-/deploy_tokens"
    assert 'href="/groups/org/team/-/deploy_tokens"' in text(client.get("/groups/org/team"))
    response = client.post(
        page,
        data={
            "csrf_token": csrf_from(client, page),
            "name": "mirror",
            "scopes": ["read_registry", "write_registry"],
        },
    )
    assert response.headers["Cache-Control"] == "no-store"
    secret = shown_secret(response)
    username = re.search(r"Username: <code>([^<]+)</code>", text(response)).group(1)  # type: ignore[union-attr]
    with platform_app.app_context():
        principal = host.authenticate(username, secret)
    assert isinstance(principal, Principal) and principal.kind is PrincipalKind.DEPLOY_TOKEN

    token_id = username.rsplit("-", 1)[1]
    response = client.post(
        f"{page}/{token_id}/revoke", data={"csrf_token": csrf_from(client, page)}
    )
    assert response.status_code == 302
    with platform_app.app_context():
        assert host.authenticate(username, secret) is AuthFailure.INVALID
    # Another group's page cannot revoke it.
    assert (
        client.post(
            f"/groups/org/-/deploy_tokens/{token_id}/revoke",
            data={"csrf_token": csrf_from(client, page)},
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("who", "status"), [("dev", 403), ("maint", 403), ("out", 404), ("root", 200)]
)
def test_only_owners_and_admins_manage_deploy_tokens(
    client: FlaskClient, world: World, who: str, status: int
) -> None:
    as_user(client, world, who)
    assert client.get("/groups/org/team/-/deploy_tokens").status_code == status


# -- wired to the extension --------------------------------------------------------------


def test_the_extension_asks_this_host(
    platform_app: Flask, client: FlaskClient, world: World
) -> None:
    """The token endpoint answers according to the platform's credentials."""
    with platform_app.app_context():
        user = services.require_user("gus")
        _, good = services.create_personal_access_token(
            user, name="r", scopes="read_registry,write_registry"
        )
        _, weak = services.create_personal_access_token(user, name="w", scopes="read_api")
    params = {"service": "dependency_proxy"}
    assert client.get("/jwt/auth", query_string=params, auth=("gus", good)).status_code == 200
    assert client.get("/jwt/auth", query_string=params, auth=("gus", weak)).status_code == 403
    assert client.get("/jwt/auth", query_string=params, auth=("gus", "nope")).status_code == 401


def test_the_extension_page_uses_the_platform_layout_and_login(
    client: FlaskClient, world: World
) -> None:
    page_url = "/groups/org/team/-/dependency_proxy"
    assert client.get(page_url).location.startswith("/users/sign_in?next=")
    as_user(client, world, "owner")
    page = client.get(page_url)
    assert page.status_code == 200
    body = text(page)
    assert 'class="brand"' in body and "Dependency Proxy" in body
    # The platform's sign-out form still works from inside the extension's page.
    token = re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)  # type: ignore[union-attr]
    assert client.post("/users/sign_out", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.parametrize(
    ("login_view", "expected"),
    [
        ("/signin", "/signin?next="),
        (
            "https://sso.example.com/login?realm=git",
            "https://sso.example.com/login?realm=git&next=",
        ),
        ("auth.login", "/users/sign_in?next="),
    ],
)
def test_anonymous_visitors_go_to_the_login_view(
    tmp_path: Path, login_view: str, expected: str
) -> None:
    app = make_app(tmp_path, DEPENDENCY_PROXY_LOGIN_VIEW=login_view)
    try:
        response = app.test_client().get("/groups/org/team/-/dependency_proxy?page=2")
        assert response.status_code == 302
        location = response.location
        assert location.startswith(expected), location
        assert location.endswith("next=%2Fgroups%2Forg%2Fteam%2F-%2Fdependency_proxy%3Fpage%3D2")
    finally:
        dispose(app)


def test_a_login_view_that_names_no_endpoint_says_so(tmp_path: Path) -> None:
    app = make_app(tmp_path, DEPENDENCY_PROXY_LOGIN_VIEW="no.such_view")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    try:
        with pytest.raises(RuntimeError, match="names no endpoint"):
            app.test_client().get("/groups/org/-/dependency_proxy")
    finally:
        dispose(app)
