"""Each credential kind logs in with skopeo and pulls through the live platform.

(Job tokens are exercised end to end by ``test_platform_ci.py`` through ``ci run``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the kinds of credentials a client logs in with, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]


def _pull(skopeo: Skopeo, platform: Platform, group: str, name: str) -> dict[str, object]:
    result, target = skopeo.copy_to_dir(platform.image(group, name, "latest"))
    checks.ok(result)
    return json.loads((target / "manifest.json").read_text())


def _push(upstream: Registry, name: str, tmp_path: Path) -> images.Pushed:
    image = images.build_image(f"{name}-seed", layer_sizes=(2048,))
    return images.push(image, upstream, f"library/{name}", "latest", workdir=tmp_path)


def test_personal_access_token(
    platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    user = seed.ALICE.username
    secret = (
        platform.flask(
            "token",
            "create",
            user,
            "--scopes",
            "read_registry,write_registry",
            "--name",
            unique_name,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    narrow = (
        platform.flask(
            "token", "create", user, "--scopes", "read_api", "--name", unique_name + "-narrow"
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    client = Skopeo(tmp_path / "pat")
    checks.ok(client.login(platform.host, user, secret))
    manifest = _pull(client, platform, seed.ACME, unique_name)
    assert manifest["config"]["digest"] == pushed.config_digest  # type: ignore[index]

    # A token without the registry scopes is refused at login (403 from /jwt/auth).
    checks.failed(Skopeo(tmp_path / "narrow").login(platform.host, user, narrow))
    assert platform.token(user, narrow).status_code == 403


def test_group_deploy_token(
    platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    username, secret = (
        platform.flask(
            "deploy-token", "create", seed.ACME, "--scopes", "read_registry,write_registry"
        )
        .stdout.strip()
        .splitlines()[-1]
        .split()
    )

    client = Skopeo(tmp_path / "deploy")
    checks.ok(client.login(platform.host, username, secret))
    manifest = _pull(client, platform, seed.ACME, unique_name)
    assert manifest["config"]["digest"] == pushed.config_digest  # type: ignore[index]
    # Its subgroup is reachable; another group is not.
    _pull(client, platform, seed.ACME_TOOLS, unique_name)
    result, _ = client.copy_to_dir(platform.image(seed.GLOBEX, unique_name, "latest"))
    checks.failed(result)
