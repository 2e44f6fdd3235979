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
host that is down) is what the next request sees.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.clients import Podman, Skopeo
from tests.support.databases import Databases
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
