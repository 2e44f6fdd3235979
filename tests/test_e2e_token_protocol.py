"""The token protocol at ``/jwt/auth`` as real clients speak it, against the live platform.

- ``POST`` with the OAuth2 form (``grant_type=password`` or ``refresh_token``): what
  containerd asks first, and what docker and containers/image (podman, skopeo) send once
  they hold an identity token.
- ``GET`` with ``offline_token=true``: how ``docker login`` asks for that identity token.
- A refresh token resolves its principal again on every use, and is good for nothing else.
- Real clients, proven by the platform's access log: containerd (``ctr``) gets its token
  with ``POST`` and never falls back to ``GET``; ``docker login`` stores an identity
  token and docker pulls with it; skopeo with that auth entry refreshes with ``POST``.
"""

from __future__ import annotations

import base64
import json
import re
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the token protocol, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

SERVICE = "dependency_proxy"


def _scope(platform: Platform, image: str = "alpine") -> str:
    return f"repository:{platform.repository(seed.ACME, image)}:pull"


def _post(
    platform: Platform, form: t.Mapping[str, str] | list[tuple[str, str]]
) -> requests.Response:
    return requests.post(f"{platform.url}/jwt/auth", data=form, timeout=30)


def _password_form(
    platform: Platform, username: str, password: str, **extra: str
) -> dict[str, str]:
    return {
        "grant_type": "password",
        "username": username,
        "password": password,
        "service": SERVICE,
        "scope": _scope(platform),
        "client_id": "containerd-client",
        **extra,
    }


def _refresh_token(platform: Platform, username: str, password: str) -> str:
    answer = _post(platform, _password_form(platform, username, password, access_type="offline"))
    assert answer.status_code == 200, answer.text
    return t.cast(str, answer.json()["refresh_token"])


def _refresh(platform: Platform, refresh_token: str) -> requests.Response:
    return _post(
        platform,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": SERVICE,
            "scope": _scope(platform),
            "client_id": "containers/image",
        },
    )


def _bearer_works(platform: Platform, token: str) -> bool:
    answer = requests.get(
        f"{platform.url}/v2/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return answer.status_code == 200


def _assert_token_answer(answer: requests.Response) -> dict[str, t.Any]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = t.cast(dict[str, t.Any], answer.json())
    assert body["access_token"] == body["token"]
    assert body["expires_in"] >= 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["issued_at"])
    return body


def _new_user(platform: Platform, name: str) -> seed.Account:
    account = seed.Account(name, f"{name}-password-0001")
    with platform.batch():
        platform.create_user(account.username, account.password)
        platform.add_member(seed.ACME, account.username, "developer")
    return account


def _create_pat(platform: Platform, username: str, name: str) -> tuple[int, str]:
    output = platform.flask(
        "token", "create", username, "--scopes", "read_registry,write_registry", "--name", name
    ).stdout.strip()
    found = re.search(r"personal access token (\d+)", output)
    assert found, output
    return int(found.group(1)), output.splitlines()[-1]


# -- POST, grant_type=password ----------------------------------------------------------


def test_post_password_grant_answers_an_access_token(platform: Platform) -> None:
    body = _assert_token_answer(
        _post(platform, _password_form(platform, seed.ALICE.username, seed.ALICE.password))
    )
    assert _bearer_works(platform, body["access_token"])
    assert "refresh_token" not in body  # online access only, unless asked for offline
    assert body["scope"] == _scope(platform)


def test_post_password_grant_with_offline_access_adds_a_refresh_token(platform: Platform) -> None:
    body = _assert_token_answer(
        _post(
            platform,
            _password_form(
                platform, seed.ALICE.username, seed.ALICE.password, access_type="offline"
            ),
        )
    )
    assert body["refresh_token"] and body["refresh_token"] != body["access_token"]
    assert seed.ALICE.password not in body["refresh_token"]


def test_post_password_grant_with_a_personal_access_token(
    platform: Platform, unique_name: str
) -> None:
    _, secret = _create_pat(platform, seed.ALICE.username, unique_name)
    body = _assert_token_answer(
        _post(platform, _password_form(platform, seed.ALICE.username, secret))
    )
    assert _bearer_works(platform, body["access_token"])


@pytest.mark.parametrize("password", ["wrong-password", "x" * 5000], ids=["wrong", "oversized"])
def test_post_password_grant_refuses_bad_credentials(platform: Platform, password: str) -> None:
    answer = _post(platform, _password_form(platform, seed.CAROL.username, password))
    error = checks.registry_error(answer, {400, 401}, {"UNAUTHORIZED", "DENIED"})
    assert answer.json()["error"] in {"invalid_grant", "invalid_request"}
    assert error["message"]


# -- POST, grant_type=refresh_token -----------------------------------------------------


def test_refresh_token_grant_answers_a_new_access_token(platform: Platform) -> None:
    refresh_token = _refresh_token(platform, seed.ALICE.username, seed.ALICE.password)
    body = _assert_token_answer(_refresh(platform, refresh_token))
    assert _bearer_works(platform, body["access_token"])
    # Offline access on a refresh answers the same refresh token, never a new one.
    again = _post(
        platform,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": SERVICE,
            "client_id": "docker",
            "access_type": "offline",
        },
    )
    assert _assert_token_answer(again)["refresh_token"] == refresh_token


def test_refresh_token_grant_takes_repeated_scope_fields(platform: Platform) -> None:
    """containers/image sends one ``scope`` field per scope."""
    refresh_token = _refresh_token(platform, seed.ALICE.username, seed.ALICE.password)
    other = f"repository:{platform.repository(seed.ACME_TOOLS, 'busybox')}:pull"
    answer = _post(
        platform,
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("service", SERVICE),
            ("client_id", "containers/image"),
            ("scope", _scope(platform)),
            ("scope", other),
        ],
    )
    assert _assert_token_answer(answer)["scope"].split(" ") == [_scope(platform), other]


def test_the_answer_names_only_the_scopes_it_grants(platform: Platform) -> None:
    """Pull on repositories of groups the credential may pull through; never ``push``,
    the catalog, a group it is not in or one whose proxy is off."""
    own = _scope(platform)
    asked = [
        f"repository:{platform.repository(seed.ACME, 'alpine')}:pull,push",
        f"repository:{platform.repository(seed.ACME, 'busybox')}:push",
        f"repository:{platform.repository(seed.GLOBEX, 'alpine')}:pull",
        f"repository:{platform.repository(seed.INITECH, 'alpine')}:pull",
        "repository:not a name:pull",
        "registry:catalog:*",
    ]
    password = _password_form(platform, seed.ALICE.username, seed.ALICE.password)
    body = _assert_token_answer(_post(platform, {**password, "scope": " ".join(asked)}))
    assert body["scope"] == own
    refresh_token = _refresh_token(platform, seed.ALICE.username, seed.ALICE.password)
    fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
    fields += [("service", SERVICE), ("client_id", "containers/image")]
    answer = _post(platform, fields + [("scope", scope) for scope in asked])
    assert _assert_token_answer(answer)["scope"] == own
    # Nothing granted: an empty scope, not the request echoed.
    nothing = _post(platform, {**password, "scope": "registry:catalog:* " + asked[1]})
    assert _assert_token_answer(nothing)["scope"] == ""


def test_refresh_token_of_a_blocked_user_is_refused_at_once(
    platform: Platform, unique_name: str
) -> None:
    account = _new_user(platform, unique_name)
    refresh_token = _refresh_token(platform, account.username, account.password)
    _assert_token_answer(_refresh(platform, refresh_token))
    platform.flask("user", "block", account.username)
    answer = _refresh(platform, refresh_token)
    checks.registry_error(answer, 401, "UNAUTHORIZED")
    assert answer.json()["error"] == "invalid_grant"


def test_refresh_token_of_a_revoked_personal_access_token_is_refused(
    platform: Platform, unique_name: str
) -> None:
    token_id, secret = _create_pat(platform, seed.ALICE.username, unique_name)
    refresh_token = _refresh_token(platform, seed.ALICE.username, secret)
    _assert_token_answer(_refresh(platform, refresh_token))
    platform.flask("token", "revoke", str(token_id))
    checks.registry_error(_refresh(platform, refresh_token), 401, "UNAUTHORIZED")


def test_tokens_are_not_interchangeable(platform: Platform) -> None:
    refresh_token = _refresh_token(platform, seed.ALICE.username, seed.ALICE.password)
    access_token = _assert_token_answer(
        _post(platform, _password_form(platform, seed.ALICE.username, seed.ALICE.password))
    )["access_token"]
    # A refresh token is not a registry bearer token...
    assert not _bearer_works(platform, refresh_token)
    # ...nor a password, on GET or POST...
    checks.registry_error(
        platform.token(seed.ALICE.username, refresh_token, _scope(platform)), 401, "UNAUTHORIZED"
    )
    checks.registry_error(
        _post(platform, _password_form(platform, seed.ALICE.username, refresh_token)),
        401,
        "UNAUTHORIZED",
    )
    # ...and a registry token is not a refresh token.
    checks.registry_error(_refresh(platform, access_token), 401, "UNAUTHORIZED")


# -- GET with offline_token=true (docker login) -----------------------------------------


def test_get_with_offline_token_adds_a_refresh_token(platform: Platform) -> None:
    params = {"service": SERVICE, "client_id": "docker", "account": seed.ALICE.username}
    auth = (seed.ALICE.username, seed.ALICE.password)
    url = f"{platform.url}/jwt/auth"
    online = _assert_token_answer(requests.get(url, params=params, auth=auth, timeout=30))
    assert "refresh_token" not in online
    offline = _assert_token_answer(
        requests.get(url, params={**params, "offline_token": "true"}, auth=auth, timeout=30)
    )
    assert _assert_token_answer(_refresh(platform, offline["refresh_token"]))


# -- malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "status", "oauth_error"),
    [
        ({}, 400, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "alice"}, 400, "invalid_request"),
        ({"grant_type": "password", "password": "p"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "x" * 5000}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "not.a.token"}, 401, "invalid_grant"),
        (
            {"grant_type": "password", "username": "u" * 2000, "password": "p"},
            400,
            "invalid_request",
        ),
        (
            {"grant_type": "password", "username": "a", "password": "p", "scope": "s" * 9000},
            400,
            "invalid_request",
        ),
        (
            {"grant_type": "refresh_token", "refresh_token": "x", "service": "other"},
            404,
            "invalid_request",
        ),
        ({"grant_type": ["password", "refresh_token"]}, 400, "invalid_request"),
    ],
    ids=[
        "empty",
        "authorization-code",
        "client-credentials",
        "no-password",
        "no-username",
        "no-refresh-token",
        "oversized-refresh-token",
        "garbage-refresh-token",
        "oversized-username",
        "oversized-scope",
        "unknown-service",
        "two-grant-types",
    ],
)
def test_malformed_token_requests_get_oauth_and_registry_errors(
    platform: Platform, form: dict[str, t.Any], status: int, oauth_error: str
) -> None:
    answer = requests.post(f"{platform.url}/jwt/auth", data=form, timeout=30)
    error = checks.registry_error(
        answer, status, {"UNAUTHORIZED", "DENIED", "UNSUPPORTED", "NAME_UNKNOWN"}
    )
    body = answer.json()
    assert body["error"] == oauth_error, body
    assert body["error_description"] == error["message"]


@pytest.mark.parametrize(
    ("headers", "data"),
    [
        ({"Content-Type": "application/json"}, json.dumps({"grant_type": "password"})),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "grant_type=password&" * 20000),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"grant_type=\xff\xfe"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, "--x\r\nbroken"),
    ],
    ids=["json", "oversized-body", "not-utf8", "broken-multipart"],
)
def test_unreadable_token_requests_are_refused_cleanly(
    platform: Platform, headers: dict[str, str], data: str | bytes
) -> None:
    answer = requests.post(f"{platform.url}/jwt/auth", data=data, headers=headers, timeout=30)
    checks.registry_error(answer, {400, 413}, {"DENIED", "UNAUTHORIZED", "UNSUPPORTED"})
    assert "error" in answer.json()


def test_other_methods_are_refused_in_the_registry_envelope(platform: Platform) -> None:
    answer = requests.put(f"{platform.url}/jwt/auth", data="x", timeout=30)
    checks.registry_error(answer, 405, "UNSUPPORTED")


# -- real clients -----------------------------------------------------------------------


def _push(upstream: Registry, name: str, tmp_path: Path) -> images.Pushed:
    image = images.build_image(f"{name}-seed", layer_sizes=(2048, 4096))
    return images.push(image, upstream, f"library/{name}", "latest", workdir=tmp_path)


def _token_requests(platform: Platform, since: int) -> list[tuple[str, str]]:
    """``(method, status)`` of every request to ``/jwt/auth`` in the access log since
    the offset ``since``."""
    return re.findall(
        r'method=(\w+) path="/jwt/auth" status=(\d+)', platform.process.log_text(since)
    )


def _log_size(platform: Platform) -> int:
    return platform.process.log_path.stat().st_size


def test_containerd_gets_its_token_with_post(
    platform: Platform,
    upstream: Registry,
    live_process: ProcessFactory,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    containerd = Containerd(live_process, tmp_path / "containerd").start()
    mark = _log_size(platform)
    reference = platform.image(seed.ACME, unique_name, "latest")
    checks.ok(containerd.pull(reference, seed.ALICE.username, seed.ALICE.password))
    listed = checks.ok(containerd.ctr("images", "list", "--quiet")).stdout.split()
    assert reference in listed
    # Every blob of the image arrived and matched its digest.
    check = checks.ok(containerd.ctr("images", "check")).stdout
    line = next(line for line in check.splitlines() if line.startswith(reference))
    assert pushed.digest in line and "complete (3/3)" in line, check
    requests_seen = _token_requests(platform, mark)
    assert requests_seen, platform.process.log_text(mark)
    assert all(req == ("POST", "200") for req in requests_seen), requests_seen


def test_skopeo_with_an_identity_token_refreshes_with_post(
    platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    """What ``docker login`` stores, in containers/image's auth file: the username with
    an empty password beside the identity token (skopeo ignores a token alone)."""
    pushed = _push(upstream, unique_name, tmp_path)
    refresh_token = _refresh_token(platform, seed.ALICE.username, seed.ALICE.password)
    client = Skopeo(tmp_path / "identity")
    user_only = base64.b64encode(f"{seed.ALICE.username}:".encode()).decode()
    entry = {"auth": user_only, "identitytoken": refresh_token}
    client.authfile.write_text(json.dumps({"auths": {platform.host: entry}}))
    mark = _log_size(platform)
    result, target = client.copy_to_dir(platform.image(seed.ACME, unique_name, "latest"))
    checks.ok(result)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["config"]["digest"] == pushed.config_digest
    requests_seen = _token_requests(platform, mark)
    assert requests_seen and all(req == ("POST", "200") for req in requests_seen), requests_seen


def test_docker_login_stores_an_identity_token_and_pulls_with_it(
    platform: Platform,
    upstream: Registry,
    live_process: ProcessFactory,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    engine = Dockerd(live_process, tmp_path / "dockerd").start()
    mark = _log_size(platform)
    checks.ok(engine.login(platform.host, seed.ALICE.username, seed.ALICE.password))
    # The login asked with GET (offline_token=true) and docker kept the refresh token
    # instead of the password.
    assert _token_requests(platform, mark) == [("GET", "200")]
    stored = engine.stored_auth(platform.host)
    assert stored.get("identitytoken"), stored
    assert seed.ALICE.password not in base64.b64decode(stored.get("auth", "")).decode()

    mark = _log_size(platform)
    reference = platform.image(seed.ACME, unique_name, "latest")
    checks.ok(engine.docker("pull", reference))
    inspected = json.loads(checks.ok(engine.docker("image", "inspect", reference)).stdout)
    assert inspected[0]["Id"] == pushed.config_digest
    requests_seen = _token_requests(platform, mark)
    assert requests_seen and all(req == ("POST", "200") for req in requests_seen), requests_seen
