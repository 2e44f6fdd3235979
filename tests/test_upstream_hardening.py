"""An upstream, or whoever answers in its name, tries to turn the upstream client against
the proxy: challenges from redirect targets, plain-http realms, redirects to internal
addresses, compressed manifests, a tag that moves between HEAD and GET, a dead host.

Every upstream here is a real HTTP server on 127.0.0.1 (loopback class), so redirects to
other loopback ports are allowed and those to link-local or private addresses are not.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import logging
import socket
import ssl
import subprocess
import time
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.upstream import address as address_module
from flask_dependency_proxy.upstream.address import AddressRule, address_class
from flask_dependency_proxy.upstream.breaker import retry_after_seconds
from flask_dependency_proxy.upstream.client import UpstreamClient
from flask_dependency_proxy.upstream.errors import (
    UpstreamDown,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRefused,
)
from tests.support import seed
from tests.support.httpserver import BackgroundServer

#: The subject is what an untrusted upstream sends, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

if t.TYPE_CHECKING:
    from tests.support.platform import Platform

Answer = t.Callable[[http.server.BaseHTTPRequestHandler], None]
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CREDENTIALS = ("proxy-account", "proxy-secret")


class Recording:
    """A server on 127.0.0.1 whose requests ``answer`` handles; it keeps each request's
    method, path and headers."""

    def __init__(self, answer: Answer, *, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        recording = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                recording.seen.append((self.command, self.path, dict(self.headers)))
                answer(self)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self.background = BackgroundServer("hardening-server")
        self.background.start(Handler)
        self.scheme = "http"
        if tls is not None:
            server = self.background._server
            assert server is not None
            server.socket = tls.wrap_socket(server.socket, server_side=True)
            self.scheme = "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.background.port}"

    def authorizations(self) -> list[str]:
        return [h["Authorization"] for _, _, h in self.seen if "Authorization" in h]

    def close(self) -> None:
        self.background.stop()


def reply(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def servers() -> t.Iterator[list[Recording]]:
    started: list[Recording] = []
    yield started
    for server in started:
        server.close()


def test_redirect_target_challenge_never_gets_the_credentials(
    servers: list[Recording],
) -> None:
    """A CDN that answers 401 with a bearer challenge is not the upstream: its realm gets
    no request, and no later repository asks it for a token."""
    evil_realm = Recording(lambda h: reply(h, 200, b'{"token": "evil", "expires_in": 300}'))
    cdn = Recording(
        lambda h: reply(
            h, 401, headers={"WWW-Authenticate": f'Bearer realm="{evil_realm.url}/token"'}
        )
    )
    upstream = Recording(lambda h: reply(h, 307, headers={"Location": f"{cdn.url}/blob"}))
    servers += [evil_realm, cdn, upstream]
    client = UpstreamClient(upstream.url, credentials=CREDENTIALS, retries=0)

    with pytest.raises(UpstreamNotFound):
        client.open_blob("library/x", digest_of(b"x"))
    with pytest.raises(UpstreamNotFound):
        client.open_blob("library/other", digest_of(b"y"))
    assert evil_realm.seen == []
    assert cdn.authorizations() == []


@pytest.mark.process
def test_plain_http_realm_of_an_https_upstream_is_refused(
    servers: list[Recording], tmp_path: Path
) -> None:
    realm = Recording(lambda h: reply(h, 200, b'{"token": "t", "expires_in": 300}'))
    servers.append(realm)
    context, ca = _tls_context(tmp_path)
    upstream = Recording(
        lambda h: reply(h, 401, headers={"WWW-Authenticate": f'Bearer realm="{realm.url}/t"'}),
        tls=context,
    )
    servers.append(upstream)
    session = requests.Session()
    session.verify = str(ca)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    client = UpstreamClient(upstream.url, session=session, credentials=CREDENTIALS, retries=0)

    with pytest.raises(UpstreamRefused, match="plain-http"):
        client.head_manifest("library/x", "latest")
    assert realm.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1:8080/internal",
        "http://[fe80::1]/x",
        "http://0.0.0.0:9/x",
        "ftp://127.0.0.1/x",
    ],
)
def test_redirect_to_an_address_outside_the_upstreams_class_is_refused(
    servers: list[Recording], target: str
) -> None:
    upstream = Recording(lambda h: reply(h, 307, headers={"Location": target}))
    servers.append(upstream)
    client = UpstreamClient(upstream.url, retries=0, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamRefused):
        client.open_blob("library/x", digest_of(b"x"))
    assert time.monotonic() - started < 0.5  # refused before any connection attempt


def test_realm_on_an_address_outside_the_upstreams_class_is_refused(
    servers: list[Recording],
) -> None:
    upstream = Recording(
        lambda h: reply(
            h, 401, headers={"WWW-Authenticate": 'Bearer realm="http://169.254.169.254/token"'}
        )
    )
    servers.append(upstream)
    client = UpstreamClient(upstream.url, credentials=CREDENTIALS, retries=0)
    with pytest.raises(UpstreamRefused):
        client.head_manifest("library/x", "latest")


def test_answer_from_an_address_the_check_did_not_see_is_refused(
    servers: list[Recording], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolved to a public address when checked, the connection
    reached loopback. Resolution is replaced for the check only; the connection is real."""
    internal = Recording(lambda h: reply(h, 200, b"internal secret"))
    upstream = Recording(lambda h: reply(h, 307, headers={"Location": f"{internal.url}/x"}))
    servers += [internal, upstream]
    monkeypatch.setattr(address_module, "resolve", lambda host: ["93.184.216.34"])
    client = UpstreamClient(upstream.url, retries=0)
    with pytest.raises(UpstreamRefused, match="loopback"):
        client.open_blob("library/x", digest_of(b"x"))
    assert len(internal.seen) == 1  # the residual: one request sent, its answer dropped


def test_address_rule_allows_public_addresses_and_the_upstreams_own_class() -> None:
    public = AddressRule("93.184.216.34")
    public.check("8.8.8.8")
    for internal in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1"):
        with pytest.raises(UpstreamRefused):
            public.check(internal)
    on_premise = AddressRule("10.0.0.5")
    on_premise.check("192.168.1.1")
    with pytest.raises(UpstreamRefused):
        on_premise.check("127.0.0.1")
    loopback = AddressRule("127.0.0.1")
    loopback.check("localhost")
    with pytest.raises(UpstreamRefused):
        loopback.check("172.16.0.1")
    assert address_class("::ffff:127.0.0.1") == "loopback"
    assert address_class("fd00::1") == "private"
    assert address_class("fe80::1") == "link-local"


def test_redirect_keeps_authorization_on_the_upstreams_origin_only(
    servers: list[Recording],
) -> None:
    data = b"blob" * 100
    blob_host = Recording(lambda h: reply(h, 200, data))
    servers.append(blob_host)

    def registry(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/token"):
            reply(handler, 200, b'{"token": "secret-token", "expires_in": 300}')
        elif handler.headers.get("Authorization") != "Bearer secret-token":
            realm = f"{upstream.url}/token"
            reply(handler, 401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})
        elif handler.path.startswith("/v2/library/x/blobs/"):
            reply(handler, 307, headers={"Location": "/moved"})
        else:
            reply(handler, 307, headers={"Location": f"{blob_host.url}/object?sig=1"})

    upstream = Recording(registry)
    servers.append(upstream)
    stream = UpstreamClient(upstream.url, credentials=CREDENTIALS).open_blob(
        "library/x", digest_of(data)
    )
    assert b"".join(stream) == data
    stream.close()
    moved = [h for _, path, h in upstream.seen if path == "/moved"]
    assert [h.get("Authorization") for h in moved] == ["Bearer secret-token"]
    assert blob_host.authorizations() == []


def test_manifest_through_a_redirect_without_a_digest_is_refused(
    servers: list[Recording],
) -> None:
    internal = Recording(
        lambda h: reply(h, 200, b'{"secret": "internal"}', {"Content-Type": MANIFEST_TYPE})
    )
    upstream = Recording(lambda h: reply(h, 302, headers={"Location": f"{internal.url}/x"}))
    servers += [internal, upstream]
    with pytest.raises(UpstreamRefused):
        UpstreamClient(upstream.url, retries=0).get_manifest("library/x", "latest")


def test_compressed_manifest_is_refused_undecoded(servers: list[Recording]) -> None:
    """A gzip bomb: 64 MiB of zeros in a few KiB, with the digest of the decoded bytes."""
    decoded = b"\0" * (64 * 1024 * 1024)
    bomb = gzip.compress(decoded, compresslevel=9)
    headers = {
        "Content-Type": MANIFEST_TYPE,
        "Content-Encoding": "gzip",
        "Docker-Content-Digest": digest_of(decoded),
    }
    upstream = Recording(lambda h: reply(h, 200, bomb, headers))
    servers.append(upstream)
    with pytest.raises(UpstreamRefused, match="Content-Encoding"):
        UpstreamClient(upstream.url, retries=0).get_manifest("library/x", "latest")


def test_oversized_manifest_without_a_length_is_cut_off(servers: list[Recording]) -> None:
    def chunked(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", MANIFEST_TYPE)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        piece = b"x" * 65536
        try:
            for _ in range(100):  # 6.25 MiB
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    upstream = Recording(chunked)
    servers.append(upstream)
    with pytest.raises(UpstreamRefused, match="larger than"):
        UpstreamClient(upstream.url, retries=0).get_manifest("library/x", "latest")


def test_dead_upstream_fails_fast_after_repeated_connect_failures() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = UpstreamClient(dead, retries=0, breaker_failures=2, breaker_seconds=30)
    for _ in range(2):
        with pytest.raises(UpstreamError) as failure:
            client.head_manifest("library/x", "latest")
        assert not isinstance(failure.value, UpstreamDown)
    with pytest.raises(UpstreamDown):
        client.head_manifest("library/x", "latest")


def test_low_rate_limit_is_kept_and_logged(
    servers: list[Recording], caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Recording(
        lambda h: reply(
            h,
            200,
            headers={
                "Docker-Content-Digest": digest_of(b"m"),
                "Content-Type": MANIFEST_TYPE,
                "RateLimit-Limit": "100;w=21600",
                "RateLimit-Remaining": "3;w=21600",
            },
        )
    )
    servers.append(upstream)
    client = UpstreamClient(upstream.url)
    with caplog.at_level(logging.WARNING, logger="flask_dependency_proxy.upstream.transport"):
        client.head_manifest("library/x", "latest")
    assert (client.rate_limit_remaining, client.rate_limit_limit) == (3, 100)
    assert "3 pulls left of 100" in caplog.text


def _tls_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


# -- through the platform ---------------------------------------------------------------


def test_moved_tag_is_fetched_by_the_digest_its_head_announced(
    servers: list[Recording], platform_factory: t.Callable[..., Platform]
) -> None:
    """HEAD announces one manifest; a GET by tag would give another (the tag moved, or
    a lying upstream). The proxy serves the one the HEAD announced."""
    announced = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "n": 1}).encode()
    moved = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "n": 2}).encode()

    def registry(handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path == "/v2/" or path == "/v2":
            reply(handler, 200, b"{}")
            return
        body = announced if handler.command == "HEAD" or digest_of(announced) in path else moved
        headers = {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest_of(body)}
        reply(handler, 200, body, headers)

    upstream = Recording(registry)
    servers.append(upstream)
    platform = platform_factory(upstream.url)
    headers = platform.bearer(seed.ALICE.username, seed.ALICE.password, seed.ACME, "moving")
    headers["Accept"] = MANIFEST_TYPE
    url = f"{platform.url}/v2/{platform.repository(seed.ACME, 'moving')}/manifests/latest"
    response = requests.get(url, headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == announced
    assert response.headers["Docker-Content-Digest"] == digest_of(announced)
    gets = [path for method, path, _ in upstream.seen if method == "GET" and "manifests" in path]
    assert gets == [f"/v2/library/moving/manifests/{digest_of(announced)}"]


@pytest.mark.parametrize(
    "content_type",
    ["text/html; charset=utf-8", "application/json", "", MANIFEST_TYPE + "x"],
    ids=["html", "json", "none", "lookalike"],
)
def test_a_manifest_that_is_not_a_manifest_media_type_is_refused(
    servers: list[Recording], content_type: str
) -> None:
    body = b"<html>please sign in</html>"
    headers = {"Docker-Content-Digest": digest_of(body)}
    if content_type:
        headers["Content-Type"] = content_type
    upstream = Recording(lambda h: reply(h, 200, body, headers))
    servers.append(upstream)
    client = UpstreamClient(upstream.url, retries=0)
    with pytest.raises(UpstreamRefused, match="not a manifest media type"):
        client.head_manifest("library/x", "latest")
    with pytest.raises(UpstreamRefused, match="not a manifest media type"):
        client.get_manifest("library/x", "latest")


def test_manifest_media_types_pass_with_parameters_and_in_any_case(
    servers: list[Recording],
) -> None:
    body = b"{}"
    headers = {
        "Docker-Content-Digest": digest_of(body),
        "Content-Type": "Application/VND.docker.distribution.manifest.list.v2+json; x=1",
    }
    upstream = Recording(lambda h: reply(h, 200, body, headers))
    servers.append(upstream)
    manifest = UpstreamClient(upstream.url, retries=0).get_manifest("library/x", "latest")
    assert manifest.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"


def test_non_ascii_digits_from_upstream_are_not_numbers(servers: list[Recording]) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: a length, a rate limit or a
    ``Retry-After`` of such characters is no number, never a crash."""

    def head(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Docker-Content-Digest", digest_of(b"m"))
        handler.send_header("Content-Type", MANIFEST_TYPE)
        handler.send_header("Content-Length", "²")
        handler.send_header("RateLimit-Limit", "¹²;w=21600")
        handler.send_header("RateLimit-Remaining", "³")
        handler.send_header("Connection", "close")
        handler.end_headers()

    upstream = Recording(head)
    servers.append(upstream)
    client = UpstreamClient(upstream.url, retries=0)
    found = client.head_manifest("library/x", "latest")
    assert (found.digest, found.size) == (digest_of(b"m"), None)
    assert (client.rate_limit_limit, client.rate_limit_remaining) == (None, None)

    limited = Recording(lambda h: reply(h, 429, headers={"Retry-After": "²"}))
    servers.append(limited)
    client = UpstreamClient(limited.url, retries=1)
    with pytest.raises(UpstreamError) as refused:
        client.head_manifest("library/x", "latest")
    assert refused.value.status == 429
    assert retry_after_seconds("²", now=0.0) is None
    assert retry_after_seconds("12", now=0.0) == 12.0
