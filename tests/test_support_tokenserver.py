"""The Docker Hub-like token server and the token-auth upstream."""

from __future__ import annotations

import base64
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import images
from tests.support.clients import Skopeo, describe
from tests.support.tokenserver import TokenUpstream

pytestmark = pytest.mark.e2e


def test_anonymous_pull_needs_token(token_upstream: TokenUpstream, tmp_path: Path) -> None:
    registry, token_server, creds = token_upstream
    pushed = images.push(
        images.build_image("tok", layer_sizes=(1000,)),
        registry,
        "library/tok",
        "1",
        workdir=tmp_path,
        creds=creds,
    )
    url = f"{registry.url}/v2/library/tok/manifests/1"
    accept = {"Accept": images.MANIFEST_ACCEPT}

    anonymous = requests.get(url, headers=accept, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_server.realm}"')

    since = token_server.mark()
    answer = requests.get(
        token_server.realm,
        params={"service": "registry.docker.io", "scope": "repository:library/tok:pull"},
        timeout=10,
    ).json()
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    assert answer["expires_in"] == 300
    header = jwt.get_unverified_header(answer["token"])
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    claims = jwt.decode(
        answer["token"], public_key, algorithms=["RS256"], audience="registry.docker.io"
    )
    assert claims["aud"] == "registry.docker.io"
    assert claims["access"] == [{"type": "repository", "name": "library/tok", "actions": ["pull"]}]
    assert token_server.count("library/tok", since=since) == 1

    authorized = requests.get(
        url, headers={**accept, "Authorization": f"Bearer {answer['token']}"}, timeout=10
    )
    assert authorized.status_code == 200
    assert authorized.headers["Docker-Content-Digest"] == pushed.digest


def test_bad_password_and_anonymous_push(token_upstream: TokenUpstream, tmp_path: Path) -> None:
    registry, token_server, _ = token_upstream
    refused = requests.get(
        token_server.realm,
        params={"service": "registry.docker.io", "scope": "repository:library/x:pull"},
        auth=("pusher", "wrong"),
        timeout=10,
    )
    assert refused.status_code == 401
    with pytest.raises(Exception) as info:
        images.push(
            images.build_image("anon", layer_sizes=(10,)),
            registry,
            "library/anon",
            "1",
            workdir=tmp_path,
        )
    assert "unauthorized" in str(getattr(info.value, "stderr", info.value)).lower()


def test_skopeo_pulls_through_token_auth(token_upstream: TokenUpstream, tmp_path: Path) -> None:
    registry, token_server, creds = token_upstream
    pushed = images.push(
        images.build_image("sk", layer_sizes=(1000, 2000)),
        registry,
        "library/sk",
        "1",
        workdir=tmp_path,
        creds=creds,
    )
    client = Skopeo(tmp_path / "skopeo")
    result, target = client.copy_to_dir(f"{registry.host}/library/sk:1")
    assert result.returncode == 0, describe(result)
    assert (target / "manifest.json").read_bytes() == pushed.manifest
