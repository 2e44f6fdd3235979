"""The minimal host (``examples/minimal/app.py``) works as the quickstart says, installed
the way a newcomer installs it: a wheel built from the checkout's files, installed with no
extras into a fresh virtual environment (plus gunicorn, as the quickstart says), then the
example's migration and seed commands, gunicorn, a skopeo pull through the proxy, the group
page behind its own session login, and the REST API with its own token. So the package
ships its templates and migrations, its dependencies are complete, and the contract holds
without Flask-Login."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.platform import REPO_ROOT
from tests.support.processes import ProcessFactory, free_port, http_probe
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

# The example runs on SQLite, as the quickstart does: no database parameter here.

APP = "examples.minimal.app"
#: What the build needs of the checkout; tests, docs and examples are not packaged.
PACKAGED = ("setup.cfg", "pyproject.toml", "README.md", "flask_dependency_proxy")


class Minimal(t.NamedTuple):
    url: str
    host: str
    token: str


def _run(argv: t.Sequence[str | os.PathLike[str]], **kwargs: t.Any) -> str:
    done = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, timeout=300, **kwargs
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _clean_environment() -> dict[str, str]:
    """The test's environment without anything that points Python or the app elsewhere."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPENDENCY_PROXY_", "FLASK_"))
        and key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project's wheel (no extras) and gunicorn.

    The wheel is built from a copy of the packaged files, so the checkout gets no build
    folder and the test sees what a release would hold."""
    root = tmp_path_factory.mktemp("adoption-venv")
    source = root / "source"
    source.mkdir()
    for name in PACKAGED:
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    env = _clean_environment()
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", source],
        env=env,
    )
    (wheel,) = (root / "dist").glob("flask_dependency_proxy-*.whl")
    _run([sys.executable, "-m", "venv", root / "env"], env=env)
    python = root / "env" / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-input", wheel, "gunicorn"], env=env)
    return root / "env"


@pytest.fixture(scope="module")
def minimal(
    module_processes: ProcessFactory,
    venv: Path,
    upstream: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[Minimal]:
    workdir = tmp_path_factory.mktemp("minimal")
    # The example is not packaged: it is imported from the checkout through a link, and
    # the working directory holds no flask_dependency_proxy, so the venv's copy is used.
    (workdir / "examples").symlink_to(REPO_ROOT / "examples", target_is_directory=True)
    port = free_port()
    env = _clean_environment()
    env.update(
        SECRET_KEY="minimal-secret",
        DATABASE_URL=f"sqlite:///{workdir / 'minimal.db'}",
        DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url,
        DEPENDENCY_PROXY_STORAGE_PATH=str(workdir / "store"),
    )
    bin_dir = venv / "bin"

    imported = _run(
        [
            bin_dir / "python",
            "-c",
            f"import {APP}, flask_dependency_proxy; print(flask_dependency_proxy.__file__)",
        ],
        env=env,
        cwd=workdir,
    ).strip()
    assert Path(imported).resolve().is_relative_to(venv.resolve()), imported

    _run(
        [bin_dir / "flask", "--app", APP, "dependency-proxy", "db", "upgrade"], env=env, cwd=workdir
    )
    token = _run(
        [bin_dir / "flask", "--app", APP, "seed", "alice", "alice-password", "acme"],
        env=env,
        cwd=workdir,
    ).strip()
    _run(
        [bin_dir / "flask", "--app", APP, "dependency-proxy", "enable", "acme"],
        env=env,
        cwd=workdir,
    )
    process = module_processes.create(
        "minimal",
        [bin_dir / "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", f"{APP}:create_app()"],
        env=env,
        cwd=workdir,
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
