"""Random malformed requests to the registry and token routes: every answer is a registry
JSON error or a success, never a 500 and never HTML (fixed seed, so reproducible)."""

from __future__ import annotations

import base64
import random
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from tests.platform_fixtures import build_world, dispose, make_app

_PIECES = [
    "org/team",
    "dependency_proxy",
    "containers",
    "alpine",
    "..",
    "%00",
    "%2e%2e",
    "a" * 300,
    "ÄÖ",
    "sha256:" + "a" * 64,
    "sha512:" + "b" * 128,
    "sha256:xyz",
    "manifests",
    "blobs",
    "uploads",
    "latest",
    "-x",
    "_catalog",
    "tags",
    "list",
    "%ff",
    "\\",
]


@pytest.fixture
def registry_app(fresh_database_url: str, tmp_path: Path) -> t.Iterator[tuple[Flask, str]]:
    # The upstream is a closed port: whatever passes validation ends in 503 UNAVAILABLE.
    app = make_app(tmp_path, fresh_database_url, DEPENDENCY_PROXY_UPSTREAM_RETRIES=0)
    with app.app_context():
        password = build_world().passwords["dev"]
    assert (
        app.test_cli_runner().invoke(args=["dependency-proxy", "enable", "org/team"]).exit_code == 0
    )
    yield app, password
    dispose(app)


def test_malformed_registry_requests_get_registry_errors(registry_app: tuple[Flask, str]) -> None:
    app, password = registry_app
    client = app.test_client()
    token = client.get("/jwt/auth?service=dependency_proxy", auth=("dev", password)).get_json()[
        "token"
    ]
    rng = random.Random(20261127)
    answers: set[int] = set()
    for _ in range(600):
        if rng.random() < 0.5:
            path = "/v2/" + "/".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8)))
        else:  # a well-formed pull path with some of its parts swapped for bad ones
            parts = ["org/team", "dependency_proxy/containers", "alpine", "manifests", "latest"]
            if rng.random() < 0.4:
                parts[3:] = ["blobs", "sha256:" + "c" * 64]
            for _ in range(rng.randint(0, 2)):
                parts[rng.randrange(len(parts))] = rng.choice(_PIECES)
            path = "/v2/" + "/".join(parts)
        method = rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"])
        headers = {"Authorization": f"Bearer {token}"} if rng.random() < 0.8 else {}
        if rng.random() < 0.2:
            headers["Range"] = rng.choice(["bytes=0-", "bytes=-5", "garbage", "bytes=5-1"])
        if rng.random() < 0.1:
            headers["Authorization"] = rng.choice(["Bearer", "Basic zz", "Bearer " + "x" * 9000])
        if rng.random() < 0.1:
            headers["Accept"] = rng.choice(["*/*", "\x7f", "a" * 5000])
        response = client.open(path, method=method, headers=headers)
        answers.add(response.status_code)
        assert response.status_code != 500, (method, path, response.data[:200])
        if headers.get("Authorization") != f"Bearer {token}":
            # No valid token: the login challenge comes before any check of the path.
            assert response.status_code == 401, (method, path, headers.get("Authorization"))
            assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        if method != "HEAD" and response.status_code >= 400:
            assert response.get_json()["errors"][0]["code"], (method, path)
    # The walk reached validation, access and upstream errors alike.
    assert {400, 401, 404, 405, 503} <= answers


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic !!!",
        "Basic " + base64.b64encode(b"a" * 5000 + b":b").decode(),
        "Basic " + base64.b64encode(b"dev:\x00").decode(),
        "Bearer something",
    ],
)
def test_malformed_credentials_at_the_token_endpoint(
    registry_app: tuple[Flask, str], authorization: str
) -> None:
    app, _ = registry_app
    response = app.test_client().get(
        "/jwt/auth?service=dependency_proxy&scope=%00%ff", headers={"Authorization": authorization}
    )
    assert response.status_code == 401
    assert response.get_json()["errors"][0]["code"] == "UNAUTHORIZED"
