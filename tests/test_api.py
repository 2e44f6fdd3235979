"""The REST API under ``/api/v4/groups/<group>/dependency_proxy/``: every endpoint, its
authentication and errors, the purge cooldown and pagination.

In-process platform on SQLite and PostgreSQL; the world of
:func:`tests.platform_fixtures.build_world` (``owner`` owns ``org``; ``maint``, ``dev``
and ``gus`` are lesser members; ``out`` belongs nowhere; ``root`` is an admin).
"""

from __future__ import annotations

import datetime as dt
import re
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from examples.platform import services
from examples.platform.models import User, db
from flask_dependency_proxy import state
from flask_dependency_proxy.models.tables import (
    CachedBlob,
    CachedManifest,
    GroupSettings,
    GroupUpstreamRow,
    Lease,
    Status,
)
from flask_dependency_proxy.oci.reference import ProxyPath
from tests import lifecycle_fixtures as lf
from tests.platform_fixtures import World, build_world, dispose, login, make_app

if t.TYPE_CHECKING:
    from tests.support.databases import Databases

API = "/api/v4/groups"
#: The shared platform's upstreams (closed ports: nothing is pulled through them).
UPSTREAMS = {
    "hub": {"url": "http://127.0.0.1:9", "hosts": ["docker.io"]},
    "ghcr": {"url": "http://127.0.0.1:9/ghcr", "hosts": ["ghcr.io"]},
    "quay": {"url": "http://127.0.0.1:9/quay"},
}
SECRET = "s3cr3t-upstream-pa55word"


class Env(t.NamedTuple):
    app: Flask
    world: World
    #: Secrets of personal access tokens with the ``api`` scope, by username.
    tokens: dict[str, str]
    token_ids: dict[str, int]

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, user: str = "owner") -> dict[str, str]:
        return {"PRIVATE-TOKEN": self.tokens[user]}


def _populate(app: Flask) -> Env:
    """The world, and a personal access token with the ``api`` scope for each user."""
    world = build_world()
    tokens, token_ids = {}, {}
    for name in ("owner", "maint", "dev", "gus", "out", "root"):
        user = db.session.get(User, world.user_ids[name])
        token, tokens[name] = services.create_personal_access_token(user, name="api", scopes="api")
        token_ids[name] = token.id
    owner = db.session.get(User, world.user_ids["owner"])
    tokens["owner-registry"] = services.create_personal_access_token(
        owner, name="registry", scopes="read_registry,write_registry"
    )[1]
    return Env(app, world, tokens, token_ids)


@pytest.fixture
def make_env(app_factory: t.Callable[..., Flask]) -> t.Iterator[t.Callable[..., Env]]:
    """An environment of its own, for a test that needs other settings."""
    contexts = []

    def make(**config: t.Any) -> Env:
        app = app_factory(**config)
        context = app.app_context()
        context.push()
        contexts.append(context)
        return _populate(app)

    yield make
    for context in reversed(contexts):
        db.session.remove()
        context.pop()


@pytest.fixture(scope="module")
def shared_env(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Env]:
    """One populated platform per module and database backend (users are slow to make:
    their passwords are hashed)."""
    url = databases.create("api")
    app = make_app(tmp_path_factory.mktemp("api"), url, DEPENDENCY_PROXY_UPSTREAMS=UPSTREAMS)
    with app.app_context():
        populated = _populate(app)
        db.session.remove()
    yield populated
    dispose(app)
    databases.drop(url)


@pytest.fixture
def env(shared_env: Env) -> t.Iterator[Env]:
    """The shared platform with an empty cache and default proxy settings."""
    with shared_env.app.app_context():
        for table in (CachedManifest, CachedBlob, GroupSettings, Lease, GroupUpstreamRow):
            db.session.execute(sa.delete(table))
        db.session.commit()
        state(None).access.forget()
        yield shared_env
        db.session.remove()


def json_error(response: t.Any, status: int) -> str:
    """Assert a JSON error with a message; return the message."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    message = response.get_json()["message"]
    assert isinstance(message, str) and message.startswith(str(status))
    return t.cast(str, message)


# -- authentication -------------------------------------------------------------------------------


def test_private_token_bearer_and_session_authenticate(env: Env) -> None:
    client = env.client()
    url = f"{API}/org/dependency_proxy/settings"
    assert client.get(url, headers=env.auth()).status_code == 200
    bearer = {"Authorization": f"Bearer {env.tokens['owner']}"}
    assert client.get(url, headers=bearer).status_code == 200

    login(client, "owner", env.world.passwords["owner"])
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"PRIVATE-TOKEN": "dppat-not-a-real-token"},
        {"PRIVATE-TOKEN": ""},
        {"PRIVATE-TOKEN": "x" * 5000},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic b3duZXI6cGFzc3dvcmQ="},
    ],
    ids=["none", "unknown", "empty", "huge", "bad-bearer", "basic"],
)
def test_missing_or_bad_credentials_are_401(env: Env, headers: dict[str, str]) -> None:
    response = env.client().get(f"{API}/org/dependency_proxy/settings", headers=headers)
    json_error(response, 401)


def test_token_without_api_scope_is_403(env: Env) -> None:
    registry_only = {"PRIVATE-TOKEN": env.tokens["owner-registry"]}
    response = env.client().get(f"{API}/org/dependency_proxy/settings", headers=registry_only)
    assert "insufficient_scope" in json_error(response, 403)


def test_revoked_token_is_401(env: Env) -> None:
    owner = db.session.get(User, env.world.user_ids["owner"])
    created, token = services.create_personal_access_token(owner, name="soon revoked", scopes="api")
    url = f"{API}/org/dependency_proxy/settings"
    assert env.client().get(url, headers={"PRIVATE-TOKEN": token}).status_code == 200
    services.revoke_personal_access_token(created.id, owner=owner)
    json_error(env.client().get(url, headers={"PRIVATE-TOKEN": token}), 401)


def test_session_writes_need_the_csrf_header(env: Env) -> None:
    client = env.client()
    login(client, "owner", env.world.passwords["owner"])
    url = f"{API}/org/dependency_proxy/cache"
    assert "X-CSRF-Token" in json_error(client.delete(url), 403)
    assert "X-CSRF-Token" in json_error(client.delete(url, headers={"X-CSRF-Token": "forged"}), 403)
    page = client.get("/groups/org/-/dependency_proxy").get_data(as_text=True)
    token = re.search(r'name="dependency-proxy-csrf-token" content="([^"]+)"', page)
    assert token is not None
    assert client.delete(url, headers={"X-CSRF-Token": token.group(1)}).status_code == 202


# -- the group and who may use it -----------------------------------------------------------------


def test_group_by_id_or_encoded_full_path(env: Env) -> None:
    client = env.client()
    team = env.world.group_ids["org/team"]
    by_id = client.get(f"{API}/{team}/dependency_proxy/settings", headers=env.auth())
    by_path = client.get(f"{API}/org%2Fteam/dependency_proxy/settings", headers=env.auth())
    by_case = client.get(f"{API}/Org%2FTeam/dependency_proxy/settings", headers=env.auth())
    assert by_id.status_code == by_path.status_code == by_case.status_code == 200
    assert by_id.get_json() == by_path.get_json() == by_case.get_json()
    assert by_id.get_json()["group_id"] == team
    assert by_id.get_json()["group_full_path"] == "org/team"


@pytest.mark.parametrize(
    "ref",
    ["999999", "nowhere", "org%2Fnowhere", "0", "99999999999999999999999", "..%2Fetc", "a%20b"],
)
def test_unknown_or_malformed_group_is_404(env: Env, ref: str) -> None:
    response = env.client().get(f"{API}/{ref}/dependency_proxy/settings", headers=env.auth())
    assert json_error(response, 404) == "404 Group Not Found"


@pytest.mark.parametrize(
    ("user", "status"),
    [("owner", 200), ("root", 200), ("maint", 403), ("dev", 403), ("gus", 403), ("out", 404)],
)
def test_only_administrators_of_the_group(env: Env, user: str, status: int) -> None:
    client = env.client()
    for method, path in (
        ("GET", "settings"),
        ("GET", "manifests"),
        ("GET", "blobs"),
        ("DELETE", "cache"),
    ):
        response = client.open(
            f"{API}/org%2Fteam/dependency_proxy/{path}", method=method, headers=env.auth(user)
        )
        expected = 202 if status == 200 and method == "DELETE" else status
        assert response.status_code == expected, (user, method, path, response.get_json())
    # ``other`` is private and ``out``, ``dev``... are not in it: it is not even there.
    if user != "root":
        other = client.get(f"{API}/other/dependency_proxy/settings", headers=env.auth(user))
        json_error(other, 404)


def test_administering_role_is_the_hosts_setting(make_env: t.Callable[..., Env]) -> None:
    env = make_env(DEPENDENCY_PROXY_ADMIN_ROLE="maintainer")
    response = env.client().get(f"{API}/org/dependency_proxy/settings", headers=env.auth("maint"))
    assert response.status_code == 200


# -- purge ----------------------------------------------------------------------------------------


def test_delete_cache_is_202_then_409_within_the_cooldown(env: Env) -> None:
    client = env.client()
    org = env.world.group_ids["org"]
    manifest = lf.add_manifest(org, "alpine", "3")
    blob = lf.add_blob(org, b"layer")
    url = f"{API}/{org}/dependency_proxy/cache"

    response = client.delete(url, headers=env.auth())
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["scheduled_for_deletion"] == {"manifests": 1, "blobs": 1}
    metadata = state(None).metadata
    assert metadata.find_tag(org, "alpine", "3") is None
    assert metadata.find_blob(org, blob) is None
    assert lf.rows(CachedManifest, org) == [(manifest.digest, Status.PENDING_DESTRUCTION)]

    again = client.delete(url, headers=env.auth())
    assert "409 Conflict" in json_error(again, 409)
    assert 3590 <= int(again.headers["Retry-After"]) <= 3600

    # An hour later it is accepted again.
    db.session.execute(
        sa.update(GroupSettings)
        .where(GroupSettings.group_id == org)
        .values(purged_at=lf.utcnow() - dt.timedelta(hours=1, seconds=1))
    )
    db.session.commit()
    assert client.delete(url, headers=env.auth()).status_code == 202


def test_cooldown_is_configurable(make_env: t.Callable[..., Env]) -> None:
    env = make_env(DEPENDENCY_PROXY_PURGE_COOLDOWN_SECONDS=0)
    client = env.client()
    for _ in range(3):
        response = client.delete(f"{API}/org/dependency_proxy/cache", headers=env.auth())
        assert response.status_code == 202


def test_purged_group_is_fetched_again_by_the_next_pull(env: Env) -> None:
    """Rows pending destruction are invisible to the registry: a tag pull misses."""
    org = env.world.group_ids["org"]
    lf.add_manifest(org, "alpine", "3")
    cache = state(None).cache
    assert cache.metadata.find_tag(org, "alpine", "3") is not None
    env.client().delete(f"{API}/org/dependency_proxy/cache", headers=env.auth())
    # The upstream (port 9, closed) is asked and fails: nothing stale is served.
    with pytest.raises(Exception, match="unavailable|UNAVAILABLE"):
        cache.get_manifest(org, ProxyPath(group_path="org", image="alpine"), "3")
    cache.finish_request()


# -- settings -------------------------------------------------------------------------------------


def test_settings_read_and_update(env: Env) -> None:
    client = env.client()
    url = f"{API}/org/dependency_proxy/settings"
    body = client.get(url, headers=env.auth()).get_json()
    assert body["enabled"] is False
    assert body["cleanup_policy"] == {"enabled": False, "days": 90}
    assert body["image_prefix"] == "localhost/org/dependency_proxy/containers"
    assert body["cache_cleared_at"] is None

    update = {"enabled": True, "cleanup_policy": {"enabled": True, "days": 14}}
    response = client.put(url, json=update, headers=env.auth())
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["enabled"] is True
    assert response.get_json()["cleanup_policy"] == {"enabled": True, "days": 14}
    assert client.get(url, headers=env.auth()).get_json() == response.get_json()
    assert state(None).metadata.group_enabled(env.world.group_ids["org"], False)

    # Fields left out stay as they are.
    response = client.put(url, json={"cleanup_policy": {"days": 30}}, headers=env.auth())
    assert response.get_json()["cleanup_policy"] == {"enabled": True, "days": 30}
    assert response.get_json()["enabled"] is True
    response = client.put(url, json={"enabled": False}, headers=env.auth())
    assert response.get_json()["enabled"] is False
    assert not state(None).metadata.group_enabled(env.world.group_ids["org"], True)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": "true"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"cleanup_policy": {"days": 0}}, "cleanup_policy.days"),
        ({"cleanup_policy": {"days": 3651}}, "cleanup_policy.days"),
        ({"cleanup_policy": {"days": "30"}}, "cleanup_policy.days"),
        ({"cleanup_policy": {"days": 1.5}}, "cleanup_policy.days"),
        ({"cleanup_policy": {"days": True}}, "cleanup_policy.days"),
        ({"cleanup_policy": {"enabled": "yes"}}, "cleanup_policy.enabled"),
        ({"cleanup_policy": {"ttl": 3}}, "cleanup_policy.ttl"),
        ({"cleanup_policy": [1]}, "cleanup_policy"),
        ({"enabled": True, "purge": True}, "purge"),
    ],
)
def test_settings_fields_are_validated(env: Env, body: dict[str, t.Any], field: str) -> None:
    url = f"{API}/org/dependency_proxy/settings"
    response = env.client().put(url, json=body, headers=env.auth())
    json_error(response, 400)
    assert field in response.get_json()["errors"]
    # Nothing was saved.
    assert env.client().get(url, headers=env.auth()).get_json()["enabled"] is False


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{}", "application/json", 400),
        ("[]", "application/json", 400),
        ("not json", "application/json", 400),
        ('{"enabled": true}', "text/plain", 415),
        ("enabled=true", "application/x-www-form-urlencoded", 415),
        ('{"enabled": true, "x": "' + "a" * 70000 + '"}', "application/json", 413),
    ],
    ids=["empty", "array", "garbage", "text", "form", "huge"],
)
def test_settings_body_must_be_a_json_object(
    env: Env, data: str, content_type: str, status: int
) -> None:
    response = env.client().put(
        f"{API}/org/dependency_proxy/settings",
        data=data,
        headers={**env.auth(), "Content-Type": content_type},
    )
    json_error(response, status)


def test_size_limit_read_and_update_with_the_usage(env: Env) -> None:
    org = env.world.group_ids["org"]
    client = env.client()
    url = f"{API}/org/dependency_proxy/settings"
    body = client.get(url, headers=env.auth()).get_json()
    assert body["quota"] == {"limit_bytes": None, "used_bytes": 0, "policy": "evict"}

    manifest = lf.add_manifest(org, "app", "1")
    lf.add_blob(org, b"b" * 5000)
    lf.add_blob(org, b"p" * 700, status=Status.PENDING_DESTRUCTION)  # not served: not counted
    lf.add_blob(env.world.group_ids["other"], b"o" * 900)  # another group's
    used = manifest.size + 5000

    response = client.put(url, json={"quota": {"limit_bytes": 10_000}}, headers=env.auth())
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["quota"] == {
        "limit_bytes": 10_000,
        "used_bytes": used,
        "policy": "evict",
    }
    assert client.get(url, headers=env.auth()).get_json() == response.get_json()
    assert response.get_json()["enabled"] is False  # other fields stay as they are

    response = client.put(
        url, json={"enabled": True, "quota": {"limit_bytes": None}}, headers=env.auth()
    )
    assert response.get_json()["quota"]["limit_bytes"] is None
    assert response.get_json()["enabled"] is True


def test_size_limit_policy_is_the_instances(make_env: t.Callable[..., Env]) -> None:
    refusing = make_env(DEPENDENCY_PROXY_QUOTA_POLICY="refuse")
    body = (
        refusing.client()
        .get(f"{API}/org/dependency_proxy/settings", headers=refusing.auth())
        .get_json()
    )
    assert body["quota"]["policy"] == "refuse"


@pytest.mark.parametrize(
    "quota",
    [-1, 0, "1000", "10 GiB", 1.5, 1e3, True, 2**50 + 1, 10**30, [1000], {"limit": 5}],
    ids=repr,
)
def test_size_limit_values_are_validated(env: Env, quota: t.Any) -> None:
    url = f"{API}/org/dependency_proxy/settings"
    body = {"quota": quota if isinstance(quota, dict) else {"limit_bytes": quota}}
    response = env.client().put(url, json=body, headers=env.auth())
    json_error(response, 400)
    assert any(key.startswith("quota.") for key in response.get_json()["errors"])
    assert env.client().get(url, headers=env.auth()).get_json()["quota"]["limit_bytes"] is None


@pytest.mark.parametrize("quota", ["big", None, 5])
def test_size_limit_must_be_an_object(env: Env, quota: t.Any) -> None:
    response = env.client().put(
        f"{API}/org/dependency_proxy/settings", json={"quota": quota}, headers=env.auth()
    )
    json_error(response, 400)
    assert "quota" in response.get_json()["errors"]


def test_usage_cannot_be_set(env: Env) -> None:
    response = env.client().put(
        f"{API}/org/dependency_proxy/settings",
        json={"quota": {"used_bytes": 0}},
        headers=env.auth(),
    )
    json_error(response, 400)
    assert response.get_json()["errors"] == {"quota.used_bytes": "cannot be set"}


# -- listings and pagination ----------------------------------------------------------------------


def _links(response: t.Any) -> dict[str, str]:
    return {
        rel: url
        for url, rel in re.findall(r'<([^>]+)>; rel="([a-z]+)"', response.headers.get("Link", ""))
    }


def test_manifests_are_paginated_newest_first(env: Env) -> None:
    org = env.world.group_ids["org"]
    tags = [str(n) for n in range(45)]
    for tag in tags:
        lf.add_manifest(org, "app", tag)
    lf.add_manifest(env.world.group_ids["other"], "app", "elsewhere")
    client = env.client()
    url = f"{API}/org/dependency_proxy/manifests"

    first = client.get(url, headers=env.auth())
    assert first.status_code == 200
    assert first.headers["X-Total"] == "45"
    assert first.headers["X-Total-Pages"] == "3"
    assert (first.headers["X-Page"], first.headers["X-Per-Page"]) == ("1", "20")
    assert (first.headers["X-Next-Page"], first.headers["X-Prev-Page"]) == ("2", "")
    assert [m["tag"] for m in first.get_json()] == tags[::-1][:20]
    links = _links(first)
    assert set(links) == {"next", "first", "last"}
    assert links["next"].endswith(f"{url}?page=2&per_page=20")

    last = client.get(links["last"], headers=env.auth())
    assert [m["tag"] for m in last.get_json()] == tags[::-1][40:]
    assert (last.headers["X-Next-Page"], last.headers["X-Prev-Page"]) == ("", "2")
    assert set(_links(last)) == {"prev", "first", "last"}

    small = client.get(url, query_string={"page": 2, "per_page": 7}, headers=env.auth())
    assert [m["tag"] for m in small.get_json()] == tags[::-1][7:14]
    assert small.headers["X-Total-Pages"] == "7"

    beyond = client.get(url, query_string={"page": 9}, headers=env.auth())
    assert beyond.status_code == 200 and beyond.get_json() == []
    assert beyond.headers["X-Total"] == "45"


def test_manifest_and_blob_fields(env: Env) -> None:
    org = env.world.group_ids["org"]
    amd64 = lf.image_manifest(500, [1000, 2000], "amd64")
    arm64 = lf.image_manifest(400, [3000], "arm64")
    lf.add_manifest(org, "multi", None, content=amd64)
    lf.add_manifest(org, "multi", None, content=arm64)
    index = lf.add_manifest(
        org, "multi", "latest", content=lf.image_index([amd64, arm64]), media_type=lf.OCI_INDEX
    )
    blob = lf.add_blob(org, b"z" * 1234)
    lf.add_manifest(org, "old", "1", status=Status.PENDING_DESTRUCTION)
    client = env.client()

    manifests = client.get(f"{API}/org/dependency_proxy/manifests", headers=env.auth()).get_json()
    assert [m["image"] for m in manifests] == ["old", "multi", "multi", "multi"]
    assert manifests[0]["status"] == "pending_destruction"
    listed = manifests[1]
    assert listed["digest"] == index.digest and listed["tag"] == "latest"
    assert listed["media_type"] == lf.OCI_INDEX
    assert listed["size"] == index.size
    assert listed["platforms"] == 2
    assert listed["image_size"] == 500 + 1000 + 2000 + 400 + 3000
    assert manifests[2]["image_size"] == 400 + 3000 and manifests[2]["tag"] is None
    assert listed["status"] == "default"
    for key in ("created_at", "updated_at", "last_read_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed[key])

    blobs = client.get(f"{API}/org/dependency_proxy/blobs", headers=env.auth())
    assert blobs.headers["X-Total"] == "1"
    (only,) = blobs.get_json()
    assert (only["digest"], only["size"], only["status"]) == (blob, 1234, "default")


@pytest.mark.parametrize(
    "query",
    [
        {"page": "0"},
        {"page": "-1"},
        {"page": "x"},
        {"per_page": "0"},
        {"per_page": "101"},
        {"per_page": "1e3"},
        {"page": "100001"},
        {"page": "²"},
        {"page": "١٢"},
        {"per_page": "１２"},
        {"page": " 1"},
    ],
)
def test_bad_pagination_parameters_are_400(env: Env, query: dict[str, str]) -> None:
    response = env.client().get(
        f"{API}/org/dependency_proxy/blobs", query_string=query, headers=env.auth()
    )
    message = json_error(response, 400)
    assert next(iter(query)) in message


def test_ten_thousand_rows_page_through(env: Env) -> None:
    """Counts, the last page and the page's pagination at 10,000 rows of one group."""
    org = env.world.group_ids["org"]
    lf.bulk_rows(org, 10_000)
    client = env.client()
    for kind in ("manifests", "blobs"):
        response = client.get(
            f"{API}/org/dependency_proxy/{kind}",
            query_string={"page": 100, "per_page": 100},
            headers=env.auth(),
        )
        assert response.headers["X-Total"] == "10000"
        assert response.headers["X-Total-Pages"] == "100"
        items = response.get_json()
        assert len(items) == 100
        ids = [item["id"] for item in items]
        assert ids == sorted(ids, reverse=True)
    stats = env.client()
    login(stats, "owner", env.world.passwords["owner"])
    page = stats.get("/groups/org/-/dependency_proxy?page=500").get_data(as_text=True)
    assert "Page 500 of 500" in page
    assert "10000 manifests" in page and "10000 blobs" in page


# -- errors are JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "cache", 405),
        ("GET", "cache", 405),
        ("DELETE", "settings", 405),
        ("POST", "manifests", 405),
        ("PUT", "blobs", 405),
        ("GET", "nothing-here", 404),
        ("GET", "cache/extra", 404),
    ],
)
def test_wrong_method_or_path_is_a_json_error(
    env: Env, method: str, path: str, status: int
) -> None:
    response = env.client().open(
        f"{API}/org/dependency_proxy/{path}", method=method, headers=env.auth()
    )
    json_error(response, status)
    if status == 405:
        assert response.headers["Allow"]


def test_blob_rows_listing_is_per_group(env: Env) -> None:
    org, other = env.world.group_ids["org"], env.world.group_ids["other"]
    lf.add_blob(org, b"mine")
    lf.add_blob(other, b"theirs")
    response = env.client().get(f"{API}/{org}/dependency_proxy/blobs", headers=env.auth())
    assert [b["digest"] for b in response.get_json()] == [lf.sha256(b"mine")]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(CachedBlob)) == 2


# -- upstreams ------------------------------------------------------------------------------------


def _upstreams(env: Env, group: str = "org", user: str = "owner") -> t.Any:
    response = env.client().get(f"{API}/{group}/dependency_proxy/upstreams", headers=env.auth(user))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _order(body: t.Any) -> list[tuple[str, int | None]]:
    return [(item["name"], item["position"]) for item in body["upstreams"]]


def test_upstreams_list_every_instance_upstream_in_the_instances_order(env: Env) -> None:
    body = _upstreams(env)

    assert body["custom_order"] is False
    assert _order(body) == [("hub", 1), ("ghcr", 2), ("quay", 3)]
    hub = body["upstreams"][0]
    assert hub["url"] == "http://127.0.0.1:9"
    assert hub["hosts"] == ["docker.io"]
    assert hub["used"] is True
    assert hub["credential_set"] is False
    assert set(hub["status"]) == {
        "last_status",
        "rate_limit_limit",
        "rate_limit_remaining",
        "down_until",
    }


def test_owners_narrow_reorder_and_reset_the_list(env: Env) -> None:
    url = f"{API}/org/dependency_proxy/upstreams"
    client = env.client()

    response = client.put(url, json={"order": ["quay", "hub"]}, headers=env.auth())

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["custom_order"] is True
    assert _order(response.get_json()) == [("quay", 1), ("hub", 2), ("ghcr", None)]
    assert _order(_upstreams(env)) == [("quay", 1), ("hub", 2), ("ghcr", None)]
    # A subgroup has a list of its own.
    assert _order(_upstreams(env, "org%2Fteam")) == [("hub", 1), ("ghcr", 2), ("quay", 3)]

    reset = client.put(url, json={"order": None}, headers=env.auth())

    assert reset.status_code == 200
    assert reset.get_json()["custom_order"] is False
    assert _order(reset.get_json()) == [("hub", 1), ("ghcr", 2), ("quay", 3)]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "order", "is required"),
        ({"order": ["hub"], "extra": 1}, "extra", "unknown field"),
        ({"order": "hub"}, "order", "must be a list of upstream names"),
        ({"order": [1, 2]}, "order", "must be a list of upstream names"),
        ({"order": []}, "order", "keep at least one upstream"),
        ({"order": ["hub", "hub"]}, "order", "listed twice"),
        ({"order": ["hub", "evil"]}, "order", "not an upstream of this instance: 'evil'"),
    ],
)
def test_the_order_is_validated(env: Env, body: t.Any, field: str, message: str) -> None:
    response = env.client().put(
        f"{API}/org/dependency_proxy/upstreams", json=body, headers=env.auth()
    )

    assert "400 Bad request" in json_error(response, 400)
    assert message in response.get_json()["errors"][field]
    assert _upstreams(env)["custom_order"] is False


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("[1]", "application/json", 400),
        ("{nope", "application/json", 400),
        ('{"order": null}', "text/plain", 415),
        ("x" * 70_000, "application/json", 413),
    ],
)
def test_upstream_bodies_must_be_json_objects(
    env: Env, data: str, content_type: str, status: int
) -> None:
    for path in ("upstreams", "upstreams/hub/credentials"):
        response = env.client().put(
            f"{API}/org/dependency_proxy/{path}",
            data=data,
            content_type=content_type,
            headers=env.auth(),
        )
        json_error(response, status)


def test_credentials_are_kept_encrypted_and_never_answered_back(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{API}/org/dependency_proxy/upstreams/ghcr/credentials"
    client = env.client()
    caplog.set_level("DEBUG")

    response = client.put(
        url, json={"username": "org-robot", "password": SECRET}, headers=env.auth()
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["name"] == "ghcr"
    assert response.get_json()["credential_set"] is True
    listing = client.get(f"{API}/org/dependency_proxy/upstreams", headers=env.auth())
    assert [u["credential_set"] for u in listing.get_json()["upstreams"]] == [False, True, False]
    page = client.get("/groups/org/-/dependency_proxy")  # not signed in: no page
    for answer in (response, listing, page):
        text = answer.get_data(as_text=True)
        assert SECRET not in text and "org-robot" not in text
    stored = db.session.execute(sa.select(GroupUpstreamRow)).scalar_one()
    assert stored.password_encrypted is not None
    assert SECRET.encode() not in stored.password_encrypted
    assert b"org-robot" not in (stored.username_encrypted or b"")
    # Setting a credential does not pin the group to today's list of upstreams.
    assert listing.get_json()["custom_order"] is False
    assert SECRET not in caplog.text

    deleted = client.delete(url, headers=env.auth())

    assert deleted.status_code == 204
    assert [u["credential_set"] for u in _upstreams(env)["upstreams"]] == [False, False, False]
    assert client.delete(url, headers=env.auth()).status_code == 204


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"username": "robot"}, "password", "is required"),
        ({"username": "robot", "password": SECRET, "token": "x"}, "token", "unknown field"),
        ({"username": "", "password": SECRET}, "username", "1 to 255 characters"),
        ({"username": "a:b", "password": SECRET}, "username", "must not contain ':'"),
        ({"username": 7, "password": SECRET}, "username", "1 to 255 characters"),
        ({"username": "robot", "password": ""}, "password", "1 to 8192 characters"),
        ({"username": "robot", "password": ["x"]}, "password", "1 to 8192 characters"),
        ({"username": "robot", "password": SECRET + "\x00"}, "password", "NUL"),
    ],
)
def test_credentials_are_validated_without_echoing_them(
    env: Env, body: dict[str, t.Any], field: str, message: str
) -> None:
    response = env.client().put(
        f"{API}/org/dependency_proxy/upstreams/hub/credentials", json=body, headers=env.auth()
    )

    json_error(response, 400)
    assert message in response.get_json()["errors"][field]
    assert SECRET not in response.get_data(as_text=True)
    assert (
        db.session.execute(sa.select(sa.func.count()).select_from(GroupUpstreamRow)).scalar() == 0
    )


@pytest.mark.parametrize("name", ["nope", "HUB", "hub%2F..", "a" * 65, "%00"])
def test_an_unknown_upstream_is_404(env: Env, name: str) -> None:
    client = env.client()
    url = f"{API}/org/dependency_proxy/upstreams/{name}/credentials"
    body = {"username": "robot", "password": SECRET}
    assert json_error(client.put(url, json=body, headers=env.auth()), 404).startswith("404")
    assert json_error(client.delete(url, headers=env.auth()), 404).startswith("404")


@pytest.mark.parametrize(("user", "status"), [("maint", 403), ("dev", 403), ("out", 404)])
def test_only_administrators_manage_upstreams(env: Env, user: str, status: int) -> None:
    client = env.client()
    base = f"{API}/org%2Fteam/dependency_proxy/upstreams"
    credential = {"username": "robot", "password": SECRET}
    for method, path, body in (
        ("GET", "", None),
        ("PUT", "", {"order": ["ghcr"]}),
        ("PUT", "/hub/credentials", credential),
        ("DELETE", "/hub/credentials", None),
    ):
        response = client.open(f"{base}{path}", method=method, json=body, headers=env.auth(user))
        json_error(response, status)
    assert _upstreams(env, "org%2Fteam")["custom_order"] is False
    assert (
        db.session.execute(sa.select(sa.func.count()).select_from(GroupUpstreamRow)).scalar() == 0
    )


def test_session_changes_to_upstreams_need_the_csrf_header(env: Env) -> None:
    client = env.client()
    login(client, "owner", env.world.passwords["owner"])
    url = f"{API}/org/dependency_proxy/upstreams"
    assert client.get(url).status_code == 200
    assert "X-CSRF-Token" in json_error(client.put(url, json={"order": ["ghcr"]}), 403)
    assert _upstreams(env)["custom_order"] is False


def test_upstream_methods_are_json_errors(env: Env) -> None:
    client = env.client()
    for method, path in (
        ("DELETE", "upstreams"),
        ("POST", "upstreams"),
        ("GET", "upstreams/hub/credentials"),
    ):
        response = client.open(
            f"{API}/org/dependency_proxy/{path}", method=method, headers=env.auth()
        )
        json_error(response, 405)
