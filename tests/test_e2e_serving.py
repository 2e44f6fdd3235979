"""The shipped serving model (``examples/gunicorn.conf.py``) under clients that misbehave.

A CI fleet on bad links holds connections that read slowly, send nothing, or never
finish their request head. Other clients must still be answered, and connections that
make no progress must be let go.
"""

from __future__ import annotations

import hashlib
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images, seed
from tests.support.crowd import Crowd
from tests.support.platform import Platform
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is slow, idle and misbehaving clients, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

USER = seed.ALICE
GROUP = seed.ACME
MiB = 1024 * 1024


class Cached(t.NamedTuple):
    platform: Platform
    base: str
    headers: dict[str, str]
    manifest_digest: str
    layer_digest: str
    layer_size: int


def _cache_image(
    platform: Platform, upstream: Registry, name: str, tmp_path: Path, layer_size: int
) -> Cached:
    image = images.build_image(name, layer_sizes=(layer_size,))
    pushed = images.push(image, upstream, f"serving/{name}", "1", workdir=tmp_path)
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    base = f"{platform.url}/v2/{platform.repository(GROUP, pushed.repository)}"
    manifest = requests.get(f"{base}/manifests/1", headers=headers, timeout=30)
    assert manifest.status_code == 200, manifest.text
    layer = image.layers[0]
    blob = requests.get(f"{base}/blobs/{layer.digest}", headers=headers, timeout=60)
    assert blob.status_code == 200
    assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer.digest
    return Cached(platform, base, headers, pushed.digest, layer.digest, layer.size)


def _path(cached: Cached, url: str) -> str:
    return url.removeprefix(cached.platform.url)


def test_probe_is_answered_while_slow_readers_and_idle_connections_are_held(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    cached = _cache_image(platform_factory(upstream.url), upstream, unique_name, tmp_path, 8 * MiB)
    crowd = Crowd("127.0.0.1", cached.platform.port)
    probes: list[tuple[str, int | str]] = []
    try:
        # More than any thread pool of the old serving model: 2 workers x 8 threads.
        crowd.slow_readers(
            40, _path(cached, f"{cached.base}/blobs/{cached.layer_digest}"), cached.headers
        )
        crowd.idle_connections(300)
        crowd.slowloris_connections(10)
        time.sleep(1.0)  # every connection accepted and parked
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            for what, url, headers, expected in (
                ("base", f"{cached.platform.url}/v2/", {}, 401),
                ("manifest", f"{cached.base}/manifests/1", cached.headers, 200),
            ):
                try:
                    response = requests.get(url, headers=headers, timeout=5)
                except requests.RequestException as exc:
                    probes.append((what, type(exc).__name__))
                    continue
                probes.append((what, response.status_code))
                if expected == 200 and response.status_code == 200:
                    assert response.headers["Docker-Content-Digest"] == cached.manifest_digest
            time.sleep(0.1)
        readers_open = crowd.readers_open()
    finally:
        crowd.close()
    assert len(probes) >= 20
    failed = [probe for probe in probes if probe[1] not in (200, 401)]
    assert not failed, f"{len(failed)} of {len(probes)} probes failed: {failed[:10]}"
    # The slow readers were still being served, not dropped to make room.
    assert readers_open == 40
    assert all(0 < reader.received < cached.layer_size for reader in crowd.readers)


def test_a_client_that_stops_reading_is_cut_off(
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = platform_factory(
        upstream.url, extra_env={"DEPENDENCY_PROXY_CLIENT_SEND_TIMEOUT_SECONDS": "2"}
    )
    cached = _cache_image(platform, upstream, unique_name, tmp_path, 16 * MiB)
    crowd = Crowd("127.0.0.1", platform.port)
    try:
        # rate=0: the readers never take a byte after the request.
        crowd.slow_readers(
            3, _path(cached, f"{cached.base}/blobs/{cached.layer_digest}"), cached.headers, rate=0
        )
        # Longer than the timeout, several chunks' worth, without reading a byte.
        time.sleep(8)
        outcomes = [_drain(reader.sock) for reader in crowd.readers]
        body_limit = cached.layer_size + 4096  # the body plus a response head
        assert all(ended and total < body_limit for total, ended in outcomes), outcomes
        # A client that reads at its own pace on another connection is unaffected, and
        # the same connection model keeps serving whole blobs.
        blob = requests.get(
            f"{cached.base}/blobs/{cached.layer_digest}", headers=cached.headers, timeout=60
        )
        assert blob.status_code == 200
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == cached.layer_digest
    finally:
        crowd.close()


def _drain(sock: t.Any) -> tuple[int, bool]:
    """Read everything the connection still delivers: ``(bytes, whether the server
    ended the connection)``; a connection that is merely quiet for 3 s was not ended."""
    sock.settimeout(3)
    total = 0
    try:
        while data := sock.recv(1 << 20):
            total += len(data)
    except TimeoutError:
        return total, False
    except ConnectionResetError:
        pass
    return total, True


def test_idle_and_slowloris_connections_are_closed(
    platform_factory: t.Callable[..., Platform], upstream: Registry
) -> None:
    # The shipped configuration's keepalive (15 s) bounds how long a connection may
    # take to send a request head; a short one keeps the test short.
    platform = platform_factory(upstream.url, gunicorn_args=["--keep-alive", "2"])
    crowd = Crowd("127.0.0.1", platform.port)
    try:
        crowd.idle_connections(50)
        crowd.slowloris_connections(5, interval=0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            closed_idle = crowd.closed_by_server(crowd.idle)
            closed_slow = crowd.closed_by_server(crowd.slowloris)
            if len(closed_idle) == 50 and len(closed_slow) == 5:
                break
            time.sleep(0.5)
        assert len(crowd.closed_by_server(crowd.idle)) == 50
        assert len(crowd.closed_by_server(crowd.slowloris)) == 5
        # The slowloris clients kept sending; they were closed all the same.
        response = requests.get(f"{platform.url}/v2/", timeout=5)
        assert response.status_code == 401
    finally:
        crowd.close()
