"""Names that reach the proxy without a group path in them: containerd's ``?ns=<registry
host>`` on a mirror request, and a host name of ``DEPENDENCY_PROXY_MIRROR_HOSTS`` that
serves one group with Docker Hub's names (what Docker's ``registry-mirrors`` sends).

In-process, against upstreams on a closed port: a request that passes validation and
access ends in ``503 UNAVAILABLE`` there, so any other answer was given before upstream
was asked. The pulls themselves are in ``test_e2e_upstreams.py`` (containerd, dockerd).
"""

from __future__ import annotations

import json
import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.platform import services
from flask_dependency_proxy._state import state
from flask_dependency_proxy.config import ConfigError

# Name routing, not the database, is the subject: SQLite is enough here.
UNWANTED_COMBINATIONS = [{"database_backend": "postgresql"}]

MEMBER, MEMBER_PASSWORD = "mia", "mia-password-0001"
OUTSIDER, OUTSIDER_PASSWORD = "otto", "otto-password-0001"
GROUP = "shop"
MIRROR = "mirror.example.test"
PROXY = f"/v2/{GROUP}/dependency_proxy/containers"
DIGEST = "sha256:" + "a" * 64
UPSTREAMS = {
    "hub": {"url": "http://127.0.0.1:9", "hosts": ["docker.io"]},
    "ghcr": {"url": "http://127.0.0.1:9", "hosts": ["ghcr.io"]},
}


@pytest.fixture
def app(app_factory: t.Callable[..., Flask]) -> Flask:
    flask_app = app_factory(
        DEPENDENCY_PROXY_UPSTREAMS=UPSTREAMS,
        DEPENDENCY_PROXY_UPSTREAM_RETRIES=0,
        DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED=True,
        DEPENDENCY_PROXY_MIRROR_HOSTS={MIRROR: GROUP},
    )
    with flask_app.app_context():
        services.create_user(MEMBER, MEMBER_PASSWORD)
        services.create_user(OUTSIDER, OUTSIDER_PASSWORD)
        services.create_group(GROUP, private=True)
        services.add_member(GROUP, MEMBER, "developer")
    return flask_app


def _token(client: FlaskClient, username: str, password: str, host: str = "localhost") -> str:
    answer = client.get(
        "/jwt/auth",
        query_string={"service": "dependency_proxy"},
        auth=(username, password),
        headers={"Host": host},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return t.cast(str, answer.get_json()["token"])


def _error(answer: t.Any, status: int, code: str) -> str:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    errors = answer.get_json()["errors"]
    assert errors[0]["code"] == code, errors
    return t.cast(str, errors[0]["message"])


# -- ?ns= ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [f"{PROXY}/org/app/manifests/1", f"{PROXY}/org/app/blobs/{DIGEST}"],
    ids=["manifest", "blob"],
)
def test_ns_naming_no_upstream_is_name_unknown_saying_so(app: Flask, path: str) -> None:
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {_token(client, MEMBER, MEMBER_PASSWORD)}"}

    answer = client.get(path, query_string={"ns": "quay.io"}, headers=bearer)

    message = _error(answer, 404, "NAME_UNKNOWN")
    assert "quay.io" in message and "upstream" in message, message
    # A registry with a port is a host too: known to no upstream here either.
    answer = client.get(path, query_string={"ns": "registry.internal:5000"}, headers=bearer)
    assert "registry.internal:5000" in _error(answer, 404, "NAME_UNKNOWN")


@pytest.mark.parametrize(
    "ns",
    [
        "",
        "docker.io/library",
        "docker io",
        "-docker.io",
        "docker.io:",
        "docker.io:99999",
        "a" * 300,
    ],
)
@pytest.mark.parametrize(
    "path",
    [f"{PROXY}/library/alpine/manifests/latest", f"{PROXY}/library/alpine/blobs/{DIGEST}"],
    ids=["manifest", "blob"],
)
def test_a_bad_ns_is_a_400_registry_error_before_upstream(app: Flask, ns: str, path: str) -> None:
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {_token(client, MEMBER, MEMBER_PASSWORD)}"}

    message = _error(client.get(path, query_string={"ns": ns}, headers=bearer), 400, "NAME_INVALID")

    assert "ns" in message, message


def test_two_ns_values_are_refused(app: Flask) -> None:
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {_token(client, MEMBER, MEMBER_PASSWORD)}"}
    answer = client.get(
        f"{PROXY}/library/alpine/manifests/latest?ns=docker.io&ns=ghcr.io", headers=bearer
    )
    _error(answer, 400, "NAME_INVALID")


def test_a_known_ns_goes_upstream_and_keeps_the_clients_scope(app: Flask) -> None:
    """``docker.io`` is served (upstream is down here: 503), and the challenge without a
    token names the repository as the client sent it."""
    client = app.test_client()
    path = f"{PROXY}/library/alpine/manifests/latest"
    anonymous = client.get(path, query_string={"ns": "docker.io"})
    _error(anonymous, 401, "UNAUTHORIZED")
    challenge = anonymous.headers["WWW-Authenticate"]
    assert f'scope="repository:{GROUP}/dependency_proxy/containers/library/alpine:pull"' in (
        challenge
    )
    bearer = {"Authorization": f"Bearer {_token(client, MEMBER, MEMBER_PASSWORD)}"}
    answer = client.get(path, query_string={"ns": "DOCKER.IO"}, headers=bearer)
    _error(answer, 503, "UNAVAILABLE")


# -- DEPENDENCY_PROXY_MIRROR_HOSTS ---------------------------------------------------------


def test_the_mirror_host_challenges_on_its_own_name_with_docker_hub_names(app: Flask) -> None:
    client = app.test_client()
    for path in ("/v2/", "/v2/library/alpine/manifests/latest"):
        answer = client.get(path, headers={"Host": MIRROR})
        _error(answer, 401, "UNAUTHORIZED")
        challenge = answer.headers["WWW-Authenticate"]
        assert f'realm="http://{MIRROR}/jwt/auth"' in challenge, challenge
    assert 'scope="repository:library/alpine:pull"' in challenge, challenge
    # The platform's own name keeps its own realm.
    answer = client.get("/v2/", headers={"Host": "platform.example.test"})
    assert 'realm="http://platform.example.test/jwt/auth"' in answer.headers["WWW-Authenticate"]


def test_the_mirror_host_grants_docker_hub_scopes_by_the_groups_rules(app: Flask) -> None:
    client = app.test_client()
    scope = "repository:library/alpine:pull"
    granted = {}
    for username, password in ((MEMBER, MEMBER_PASSWORD), (OUTSIDER, OUTSIDER_PASSWORD)):
        answer = client.post(
            "/jwt/auth",
            data={
                "grant_type": "password",
                "service": "dependency_proxy",
                "username": username,
                "password": password,
                "scope": scope,
            },
            headers={"Host": MIRROR},
        )
        assert answer.status_code == 200, answer.get_data(as_text=True)
        granted[username] = answer.get_json()["scope"]
    assert granted == {MEMBER: scope, OUTSIDER: ""}


def test_the_mirror_host_serves_the_group_to_its_members_only(app: Flask) -> None:
    client = app.test_client()
    member = _token(client, MEMBER, MEMBER_PASSWORD, host=MIRROR)
    outsider = _token(client, OUTSIDER, OUTSIDER_PASSWORD, host=MIRROR)
    for path in ("/v2/library/alpine/manifests/latest", f"/v2/library/alpine/blobs/{DIGEST}"):
        refused = client.get(path, headers={"Host": MIRROR, "Authorization": f"Bearer {outsider}"})
        _error(refused, 404, "NAME_UNKNOWN")
        # A member's request reaches the Docker Hub entry (down here).
        served = client.get(path, headers={"Host": MIRROR, "Authorization": f"Bearer {member}"})
        _error(served, 503, "UNAVAILABLE")
    # Without the mirror's name, the same path is no proxy path.
    plain = client.get(
        "/v2/library/alpine/manifests/latest", headers={"Authorization": f"Bearer {member}"}
    )
    _error(plain, 404, "NAME_UNKNOWN")


def test_the_mirror_host_takes_ns_too_and_refuses_bad_names(app: Flask) -> None:
    client = app.test_client()
    bearer = {"Host": MIRROR, "Authorization": f"Bearer {_token(client, MEMBER, MEMBER_PASSWORD)}"}
    unknown = client.get("/v2/org/app/manifests/1?ns=quay.io", headers=bearer)
    assert "quay.io" in _error(unknown, 404, "NAME_UNKNOWN")
    _error(client.get("/v2/org/app/manifests/1?ns=a/b", headers=bearer), 400, "NAME_INVALID")
    _error(client.get("/v2/Library/Alpine/manifests/1", headers=bearer), 400, "NAME_INVALID")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"Mirror.example.test": GROUP}, "lower-case host"),
        ({"mirror.example.test/v2": GROUP}, "lower-case host"),
        ({"mirror.example.test": "a//b"}, "group path"),
        ({"mirror.example.test": 7}, "group path"),
        ("[1, 2]", "JSON object"),
        ("{not json", "JSON object"),
    ],
)
def test_bad_mirror_hosts_fail_the_start(
    app_factory: t.Callable[..., Flask], value: t.Any, says: str
) -> None:
    with pytest.raises(ConfigError, match="DEPENDENCY_PROXY_MIRROR_HOSTS") as raised:
        app_factory(DEPENDENCY_PROXY_UPSTREAMS=UPSTREAMS, DEPENDENCY_PROXY_MIRROR_HOSTS=value)
    assert says in str(raised.value)


def test_mirror_hosts_need_an_upstream_serving_docker_io(
    app_factory: t.Callable[..., Flask],
) -> None:
    with pytest.raises(ConfigError, match="docker.io"):
        app_factory(
            DEPENDENCY_PROXY_UPSTREAMS={"ghcr": UPSTREAMS["ghcr"]},
            DEPENDENCY_PROXY_MIRROR_HOSTS=json.dumps({MIRROR: GROUP}),
        )


def test_mirror_hosts_as_json_text_with_a_port(app_factory: t.Callable[..., Flask]) -> None:
    flask_app = app_factory(
        DEPENDENCY_PROXY_UPSTREAMS=UPSTREAMS,
        DEPENDENCY_PROXY_MIRROR_HOSTS=json.dumps({"mirror.example.test:8443": "Shop/Sub"}),
    )
    config = state(flask_app).config
    assert dict(config.mirror_hosts) == {"mirror.example.test:8443": "shop/sub"}
