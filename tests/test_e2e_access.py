"""Who may pull through which group's proxy, checked on the live platform with
``requests`` (the registry protocol by hand) and with skopeo."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: PostgreSQL, the production setup, only: tests/test_access_matrix.py runs every
#: access rule on both databases.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]


@pytest.fixture
def pushed(upstream: Registry, unique_name: str, tmp_path: Path) -> images.Pushed:
    image = images.build_image(unique_name, layer_sizes=(2000,))
    return images.push(image, upstream, f"e2e/{unique_name}", "1", workdir=tmp_path)


def _manifest(
    platform: Platform, account: seed.Account, group: str, image: str
) -> requests.Response:
    """Log in through ``/jwt/auth`` for ``group``'s proxy, then ask for the manifest."""
    headers = platform.bearer(account.username, account.password, group, image)
    headers["Accept"] = images.MANIFEST_ACCEPT
    url = f"{platform.url}/v2/{platform.repository(group, image)}/manifests/1"
    return requests.get(url, headers=headers, timeout=60)


def test_member_of_one_group_cannot_pull_through_another(
    platform: Platform, pushed: images.Pushed, tmp_path: Path
) -> None:
    image = pushed.repository
    assert _manifest(platform, seed.ALICE, seed.ACME, image).status_code == 200
    checks.registry_error(_manifest(platform, seed.ALICE, seed.GLOBEX, image), 404, "NAME_UNKNOWN")
    assert _manifest(platform, seed.BOB, seed.GLOBEX, image).status_code == 200
    checks.registry_error(_manifest(platform, seed.BOB, seed.ACME, image), 404, "NAME_UNKNOWN")

    skopeo = Skopeo(tmp_path / "alice")
    checks.ok(skopeo.login(platform.host, seed.ALICE.username, seed.ALICE.password))
    result, _ = skopeo.copy_to_dir(platform.image(seed.GLOBEX, image, "1"))
    output = checks.failed(result)
    assert "name unknown" in output or "not found" in output or "404" in output


def test_non_member_cannot_pull(platform: Platform, pushed: images.Pushed, tmp_path: Path) -> None:
    checks.registry_error(
        _manifest(platform, seed.CAROL, seed.ACME, pushed.repository), 404, "NAME_UNKNOWN"
    )
    skopeo = Skopeo(tmp_path / "carol")
    checks.ok(skopeo.login(platform.host, seed.CAROL.username, seed.CAROL.password))
    checks.failed(skopeo.copy_to_dir(platform.image(seed.ACME, pushed.repository, "1"))[0])


def test_guest_can_pull(platform: Platform, pushed: images.Pushed) -> None:
    response = _manifest(platform, seed.GUEST, seed.ACME, pushed.repository)
    assert response.status_code == 200, response.text
    assert response.content == pushed.manifest


def test_subgroup_proxy_inherits_membership(
    platform: Platform, upstream: Registry, pushed: images.Pushed, tmp_path: Path
) -> None:
    skopeo = Skopeo(tmp_path / "alice")
    checks.ok(skopeo.login(platform.host, seed.ALICE.username, seed.ALICE.password))
    result, target = skopeo.copy_to_dir(platform.image(seed.ACME_TOOLS, pushed.repository, "1"))
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    checks.registry_error(
        _manifest(platform, seed.BOB, seed.ACME_TOOLS, pushed.repository), 404, "NAME_UNKNOWN"
    )


def test_disabled_and_unknown_groups_look_the_same(
    platform: Platform, pushed: images.Pushed
) -> None:
    disabled = checks.registry_error(
        _manifest(platform, seed.ALICE, seed.INITECH, pushed.repository), 404, "NAME_UNKNOWN"
    )
    unknown = checks.registry_error(
        _manifest(platform, seed.ALICE, "no-such-group", pushed.repository), 404, "NAME_UNKNOWN"
    )
    assert disabled["message"] == unknown["message"]


def test_no_token_or_bad_token_is_challenged(platform: Platform, pushed: images.Pushed) -> None:
    url = f"{platform.url}/v2/{platform.repository(seed.ACME, pushed.repository)}/manifests/1"
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic YWxpY2U6eA=="},
    ):
        response = requests.get(url, headers=headers, timeout=30)
        checks.registry_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith(
            f'Bearer realm="{platform.url}/jwt/auth",service="dependency_proxy"'
        )


def test_token_endpoint_refusals(platform: Platform) -> None:
    wrong = platform.token(seed.ALICE.username, "wrong-password")
    checks.registry_error(wrong, 401, "UNAUTHORIZED")
    unknown_user = platform.token("nobody", "whatever-password")
    checks.registry_error(unknown_user, 401, "UNAUTHORIZED")
    other_service = requests.get(
        f"{platform.url}/jwt/auth",
        params={"service": "registry.docker.io"},
        auth=(seed.ALICE.username, seed.ALICE.password),
        timeout=30,
    )
    assert other_service.status_code == 404
    anonymous = requests.get(
        f"{platform.url}/jwt/auth", params={"service": "dependency_proxy"}, timeout=30
    )
    assert anonymous.status_code == 401

    answer = platform.token(seed.ALICE.username, seed.ALICE.password)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token"] and body["access_token"] == body["token"]
    assert body["expires_in"] > 0 and body["issued_at"]
    assert seed.ALICE.password not in body["token"]
