"""Blob fetches under concurrency and upstream faults, against a real upstream registry
behind a fault-injecting proxy and the example platform under gunicorn."""

from __future__ import annotations

import concurrent.futures
import hashlib
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images, seed
from tests.support.faultproxy import FaultProxy, Status, Throttle, Truncate
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import wait_for
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE


@pytest.fixture
def faulty(upstream: Registry) -> t.Iterator[FaultProxy]:
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def live(platform_factory: PlatformFactory, faulty: FaultProxy) -> Platform:
    """The platform with four workers, so concurrent requests land in different processes."""
    return platform_factory(faulty.url, name="faults", workers=4)


def _push(upstream: Registry, name: str, tmp_path: Path, sizes: tuple[int, ...]) -> images.Pushed:
    image = images.build_image(f"{name}-seed", layer_sizes=sizes)
    return images.push(image, upstream, f"library/{name}", "latest", workdir=tmp_path)


def _blob_url(live: Platform, name: str, digest: str) -> str:
    return f"{live.url}/v2/{live.repository(GROUP, name)}/blobs/{digest}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _committed(live: Platform, digest: str) -> list[Path]:
    return [p for p in live.store_files_for(digest) if "blobs" in p.parts]


def test_concurrent_cold_requests_across_workers_fetch_once(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (8 * images.MiB,))
    layer = pushed.layer_digests[0]
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    # Slow the upstream down so that every request arrives while the fetch is running.
    faulty.add(Throttle(4 * images.MiB), path="/blobs/")
    mark = upstream.mark()

    def pull(_: int) -> tuple[int, str]:
        response = requests.get(_blob_url(live, unique_name, layer), headers=headers, timeout=60)
        return response.status_code, _sha256(response.content)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(pull, range(8)))

    assert results == [(200, layer)] * 8
    assert upstream.count("GET", kind="blobs", reference=layer, since=mark) == 1
    # The group's route confirms the digest for the followers in the other workers:
    # once per worker, not once per request.
    assert upstream.count("HEAD", kind="blobs", reference=layer, since=mark) <= live.workers - 1
    assert len(_committed(live, layer)) == 1


def test_broken_transfer_is_resumed_with_a_range_request(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (2 * images.MiB,))
    layer = pushed.layer_digests[0]
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    faulty.add(Truncate(100_000), path=f"/blobs/{layer}", times=1)

    response = requests.get(_blob_url(live, unique_name, layer), headers=headers, timeout=60)

    assert response.status_code == 200
    assert _sha256(response.content) == layer
    assert len(_committed(live, layer)) == 1
    blob_gets = [r for r in faulty.requests if r.method == "GET" and layer in r.path]
    assert [g.header_lines("Range") for g in blob_gets] == [[], ["bytes=100000-"]]


def test_upstream_that_keeps_breaking_leaves_nothing_and_next_pull_recovers(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (2 * images.MiB,))
    layer = pushed.layer_digests[0]
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    faulty.add(Truncate(100_000), path=f"/blobs/{layer}")

    try:
        response = requests.get(_blob_url(live, unique_name, layer), headers=headers, timeout=60)
    except requests.RequestException:
        pass  # the transfer was cut short: what a client must see once bytes were sent
    else:
        assert response.status_code == 503
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    # The fetch thread discards its staging file right after the client saw the failure.
    wait_for(
        lambda: not [p for p in live.store_files_for(layer) if p.suffix == ".partial"],
        timeout=15,
        what="the staging file to be discarded",
    )
    assert _committed(live, layer) == []

    faulty.clear()
    response = requests.get(_blob_url(live, unique_name, layer), headers=headers, timeout=60)
    assert response.status_code == 200
    assert _sha256(response.content) == layer
    assert len(_committed(live, layer)) == 1


def test_upstream_blob_that_does_not_match_its_digest_is_not_cached(
    live: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (1 * images.MiB,))
    layer = pushed.layer_digests[0]
    upstream.corrupt_blob(layer)
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)

    try:
        response = requests.get(_blob_url(live, unique_name, layer), headers=headers, timeout=60)
        body_digest = _sha256(response.content)
    except requests.RequestException:
        body_digest = None
    assert body_digest != layer
    assert _committed(live, layer) == []


def test_retries_5xx_and_serves_stale_when_upstream_keeps_failing(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (64 * 1024,))
    url = f"{live.url}/v2/{live.repository(GROUP, unique_name)}/manifests/latest"
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)

    # Two 503s are retried away: the client never sees them.
    faulty.add(Status(503), path="/manifests/", times=2)
    first = requests.get(url, headers=headers, timeout=60)
    assert first.status_code == 200
    assert first.headers["Docker-Content-Digest"] == pushed.digest
    assert "X-Dependency-Proxy-Stale" not in first.headers

    # Upstream rate-limits every request now: the cached tag is served, marked stale.
    faulty.add(Status(429, retry_after=1), path="/manifests/")
    stale = requests.get(url, headers=headers, timeout=60)
    assert stale.status_code == 200
    assert stale.content == pushed.manifest
    assert stale.headers["X-Dependency-Proxy-Stale"] == "true"

    # An image never cached has nothing to fall back on: a registry error, not a 500.
    missing = requests.get(
        f"{live.url}/v2/{live.repository(GROUP, unique_name + '-other')}/manifests/latest",
        headers=live.bearer(USER.username, USER.password, GROUP, unique_name + "-other"),
        timeout=60,
    )
    assert missing.status_code == 429
    assert missing.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
