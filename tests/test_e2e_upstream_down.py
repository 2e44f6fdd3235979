"""The upstream goes away: what was cached is still served, marked stale where it
matters; what was not cached fails with a registry error."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy, Rewrite
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is an upstream that went away, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE
STALE_HEADER = "X-Dependency-Proxy-Stale"


class Down(t.NamedTuple):
    platform: Platform
    upstream: Registry
    cached: images.Pushed
    uncached: images.Pushed
    workdir: Path


@pytest.fixture(scope="module")
def down(
    module_processes: ProcessFactory,
    module_platform_factory: PlatformFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[Down]:
    """A platform of its own whose upstream has stopped after one image was pulled."""
    workdir = tmp_path_factory.mktemp("upstream-down")
    upstream = Registry(module_processes, workdir / "upstream", name="down-upstream").start()
    platform = module_platform_factory(upstream.url, name="down")
    cached = images.push(
        images.build_image("down-cached"), upstream, "e2e/cached", "1", workdir=workdir
    )
    uncached = images.push(
        images.build_image("down-uncached"), upstream, "e2e/uncached", "1", workdir=workdir
    )
    skopeo = Skopeo(workdir / "warm")
    checks.ok(skopeo.login(platform.host, USER.username, USER.password))
    checks.ok(skopeo.copy_to_dir(platform.image(GROUP, "e2e/cached", "1"))[0])
    upstream.stop()
    yield Down(platform, upstream, cached, uncached, workdir)


@pytest.fixture
def alice(down: Down, tmp_path: Path) -> Skopeo:
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(down.platform.host, USER.username, USER.password))
    return skopeo


def test_cached_tag_and_digest_still_pull(down: Down, alice: Skopeo) -> None:
    assert not down.upstream.is_running()
    for reference in ("1", down.cached.digest):
        result, target = alice.copy_to_dir(down.platform.image(GROUP, "e2e/cached", reference))
        checks.ok(result)
        assert (target / "manifest.json").read_bytes() == down.cached.manifest
        for digest in down.cached.blob_digests:
            assert (target / digest[7:]).exists()


def test_uncached_image_fails_with_registry_error(down: Down, alice: Skopeo) -> None:
    result, _ = alice.copy_to_dir(down.platform.image(GROUP, "e2e/uncached", "1"))
    checks.failed(result)

    headers = down.platform.bearer(USER.username, USER.password, GROUP, "e2e/uncached")
    headers["Accept"] = images.MANIFEST_ACCEPT
    base = f"{down.platform.url}/v2/{down.platform.repository(GROUP, 'e2e/uncached')}"
    manifest = requests.get(f"{base}/manifests/1", headers=headers, timeout=120)
    error = checks.registry_error(
        manifest,
        (404, 429, 502, 503, 504),
        ("MANIFEST_UNKNOWN", "UNAVAILABLE", "TOOMANYREQUESTS", "UNKNOWN"),
    )
    assert manifest.status_code != 500, error
    blob = requests.get(
        f"{base}/blobs/{down.uncached.layer_digests[0]}", headers=headers, timeout=120
    )
    checks.registry_error(blob, (404, 502, 503, 504), ("BLOB_UNKNOWN", "UNAVAILABLE", "UNKNOWN"))


def test_stale_header_on_cached_tag(down: Down) -> None:
    headers = down.platform.bearer(USER.username, USER.password, GROUP, "e2e/cached")
    headers["Accept"] = images.MANIFEST_ACCEPT
    url = f"{down.platform.url}/v2/{down.platform.repository(GROUP, 'e2e/cached')}/manifests/1"
    for method in ("GET", "HEAD"):
        response = requests.request(method, url, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        checks.api_version(response)
        assert response.headers.get(STALE_HEADER) == "true", dict(response.headers)
        assert response.headers["Docker-Content-Digest"] == down.cached.digest
    # A digest is immutable: serving it from the cache is not stale.
    by_digest = requests.get(
        url.replace("/manifests/1", f"/manifests/{down.cached.digest}"),
        headers=headers,
        timeout=120,
    )
    assert by_digest.status_code == 200
    assert STALE_HEADER not in by_digest.headers


def test_a_manifest_upstream_answers_as_html_is_an_upstream_failure(
    platform_factory: PlatformFactory, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    """A login or error page answered with ``200`` in a manifest's place: not served, not
    cached; the tag already cached is served stale, as in an outage."""
    proxy = FaultProxy(upstream.url).start()
    try:
        platform = platform_factory(proxy.url, name="html-manifest")
        repository = f"e2e/{unique_name}"
        pushed = images.push(
            images.build_image(unique_name), upstream, repository, "1", workdir=tmp_path
        )
        moved = images.push(
            images.build_image(f"{unique_name}-2"), upstream, repository, "2", workdir=tmp_path
        )
        headers = platform.bearer(USER.username, USER.password, GROUP, repository)
        headers["Accept"] = images.MANIFEST_ACCEPT
        base = f"{platform.url}/v2/{platform.repository(GROUP, repository)}/manifests"
        first = requests.get(f"{base}/1", headers=headers, timeout=60)
        assert first.status_code == 200, first.text
        assert first.content == pushed.manifest

        proxy.add(Rewrite((("Content-Type", "text/html; charset=utf-8"),)), path="/manifests/")
        for method in ("GET", "HEAD"):
            # Cached: upstream's HEAD answers HTML, so the cached copy is served stale.
            cached = requests.request(method, f"{base}/1", headers=headers, timeout=60)
            assert cached.status_code == 200, cached.text
            assert cached.headers[STALE_HEADER] == "true"
            assert cached.headers["Content-Type"] == images.OCI_MANIFEST
            # Not cached: by tag (HEAD, then GET) and by digest (GET only).
            for reference in ("2", moved.digest):
                refused = requests.request(
                    method, f"{base}/{reference}", headers=headers, timeout=60
                )
                assert refused.status_code == 503, (method, reference, refused.text)
                if method == "GET":
                    checks.registry_error(refused, 503, "UNAVAILABLE")
                assert "text/html" not in refused.headers["Content-Type"]

        # Nothing of the refused answers was kept: with upstream sane again, tag 2 is a
        # miss fetched now, with its own media type.
        proxy.clear()
        second = requests.get(f"{base}/2", headers=headers, timeout=60)
        assert second.status_code == 200, second.text
        assert second.headers["Content-Type"] == images.OCI_MANIFEST
        assert STALE_HEADER not in second.headers
    finally:
        proxy.stop()
