"""A blob is served to a group on its own route's word, also while another group's fetch
of the same digest runs: in the same worker, in another worker of the host, and on
another host of the fleet (the peer route).

One upstream, ``vendor``: a private registry (token auth, nothing for anonymous
clients) behind a fault proxy that slows its blob bodies down. ``acme`` (alice) has the
group's own credential for it; ``globex`` (bob) has none, so the same image name with
the same digest is, for it, a ``404``. Three gunicorns of one worker each share a
PostgreSQL database, a SeaweedFS bucket and the ``SECRET_KEY``: ``h1`` and ``h1b``
play two workers of one host (one local folder, so one set of fetch lock files);
``h2`` is a second host with its own folder, reaching ``h1``'s fetches through the
peer route.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import checks, images, seed
from tests.support.faultproxy import Delay, FaultProxy, Throttle
from tests.support.platform import Platform
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessFactory, wait_for
from tests.support.registry import Registry, TokenAuth
from tests.support.seaweedfs import SeaweedFS
from tests.support.tokenserver import TokenServer

pytestmark = pytest.mark.e2e

#: Holds the group credential for ``vendor``.
PRIVILEGED = seed.ACME
PRIVILEGED_USER = seed.ALICE
#: Uses ``vendor`` without a credential: the private registry answers it nothing.
UNPRIVILEGED = seed.GLOBEX
UNPRIVILEGED_USER = seed.BOB
VENDOR_CREDENTIAL = ("vendor-bot", "vendor-bot-password")
API = "/api/v4/groups"
#: Where the other group's request goes, relative to the fetch it races with.
PLACES = ["same worker", "other worker", "other host"]


class World(t.NamedTuple):
    h1: Platform
    h1b: Platform
    h2: Platform
    vendor: Registry
    proxy: FaultProxy
    api_token: str
    workdir: Path

    def host(self, place: str) -> Platform:
        return {"same worker": self.h1, "other worker": self.h1b, "other host": self.h2}[place]


@pytest.fixture(scope="module")
def world(
    module_processes: ProcessFactory,
    postgres_cluster: PostgresCluster,
    seaweedfs: SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[World]:
    workdir = tmp_path_factory.mktemp("isolation")
    tokens = TokenServer(
        workdir / "token-server", users=dict([VENDOR_CREDENTIAL]), anonymous_pull=False
    ).start()
    vendor = Registry(
        module_processes,
        workdir / "vendor",
        name="vendor",
        token_auth=TokenAuth(tokens.realm, tokens.bundle_path),
    ).start()
    proxy = FaultProxy(vendor.url).start()
    database = postgres_cluster.create_database("isolation")
    shared = {
        **seaweedfs.env(seaweedfs.new_bucket()),
        "SECRET_KEY": "isolation-secret",
        "DEPENDENCY_PROXY_FETCH_LEASE_SECONDS": "3",
        "DEPENDENCY_PROXY_UPSTREAMS": json.dumps(
            {"vendor": {"url": proxy.url, "allow_private_redirects": True}}
        ),
    }

    def gunicorn(name: str, **env: str) -> Platform:
        return Platform(
            module_processes,
            workdir / name,
            database_url=postgres_cluster.url(database),
            upstream_url="http://127.0.0.1:9",
            name=f"isolation-{name}",
            workers=1,
            peer=True,
            extra_env={**shared, **env},
        )

    h1 = gunicorn("h1")
    # A second worker of h1's host: its folder (lock files, spool) and its peer URL.
    h1b = gunicorn(
        "h1b",
        DEPENDENCY_PROXY_STORAGE_PATH=str(h1.store_path),
        DEPENDENCY_PROXY_PEER_URL=h1.url,
    )
    h2 = gunicorn("h2")
    try:
        with h1.batch():
            seed.seed_full(h1)
        api_token = (
            h1.flask("token", "create", seed.ROOT.username, "--scopes", "api")
            .stdout.strip()
            .splitlines()[-1]
        )
        for host in (h1, h1b, h2):
            host.start()
        username, password = VENDOR_CREDENTIAL
        response = requests.put(
            f"{h1.url}{API}/{PRIVILEGED}/dependency_proxy/upstreams/vendor/credentials",
            json={"username": username, "password": password},
            headers={"PRIVATE-TOKEN": api_token},
            timeout=30,
        )
        assert response.status_code in (200, 204), response.text
        yield World(h1, h1b, h2, vendor, proxy, api_token, workdir)
    finally:
        module_processes.stop_all()
        proxy.stop()
        tokens.stop()
        postgres_cluster.drop_database(database)


@pytest.fixture(autouse=True)
def _no_faults_left(world: World) -> t.Iterator[None]:
    yield
    world.proxy.clear()


def _push(world: World, name: str, size: int) -> str:
    """A one-layer image on the private registry; its layer's digest."""
    pushed = images.push(
        images.build_image(f"{name}-isolation", layer_sizes=(size,)),
        world.vendor,
        f"vendor/{name}",
        "1",
        workdir=world.workdir,
        creds=VENDOR_CREDENTIAL,
    )
    return pushed.layer_digests[0]


class _Client(t.NamedTuple):
    """A member of ``group`` asking ``host`` for blobs of ``vendor/NAME``."""

    host: Platform
    group: str
    name: str
    headers: dict[str, str]

    @classmethod
    def of(cls, host: Platform, group: str, user: seed.Account, name: str) -> _Client:
        image = f"vendor/{name}"
        return cls(host, group, name, host.bearer(user.username, user.password, group, image))

    def get(self, digest: str, **kwargs: t.Any) -> requests.Response:
        repository = self.host.repository(self.group, f"vendor/{self.name}")
        return requests.get(
            f"{self.host.url}/v2/{repository}/blobs/{digest}",
            headers=self.headers,
            timeout=60,
            **kwargs,
        )


def _blob_list(world: World, group: str) -> list[str]:
    response = requests.get(
        f"{world.h1.url}{API}/{group}/dependency_proxy/blobs",
        params={"per_page": "100"},
        headers={"PRIVATE-TOKEN": world.api_token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return [item["digest"] for item in response.json()]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("place", PLACES)
def test_a_group_without_access_gets_nothing_of_a_fetch_in_progress(
    world: World, place: str, unique_name: str
) -> None:
    """``acme`` fetches a layer of the private registry (slowly); ``globex`` asks for the
    same digest meanwhile, where ``acme``'s fetch can be followed: ``404``, and the blob
    never becomes ``globex``'s."""
    layer = _push(world, unique_name, 4 * images.MiB)
    acme = _Client.of(world.h1, PRIVILEGED, PRIVILEGED_USER, unique_name)
    globex = _Client.of(world.host(place), UNPRIVILEGED, UNPRIVILEGED_USER, unique_name)
    # About 4 s: the answer to acme starts with its second MiB (the last chunk it has
    # is held back until the next one comes), so about 2 s are left.
    world.proxy.add(Throttle(images.MiB), method="GET", path=f"/blobs/{layer}")

    fetching = acme.get(layer, stream=True)
    assert fetching.status_code == 200, fetching.text
    asked = time.monotonic()
    other = globex.get(layer)
    body = fetching.content
    finished = time.monotonic()

    checks.registry_error(other, 404, "BLOB_UNKNOWN")
    assert finished - asked > 0.5, "acme's fetch ended before globex asked"
    assert _sha256(body) == layer
    wait_for(lambda: layer in _blob_list(world, PRIVILEGED), timeout=30, what="acme's blob row")
    # Once the blob is committed, globex's route is asked again and still says no.
    checks.registry_error(globex.get(layer), 404, "BLOB_UNKNOWN")
    assert layer not in _blob_list(world, UNPRIVILEGED)


@pytest.mark.parametrize("place", PLACES)
def test_a_group_with_access_is_not_failed_by_another_groups_fetch(
    world: World, place: str, unique_name: str
) -> None:
    """``globex`` starts a fetch its route cannot make (held up upstream, then refused);
    ``acme`` asks for the same digest meanwhile, where it joins that fetch: ``acme``'s
    own route answers, so it gets the blob."""
    layer = _push(world, unique_name, 256 * 1024)
    globex = _Client.of(world.h1, UNPRIVILEGED, UNPRIVILEGED_USER, unique_name)
    acme = _Client.of(world.host(place), PRIVILEGED, PRIVILEGED_USER, unique_name)
    # Only the first blob GET, globex's, is held up.
    held = world.proxy.add(Delay(2.0), method="GET", path=f"/blobs/{layer}", times=1)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        failing = pool.submit(globex.get, layer)
        wait_for(lambda: held.used == 1, timeout=30, what="globex's blob GET upstream")
        joined = acme.get(layer)
        refused = failing.result()

    checks.registry_error(refused, 404, "BLOB_UNKNOWN")
    assert joined.status_code == 200, joined.text
    assert _sha256(joined.content) == layer
    wait_for(lambda: layer in _blob_list(world, PRIVILEGED), timeout=30, what="acme's blob row")
    assert layer not in _blob_list(world, UNPRIVILEGED)
