"""Tag lists and content negotiation through the live platform, with skopeo and curl,
from the session's real upstream registry."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, curl, images, seed
from tests.support.clients import Skopeo
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the tag list and its paging through real clients, not the database:
#: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE
TAGS = ("1.0", "1.1", "2.0", "latest")


class Tagged(t.NamedTuple):
    image: str
    pushed: images.Pushed


@pytest.fixture(scope="module")
def tagged(upstream: Registry, tmp_path_factory: pytest.TempPathFactory) -> Tagged:
    """One image upstream under four tags."""
    workdir = tmp_path_factory.mktemp("tags")
    image = images.build_image("tags-seed", layer_sizes=(2048,))
    pushed = [images.push(image, upstream, "e2e/tagged", tag, workdir=workdir) for tag in TAGS]
    return Tagged("e2e/tagged", pushed[0])


@pytest.fixture
def alice(platform: Platform, skopeo: Skopeo) -> Skopeo:
    checks.ok(skopeo.login(platform.host, USER.username, USER.password))
    return skopeo


def test_skopeo_list_tags(platform: Platform, alice: Skopeo, tagged: Tagged) -> None:
    result = alice.run(
        "list-tags",
        "--tls-verify=false",
        "--authfile",
        str(alice.authfile),
        f"docker://{platform.image(GROUP, tagged.image)}",
    )
    checks.ok(result)
    assert sorted(json.loads(result.stdout)["Tags"]) == sorted(TAGS)


def test_skopeo_inspect_lists_the_tags(platform: Platform, alice: Skopeo, tagged: Tagged) -> None:
    result = alice.run(
        "inspect",
        "--tls-verify=false",
        "--authfile",
        str(alice.authfile),
        f"docker://{platform.image(GROUP, tagged.image, 'latest')}",
    )
    checks.ok(result)
    inspected = json.loads(result.stdout)
    assert inspected["Digest"] == tagged.pushed.digest
    assert sorted(inspected["RepoTags"]) == sorted(TAGS)


def test_tag_list_pages_with_n_last_and_link(
    platform: Platform, tagged: Tagged, tmp_path: Path
) -> None:
    headers = platform.bearer(USER.username, USER.password, GROUP, tagged.image)
    base = f"{platform.url}/v2/{platform.repository(GROUP, tagged.image)}/tags/list"
    first = curl.get(f"{base}?n=2", headers, tmp_path, "first")
    assert first.status == 200
    body = json.loads(first.body)
    assert body == {"name": platform.repository(GROUP, tagged.image), "tags": list(TAGS[:2])}
    link = _header(tmp_path / "first.headers", "link")
    assert (
        link
        == f'</v2/{platform.repository(GROUP, tagged.image)}/tags/list?n=2&last=1.1>; rel="next"'
    )
    second = curl.get(f"{platform.url}{link[1 : link.index('>')]}", headers, tmp_path, "second")
    assert json.loads(second.body)["tags"] == list(TAGS[2:])
    assert _header(tmp_path / "second.headers", "link") is None


def test_tag_list_of_an_unknown_repository_is_name_unknown(
    platform: Platform, tmp_path: Path, unique_name: str
) -> None:
    headers = platform.bearer(USER.username, USER.password, GROUP, unique_name)
    url = f"{platform.url}/v2/{platform.repository(GROUP, unique_name)}/tags/list"
    transfer = curl.get(url, headers, tmp_path, "unknown")
    assert (transfer.status, transfer.error_code) == (404, "NAME_UNKNOWN")


def test_tag_list_needs_a_token_and_valid_pagination(
    platform: Platform, tagged: Tagged, tmp_path: Path
) -> None:
    url = f"{platform.url}/v2/{platform.repository(GROUP, tagged.image)}/tags/list"
    assert curl.get(url, {}, tmp_path, "anonymous").status == 401
    headers = platform.bearer(USER.username, USER.password, GROUP, tagged.image)
    assert curl.get(f"{url}?n=-1", headers, tmp_path, "bad-n").status == 400
    assert curl.get(f"{url}?last=%2F..", headers, tmp_path, "bad-last").status == 400


def test_client_without_index_types_gets_the_amd64_manifest_of_a_list(
    platform: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    """What distribution does for a Docker manifest list asked for by tag with only the
    image manifest type: the ``linux/amd64`` manifest."""
    pushed = images.push(
        images.build_index("accept-list-seed", layer_sizes=(1024,)),
        upstream,
        f"e2e/{unique_name}",
        "multi",
        workdir=tmp_path,
        docker_format=True,
    )
    assert pushed.media_type == images.DOCKER_MANIFEST_LIST
    amd64 = pushed.children["linux/amd64"]
    headers = platform.bearer(USER.username, USER.password, GROUP, f"e2e/{unique_name}")
    url = f"{platform.url}/v2/{platform.repository(GROUP, f'e2e/{unique_name}')}/manifests"
    narrow = {**headers, "Accept": images.DOCKER_MANIFEST}
    transfer = curl.get(f"{url}/multi", narrow, tmp_path, "narrow")
    assert transfer.status == 200
    assert transfer.body == amd64.manifest
    wide = curl.get(
        f"{url}/multi", {**headers, "Accept": images.DOCKER_MANIFEST_LIST}, tmp_path, "wide"
    )
    assert wide.body == pushed.manifest
    by_digest = curl.get(f"{url}/{pushed.digest}", narrow, tmp_path, "by-digest")
    assert (by_digest.status, by_digest.error_code) == (404, "MANIFEST_UNKNOWN")


def test_client_without_the_oci_index_type_gets_manifest_unknown(
    platform: Platform, upstream: Registry, tmp_path: Path, unique_name: str, alice: Skopeo
) -> None:
    pushed = images.push(
        images.build_index("accept-oci-seed", layer_sizes=(1024,)),
        upstream,
        f"e2e/{unique_name}",
        "multi",
        workdir=tmp_path,
    )
    assert pushed.media_type == images.OCI_INDEX
    repository = f"e2e/{unique_name}"
    headers = platform.bearer(USER.username, USER.password, GROUP, repository)
    url = f"{platform.url}/v2/{platform.repository(GROUP, repository)}/manifests/multi"
    docker_only = {**headers, "Accept": f"{images.DOCKER_MANIFEST_LIST}, {images.DOCKER_MANIFEST}"}
    transfer = curl.get(url, docker_only, tmp_path, "docker-only")
    assert (transfer.status, transfer.error_code) == (404, "MANIFEST_UNKNOWN")
    # skopeo accepts every type: the index comes back whole.
    raw = alice.inspect(platform.image(GROUP, repository, "multi"), raw=True)
    checks.ok(raw)
    assert raw.stdout.encode() == pushed.manifest


def _header(path: Path, name: str) -> str | None:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None
