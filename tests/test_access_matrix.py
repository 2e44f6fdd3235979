"""Every kind of principal against enabled and disabled groups: the status at
``/jwt/auth`` and on a manifest GET, through the example platform and a real upstream."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from examples.platform import services
from examples.platform.models import Project, db
from tests.platform_fixtures import build_world, dispose, expire, make_app
from tests.support import images
from tests.support.registry import Registry

IMAGE = "matrix"
ENABLED = ("org", "org/team", "other")
DISABLED = ("org/team/sub",)
GROUPS = ENABLED + DISABLED


@pytest.fixture(scope="module")
def pushed(upstream: Registry, tmp_path_factory: pytest.TempPathFactory) -> images.Pushed:
    image = images.build_image("matrix-seed", layer_sizes=(4096,))
    return images.push(
        image, upstream, f"library/{IMAGE}", "latest", workdir=tmp_path_factory.mktemp("m")
    )


class Setup(t.NamedTuple):
    app: Flask
    credentials: dict[str, tuple[str, str]]


@pytest.fixture
def setup(
    fresh_database_url: str, upstream: Registry, pushed: images.Pushed, tmp_path: Path
) -> t.Iterator[Setup]:
    app = make_app(
        tmp_path,
        fresh_database_url,
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url,
        DEPENDENCY_PROXY_PRINCIPAL_RECHECK_SECONDS=0,
    )
    with app.app_context():
        world = build_world()
        password = world.passwords
        services.create_user("sib", "sibling password 1")
        services.add_member("other", "sib", "developer")
        services.create_user("blk", "blocked password 1")
        services.add_member("org", "blk", "developer")
        services.block_user("blk")
        dev = services.require_user("dev")

        def pat(scopes: str) -> str:
            return services.create_personal_access_token(dev, name=scopes, scopes=scopes)[1]

        expired_pat, expired_secret = services.create_personal_access_token(
            dev, name="expired", scopes="read_registry,write_registry"
        )
        expire(expired_pat)
        revoked_pat, revoked_secret = services.create_personal_access_token(
            dev, name="revoked", scopes="read_registry,write_registry"
        )
        services.revoke_personal_access_token(revoked_pat.id)

        def deploy(path: str) -> tuple[str, str]:
            token, secret = services.create_deploy_token(
                services.require_group(path), scopes="read_registry,write_registry"
            )
            return token.username, secret

        project = db.session.execute(
            sa.select(Project).where(Project.full_path == "org/team/app")
        ).scalar_one()
        _, running = services.start_job(project, dev)
        finished_job, finished = services.start_job(project, dev)
        services.finish_job(finished_job)
        job_user = app.config["DEPENDENCY_PROXY_JOB_TOKEN_USERNAME"]

        credentials = {
            "guest of the parent": ("gus", password["gus"]),
            "developer of the group": ("dev", password["dev"]),
            "member of a sibling": ("sib", "sibling password 1"),
            "non-member": ("out", password["out"]),
            "admin": ("root", password["root"]),
            "blocked user": ("blk", "blocked password 1"),
            "wrong password": ("dev", "not the password"),
            "PAT with registry scopes": ("dev", pat("read_registry,write_registry")),
            "PAT with api": ("dev", pat("api")),
            "PAT with read_registry only": ("dev", pat("read_registry")),
            "PAT with read_api": ("dev", pat("read_api")),
            "expired PAT": ("dev", expired_secret),
            "revoked PAT": ("dev", revoked_secret),
            "deploy token of the group": deploy("org/team"),
            "deploy token of the parent": deploy("org"),
            "deploy token of a sibling": deploy("other"),
            "job token of a running job": (job_user, running),
            "job token of a finished job": (job_user, finished),
        }
        for path in ENABLED:
            services.require_group(path)
        db.session.remove()
    runner = app.test_cli_runner()
    for path in ENABLED:
        assert runner.invoke(args=["dependency-proxy", "enable", path]).exit_code == 0
    yield Setup(app, credentials)
    dispose(app)


ALLOWED_IN_TEAM = {"org": 404, "org/team": 200, "other": 404, "org/team/sub": 404}
#: Principal kind -> (status at /jwt/auth, {group: status of a manifest GET}).
MATRIX: dict[str, tuple[int, dict[str, int]]] = {
    # org is public, but being public grants nothing without membership.
    "guest of the parent": (200, {"org": 200, "org/team": 200, "other": 404, "org/team/sub": 404}),
    "developer of the group": (200, ALLOWED_IN_TEAM),
    "member of a sibling": (200, {"org": 404, "org/team": 404, "other": 200, "org/team/sub": 404}),
    "non-member": (200, {group: 404 for group in GROUPS}),
    "admin": (200, {"org": 200, "org/team": 200, "other": 200, "org/team/sub": 404}),
    "blocked user": (401, {}),
    "wrong password": (401, {}),
    "PAT with registry scopes": (200, ALLOWED_IN_TEAM),
    "PAT with api": (200, ALLOWED_IN_TEAM),
    "PAT with read_registry only": (403, {}),
    "PAT with read_api": (403, {}),
    "expired PAT": (401, {}),
    "revoked PAT": (401, {}),
    "deploy token of the group": (200, ALLOWED_IN_TEAM),
    "deploy token of the parent": (
        200,
        {"org": 200, "org/team": 200, "other": 404, "org/team/sub": 404},
    ),
    "deploy token of a sibling": (
        200,
        {"org": 404, "org/team": 404, "other": 200, "org/team/sub": 404},
    ),
    "job token of a running job": (200, ALLOWED_IN_TEAM),
    "job token of a finished job": (401, {}),
}


def _token(client: FlaskClient, username: str, secret: str) -> t.Any:
    return client.get("/jwt/auth?service=dependency_proxy", auth=(username, secret))


def _manifest(client: FlaskClient, group: str, token: str | None) -> t.Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(
        f"/v2/{group}/dependency_proxy/containers/{IMAGE}/manifests/latest", headers=headers
    )


def test_access_matrix(setup: Setup, pushed: images.Pushed) -> None:
    client = setup.app.test_client()
    seen: dict[str, tuple[int, dict[str, int]]] = {}
    for kind, (username, secret) in setup.credentials.items():
        response = _token(client, username, secret)
        token = response.get_json().get("token") if response.status_code == 200 else None
        pulls = {}
        if token:
            for group in GROUPS:
                pull = _manifest(client, group, token)
                pulls[group] = pull.status_code
                if pull.status_code == 200:
                    assert pull.data == pushed.manifest
                else:
                    assert pull.get_json()["errors"][0]["code"] == "NAME_UNKNOWN"
        else:
            assert response.get_json()["errors"][0]["code"] in {"UNAUTHORIZED", "DENIED"}
            assert _manifest(client, "org/team", None).status_code == 401
        seen[kind] = (response.status_code, pulls)
    assert seen == MATRIX


def test_registry_token_stops_working_once_the_credential_is_gone(setup: Setup) -> None:
    client = setup.app.test_client()
    tokens = {
        kind: _token(client, *setup.credentials[kind]).get_json()["token"]
        for kind in (
            "developer of the group",
            "PAT with registry scopes",
            "deploy token of the group",
        )
    }
    for token in tokens.values():
        assert _manifest(client, "org/team", token).status_code == 200

    with setup.app.app_context():
        services.block_user("dev")
        group = services.require_group("org/team")
        for token in group.deploy_tokens:
            services.revoke_deploy_token(token.id)
        db.session.remove()

    for kind, token in tokens.items():
        response = _manifest(client, "org/team", token)
        assert response.status_code == 401, kind
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="')


def test_tampered_and_foreign_tokens_are_refused(setup: Setup) -> None:
    client = setup.app.test_client()
    token = _token(client, *setup.credentials["developer of the group"]).get_json()["token"]
    assert _manifest(client, "org/team", token).status_code == 200
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (tampered, "not-a-token", "x" * 5000, token + "."):
        response = _manifest(client, "org/team", bad)
        assert response.status_code == 401
        assert response.get_json()["errors"][0]["code"] == "UNAUTHORIZED"

    from flask_dependency_proxy.auth.tokens import TokenIssuer

    foreign, _ = TokenIssuer(["another-secret"], ttl_seconds=900).issue("user:1")
    assert _manifest(client, "org/team", foreign).status_code == 401


def _token_from(client: FlaskClient, address: str, username: str, secret: str) -> t.Any:
    return client.get(
        "/jwt/auth?service=dependency_proxy",
        auth=(username, secret),
        environ_base={"REMOTE_ADDR": address},
    )


def test_repeated_failed_logins_are_slowed_down_for_their_address(setup: Setup) -> None:
    client = setup.app.test_client()
    limit = setup.app.config["DEPENDENCY_PROXY_LOGIN_MAX_FAILURES"]
    attacker, elsewhere = "192.0.2.1", "192.0.2.10"
    for _ in range(limit):
        assert _token_from(client, attacker, "dev", "wrong password").status_code == 401
    throttled = _token_from(client, attacker, "dev", "wrong password")
    assert throttled.status_code == 429
    assert throttled.get_json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 0 < int(throttled.headers["Retry-After"]) <= 300
    # The right password from that address waits for the window too...
    developer = setup.credentials["developer of the group"]
    assert _token_from(client, attacker, *developer).status_code == 429
    # ...but not from another address, and tokens are never refused.
    assert _token_from(client, elsewhere, *developer).status_code == 200
    for kind in ("PAT with registry scopes", "job token of a running job"):
        assert _token_from(client, attacker, *setup.credentials[kind]).status_code == 200, kind
    assert _token_from(client, attacker, *setup.credentials["PAT with read_api"]).status_code == 403
