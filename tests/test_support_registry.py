"""The upstream registry helpers: access log, stop/restart, blob corruption."""

from __future__ import annotations

import hashlib
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images
from tests.support.registry import Registry, parse_access_log

pytestmark = pytest.mark.e2e


def test_parse_access_log() -> None:
    text = "\n".join(
        [
            'time="2026-11-27T08:43:36Z" level=info msg="response completed"',
            "127.0.0.1 - - [27/Nov/2026:08:43:36 +0000] "
            '"HEAD /v2/library/x/manifests/latest HTTP/1.1" 404 96 "" "curl/7.88.1"',
            "127.0.0.1 - - [27/Nov/2026:08:43:37 +0000] "
            '"GET /v2/a/b/blobs/sha256:ab?x=1 HTTP/1.1" 200 - "" "x"',
        ]
    )
    head, get = parse_access_log(text)
    assert (head.method, head.repository, head.kind, head.reference, head.status) == (
        "HEAD",
        "library/x",
        "manifests",
        "latest",
        404,
    )
    assert (get.repository, get.kind, get.query, get.size) == ("a/b", "blobs", "x=1", 0)


def test_access_log_counts_pulls(upstream: Registry, tmp_path: Path) -> None:
    image = images.build_image("count", layer_sizes=(1000, 2000))
    pushed = images.push(image, upstream, "support/count", "v1", workdir=tmp_path)
    since = upstream.mark()
    accept = {"Accept": images.MANIFEST_ACCEPT}
    base = f"{upstream.url}/v2/support/count"
    assert requests.head(f"{base}/manifests/v1", headers=accept, timeout=10).status_code == 200
    assert requests.get(f"{base}/manifests/v1", headers=accept, timeout=10).status_code == 200
    for digest in pushed.layer_digests:
        assert requests.get(f"{base}/blobs/{digest}", timeout=10).status_code == 200
    assert upstream.count("HEAD", repository="support/count", kind="manifests", since=since) == 1
    assert upstream.count("GET", repository="support/count", kind="manifests", since=since) == 1
    assert upstream.count("GET", repository="support/count", kind="blobs", since=since) == 2
    assert (
        upstream.count(
            "GET", repository="support/count", reference=pushed.layer_digests[0], since=since
        )
        == 1
    )


def test_stop_and_restart_keep_port_and_data(
    upstream_factory: t.Callable[..., Registry], tmp_path: Path
) -> None:
    registry: Registry = upstream_factory()
    pushed = images.push(
        images.build_image("restart", layer_sizes=(100,)),
        registry,
        "library/r",
        "1",
        workdir=tmp_path,
    )
    registry.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{registry.url}/v2/", timeout=5)
    registry.start()
    response = requests.get(
        f"{registry.url}/v2/library/r/manifests/1",
        headers={"Accept": images.MANIFEST_ACCEPT},
        timeout=10,
    )
    assert response.headers["Docker-Content-Digest"] == pushed.digest
    # The log covers both runs.
    assert registry.count("GET", repository="library/r", kind="manifests") == 1
    assert registry.count("PUT", repository="library/r", kind="manifests") == 1


def test_corrupt_blob(upstream: Registry, tmp_path: Path) -> None:
    pushed = images.push(
        images.build_image("corrupt", layer_sizes=(5000,)),
        upstream,
        "support/corrupt",
        "1",
        workdir=tmp_path,
    )
    digest = pushed.layer_digests[0]
    original = upstream.corrupt_blob(digest)
    url = f"{upstream.url}/v2/support/corrupt/blobs/{digest}"
    body = requests.get(url, timeout=10).content
    assert len(body) == len(original) and body != original
    assert "sha256:" + hashlib.sha256(body).hexdigest() != digest
    upstream.restore_blob(digest, original)
    assert requests.get(url, timeout=10).content == original
