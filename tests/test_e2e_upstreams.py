"""Several upstream registries on one live platform, configured as data
(``DEPENDENCY_PROXY_UPSTREAMS``): names that carry a registry host go there, the others
go down the group's ordered list; outages, ``429``s and a dead upstream.

Upstreams, in the instance's order:

- ``hub`` (hosts ``docker.io``, written without ``library_prefix``): the session's plain
  registry behind a fault proxy;
- ``ghcr`` (hosts ``ghcr.io``): a second plain registry of this module;
- ``flaky`` (``flaky.example.com``) and ``dead`` (``dead.example.com``): fault proxies
  in front of the session's registry, for the ``429`` and the dead-upstream scenarios.
  Only names with their host reach them (the ordered list finds every other image on
  ``hub`` or ``ghcr`` first), so what they do stays in their own tests.

The platform has one worker, so what it learns of an upstream (a ``Retry-After``, a
host that is down) is what the next request sees. It also answers as a Docker Hub mirror
of the group under a second name (``DEPENDENCY_PROXY_MIRROR_HOSTS``), which only the
module's ``dockerd`` resolves; containerd reaches every registry's images through one
``_default/hosts.toml`` (its ``?ns=``).
"""

from __future__ import annotations

import base64
import json
import re
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Podman, Skopeo
from tests.support.containerd import Containerd
from tests.support.databases import Databases
from tests.support.dockerd import Dockerd
from tests.support.faultproxy import FaultProxy, Reset, Status
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is routing between upstreams, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
OTHER_GROUP = seed.GLOBEX
USER = seed.ALICE
OTHER_USER = seed.BOB
STALE_HEADER = "X-Dependency-Proxy-Stale"
#: Consecutive connection failures after which the platform takes an upstream for down.
DOWN_AFTER = 2
#: The platform's second name: a Docker Hub mirror of ``GROUP``.
MIRROR_HOST = "mirror.example.test"
#: Docker Hub's key in the docker client's config: the credentials dockerd sends a mirror.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
README = Path(__file__).resolve().parent.parent / "README.md"


class World(t.NamedTuple):
    platform: Platform
    hub: Registry
    hub_proxy: FaultProxy
    ghcr: Registry
    flaky: FaultProxy
    dead: FaultProxy
    workdir: Path


@pytest.fixture(scope="module")
def world(
    module_processes: ProcessFactory,
    databases: Databases,
    upstream: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[World]:
    workdir = tmp_path_factory.mktemp("upstreams")
    ghcr = Registry(module_processes, workdir / "ghcr", name="ghcr").start()
    hub_proxy = FaultProxy(upstream.url).start()
    flaky = FaultProxy(upstream.url).start()
    dead = FaultProxy(upstream.url).start()
    entries = {
        "hub": {
            "url": hub_proxy.url,
            "hosts": ["docker.io"],
            "allow_private_redirects": True,
        },
        "ghcr": {"url": ghcr.url, "hosts": ["ghcr.io"], "allow_private_redirects": True},
        "flaky": {"url": flaky.url, "hosts": ["flaky.example.com"]},
        "dead": {"url": dead.url, "hosts": ["dead.example.com"]},
    }
    platform = Platform(
        module_processes,
        workdir / "platform",
        database_url=databases.create("upstreams"),
        upstream_url="http://127.0.0.1:9",
        name="platform-upstreams",
        workers=1,
        extra_env={
            "DEPENDENCY_PROXY_UPSTREAMS": json.dumps(entries),
            "DEPENDENCY_PROXY_UPSTREAM_RETRIES": "0",
            "DEPENDENCY_PROXY_UPSTREAM_DOWN_AFTER_FAILURES": str(DOWN_AFTER),
            "DEPENDENCY_PROXY_UPSTREAM_DOWN_SECONDS": "600",
            "DEPENDENCY_PROXY_UPSTREAM_DOWN_MAX_SECONDS": "600",
            "DEPENDENCY_PROXY_MIRROR_HOSTS": json.dumps({MIRROR_HOST: GROUP}),
        },
    )
    seed.seed_full(platform)
    platform.start()
    try:
        yield World(platform, upstream, hub_proxy, ghcr, flaky, dead, workdir)
    finally:
        platform.stop()
        for proxy in (hub_proxy, flaky, dead):
            proxy.stop()


@pytest.fixture
def alice(world: World, tmp_path: Path) -> Skopeo:
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(world.platform.host, USER.username, USER.password))
    return skopeo


def _push(
    registry: Registry, repository: str, tag: str, seed_text: str, workdir: Path
) -> images.Pushed:
    return images.push(
        images.build_image(seed_text, layer_sizes=(4096,)),
        registry,
        repository,
        tag,
        workdir=workdir,
    )


def _requests_for(proxy: FaultProxy, repository: str, since: int = 0) -> list[str]:
    return [
        f"{r.method} {r.path}" for r in proxy.requests[since:] if f"/v2/{repository}/" in r.path
    ]


def _manifest(
    world: World, image: str, reference: str, *, user: seed.Account = USER, group: str = GROUP
) -> requests.Response:
    platform = world.platform
    headers = platform.bearer(user.username, user.password, group, image)
    headers["Accept"] = images.MANIFEST_ACCEPT
    return requests.get(
        f"{platform.url}/v2/{platform.repository(group, image)}/manifests/{reference}",
        headers=headers,
        timeout=60,
    )


def _tags(world: World, image: str) -> requests.Response:
    platform = world.platform
    headers = platform.bearer(USER.username, USER.password, GROUP, image)
    return requests.get(
        f"{platform.url}/v2/{platform.repository(GROUP, image)}/tags/list",
        headers=headers,
        timeout=60,
    )


def test_skopeo_pulls_by_registry_host_from_that_upstream_only(
    world: World, alice: Skopeo, unique_name: str
) -> None:
    repository = f"org/{unique_name}"
    pushed = _push(world.ghcr, repository, "1.2", f"{unique_name}-ghcr", world.workdir)
    hub_mark = len(world.hub_proxy.requests)

    result, target = alice.copy_to_dir(world.platform.image(GROUP, f"ghcr.io/{repository}", "1.2"))

    checks.ok(result)
    checks.same_as_upstream(target, pushed, world.ghcr)
    assert world.ghcr.count("HEAD", repository=repository, kind="manifests") >= 1
    assert _requests_for(world.hub_proxy, repository, hub_mark) == []


def test_an_entry_serving_docker_io_sends_one_component_names_to_library(
    world: World, alice: Skopeo, unique_name: str
) -> None:
    """``hub`` says nothing of ``library_prefix``; it serves ``docker.io``, so an official
    image's short name goes upstream as ``library/<name>``, as Docker Hub needs."""
    pushed = _push(world.hub, f"library/{unique_name}", "1.0", f"{unique_name}-lib", world.workdir)
    hub_mark = len(world.hub_proxy.requests)

    result, target = alice.copy_to_dir(world.platform.image(GROUP, unique_name, "1.0"))

    checks.ok(result)
    checks.same_as_upstream(target, pushed, world.hub)
    asked = _requests_for(world.hub_proxy, f"library/{unique_name}", hub_mark)
    assert asked and all("/manifests/" in r or "/blobs/" in r for r in asked), asked
    assert _requests_for(world.hub_proxy, unique_name, hub_mark) == []


def test_podman_pulls_through_the_ordered_list_past_a_404(
    world: World, tmp_path: Path, unique_name: str
) -> None:
    """The first upstream (``hub``) does not have the image: ``ghcr``, next in the list,
    serves it. The cached tag remembers ``ghcr``: checking it again asks ``ghcr`` only."""
    repository = f"team/{unique_name}"
    pushed = _push(world.ghcr, repository, "1", f"{unique_name}-ordered", world.workdir)
    podman = Podman(tmp_path / "podman")
    try:
        checks.ok(podman.login(world.platform.host, USER.username, USER.password))
        hub_mark = len(world.hub_proxy.requests)
        checks.ok(podman.pull(world.platform.image(GROUP, repository, "1")))
        inspected = podman.image_inspect(world.platform.image(GROUP, repository, "1"))
        assert inspected["Digest"] == pushed.digest
    finally:
        podman.close()
    asked_hub = _requests_for(world.hub_proxy, repository, hub_mark)
    assert asked_hub == [f"HEAD /v2/{repository}/manifests/1"], asked_hub
    assert world.ghcr.count("GET", repository=repository, kind="blobs") == len(pushed.blob_digests)

    hub_mark = len(world.hub_proxy.requests)
    ghcr_mark = world.ghcr.mark()
    again = _manifest(world, repository, "1")
    assert again.status_code == 200, again.text
    assert again.content == pushed.manifest
    assert _requests_for(world.hub_proxy, repository, hub_mark) == []
    assert world.ghcr.count("HEAD", repository=repository, since=ghcr_mark) == 1


def test_first_upstream_in_the_list_wins(world: World, unique_name: str) -> None:
    repository = f"both/{unique_name}"
    on_hub = _push(world.hub, repository, "1", f"{unique_name}-hub", world.workdir)
    _push(world.ghcr, repository, "1", f"{unique_name}-ghcr", world.workdir)
    ghcr_mark = world.ghcr.mark()

    response = _manifest(world, repository, "1")

    assert response.status_code == 200, response.text
    assert response.content == on_hub.manifest
    assert world.ghcr.count(repository=repository, since=ghcr_mark) == 0


def test_an_outage_of_the_first_upstream_does_not_fall_through(
    world: World, unique_name: str
) -> None:
    """``hub`` answers 503 for the image: the pull fails rather than being served the
    image of the same name from ``ghcr``."""
    repository = f"outage/{unique_name}"
    _push(world.ghcr, repository, "1", f"{unique_name}-outage", world.workdir)
    ghcr_mark = world.ghcr.mark()
    rule = world.hub_proxy.add(Status(503), path=f"/v2/{repository}/")
    try:
        response = _manifest(world, repository, "1")
    finally:
        rule.times = 0
    checks.registry_error(response, 503, "UNAVAILABLE")
    assert world.ghcr.count(repository=repository, since=ghcr_mark) == 0


def test_a_blob_another_group_cached_needs_this_groups_upstream(
    world: World, alice: Skopeo, unique_name: str
) -> None:
    """``acme`` caches an image from ``ghcr``; ``globex`` asks for one of its blobs by a
    name that routes to ``hub``, which does not have it: 404, though the bytes are in
    the store."""
    repository = f"shared/{unique_name}"
    pushed = _push(world.ghcr, repository, "1", f"{unique_name}-shared", world.workdir)
    checks.ok(alice.copy_to_dir(world.platform.image(GROUP, f"ghcr.io/{repository}", "1"))[0])
    layer = pushed.layer_digests[0]

    platform = world.platform
    image = f"docker.io/{repository}"
    headers = platform.bearer(OTHER_USER.username, OTHER_USER.password, OTHER_GROUP, image)
    hub_mark = len(world.hub_proxy.requests)
    blob = requests.get(
        f"{platform.url}/v2/{platform.repository(OTHER_GROUP, image)}/blobs/{layer}",
        headers=headers,
        timeout=60,
    )
    checks.registry_error(blob, 404, "BLOB_UNKNOWN")
    assert _requests_for(world.hub_proxy, repository, hub_mark) == [
        f"HEAD /v2/{repository}/blobs/{layer}"
    ]

    # The same group asking by the name that routes to ghcr gets it.
    image = f"ghcr.io/{repository}"
    headers = platform.bearer(OTHER_USER.username, OTHER_USER.password, OTHER_GROUP, image)
    blob = requests.get(
        f"{platform.url}/v2/{platform.repository(OTHER_GROUP, image)}/blobs/{layer}",
        headers=headers,
        timeout=60,
    )
    assert blob.status_code == 200
    assert blob.content == world.ghcr.read_blob(layer)


def test_unknown_registry_host_is_name_unknown(world: World) -> None:
    response = _manifest(world, "quay.io/org/app", "1")
    checks.registry_error(response, 404, "NAME_UNKNOWN")


def test_after_a_429_cached_tags_are_served_without_asking(
    world: World, alice: Skopeo, unique_name: str
) -> None:
    repository = f"e2e/{unique_name}"
    image = f"flaky.example.com/{repository}"
    pushed = _push(world.hub, repository, "1", f"{unique_name}-flaky", world.workdir)
    checks.ok(alice.copy_to_dir(world.platform.image(GROUP, image, "1"))[0])

    world.flaky.add(Status(429, retry_after=600))
    first = _manifest(world, image, "1")
    assert first.status_code == 200, first.text
    assert first.headers.get(STALE_HEADER) == "true"
    assert [r.status for r in world.flaky.requests[-1:]] == [429]

    mark = len(world.flaky.requests)
    result, target = alice.copy_to_dir(world.platform.image(GROUP, image, "1"))
    checks.ok(result)
    assert (target / "manifest.json").read_bytes() == pushed.manifest
    tags = _tags(world, image)
    assert tags.status_code == 200, tags.text
    assert tags.json()["tags"] == ["1"]
    assert tags.headers.get(STALE_HEADER) == "true"
    uncached = _manifest(world, image, "2")
    checks.registry_error(uncached, 429, "TOOMANYREQUESTS")
    assert world.flaky.requests[mark:] == []


def test_a_dead_upstream_is_not_asked_and_its_tags_come_from_the_cache(
    world: World, alice: Skopeo, unique_name: str
) -> None:
    repository = f"e2e/{unique_name}"
    image = f"dead.example.com/{repository}"
    pushed = _push(world.hub, repository, "1", f"{unique_name}-dead", world.workdir)
    checks.ok(alice.copy_to_dir(world.platform.image(GROUP, image, "1"))[0])

    world.dead.add(Reset())
    for _ in range(DOWN_AFTER):
        response = _manifest(world, image, "1")
        assert response.status_code == 200, response.text
        assert response.headers.get(STALE_HEADER) == "true"
    mark = len(world.dead.requests)
    assert mark >= DOWN_AFTER

    result, target = alice.copy_to_dir(world.platform.image(GROUP, image, "1"))
    checks.ok(result)
    assert (target / "manifest.json").read_bytes() == pushed.manifest
    tags = _tags(world, image)
    assert tags.status_code == 200, tags.text
    assert (tags.json()["tags"], tags.headers.get(STALE_HEADER)) == (["1"], "true")
    uncached = _manifest(world, image, "2")
    checks.registry_error(uncached, 503, "UNAVAILABLE")
    assert world.dead.requests[mark:] == []


# -- one mirror for every registry ---------------------------------------------------------


@pytest.fixture(scope="module")
def containerd(
    module_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Containerd]:
    daemon = Containerd(module_processes, tmp_path_factory.mktemp("containerd")).start()
    yield daemon
    daemon.process.stop()


def _readme_default_hosts_toml(platform: Platform) -> str:
    """The README's ``_default/hosts.toml`` for containerd, pointed at the live platform."""
    found = re.search(
        r"```toml\n(# /etc/containerd/certs\.d/_default/hosts\.toml\n.*?)```",
        README.read_text(),
        re.S,
    )
    assert found, "the README has no containerd _default/hosts.toml recipe"
    assert "https://platform.example.com/v2/acme/" in found.group(1), found.group(1)
    return found.group(1).replace("https://platform.example.com", platform.url)


def test_ctr_pulls_two_registries_through_one_default_hosts_toml(
    world: World, containerd: Containerd, unique_name: str, tmp_path: Path
) -> None:
    """containerd names each image's registry in ``?ns=``: ``docker.io`` goes to ``hub``
    (as ``library/<name>``), ``ghcr.io`` to ``ghcr``, and neither is asked for the other."""
    on_hub = _push(world.hub, f"library/{unique_name}", "1", f"{unique_name}-ns-hub", tmp_path)
    on_ghcr = _push(world.ghcr, f"org/{unique_name}", "2", f"{unique_name}-ns-ghcr", tmp_path)
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "_default").mkdir(parents=True)
    (hosts_dir / "_default" / "hosts.toml").write_text(_readme_default_hosts_toml(world.platform))
    hub_mark, ghcr_mark = len(world.hub_proxy.requests), world.ghcr.mark()

    references = {
        f"docker.io/library/{unique_name}:1": on_hub,
        f"ghcr.io/org/{unique_name}:2": on_ghcr,
    }
    for reference in references:
        checks.ok(
            containerd.ctr(
                "images",
                "pull",
                "--hosts-dir",
                str(hosts_dir),
                "--snapshotter",
                "native",
                "--user",
                f"{USER.username}:{USER.password}",
                reference,
            )
        )

    check = checks.ok(containerd.ctr("images", "check")).stdout
    for reference, pushed in references.items():
        line = next(line for line in check.splitlines() if line.startswith(reference))
        assert pushed.digest in line and "complete (2/2)" in line, check
        for digest in pushed.blob_digests:
            assert world.platform.stored_blobs_for(digest), f"{digest} is not in the cache"
    hub_asked = [r.path for r in world.hub_proxy.requests[hub_mark:]]
    assert any(f"/v2/library/{unique_name}/blobs/" in path for path in hub_asked), hub_asked
    assert not any(f"/org/{unique_name}/" in path for path in hub_asked), hub_asked
    assert world.ghcr.count("GET", repository=f"org/{unique_name}", kind="blobs", since=ghcr_mark)
    assert world.ghcr.count(repository=f"library/{unique_name}", since=ghcr_mark) == 0


def test_tag_pages_of_an_ns_request_link_with_its_ns(world: World, unique_name: str) -> None:
    """The next page of ``?ns=ghcr.io`` is ``ghcr``'s too: ``hub``, first in the list,
    holds the same name with other tags."""
    repository = f"org/{unique_name}"
    for registry, tag in ((world.ghcr, "1"), (world.ghcr, "2"), (world.hub, "1"), (world.hub, "5")):
        _push(registry, repository, tag, f"{unique_name}-{tag}", world.workdir)
    platform = world.platform
    headers = platform.bearer(USER.username, USER.password, GROUP, repository)
    page = requests.get(
        f"{platform.url}/v2/{platform.repository(GROUP, repository)}/tags/list",
        params={"ns": "ghcr.io", "n": "1"},
        headers=headers,
        timeout=60,
    )
    assert page.status_code == 200, page.text
    assert page.json() == {"name": platform.repository(GROUP, repository), "tags": ["1"]}
    link = page.headers["Link"]
    assert link.startswith(f"</v2/{platform.repository(GROUP, repository)}/tags/list?"), link
    following = requests.get(
        f"{platform.url}{link[1 : link.index('>')]}", headers=headers, timeout=60
    )
    assert following.status_code == 200, following.text
    assert following.json()["tags"] == ["2"]


@pytest.fixture(scope="module")
def mirror_engine(
    module_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory, world: World
) -> t.Iterator[Dockerd]:
    """A ``dockerd`` whose ``registry-mirrors`` is the platform's mirror name (resolved to
    127.0.0.1 for this daemon only), holding the platform credential under Docker Hub's
    key, where docker keeps what it sends a mirror."""
    daemon = Dockerd(
        module_processes, tmp_path_factory.mktemp("dockerd"), hosts={MIRROR_HOST: "127.0.0.1"}
    )
    daemon.process.argv += ["--registry-mirror", f"http://{MIRROR_HOST}:{world.platform.port}"]
    daemon.start()
    secret = base64.b64encode(f"{USER.username}:{USER.password}".encode()).decode()
    config = {"auths": {DOCKER_HUB_AUTH_KEY: {"auth": secret}}}
    (daemon.config_dir / "config.json").write_text(json.dumps(config))
    yield daemon
    daemon.process.stop()


def test_docker_registry_mirror_on_the_mirror_host_name(
    world: World, mirror_engine: Dockerd, unique_name: str, tmp_path: Path
) -> None:
    """``docker pull NAME`` goes to the mirror name with Docker Hub's names
    (``/v2/library/NAME/...``), served as the group's proxy through ``hub``: no nginx."""
    pushed = _push(world.hub, f"library/{unique_name}", "latest", f"{unique_name}-m", tmp_path)
    hub_mark = len(world.hub_proxy.requests)

    checks.ok(mirror_engine.docker("pull", unique_name))

    inspected = json.loads(checks.ok(mirror_engine.docker("image", "inspect", unique_name)).stdout)
    assert inspected[0]["Id"] == pushed.config_digest
    for digest in pushed.blob_digests:
        assert world.platform.stored_blobs_for(digest), f"{digest} is not in the cache"
    asked = _requests_for(world.hub_proxy, f"library/{unique_name}", hub_mark)
    assert sum("/blobs/" in r for r in asked) == len(pushed.blob_digests), asked
