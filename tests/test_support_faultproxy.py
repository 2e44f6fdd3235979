"""The fault-injecting reverse proxy."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import images
from tests.support.faultproxy import Delay, FaultProxy, Hang, Reset, Status, Throttle, Truncate
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_url() -> t.Iterator[str]:
    """A server that answers with the header lines it received, as JSON."""

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps([[k, v] for k, v in self.headers.items()]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: t.Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


ProxyTo = t.Callable[[str], FaultProxy]


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> t.Iterator[t.Callable[[str], FaultProxy]]:
    made: list[FaultProxy] = []

    def make(url: str) -> FaultProxy:
        made.append(FaultProxy(url).start())
        return made[-1]

    yield make
    for proxy in made:
        proxy.stop()


def test_forwards_every_accept_line_and_host(echo_url: str, proxy_to: ProxyTo) -> None:
    proxy = proxy_to(echo_url)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest("GET", "/v2/x/manifests/1", skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", "registry.example:5000")
    conn.putheader("Accept", images.OCI_MANIFEST)
    conn.putheader("Accept", images.DOCKER_MANIFEST)
    conn.endheaders()
    received = json.loads(conn.getresponse().read())
    conn.close()
    assert ["Host", "registry.example:5000"] in received
    assert [v for k, v in received if k == "Accept"] == [
        images.OCI_MANIFEST,
        images.DOCKER_MANIFEST,
    ]
    (logged,) = proxy.requests
    assert logged.header_lines("accept") == [images.OCI_MANIFEST, images.DOCKER_MANIFEST]


def test_accept_lines_reach_registry(upstream: Registry, proxy_to: ProxyTo, tmp_path: Path) -> None:
    pushed = images.push(
        images.build_image("fp-accept", layer_sizes=(100,)),
        upstream,
        "support/fp-accept",
        "1",
        workdir=tmp_path,
    )
    proxy = proxy_to(upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest("GET", "/v2/support/fp-accept/manifests/1", skip_accept_encoding=True)
    conn.putheader("Accept", images.DOCKER_MANIFEST)
    conn.putheader("Accept", images.OCI_MANIFEST)  # only the second line allows OCI
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == pushed.manifest
    conn.close()


def test_status_rule_then_forward(echo_url: str, proxy_to: ProxyTo) -> None:
    proxy = proxy_to(echo_url)
    proxy.add(Status(429, retry_after=7), method="GET", path="/manifests/", times=1)
    first = requests.get(f"{proxy.url}/v2/a/manifests/1", timeout=10)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    assert first.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert requests.get(f"{proxy.url}/v2/a/manifests/1", timeout=10).status_code == 200
    assert [r.status for r in proxy.requests] == [429, 200]


def test_delay(echo_url: str, proxy_to: ProxyTo) -> None:
    proxy = proxy_to(echo_url)
    proxy.add(Delay(0.3))
    started = time.monotonic()
    assert requests.get(proxy.url, timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_truncate(upstream: Registry, proxy_to: ProxyTo, tmp_path: Path) -> None:
    pushed = images.push(
        images.build_image("fp-trunc", layer_sizes=(100_000,)),
        upstream,
        "support/fp-trunc",
        "1",
        workdir=tmp_path,
    )
    proxy = proxy_to(upstream.url)
    proxy.add(Truncate(1000), path="/blobs/")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"/v2/support/fp-trunc/blobs/{pushed.layer_digests[0]}")
    response = conn.getresponse()
    assert int(response.headers["Content-Length"]) > 100_000
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert len(info.value.partial) == 1000
    conn.close()


def test_reset_and_hang(echo_url: str, proxy_to: ProxyTo) -> None:
    proxy = proxy_to(echo_url)
    proxy.add(Reset(), path="/reset")
    proxy.add(Hang(30), path="/hang")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/reset", timeout=10)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{proxy.url}/hang", timeout=0.5)
    proxy.release()
    assert time.monotonic() - started < 10


def test_throttle(echo_url: str, proxy_to: ProxyTo) -> None:
    proxy = proxy_to(echo_url)
    proxy.add(Throttle(2000))
    started = time.monotonic()
    body = requests.get(proxy.url, timeout=10, headers={"X-Pad": "x" * 1000}).content
    assert len(body) > 1000
    assert time.monotonic() - started >= 0.4


def test_upstream_down_resets(proxy_to: ProxyTo) -> None:
    # A port bound but not listening refuses connections, and stays this test's: a
    # port merely free a moment ago may meanwhile be taken by a server that accepts.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as down:
        down.bind(("127.0.0.1", 0))
        proxy = proxy_to(f"http://127.0.0.1:{down.getsockname()[1]}")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{proxy.url}/v2/", timeout=10)
    (logged,) = proxy.requests
    assert logged.status is None
