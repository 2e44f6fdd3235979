"""The plain-SQLAlchemy host (``examples/minimal/plain.py``) run for real: set up with its
own CLI (each command through ``outside_request``, its session otherwise exists only
within a request), served by gunicorn with the shipped configuration, pulled through
with skopeo from a real upstream registry, and logged in to the way containerd (password
grant) and docker (refresh token) do. ``scripts/test`` also runs it in its
lowest-versions lane, on the dependency floors ``setup.cfg`` declares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.platform import GUNICORN_CONF, REPO_ROOT
from tests.support.processes import ProcessFactory, free_port
from tests.support.registry import Registry

# A plain SQLAlchemy host like Pagure's (SQLite); the lowest-versions lane runs it again.
UNWANTED_COMBINATIONS = [{"database_backend": "postgresql"}]

pytestmark = pytest.mark.e2e

APP = "examples.minimal.plain"
PASSWORD = "alice-password-0001"


def test_skopeo_pulls_through_a_plain_sqlalchemy_host(
    module_processes: ProcessFactory,
    fresh_database_url: str,
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPENDENCY_PROXY_", "FLASK_"))
    }
    env.update(
        DATABASE_URL=fresh_database_url,
        SECRET_KEY="plain-e2e-secret",
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url,
        DEPENDENCY_PROXY_STORAGE_PATH=str(tmp_path / "store"),
        DEPENDENCY_PROXY_EXTERNAL_URL=f"http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )

    def flask(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", APP, *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    flask("dependency-proxy", "db", "upgrade")
    flask("seed", "alice", PASSWORD, "acme")
    flask("dependency-proxy", "enable", "acme")
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF)]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "2", f"{APP}:create_app()"]
    module_processes.create("plain-host", argv, env=env, cwd=REPO_ROOT).start(
        ready_url=f"http://127.0.0.1:{port}/v2/", ready_status=401
    )

    repository = f"e2e/{unique_name}"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(200_000,)),
        upstream,
        repository,
        "1.0",
        workdir=tmp_path,
    )
    checks.ok(skopeo.login(f"127.0.0.1:{port}", "alice", PASSWORD))
    result, target = skopeo.copy_to_dir(
        f"127.0.0.1:{port}/acme/dependency_proxy/containers/{repository}:1.0"
    )
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    # What the pull cached is what the CLI (outside any request) reads back.
    assert "acme: 1 images, 1 manifests" in flask("dependency-proxy", "stats", "acme")

    # containerd's login (the password grant) and docker's (a refresh token): form POSTs.
    token_url = f"http://127.0.0.1:{port}/jwt/auth"
    scope = f"repository:acme/dependency_proxy/containers/{repository}:pull"
    answer = requests.post(
        token_url,
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "service": "dependency_proxy",
            "scope": scope,
            "client_id": "containerd-client",
            "access_type": "offline",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    refreshed = requests.post(
        token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": answer.json()["refresh_token"],
            "service": "dependency_proxy",
            "scope": scope,
            "client_id": "docker",
        },
        timeout=30,
    )
    assert refreshed.status_code == 200, refreshed.text
    manifest = requests.get(
        f"http://127.0.0.1:{port}/v2/acme/dependency_proxy/containers/{repository}/manifests/1.0",
        headers={
            "Authorization": f"Bearer {refreshed.json()['access_token']}",
            "Accept": "application/vnd.oci.image.manifest.v1+json",
        },
        timeout=30,
    )
    assert manifest.status_code == 200, manifest.text
    assert manifest.content == pushed.manifest
