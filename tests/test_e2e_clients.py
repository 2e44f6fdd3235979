"""Docker's daemon and containerd's ``ctr`` pull through the proxy as the README says.

One ``dockerd`` and one standalone ``containerd`` serve the whole module. Every test
pushes an image of its own to the upstream and checks what a user sees: the image ID
equals the upstream's config digest, the platform's store holds the blobs, and a second
pull asks upstream for no blob again. The containerd mirror recipe is read from the
README, so the documented ``hosts.toml`` is the one that is tested.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Podman
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.platform import Platform
from tests.support.processes import LiveProcess, ProcessFactory, free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the clients, not the database.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

README = Path(__file__).resolve().parent.parent / "README.md"
_MIRROR_SNIPPET = re.compile(
    r"<!-- docker-mirror:begin -->\s*```nginx\n(?P<body>.*?)```\s*<!-- docker-mirror:end -->",
    re.DOTALL,
)
#: Docker Hub's key in the docker client's config: the credentials dockerd sends a mirror.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


def _mirror_config(run_dir: Path, port: int, platform: Platform) -> str:
    """The README's docker mirror snippet, listening on ``port``, in front of the
    live platform, inside an ``http`` block whose files stay in ``run_dir``."""
    found = _MIRROR_SNIPPET.search(README.read_text())
    assert found, "README.md has no ```nginx block between the docker-mirror markers"
    snippet = found.group("body")
    assert snippet.count("listen 80;") == 1, snippet
    snippet = snippet.replace("listen 80;", f"listen 127.0.0.1:{port};")
    assert "https://platform.example.com" in snippet, snippet
    snippet = snippet.replace("https://platform.example.com", platform.url)
    temp = {name: run_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir(parents=True, exist_ok=True)
    return (
        "daemon off;\nuser root;\nworker_processes 1;\n"
        f"pid {run_dir / 'nginx.pid'};\nerror_log stderr info;\n"
        "events { worker_connections 512; }\nhttp {\n    access_log /dev/stdout;\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + snippet
        + "}\n"
    )


@pytest.fixture(scope="module")
def mirror(
    module_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    platform: Platform,
) -> t.Iterator[str]:
    """nginx with the README's docker mirror snippet; yields its ``host:port``."""
    run_dir = tmp_path_factory.mktemp("mirror")
    port = free_port()
    config = run_dir / "nginx.conf"
    config.write_text(_mirror_config(run_dir, port, platform))
    process: LiveProcess = module_processes.create(
        "nginx-mirror", ["nginx", "-e", "stderr", "-p", str(run_dir), "-c", str(config)]
    )

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True

    process.start(ready=answers, timeout=30)
    yield f"127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def engine(
    module_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    platform: Platform,
    mirror: str,
) -> t.Iterator[Dockerd]:
    """One ``dockerd`` for the module, logged in to the platform, with the nginx mirror
    as its ``registry-mirrors`` and the platform credential under Docker Hub's key."""
    daemon = Dockerd(module_processes, tmp_path_factory.mktemp("dockerd"))
    daemon.process.argv += ["--registry-mirror", f"http://{mirror}"]
    daemon.start()
    checks.ok(daemon.login(platform.host, seed.ALICE.username, seed.ALICE.password))
    config_path = daemon.config_dir / "config.json"
    config = json.loads(config_path.read_text())
    secret = f"{seed.ALICE.username}:{seed.ALICE.password}".encode()
    config["auths"][DOCKER_HUB_AUTH_KEY] = {"auth": base64.b64encode(secret).decode()}
    config_path.write_text(json.dumps(config))
    yield daemon
    daemon.process.stop()


@pytest.fixture(scope="module")
def containerd(
    module_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Containerd]:
    daemon = Containerd(module_processes, tmp_path_factory.mktemp("containerd")).start()
    yield daemon
    daemon.process.stop()


def _push(upstream: Registry, name: str, tmp_path: Path) -> images.Pushed:
    image = images.build_image(f"{name}-seed", layer_sizes=(2048, 4096))
    return images.push(image, upstream, f"library/{name}", "latest", workdir=tmp_path)


def _cached(platform: Platform, pushed: images.Pushed) -> None:
    for digest in pushed.blob_digests:
        assert platform.stored_blobs_for(digest), f"{digest} is not in the cache"


def _group_blobs(platform: Platform) -> dict[str, int]:
    """The group's cached blobs as ``stats --json`` counts them."""
    document = json.loads(platform.flask("dependency-proxy", "stats", seed.ACME, "--json").stdout)
    return t.cast(dict[str, int], document["groups"][0]["blobs"])


def _image_id(engine: Dockerd, reference: str) -> str:
    inspected = json.loads(checks.ok(engine.docker("image", "inspect", reference)).stdout)
    return t.cast(str, inspected[0]["Id"])


def test_docker_pull_by_tag_then_by_digest(
    platform: Platform, upstream: Registry, engine: Dockerd, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    before = _group_blobs(platform)
    reference = platform.image(seed.ACME, unique_name, "latest")
    checks.ok(engine.docker("pull", reference))
    assert _image_id(engine, reference) == pushed.config_digest
    _cached(platform, pushed)
    after = _group_blobs(platform)
    assert after["count"] == before["count"] + len(pushed.blob_digests), (before, after)
    assert after["size"] > before["size"]

    checks.ok(engine.docker("rmi", reference))
    mark = upstream.mark()
    by_digest = platform.image(seed.ACME, unique_name, pushed.digest)
    pulled = checks.ok(engine.docker("pull", by_digest)).stdout
    assert pushed.digest in pulled
    assert _image_id(engine, by_digest) == pushed.config_digest
    # A digest is served from the cache: upstream sees neither a manifest nor a blob.
    assert upstream.count("GET", kind="blobs", since=mark) == 0
    assert upstream.count(kind="manifests", since=mark) == 0

    checks.ok(engine.docker("rmi", by_digest))
    mark = upstream.mark()
    checks.ok(engine.docker("pull", reference))
    assert upstream.count("GET", kind="blobs", since=mark) == 0


def test_docker_pull_platform_arm64_of_a_multi_arch_image(
    platform: Platform, upstream: Registry, engine: Dockerd, unique_name: str, tmp_path: Path
) -> None:
    index = images.build_index(f"{unique_name}-seed", layer_sizes=(1024, 2048))
    pushed = images.push(index, upstream, f"library/{unique_name}", "latest", workdir=tmp_path)
    reference = platform.image(seed.ACME, unique_name, "latest")
    checks.ok(engine.docker("pull", "--platform", "linux/arm64", reference))
    inspected = json.loads(checks.ok(engine.docker("image", "inspect", reference)).stdout)[0]
    arm64 = pushed.child("arm64")
    assert inspected["Id"] == arm64.config_digest
    assert inspected["Architecture"] == "arm64"
    _cached(platform, arm64)
    # Only the arm64 image was fetched, not its amd64 sibling.
    assert not platform.stored_blobs_for(t.cast(str, pushed.child("amd64").config_digest))


def test_docker_build_from_the_proxy(
    platform: Platform, upstream: Registry, engine: Dockerd, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    context = tmp_path / "context"
    context.mkdir()
    base = platform.image(seed.ACME, unique_name, "latest")
    (context / "Dockerfile").write_text(f'FROM {base}\nLABEL built.from="proxy"\n')
    built = f"built-{unique_name}:1"
    checks.ok(engine.docker("build", "--pull", "-t", built, str(context)))
    assert _image_id(engine, base) == pushed.config_digest
    inspected = json.loads(checks.ok(engine.docker("image", "inspect", built)).stdout)[0]
    assert inspected["Config"]["Labels"]["built.from"] == "proxy"
    _cached(platform, pushed)


def test_ctr_pull_with_user(
    platform: Platform,
    upstream: Registry,
    containerd: Containerd,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    reference = platform.image(seed.ACME, unique_name, "latest")
    checks.ok(containerd.pull(reference, seed.ALICE.username, seed.ALICE.password))
    check = checks.ok(containerd.ctr("images", "check")).stdout
    line = next(line for line in check.splitlines() if line.startswith(reference))
    assert pushed.digest in line and "complete (3/3)" in line, check
    _cached(platform, pushed)


def _readme_hosts_toml(platform: Platform) -> str:
    """The README's ``hosts.toml`` for containerd, pointed at the live platform."""
    text = README.read_text()
    found = re.search(
        r"```toml\n(# /etc/containerd/certs\.d/docker\.io/hosts\.toml\n.*?)```", text, re.S
    )
    assert found, "the README has no containerd hosts.toml recipe"
    assert "https://platform.example.com/v2/" in found.group(1), found.group(1)
    return found.group(1).replace("https://platform.example.com", platform.url)


def test_ctr_pull_through_the_readme_hosts_toml(
    platform: Platform,
    upstream: Registry,
    containerd: Containerd,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "docker.io").mkdir(parents=True)
    (hosts_dir / "docker.io" / "hosts.toml").write_text(_readme_hosts_toml(platform))
    reference = f"docker.io/library/{unique_name}:latest"
    result = containerd.ctr(
        "images",
        "pull",
        "--hosts-dir",
        str(hosts_dir),
        "--snapshotter",
        "native",
        "--user",
        f"{seed.ALICE.username}:{seed.ALICE.password}",
        reference,
    )
    checks.ok(result)
    check = checks.ok(containerd.ctr("images", "check")).stdout
    line = next(line for line in check.splitlines() if line.startswith(reference))
    assert pushed.digest in line and "complete (3/3)" in line, check
    _cached(platform, pushed)


def test_docker_registry_mirror_through_the_readme_nginx_rewrite(
    platform: Platform, upstream: Registry, engine: Dockerd, unique_name: str, tmp_path: Path
) -> None:
    """``docker pull NAME`` of an official image goes to the mirror, which maps it to
    the group; the platform caches it (there is no Docker Hub to fall back to here)."""
    pushed = _push(upstream, unique_name, tmp_path)
    mark = upstream.mark()
    checks.ok(engine.docker("pull", unique_name))
    assert _image_id(engine, unique_name) == pushed.config_digest
    _cached(platform, pushed)
    assert upstream.count("GET", kind="blobs", since=mark) == len(pushed.blob_digests)


def _readme_registries_conf(platform: Platform) -> str:
    """The README's podman ``registries.conf`` drop-in, pointed at the live platform."""
    found = re.search(
        r"```toml\n(# /etc/containers/registries\.conf\.d/dependency-proxy\.conf\n.*?)```",
        README.read_text(),
        re.S,
    )
    assert found, "the README has no podman registries.conf recipe"
    return found.group(1).replace("platform.example.com", platform.host)


def test_podman_mirror_recipe_of_the_readme_needs_its_login(
    platform: Platform, upstream: Registry, podman: Podman, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    conf = tmp_path / "dependency-proxy.conf"
    conf.write_text(_readme_registries_conf(platform))
    podman.env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    reference = f"docker.io/library/{unique_name}:latest"
    pull = ["pull", "--quiet", "--authfile", str(podman.authfile), reference]
    # Without the login the mirror is skipped (and Docker Hub is out of reach here).
    assert podman.run(*pull).returncode != 0
    assert not platform.stored_blobs_for(t.cast(str, pushed.config_digest))
    checks.ok(podman.login(platform.host, seed.ALICE.username, seed.ALICE.password))
    checks.ok(podman.run(*pull))
    assert podman.image_inspect(reference)["Id"] == pushed.config_digest[7:]
    _cached(platform, pushed)


def test_buildah_pulls_through_the_readme_mirror_after_its_login(
    platform: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path)
    conf = tmp_path / "dependency-proxy.conf"
    conf.write_text(_readme_registries_conf(platform))
    (tmp_path / "buildah-tmp").mkdir()
    # Run state in a short folder: containers/storage limits the runroot's path length.
    runroot = tempfile.mkdtemp(prefix="fdp-buildah-", dir="/tmp")
    env = {
        **os.environ,
        "CONTAINERS_REGISTRIES_CONF": str(conf),
        "TMPDIR": str(tmp_path / "buildah-tmp"),
    }
    authfile = str(tmp_path / "buildah-auth.json")
    base = ["buildah", "--root", str(tmp_path / "buildah-root"), "--runroot", runroot]
    base += ["--storage-driver", "vfs"]

    def buildah(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=120)

    try:
        secret = seed.ALICE.password
        user = seed.ALICE.username
        login = ["login", "--tls-verify=false", "--authfile", authfile, "-u", user]
        checks.ok(buildah(*login, "-p", secret, platform.host))
        reference = f"docker.io/library/{unique_name}:latest"
        checks.ok(buildah("pull", "--quiet", "--authfile", authfile, reference))
        inspected = json.loads(checks.ok(buildah("inspect", "--type", "image", reference)).stdout)
        assert inspected["FromImageID"] == pushed.config_digest[7:]
        _cached(platform, pushed)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
