"""Size limits on the live platform (gunicorn, PostgreSQL), pulling with
skopeo from a real upstream registry: a group over its size limit under both quota
policies, and the instance's largest blob.

The upstream's access log tells what was fetched; the store, the REST API and the
platform's own cleanup command tell what was kept.
"""

from __future__ import annotations

import http.client
import http.server
import json
import typing as t
import urllib.parse
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.httpserver import BackgroundServer
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the pulls under a size limit, not the database: PostgreSQL only
#: (tests/test_api.py covers the quota's queries on both databases).
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
PULLER = seed.ALICE
#: Owner of ``acme``: sets the size limit through the REST API.
OWNER = seed.Account("olga", "olga-password-0001")


def seed_quota(platform: Platform) -> None:
    """Alice pulls through ``acme``; Olga owns it."""
    with platform.batch():
        seed.seed_minimal(platform)
        platform.create_user(OWNER.username, OWNER.password)
        platform.add_member(GROUP, OWNER.username, "owner")


class Api:
    """The group's settings endpoint, with an owner's personal access token."""

    def __init__(self, platform: Platform) -> None:
        created = platform.flask("token", "create", OWNER.username, "--scopes", "api")
        self.headers = {"PRIVATE-TOKEN": created.stdout.split()[-1]}
        self.base = f"{platform.url}/api/v4/groups/{GROUP}/dependency_proxy"

    def quota(self) -> dict[str, t.Any]:
        response = requests.get(f"{self.base}/settings", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return t.cast(dict[str, t.Any], response.json()["quota"])

    def set_limit(self, limit: int | None) -> dict[str, t.Any]:
        response = requests.put(
            f"{self.base}/settings",
            json={"quota": {"limit_bytes": limit}},
            headers=self.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return t.cast(dict[str, t.Any], response.json()["quota"])

    def listing(self, kind: str) -> list[dict[str, t.Any]]:
        response = requests.get(
            f"{self.base}/{kind}", params={"per_page": 100}, headers=self.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        return t.cast(list[dict[str, t.Any]], response.json())


def _push(upstream: Registry, name: str, layers: tuple[int, ...], workdir: Path) -> images.Pushed:
    image = images.build_image(name, layer_sizes=layers)
    return images.push(image, upstream, f"quota/{name}", "1", workdir=workdir)


def _size(pushed: images.Pushed) -> int:
    """What the image counts against a group: its manifest and every blob it names."""
    document = json.loads(pushed.manifest)
    return len(pushed.manifest) + sum(d["size"] for d in [document["config"], *document["layers"]])


def _pull(platform: Platform, skopeo: Skopeo, pushed: images.Pushed) -> t.Any:
    return skopeo.copy_to_dir(platform.image(GROUP, pushed.repository, pushed.tag))


def _blob_gets(upstream: Registry, pushed: images.Pushed, since: int) -> int:
    return upstream.count("GET", repository=pushed.repository, kind="blobs", since=since)


def test_refuse_policy_keeps_cached_images_and_denies_new_ones_naming_the_quota(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        upstream.url, setup=seed_quota, extra_env={"DEPENDENCY_PROXY_QUOTA_POLICY": "refuse"}
    )
    api = Api(platform)
    cached = _push(upstream, f"{unique_name}-cached", (300_000,), tmp_path)
    new = _push(upstream, f"{unique_name}-new", (200_000,), tmp_path)
    checks.ok(skopeo.login(platform.host, PULLER.username, PULLER.password))
    result, target = _pull(platform, skopeo, cached)
    checks.ok(result)

    # A limit below what the group already holds: it is over its limit.
    quota = api.set_limit(100_000)
    assert quota == {"limit_bytes": 100_000, "used_bytes": _size(cached), "policy": "refuse"}

    # Cached content keeps working.
    mark = upstream.mark()
    result, target = _pull(platform, skopeo, cached)
    checks.ok(result)
    checks.same_as_upstream(target, cached, upstream)
    assert _blob_gets(upstream, cached, mark) == 0

    # New content is denied, with the quota named, before any of its blobs is fetched.
    mark = upstream.mark()
    files_before = platform.store_files()
    output = checks.failed(_pull(platform, skopeo, new)[0])
    assert "denied" in output and "quota of 97.7 kib (100000 bytes)" in output, output
    assert _blob_gets(upstream, new, mark) == 0
    assert platform.store_files() == files_before
    assert [m["image"] for m in api.listing("manifests")] == [cached.repository]
    assert {b["digest"] for b in api.listing("blobs")} == set(cached.blob_digests)

    # The registry error itself.
    headers = platform.bearer(PULLER.username, PULLER.password, GROUP, new.repository)
    url = f"{platform.url}/v2/{platform.repository(GROUP, new.repository)}"
    error = checks.registry_error(
        requests.get(f"{url}/manifests/1", headers=headers, timeout=30), 403, "DENIED"
    )
    assert "storage quota" in error["message"]
    assert error["detail"]["quota_bytes"] == 100_000

    # Lifting the limit lets the image in.
    api.set_limit(None)
    result, target = _pull(platform, skopeo, new)
    checks.ok(result)
    checks.same_as_upstream(target, new, upstream)


def test_evict_policy_makes_room_from_the_least_recently_pulled_image(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        upstream.url,
        setup=seed_quota,
        extra_env={
            "DEPENDENCY_PROXY_QUOTA_POLICY": "evict",
            # Every pull moves an item's last-read time (the default moves it hourly).
            "DEPENDENCY_PROXY_READ_TIME_GRANULARITY_SECONDS": "0",
            "DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "0",
        },
        # One worker holds every buffered last-read time eviction looks at.
        gunicorn_args=["--workers", "1"],
    )
    api = Api(platform)
    recent = _push(upstream, f"{unique_name}-recent", (300_000,), tmp_path)
    stale = _push(upstream, f"{unique_name}-stale", (400_000,), tmp_path)
    new = _push(upstream, f"{unique_name}-new", (300_000,), tmp_path)
    checks.ok(skopeo.login(platform.host, PULLER.username, PULLER.password))
    for pushed in (recent, stale, recent):  # "recent" pulled again last
        checks.ok(_pull(platform, skopeo, pushed)[0])

    # Room for "recent" and "new" only (less than the smallest item to spare): the
    # group is over its limit, and the next image has to make room.
    limit = _size(recent) + _size(new) + 50
    assert api.set_limit(limit)["used_bytes"] == _size(recent) + _size(stale) > limit

    result, target = _pull(platform, skopeo, new)
    checks.ok(result)
    checks.same_as_upstream(target, new, upstream)
    quota = api.quota()
    assert quota["used_bytes"] == _size(recent) + _size(new) <= limit
    served = {m["image"] for m in api.listing("manifests") if m["status"] == "default"}
    assert served == {recent.repository, new.repository}

    # Cleanup removes the evicted rows and files; the other images' stay.
    platform.flask("dependency-proxy", "cleanup")
    assert {m["image"] for m in api.listing("manifests")} == {recent.repository, new.repository}
    assert {b["digest"] for b in api.listing("blobs")} == {
        *recent.blob_digests,
        *new.blob_digests,
    }
    for digest in stale.blob_digests:
        assert platform.store_files_for(digest) == [], digest
    for digest in (*recent.blob_digests, *new.blob_digests):
        assert platform.store_files_for(digest), digest

    # The kept images are still served from the cache; the evicted one is fetched
    # again, and makes room in turn.
    mark = upstream.mark()
    checks.ok(_pull(platform, skopeo, recent)[0])
    checks.ok(_pull(platform, skopeo, new)[0])
    assert _blob_gets(upstream, recent, mark) + _blob_gets(upstream, new, mark) == 0
    result, target = _pull(platform, skopeo, stale)
    checks.ok(result)
    checks.same_as_upstream(target, stale, upstream)
    assert _blob_gets(upstream, stale, mark) == len(stale.blob_digests)
    assert api.quota()["used_bytes"] <= limit


def test_an_image_larger_than_the_limit_is_refused_under_evict_too(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(upstream.url, setup=seed_quota)
    api = Api(platform)
    small = _push(upstream, f"{unique_name}-small", (50_000,), tmp_path)
    large = _push(upstream, f"{unique_name}-large", (400_000,), tmp_path)
    checks.ok(skopeo.login(platform.host, PULLER.username, PULLER.password))
    checks.ok(_pull(platform, skopeo, small)[0])
    api.set_limit(200_000)

    mark = upstream.mark()
    output = checks.failed(_pull(platform, skopeo, large)[0])
    assert "denied" in output and "storage quota" in output, output
    assert _blob_gets(upstream, large, mark) == 0
    # Nothing was evicted for an image that could never fit.
    assert {m["status"] for m in api.listing("manifests")} == {"default"}
    assert api.quota()["used_bytes"] == _size(small)


def test_max_blob_size_refuses_a_large_layer_before_fetching_it(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        upstream.url, extra_env={"DEPENDENCY_PROXY_MAX_BLOB_SIZE": "500000"}
    )
    pushed = _push(upstream, unique_name, (100_000, 800_000), tmp_path)
    large = pushed.layer_digests[1]
    checks.ok(skopeo.login(platform.host, PULLER.username, PULLER.password))

    mark = upstream.mark()
    output = checks.failed(_pull(platform, skopeo, pushed)[0])
    assert "denied" in output and "blob size limit of 488.3 kib (500000 bytes)" in output, output
    assert _blob_gets(upstream, pushed, mark) == 0
    assert platform.store_files() == []

    # Asked for directly (no manifest announced its size), the blob is refused on
    # upstream's Content-Length, before its body is read; small blobs still pass.
    headers = platform.bearer(PULLER.username, PULLER.password, GROUP, pushed.repository)
    url = f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}/blobs"
    error = checks.registry_error(
        requests.get(f"{url}/{large}", headers=headers, timeout=30), 403, "DENIED"
    )
    assert "blob size limit of 488.3 KiB (500000 bytes)" in error["message"]
    assert (error["detail"]["digest"], error["detail"]["max_blob_size"]) == (large, 500_000)
    head = requests.head(f"{url}/{large}", headers=headers, timeout=30)
    assert head.status_code == 403
    assert platform.store_files_for(large) == []
    small = pushed.layer_digests[0]
    response = requests.get(f"{url}/{small}", headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == upstream.read_blob(small)


class UnsizedBlobs:
    """A relay in front of the real upstream that sends blob bodies without a
    ``Content-Length`` (delimited by closing the connection), as some registries and
    CDNs do."""

    def __init__(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        assert parts.hostname and parts.port
        self._target = (parts.hostname, parts.port)
        self._http = BackgroundServer("unsized blob relay")

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> UnsizedBlobs:
        target = self._target

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                connection = http.client.HTTPConnection(*target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, headers=headers)
                response = connection.getresponse()
                unsized = self.command == "GET" and "/blobs/" in self.path
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in ("connection", "transfer-encoding"):
                        continue
                    if unsized and key.lower() == "content-length":
                        continue
                    self.send_header(key, value)
                self.end_headers()
                while chunk := response.read(64 * 1024):
                    self.wfile.write(chunk)
                connection.close()

            do_GET = do_HEAD = _relay

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self._http.start(Handler)
        return self

    def stop(self) -> None:
        self._http.stop()


@pytest.fixture
def unsized_upstream(upstream: Registry) -> t.Iterator[UnsizedBlobs]:
    relay = UnsizedBlobs(upstream.url).start()
    yield relay
    relay.stop()


def test_max_blob_size_cuts_off_a_blob_whose_size_upstream_does_not_announce(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unsized_upstream: UnsizedBlobs,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        unsized_upstream.url, extra_env={"DEPENDENCY_PROXY_MAX_BLOB_SIZE": "500000"}
    )
    pushed = _push(upstream, unique_name, (100_000, 800_000), tmp_path)
    small, large = pushed.layer_digests
    headers = platform.bearer(PULLER.username, PULLER.password, GROUP, pushed.repository)
    url = f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}/blobs"

    for _attempt in range(2):  # the cut-off blob was not kept: refused again
        mark = upstream.mark()
        try:
            response = requests.get(f"{url}/{large}", headers=headers, timeout=30)
        except requests.exceptions.ChunkedEncodingError:
            pass  # a broken transfer: what the client sees once bytes were sent
        else:
            # Never a complete 200: an error, or a body short of the blob.
            assert response.status_code != 200 or len(response.content) < 500_000, (
                response.status_code,
                len(response.content),
            )
        assert upstream.count("GET", kind="blobs", reference=large, since=mark) == 1
        assert platform.store_files_for(large) == []

    # A blob under the limit with no announced size is fetched and kept.
    response = requests.get(f"{url}/{small}", headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == upstream.read_blob(small)
    assert platform.store_files_for(small)
