"""The second example host, ``examples/forge`` (built like Pagure), in process: its CLI
and pages, its strict Content-Security-Policy around the extension's pages, its costly
after-request hook kept off registry traffic, its adapter's answers, and a deleted group
whose id SQLite gives to the next one. ``tests/test_forge_e2e.py`` runs it under
gunicorn with real clients and a browser.
"""

from __future__ import annotations

import base64
import gc
import re
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.forge import create_app
from examples.forge.hooks import POLICY
from tests.platform_fixtures import platform_env_keys

PASSWORDS = {name: f"{name}-password-0001" for name in ("alice", "bob", "carol", "root")}
#: The forge's CSP, with the nonce captured.
CSP = re.compile(re.escape(POLICY).replace(re.escape("{nonce}"), "([A-Za-z0-9_-]+)"))
PAGE = "/groups/DevOps/-/dependency_proxy"


def invoke(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@pytest.fixture
def forge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Flask]:
    """The forge on SQLite: ``DevOps`` owned by alice, bob a member; carol in no group;
    root one of the forge's admins. The proxy of ``DevOps`` is off."""
    for key in platform_env_keys():
        monkeypatch.delenv(key)
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'forge.sqlite3'}",
            # Port 9 (discard) is closed: nothing reaches a real upstream by accident.
            "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
            "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / "store"),
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            "FORGE_ADMINS": "root",
        }
    )
    invoke(app, "init-db")
    for name, password in PASSWORDS.items():
        invoke(app, "user", "create", name, "--password", password)
    invoke(app, "group", "create", "DevOps", "--owner", "alice")
    invoke(app, "group", "add-member", "devops", "bob")
    yield app
    app.extensions["forge.engine"].dispose()


def token(app: Flask, username: str, *acls: str) -> str:
    """A new API token of ``username`` with these ACLs."""
    args = [arg for acl in acls for arg in ("--acl", acl)]
    return invoke(app, "token", "create", username, *args).strip().splitlines()[-1]


def login(client: FlaskClient, username: str, password: str | None = None) -> None:
    response = client.post(
        "/login/",
        data={
            "username": username,
            "password": password or PASSWORDS[username],
            "csrf": csrf(client, "/login/"),
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)


def csrf(client: FlaskClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found, f"no CSRF field on {path}"
    return found.group(1)


def basic(username: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def granted(client: FlaskClient, username: str, secret: str) -> tuple[int, str]:
    """``POST /jwt/auth`` (containerd's password grant) for a pull from ``devops``: the
    status and the scope granted, which holds only what the adapter allowed."""
    response = client.post(
        "/jwt/auth",
        data={
            "grant_type": "password",
            "username": username,
            "password": secret,
            "service": "dependency_proxy",
            "scope": "repository:devops/dependency_proxy/containers/alpine:pull",
        },
    )
    body = response.get_json(silent=True) or {}
    return response.status_code, body.get("scope", "")


# -- the forge itself -------------------------------------------------------------------


def test_the_cli_makes_users_groups_and_tokens_and_refuses_clearly(forge: Flask) -> None:
    runner = forge.test_cli_runner()
    twin = runner.invoke(args=["group", "create", "devops", "--owner", "carol"])
    assert twin.exit_code == 1 and "Group DevOps exists already." in twin.output
    missing = runner.invoke(args=["group", "add-member", "Nope", "carol"])
    assert missing.exit_code == 1 and "No group Nope." in missing.output
    secret = token(forge, "alice", "pull_images", "group_modify")
    assert re.fullmatch(r"[A-Z0-9]{64}", secret)
    assert "bob is a member of DevOps." in invoke(forge, "group", "add-member", "DEVOPS", "bob")
    # The extension's own commands find the group by its lowercase path: they run in
    # the forge's outside_request(), where g.session exists.
    assert "devops" in invoke(forge, "dependency-proxy", "enable", "devops").lower()
    assert "0 images" in invoke(forge, "dependency-proxy", "stats", "DevOps")


def test_pages_sign_in_and_only_the_owner_may_delete(forge: Flask) -> None:
    client = forge.test_client()
    assert "forge-delete-group" not in client.get("/group/devops").get_data(as_text=True)
    # The extension's page sends an anonymous visitor to the forge's login, and back.
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response.location.startswith("/login/?next=")
    wrong = client.post(
        "/login/",
        data={"username": "alice", "password": "nope", "csrf": csrf(client, "/login/")},
    )
    assert "Wrong username or password" in wrong.get_data(as_text=True)

    login(client, "bob")
    assert "forge-delete-group" not in client.get("/group/DevOps").get_data(as_text=True)
    assert client.get(PAGE).status_code == 404  # a member, not an admin
    forged = client.post("/group/DevOps/delete", data={"csrf": "forged"})
    assert forged.status_code == 400

    client = forge.test_client()
    login(client, "alice")
    page = client.get("/group/DevOps").get_data(as_text=True)
    assert "forge-delete-group" in page and f'href="{PAGE}"' in page
    assert client.get(PAGE).status_code == 200

    invoke(forge, "user", "block", "alice")
    assert client.get(PAGE).status_code == 302  # a blocked user's session is over
    other = forge.test_client()
    blocked = other.post(
        "/login/",
        data={"username": "alice", "password": PASSWORDS["alice"], "csrf": csrf(other, "/login/")},
    )
    assert "the account is blocked" in blocked.get_data(as_text=True)


# -- the extension inside the forge -----------------------------------------------------


def test_every_response_has_a_strict_csp_with_a_fresh_nonce_the_pages_use(
    forge: Flask,
) -> None:
    client = forge.test_client()
    login(client, "alice")
    nonces = []
    for path in ("/", "/v2/", PAGE, f"{PAGE}/clear"):
        response = client.get(path)
        policies = response.headers.getlist("Content-Security-Policy")
        forge_policy = [found for p in policies if (found := CSP.fullmatch(p))]
        assert len(forge_policy) == 1, (path, policies)
        nonce = forge_policy[0].group(1)
        nonces.append(nonce)
        if path.startswith(PAGE):
            assert response.status_code == 200, (path, response.status_code)
            html = response.get_data(as_text=True)
            head = html.split("</head>", 1)[0]
            # The forge's style, then the extension's in the forge's header_css block.
            styles = re.findall(r"<style\b[^>]*>", head)
            assert len(styles) >= 2, styles
            for tag in re.findall(r"<(?:style|script)\b[^>]*>", html):
                assert f'nonce="{nonce}"' in tag, (path, tag)
            assert not re.search(r"\sstyle=", html), path
            assert not re.search(r"\son[a-z]+=", html), path
    assert len(set(nonces)) == len(nonces), nonces


def test_registry_requests_skip_the_costly_hook_and_set_no_cookie(
    forge: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    collections: list[int] = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or collect(*a))
    client = forge.test_client()

    page = client.get("/")
    assert page.status_code == 200 and collections == [1]
    assert "session=" in page.headers.get("Set-Cookie", "")

    fresh = forge.test_client()
    challenge = fresh.get("/v2/")
    assert challenge.status_code == 401
    login_answer = fresh.get(
        "/jwt/auth",
        query_string={"service": "dependency_proxy"},
        headers=basic("bob", PASSWORDS["bob"]),
    )
    assert login_answer.status_code == 200
    registry = fresh.get(
        "/v2/", headers={"Authorization": f"Bearer {login_answer.get_json()['token']}"}
    )
    assert registry.status_code == 200
    for answer in (challenge, login_answer, registry):
        assert "Set-Cookie" not in answer.headers, answer.headers
    assert collections == [1]


def test_the_adapter_maps_passwords_tokens_acls_and_blocked_users(forge: Flask) -> None:
    invoke(forge, "dependency-proxy", "enable", "devops")
    client = forge.test_client()
    scope = "repository:devops/dependency_proxy/containers/alpine:pull"
    assert granted(client, "bob", PASSWORDS["bob"]) == (200, scope)  # a member
    assert granted(client, "alice", PASSWORDS["alice"]) == (200, scope)  # the owner
    assert granted(client, "carol", PASSWORDS["carol"]) == (200, "")  # in no group
    assert granted(client, "root", PASSWORDS["root"]) == (200, scope)  # a forge admin
    pull = token(forge, "alice", "pull_images")
    assert granted(client, "alice", pull) == (200, scope)
    assert granted(client, "bob", pull)[0] == 401  # someone else's token
    assert granted(client, "alice", token(forge, "alice", "group_modify"))[0] == 403

    invoke(forge, "user", "block", "bob")
    assert granted(client, "bob", PASSWORDS["bob"])[0] == 401


def test_the_rest_api_takes_tokens_with_the_forges_api_acl(forge: Flask) -> None:
    client = forge.test_client()
    url = "/api/v4/groups/devops/dependency_proxy/settings"
    owner = client.get(url, headers={"PRIVATE-TOKEN": token(forge, "alice", "group_modify")})
    assert owner.status_code == 200, owner.get_data(as_text=True)
    assert owner.get_json()["group_full_path"] == "DevOps"
    pull_only = client.get(url, headers={"PRIVATE-TOKEN": token(forge, "alice", "pull_images")})
    assert pull_only.status_code == 403
    assert "group_modify" in pull_only.get_json()["message"]
    member = client.get(url, headers={"PRIVATE-TOKEN": token(forge, "bob", "group_modify")})
    assert member.status_code in (403, 404)


def test_deleting_a_group_forgets_it_and_the_next_group_with_its_id_starts_clean(
    forge: Flask,
) -> None:
    client = forge.test_client()
    api = {"PRIVATE-TOKEN": token(forge, "alice", "group_modify")}
    invoke(forge, "dependency-proxy", "enable", "devops")
    old_id = client.get("/api/v4/groups/devops/dependency_proxy/settings", headers=api)
    group_id = old_id.get_json()["group_id"]
    changed = client.put(
        f"/api/v4/groups/{group_id}/dependency_proxy/settings",
        json={"cleanup_policy": {"enabled": True, "days": 7}, "quota": {"limit_bytes": 10**6}},
        headers=api,
    )
    assert changed.status_code == 200, changed.get_data(as_text=True)

    login(client, "alice")
    deleted = client.post("/group/DevOps/delete", data={"csrf": csrf(client, "/group/DevOps")})
    assert deleted.status_code == 302
    gone = client.get(f"/api/v4/groups/{group_id}/dependency_proxy/settings", headers=api)
    assert gone.status_code == 404

    # SQLite gives the newest group's id to the next group.
    assert f"(id {group_id})" in invoke(forge, "group", "create", "Fresh", "--owner", "alice")
    fresh = client.get(f"/api/v4/groups/{group_id}/dependency_proxy/settings", headers=api)
    assert fresh.status_code == 200, fresh.get_data(as_text=True)
    body = fresh.get_json()
    assert body["group_full_path"] == "Fresh"
    assert body["enabled"] is False
    assert body["cleanup_policy"]["enabled"] is False
    assert body["quota"]["limit_bytes"] is None
