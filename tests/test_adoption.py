"""The minimal host (``examples/minimal/app.py``) works as its docstring says: its
migration and seed commands, gunicorn with the shipped configuration, a skopeo pull
through the proxy, the group page behind its own session login, and the REST API with
its own token. It has no Flask-Login, so this is the contract without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.databases import Databases
from tests.support.platform import GUNICORN_CONF, REPO_ROOT
from tests.support.processes import ProcessFactory, free_port, http_probe
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the host contract, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

APP = "examples.minimal.app"


class Minimal(t.NamedTuple):
    url: str
    host: str
    token: str


@pytest.fixture(scope="module")
def minimal(
    module_processes: ProcessFactory,
    databases: Databases,
    upstream: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[Minimal]:
    workdir = tmp_path_factory.mktemp("minimal")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPENDENCY_PROXY_", "FLASK_"))
    }
    env.update(
        SECRET_KEY="minimal-secret",
        DATABASE_URL=databases.create("minimal"),
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url,
        DEPENDENCY_PROXY_STORAGE_PATH=str(workdir / "store"),
        DEPENDENCY_PROXY_EXTERNAL_URL=f"http://127.0.0.1:{port}",
        DEPENDENCY_PROXY_GROUP_DEFAULT_ENABLED="true",
    )

    def flask(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", APP, *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    flask("dependency-proxy", "db", "upgrade")
    token = flask("seed", "alice", "alice-password", "acme").strip()
    process = module_processes.create(
        "minimal",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONF),
            "-b",
            f"127.0.0.1:{port}",
            f"{APP}:create_app()",
        ],
        env=env,
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    process.start(ready=http_probe(f"{url}/v2/", status=401), timeout=60)
    yield Minimal(url, f"127.0.0.1:{port}", token)
    process.stop()


def test_a_pull_through_the_minimal_host(
    minimal: Minimal, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    pushed = images.push(
        images.build_image(unique_name), upstream, f"library/{unique_name}", "1", workdir=tmp_path
    )
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(minimal.host, "alice", "alice-password"))
    result, target = skopeo.copy_to_dir(
        f"{minimal.host}/acme/dependency_proxy/containers/{unique_name}:1"
    )
    checks.ok(result)
    for digest in pushed.blob_digests:
        assert (target / digest.split(":", 1)[1]).read_bytes() == upstream.read_blob(digest)
    # A wrong password is refused by the host's own check.
    assert skopeo.login(minimal.host, "alice", "nope").returncode != 0

    api = requests.get(
        f"{minimal.url}/api/v4/groups/acme/dependency_proxy/manifests",
        headers={"PRIVATE-TOKEN": minimal.token},
        timeout=10,
    )
    assert api.status_code == 200, api.text
    assert any(unique_name in str(entry) for entry in api.json()), api.json()
    refused = requests.get(
        f"{minimal.url}/api/v4/groups/acme/dependency_proxy/manifests",
        headers={"PRIVATE-TOKEN": "not-a-token"},
        timeout=10,
    )
    assert refused.status_code == 401, refused.text


def test_the_group_page_behind_session_login(minimal: Minimal) -> None:
    browser = requests.Session()
    page_url = f"{minimal.url}/groups/acme/-/dependency_proxy"
    anonymous = browser.get(page_url, allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302
    login_url = anonymous.headers["Location"]
    assert login_url.endswith("/login?next=%2Fgroups%2Facme%2F-%2Fdependency_proxy"), login_url

    wrong = browser.post(
        minimal.url + login_url,
        data={"username": "alice", "password": "nope"},
        timeout=10,
    )
    assert "Wrong username or password." in wrong.text
    assert 'class="flash error"' in wrong.text

    page = browser.post(
        minimal.url + login_url,
        data={"username": "alice", "password": "alice-password"},
        timeout=10,
    )
    assert page.status_code == 200 and page.url == page_url
    # The page filled the host's head block with its styles and shows its settings.
    assert ".dependency-proxy" in page.text.split("</head>", 1)[0]
    assert "Dependency Proxy" in page.text

    csrf = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None, page.text
    action = next(a for a in re.findall(r'action="([^"]+)"', page.text) if "cleanup" in a)
    changed = browser.post(
        minimal.url + action,
        data={
            "dependency_proxy_csrf_token": csrf.group(1),
            "cleanup_enabled": "1",
            "cleanup_days": "30",
        },
        timeout=10,
    )
    assert changed.status_code == 200 and changed.url == page_url
    # The host's base template shows the page's flashed message.
    assert 'class="flash info"' in changed.text, changed.text
