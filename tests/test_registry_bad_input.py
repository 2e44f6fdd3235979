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


_FIELD_VALUES = [
    "",
    "password",
    "refresh_token",
    "client_credentials",
    "authorization_code",
    "dev",
    "\x00",
    "ÄÖ",
    "%ff",
    "a" * 5000,
    "dependency_proxy",
    "repository:org/team/dependency_proxy/containers/alpine:pull",
    "repository:..:pull",
    "true",
    "offline",
    "eyJhbGciOiJIUzI1NiJ9.e30.x",
]


def test_malformed_token_requests_in_every_form(registry_app: tuple[Flask, str]) -> None:
    """``POST /jwt/auth`` (the OAuth2 form) and ``GET`` with its optional parameters,
    filled at random: a JSON answer every time, never a 500 or HTML, and a token only for
    a genuine credential."""
    app, password = registry_app
    client = app.test_client()
    rng = random.Random(20261202)
    fields = ["grant_type", "username", "password", "refresh_token", "service", "scope"]
    fields += ["client_id", "access_type", "offline_token", "account"]
    answers: set[int] = set()
    for _ in range(300):
        form = {name: rng.choice(_FIELD_VALUES) for name in rng.sample(fields, rng.randint(0, 6))}
        if rng.random() < 0.3:
            form.update(grant_type="password", username="dev")
            form["password"] = password if rng.random() < 0.5 else rng.choice(_FIELD_VALUES)
        headers = {}
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(
                ["application/json", "text/plain", "multipart/form-data; boundary=", "\x7f"]
            )
        if rng.random() < 0.5:
            response = client.post("/jwt/auth", data=form, headers=headers)
        else:
            response = client.get("/jwt/auth", query_string=form, headers=headers)
        answers.add(response.status_code)
        assert response.status_code in {200, 400, 401, 403, 404, 429}, (form, response.data)
        body = response.get_json()
        assert isinstance(body, dict), (form, response.data[:200])
        if response.status_code == 200:
            assert body["token"] and body["access_token"] == body["token"]
            genuine = form.get("password") == password and form.get("username") == "dev"
            assert genuine or form.get("grant_type") == "refresh_token", form
    # The walk reached successes and refusals alike.
    assert {200, 400, 401} <= answers


def test_malformed_forwarded_headers_behind_a_trusted_proxy(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """With a proxy trusted, the ``X-Forwarded-*`` headers reach the address, scheme and
    realm: garbage in them is never a 500, and the challenge's realm is always a URL."""
    app = make_app(
        tmp_path,
        fresh_database_url,
        DEPENDENCY_PROXY_TRUSTED_PROXIES=1,
        DEPENDENCY_PROXY_UPSTREAM_RETRIES=0,
    )
    try:
        client = _ServerLikeClient(app)
        rng = random.Random(1202)
        values = ["", "1.2.3.4", "1.2.3.4, 5.6.7.8", "not an address", "\x00", "a" * 3000]
        values += ["https", "ftp", "evil.example:99999", "[::1]", "ÄÖ", "%0d%0aSet-Cookie: x=y"]
        values += ['a"b', "host:0", "[::1]:8080", "localhost:5000"]
        for _ in range(200):
            headers = {
                name: rng.choice(values)
                for name in rng.sample(
                    [
                        "X-Forwarded-For",
                        "X-Forwarded-Proto",
                        "X-Forwarded-Host",
                        "Host",
                    ],
                    rng.randint(1, 4),
                )
            }
            if ":99999" in headers.get("Host", ""):
                # Werkzeug's test client cannot send it; X-Forwarded-Host carries it instead.
                headers["X-Forwarded-Host"] = headers.pop("Host")
            path = rng.choice(
                ["/v2/", "/jwt/auth", "/v2/org/dependency_proxy/containers/a/manifests/1"]
            )
            auth = ("dev", rng.choice(["wrong", "also wrong"]))
            response = client.get(path, headers=headers, auth=auth)
            assert response.status_code in {400, 401, 404, 429}, (headers, response.data[:200])
            assert response.get_json()["errors"][0]["code"], headers
            challenge = response.headers.get("WWW-Authenticate", 'Bearer realm="http://x"')
            assert challenge.startswith('Bearer realm="http'), (headers, challenge)
            assert "\r" not in challenge and "\n" not in challenge
    finally:
        dispose(app)


class _ServerLikeClient:
    """Requests through the WSGI app as a server passes them, nothing else: Werkzeug's
    test client before 3.1.6 parses each request's URL once the app has answered (for
    its cookie jar), and fails there on a Host with a bad port."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def get(self, path: str, **options: t.Any) -> t.Any:
        from werkzeug.test import EnvironBuilder, run_wsgi_app

        environ = EnvironBuilder(path=path, method="GET", **options).get_environ()
        body, status, headers = run_wsgi_app(self.app, environ, buffered=True)
        return self.app.response_class(body, status, headers)


#: ``str.isdigit()`` is true for the first, ``int()`` takes the other two.
NON_ASCII_NUMBERS = ["²", "١٢", "１２"]


@pytest.mark.parametrize("number", NON_ASCII_NUMBERS, ids=["superscript", "arabic", "fullwidth"])
def test_non_ascii_digits_are_not_numbers(registry_app: tuple[Flask, str], number: str) -> None:
    """A tag list's ``n``, and the port of a Host that makes the token realm: 400 in the
    registry's envelope, never a 500 or a realm with those characters in it."""
    app, password = registry_app
    client = _ServerLikeClient(app)
    token = client.get("/jwt/auth?service=dependency_proxy", auth=("dev", password)).get_json()[
        "token"
    ]
    response = client.get(
        "/v2/org/team/dependency_proxy/containers/alpine/tags/list",
        query_string={"n": number},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400, response.data
    assert response.get_json()["errors"][0] == {
        "code": "UNSUPPORTED",
        "message": "n must be a non-negative integer",
    }

    for path in ("/v2/", "/jwt/auth"):
        response = client.get(path, headers={"Host": f"localhost:{number}"})
        assert response.status_code == 400, (path, response.data)
        assert response.get_json()["errors"][0]["code"] == "DENIED"
        assert number not in response.headers.get("WWW-Authenticate", "")
