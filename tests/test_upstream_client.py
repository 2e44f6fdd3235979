"""The upstream client against real registries: token negotiation like Docker Hub's,
token reuse, the Accept list, digest checks, and redirects to a blob host."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import itertools
import threading
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.upstream.bearer import parse_challenge
from flask_dependency_proxy.upstream.client import UpstreamClient
from flask_dependency_proxy.upstream.errors import UpstreamNotFound
from flask_dependency_proxy.upstream.token_cache import SharedTokenFiles
from tests.support import images
from tests.support.registry import Registry

if t.TYPE_CHECKING:
    from tests.conftest import TokenUpstream


def test_parse_challenge_keeps_quoted_commas() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull,push",
    }


def test_token_upstream_one_token_per_repository(
    token_upstream: TokenUpstream, tmp_path: Path
) -> None:
    registry, tokens, creds = token_upstream
    pushed = {
        name: images.push(
            images.build_image(f"{name}-seed", layer_sizes=(4096,)),
            registry,
            f"library/{name}",
            "latest",
            workdir=tmp_path,
            creds=creds,
        )
        for name in ("first", "second")
    }
    mark = tokens.mark()
    # Two clients sharing a token folder stand for two worker processes of one host.
    shared = SharedTokenFiles(str(tmp_path / "tokens"))
    workers = [UpstreamClient(registry.url, shared_tokens=shared) for _ in range(2)]

    for (name, image), client in itertools.product(pushed.items(), workers):
        repository = f"library/{name}"
        head = client.head_manifest(repository, "latest")
        assert head.digest == image.digest
        manifest = client.get_manifest(repository, "latest")
        assert manifest.content == image.manifest
        for digest in image.blob_digests:
            stream = client.open_blob(repository, digest)
            data = b"".join(stream)
            stream.close()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest

    assert tokens.count("library/first", since=mark) == 1
    assert tokens.count("library/second", since=mark) == 1
    with pytest.raises(UpstreamNotFound):
        workers[0].head_manifest("library/missing", "latest")


def test_oci_index_comes_back_whole(upstream: Registry, tmp_path: Path) -> None:
    index = images.build_index("accept-seed", layer_sizes=(1024,))
    pushed = images.push(index, upstream, "library/accept-index", "v1", workdir=tmp_path)
    client = UpstreamClient(upstream.url)
    manifest = client.get_manifest("library/accept-index", "v1")
    assert manifest.media_type == images.OCI_INDEX
    assert manifest.digest == pushed.digest
    assert manifest.content == pushed.manifest


class _Server:
    """A throwaway HTTP server on 127.0.0.1 whose GETs ``answer`` handles."""

    def __init__(self, answer: t.Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                answer(self)

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _reply(
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
    handler.wfile.write(body)


def test_blob_redirect_is_followed_without_the_upstream_authorization() -> None:
    """Like Docker Hub: a bearer challenge, then a 307 to a presigned object-store URL."""
    data = b"layer bytes" * 1000
    seen_by_blob_host: list[dict[str, str]] = []

    def blob_host(handler: http.server.BaseHTTPRequestHandler) -> None:
        seen_by_blob_host.append(dict(handler.headers))
        _reply(handler, 200, data)

    blobs = _Server(blob_host)

    def registry_answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/token"):
            _reply(handler, 200, b'{"token": "upstream-secret-token", "expires_in": 300}')
        elif handler.headers.get("Authorization") != "Bearer upstream-secret-token":
            realm = f"{registry.url}/token"
            _reply(handler, 401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})
        else:
            _reply(handler, 307, headers={"Location": f"{blobs.url}/object?X-Signature=abc"})

    registry = _Server(registry_answer)
    try:
        client = UpstreamClient(registry.url)
        stream = client.open_blob("library/x", "sha256:" + hashlib.sha256(data).hexdigest())
        assert b"".join(stream) == data
        stream.close()
        assert len(seen_by_blob_host) == 1
        assert "Authorization" not in seen_by_blob_host[0]
    finally:
        registry.close()
        blobs.close()


def test_concurrent_manifest_requests_share_one_upstream_request(
    upstream: Registry, tmp_path: Path
) -> None:
    pushed = images.push(
        images.build_image("single-flight-seed", layer_sizes=(1024,)),
        upstream,
        "library/single-flight",
        "latest",
        workdir=tmp_path,
    )
    client = UpstreamClient(upstream.url)
    client.head_manifest("library/single-flight", "latest")  # learn the challenge, warm up
    mark = upstream.mark()
    barrier = threading.Barrier(8)

    def check(_: int) -> str:
        barrier.wait()
        return client.head_manifest("library/single-flight", "latest").digest

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(check, range(8)))
    assert digests == [pushed.digest] * 8
    heads = upstream.count("HEAD", kind="manifests", since=mark)
    assert 1 <= heads < 8
