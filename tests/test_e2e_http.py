"""The registry protocol of the live platform, request by request, with ``requests``."""

from __future__ import annotations

import hashlib
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the registry protocol over HTTP, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE


class Pulled(t.NamedTuple):
    pushed: images.Pushed
    base: str  # .../v2/<group>/dependency_proxy/containers/<image>
    headers: dict[str, str]


@pytest.fixture
def pulled(platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path) -> Pulled:
    """An image upstream, with a token to pull it through the platform."""
    image = images.build_image(unique_name, layer_sizes=(50_000, 120_000))
    pushed = images.push(image, upstream, f"e2e/{unique_name}", "1", workdir=tmp_path)
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    return Pulled(
        pushed, f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}", headers
    )


def test_base_challenge(platform: Platform) -> None:
    expected = f'Bearer realm="{platform.url}/jwt/auth",service="dependency_proxy"'
    for path in ("/v2/", "/v2"):
        response = requests.get(f"{platform.url}{path}", timeout=30, allow_redirects=False)
        checks.registry_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == expected


def test_base_with_token(platform: Platform) -> None:
    token = platform.token(USER.username, USER.password).json()["token"]
    response = requests.get(
        f"{platform.url}/v2/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 200
    assert response.json() == {}
    checks.api_version(response)


@pytest.mark.parametrize(
    ("path", "statuses", "codes"),
    [
        ("UPPER/manifests/1", 400, "NAME_INVALID"),
        ("a..b/manifests/1", 400, "NAME_INVALID"),
        ("-x/manifests/1", 400, "NAME_INVALID"),
        ("x_/manifests/1", 400, "NAME_INVALID"),
        ("x%00y/manifests/1", 400, "NAME_INVALID"),
        (f"{'a' * 300}/manifests/1", 400, "NAME_INVALID"),
        ("x/manifests/-tag", 404, "MANIFEST_UNKNOWN"),
        ("x/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN"),
        (f"x/manifests/{'t' * 129}", 404, "MANIFEST_UNKNOWN"),
        ("x/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        (f"x/manifests/sha256:{'A' * 64}", 400, "DIGEST_INVALID"),
        ("x/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        (f"x/blobs/sha256:{'0' * 63}", 400, "DIGEST_INVALID"),
        ("x/blobs/1234", 400, "DIGEST_INVALID"),
        (f"x/blobs/md5:{'0' * 32}", 400, ("DIGEST_INVALID", "UNSUPPORTED")),
    ],
    ids=lambda value: value[:30] if isinstance(value, str) else None,
)
def test_bad_references_are_registry_errors(
    platform: Platform, path: str, statuses: int | tuple[int, ...], codes: str | tuple[str, ...]
) -> None:
    headers = platform.bearer(USER.username, USER.password, GROUP, "x")
    url = f"{platform.url}/v2/{GROUP}/dependency_proxy/containers/{path}"
    checks.registry_error(requests.get(url, headers=headers, timeout=30), statuses, codes)
    head = requests.head(url, headers=headers, timeout=30)
    assert head.status_code in ({statuses} if isinstance(statuses, int) else set(statuses))
    checks.api_version(head)


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("x/manifests/.INVALID_MANIFEST_NAME", "x"),
        ("x/manifests/sha256:abc", "x"),
        ("x/blobs/sha256:xyz", "x"),
        ("UPPER/manifests/1", None),
        ("a..b/blobs/sha256:" + "0" * 64, None),
        ("x/blobs/uploads/", None),
    ],
    ids=lambda value: value[:30] if isinstance(value, str) else None,
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_anonymous_requests_get_the_challenge_before_any_grammar(
    platform: Platform, path: str, scope: str | None, method: str
) -> None:
    """Authentication comes first: whatever an anonymous client asks for, it is told how
    to log in (with the repository's scope when the name is valid, never an echo of a bad
    one), not that its request is malformed."""
    url = f"{platform.url}/v2/{GROUP}/dependency_proxy/containers/{path}"
    response = requests.request(method, url, timeout=30, allow_redirects=False)
    assert response.status_code == 401
    if method != "HEAD":
        checks.registry_error(response, 401, "UNAUTHORIZED")
    expected = f'Bearer realm="{platform.url}/jwt/auth",service="dependency_proxy"'
    if scope is not None:
        expected += f',scope="repository:{GROUP}/dependency_proxy/containers/{scope}:pull"'
    assert response.headers["WWW-Authenticate"] == expected


@pytest.mark.parametrize(
    "path",
    [
        f"{GROUP}/containers/x/manifests/1",
        f"{GROUP}/dependency_proxy/x/manifests/1",
        f"{GROUP}/dependency_proxy/containers/manifests/1",
        "_catalog",
        f"{GROUP}/dependency_proxy/containers/x/tags/list",
    ],
)
def test_paths_outside_the_proxy(platform: Platform, path: str) -> None:
    headers = platform.bearer(USER.username, USER.password, GROUP, "x")
    response = requests.get(f"{platform.url}/v2/{path}", headers=headers, timeout=30)
    checks.registry_error(
        response, (400, 404, 405), ("NAME_INVALID", "NAME_UNKNOWN", "UNSUPPORTED")
    )


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("PUT", "manifests/1"),
        ("DELETE", "manifests/1"),
        ("POST", "blobs/uploads/"),
        ("PATCH", "blobs/uploads/0a8e2c38-7ea4-4a64-b4e5-2c01c2b5ab3f"),
        ("PUT", f"blobs/uploads/0a8e2c38-7ea4-4a64-b4e5-2c01c2b5ab3f?digest=sha256:{'0' * 64}"),
        ("DELETE", f"blobs/sha256:{'0' * 64}"),
    ],
)
def test_push_methods_are_unsupported(platform: Platform, method: str, suffix: str) -> None:
    headers = platform.bearer(USER.username, USER.password, GROUP, "x")
    url = f"{platform.url}/v2/{GROUP}/dependency_proxy/containers/x/{suffix}"
    response = requests.request(method, url, headers=headers, data=b"{}", timeout=30)
    checks.registry_error(response, 405, "UNSUPPORTED")


def test_manifest_is_byte_identical_with_headers(pulled: Pulled) -> None:
    pushed = pulled.pushed
    accept = {**pulled.headers, "Accept": images.MANIFEST_ACCEPT}
    for reference in ("1", pushed.digest):
        response = requests.get(f"{pulled.base}/manifests/{reference}", headers=accept, timeout=60)
        assert response.status_code == 200, response.text
        checks.api_version(response)
        assert response.content == pushed.manifest
        assert response.headers["Content-Type"] == pushed.media_type
        assert response.headers["Docker-Content-Digest"] == pushed.digest
        assert response.headers["Content-Length"] == str(len(pushed.manifest))
        assert response.headers["ETag"] == f'"{pushed.digest}"'
        assert "X-Dependency-Proxy-Stale" not in response.headers

        head = requests.head(f"{pulled.base}/manifests/{reference}", headers=accept, timeout=60)
        assert head.status_code == 200
        checks.api_version(head)
        assert head.content == b""
        for name in ("Content-Type", "Docker-Content-Digest", "Content-Length", "ETag"):
            assert head.headers[name] == response.headers[name], name


def test_docker_media_type_passes_through(
    platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    image = images.build_image(unique_name, layer_sizes=(1000,))
    pushed = images.push(
        image, upstream, f"e2e/{unique_name}", "1", workdir=tmp_path, docker_format=True
    )
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    headers["Accept"] = images.MANIFEST_ACCEPT
    response = requests.get(
        f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}/manifests/1",
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == images.DOCKER_MANIFEST
    assert response.content == pushed.manifest


def test_unknown_manifest_and_blob(pulled: Pulled) -> None:
    accept = {**pulled.headers, "Accept": images.MANIFEST_ACCEPT}
    checks.registry_error(
        requests.get(f"{pulled.base}/manifests/no-such-tag", headers=accept, timeout=60),
        404,
        "MANIFEST_UNKNOWN",
    )
    missing = "sha256:" + hashlib.sha256(b"not there").hexdigest()
    checks.registry_error(
        requests.get(f"{pulled.base}/blobs/{missing}", headers=pulled.headers, timeout=60),
        404,
        "BLOB_UNKNOWN",
    )


def test_blob_full_then_range(pulled: Pulled, upstream: Registry) -> None:
    digest = pulled.pushed.layer_digests[1]
    data = upstream.read_blob(digest)
    full = requests.get(f"{pulled.base}/blobs/{digest}", headers=pulled.headers, timeout=60)
    assert full.status_code == 200
    checks.api_version(full)
    assert full.content == data
    assert full.headers["Docker-Content-Digest"] == digest

    head = requests.head(f"{pulled.base}/blobs/{digest}", headers=pulled.headers, timeout=60)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    checks.api_version(head)

    ranged = requests.get(
        f"{pulled.base}/blobs/{digest}",
        headers={**pulled.headers, "Range": "bytes=100-1099"},
        timeout=60,
    )
    assert ranged.status_code == 206
    checks.api_version(ranged)
    assert ranged.content == data[100:1100]
    assert ranged.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"


@pytest.mark.parametrize("chunk_size", ["0", "4096"], ids=["sendfile", "chunks"])
def test_cached_blob_in_either_serving_mode(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
    chunk_size: str,
) -> None:
    """Whole blobs and ranges across chunk boundaries, served by sendfile or in chunks."""
    live = platform_factory(
        upstream.url, extra_env={"DEPENDENCY_PROXY_BLOB_CHUNK_SIZE": chunk_size}
    )
    image = images.build_image(unique_name, layer_sizes=(300_000,))
    pushed = images.push(image, upstream, f"e2e/{unique_name}", "1", workdir=tmp_path)
    headers = live.bearer(USER.username, USER.password, GROUP, pushed.repository)
    url = f"{live.url}/v2/{live.repository(GROUP, pushed.repository)}/blobs/"
    digest = pushed.layer_digests[0]
    data = upstream.read_blob(digest)

    cold = requests.get(url + digest, headers=headers, timeout=60)
    assert cold.content == data
    warm = requests.get(url + digest, headers=headers, timeout=60)
    assert warm.status_code == 200
    assert warm.headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(warm.content).hexdigest() == digest.removeprefix("sha256:")

    for first, last in ((4000, 12_345), (0, 4095), (len(data) - 5000, len(data) - 1)):
        ranged = requests.get(
            url + digest, headers={**headers, "Range": f"bytes={first}-{last}"}, timeout=60
        )
        assert ranged.status_code == 206
        assert ranged.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        assert ranged.content == data[first : last + 1]
