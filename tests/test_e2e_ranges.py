"""Resumable misses: a client whose transfer of a cold blob broke resumes it with
``curl -C -`` while the proxy is still fetching the blob, and gets the rest (``206``)
from the bytes fetched so far and then as they arrive; the first request of a miss may
carry a ``Range`` too. Upstream is ``docker-registry`` behind the fault proxy, throttled
so that the fetch is still running when the client comes back, and sees one ``GET``."""

from __future__ import annotations

import hashlib
import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.support import curl, images, seed
from tests.support.faultproxy import FaultProxy, Throttle
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import wait_for
from tests.support.registry import Registry

# Ranges, not the database, are the subject: the fleet's PostgreSQL is enough here.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE
#: The blob, and where the client's first transfer is cut: a quarter in.
BLOB_BYTES = 200 * images.MiB
CUT_BYTES = 50 * images.MiB
#: Slow enough that the fetch (about 6 s) is still running when the client resumes.
UPSTREAM_RATE = 32 * images.MiB


@pytest.fixture
def faulty(upstream: Registry) -> t.Iterator[FaultProxy]:
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def live(platform_factory: PlatformFactory, faulty: FaultProxy) -> Platform:
    return platform_factory(faulty.url, name="ranges")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_url(live: Platform, name: str, digest: str) -> str:
    return f"{live.url}/v2/{live.repository(GROUP, name)}/blobs/{digest}"


def test_a_broken_transfer_of_a_cold_blob_is_resumed_while_it_is_fetched(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    image = images.build_image(f"{unique_name}-seed", layer_sizes=(BLOB_BYTES,))
    pushed = images.push(image, upstream, f"library/{unique_name}", "1", workdir=tmp_path)
    layer = pushed.layer_digests[0]
    size = len(upstream.read_blob(layer))
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    url = _blob_url(live, unique_name, layer)
    faulty.add(Throttle(UPSTREAM_RATE), path="/blobs/")
    mark = upstream.mark()
    output = tmp_path / "blob"

    def fetching() -> bool:
        return bool(list((live.store_path / "staging").glob("*.partial")))

    answer = curl.cut_then_resume(
        url, url, headers, output, cut_at=CUT_BYTES, still_running=fetching
    )

    assert answer["status"] == "206"
    assert answer["accept-ranges"] == "bytes"
    start = int(answer["content-range"].split()[1].split("-")[0])
    assert CUT_BYTES <= start < size
    assert answer["content-range"] == f"bytes {start}-{size - 1}/{size}"
    assert _sha256(output.read_bytes()) == layer
    assert upstream.count("GET", kind="blobs", reference=layer, since=mark) == 1
    # The proxy asked upstream for the whole blob, and keeps it.
    (get,) = [r for r in faulty.requests if r.method == "GET" and layer in r.path]
    assert get.header_lines("Range") == []
    wait_for(lambda: not fetching(), timeout=30, what="the fetch to commit")
    assert [p for p in live.store_files_for(layer) if "blobs" in p.parts]


def test_the_first_request_of_a_miss_may_ask_for_a_range(
    live: Platform, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    image = images.build_image(f"{unique_name}-seed", layer_sizes=(2 * images.MiB,))
    pushed = images.push(image, upstream, f"library/{unique_name}", "1", workdir=tmp_path)
    layer = pushed.layer_digests[0]
    data = upstream.read_blob(layer)
    headers = live.bearer(USER.username, USER.password, GROUP, unique_name)
    url = _blob_url(live, unique_name, layer)
    mark = upstream.mark()

    ranged = subprocess.run(
        curl.argv(url, {**headers, "Range": "bytes=1000000-1999999"}, tmp_path / "ranged"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    past_end = subprocess.run(
        curl.argv(url, {**headers, "Range": f"bytes={len(data)}-"}, tmp_path / "past"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    whole = subprocess.run(
        curl.argv(url, headers, tmp_path / "whole"), capture_output=True, text=True, timeout=60
    )

    assert [ranged.returncode, past_end.returncode, whole.returncode] == [0, 0, 0]
    answer = curl.response_headers(tmp_path / "ranged")
    assert answer["status"] == "206"
    assert answer["content-range"] == f"bytes 1000000-1999999/{len(data)}"
    assert (tmp_path / "ranged").read_bytes() == data[1_000_000:2_000_000]
    refused = curl.response_headers(tmp_path / "past")
    assert (refused["status"], refused["content-range"]) == ("416", f"bytes */{len(data)}")
    assert curl.response_headers(tmp_path / "whole")["status"] == "200"
    assert (tmp_path / "whole").read_bytes() == data
    # One GET upstream, for the whole blob; the whole answer came from the cache.
    assert upstream.count("GET", kind="blobs", reference=layer, since=mark) == 1
    (get,) = [r for r in faulty.requests if r.method == "GET" and layer in r.path]
    assert get.header_lines("Range") == []
