"""Several hosts behind one database and one object store: one upstream fetch per blob
across the fleet.

Two platforms under gunicorn share a PostgreSQL database, a SeaweedFS bucket and their
``SECRET_KEY``, each with its own local folder (no shared filesystem) and
``DEPENDENCY_PROXY_PEER_URL`` (host A's on a second, internal listener); the upstream
is ``docker-registry`` behind a fault-injecting proxy, whose access log tells what
reached it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.fetch.peer_tokens import PEER_BLOB_PATH, PeerTokens
from tests.support import checks, curl, images, seed
from tests.support.addresses import client_at
from tests.support.clients import Skopeo, describe
from tests.support.faultproxy import FaultProxy, Throttle
from tests.support.platform import Platform
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessFactory, free_port, wait_for
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS
from tests.support.tokenserver import TokenUpstream

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE
#: A dead host's lease is taken over after this long.
LEASE_SECONDS = 3
#: A blob whose transfer breaks a quarter in and is resumed while it is fetched.
RESUMED_BYTES = 200 * images.MiB


class Fleet(t.NamedTuple):
    a: Platform
    b: Platform
    bucket: str


@pytest.fixture(scope="module")
def faulty(upstream: Registry) -> t.Iterator[FaultProxy]:
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def _no_faults_left(faulty: FaultProxy) -> t.Iterator[None]:
    yield
    faulty.clear()


@pytest.fixture(scope="module")
def make_fleet(
    module_processes: ProcessFactory,
    postgres_cluster: PostgresCluster,
    seaweedfs: SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[t.Callable[[str], Fleet]]:
    """Start two hosts on a new database and bucket that pull from ``upstream_url``
    (two gunicorns each: the module's tests share them)."""
    databases: list[str] = []

    def make(upstream_url: str) -> Fleet:
        database = postgres_cluster.create_database("fleet")
        databases.append(database)
        bucket = seaweedfs.new_bucket()
        shared = {
            **seaweedfs.env(bucket),
            "DEPENDENCY_PROXY_FETCH_LEASE_SECONDS": str(LEASE_SECONDS),
            "SECRET_KEY": "fleet-secret",
        }
        folder = tmp_path_factory.mktemp(database)

        def host(name: str, *, internal_listener: bool) -> Platform:
            env, args = dict(shared), []
            if internal_listener:
                # A second gunicorn listener serves the peer route, and nothing else does.
                port = free_port()
                env["DEPENDENCY_PROXY_PEER_URL"] = f"http://127.0.0.1:{port}"
                env["DEPENDENCY_PROXY_PEER_LISTENER_PORT"] = str(port)
                args = ["--bind", f"127.0.0.1:{port}"]
            return Platform(
                module_processes,
                folder / name,
                database_url=postgres_cluster.url(database),
                upstream_url=upstream_url,
                name=f"fleet-{name}",
                extra_env=env,
                gunicorn_args=args,
                peer=True,
            )

        # Host A keeps its peer route on an internal listener; host B serves it on its
        # one listener (the README's nginx front refuses it there).
        a, b = host("a", internal_listener=True), host("b", internal_listener=False)
        seed.seed_minimal(a)
        a.start()
        b.start()
        return Fleet(a, b, bucket)

    yield make
    module_processes.stop_all()
    for database in databases:
        postgres_cluster.drop_database(database)


@pytest.fixture(scope="module")
def fleet(make_fleet: t.Callable[[str], Fleet], faulty: FaultProxy) -> Fleet:
    """The module's fleet behind the fault proxy; the test that kills a host runs last."""
    return make_fleet(faulty.url)


def _push(upstream: Registry, name: str, tmp_path: Path, sizes: tuple[int, ...]) -> images.Pushed:
    image = images.build_image(f"{name}-seed", layer_sizes=sizes)
    return images.push(image, upstream, f"library/{name}", "latest", workdir=tmp_path)


def _blob_url(host: Platform, name: str, digest: str) -> str:
    return f"{host.url}/v2/{host.repository(GROUP, name)}/blobs/{digest}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _spooled(host: Platform) -> int:
    """Bytes in the host's spool files: what its fetches in progress have received."""
    return sum(path.stat().st_size for path in (host.store_path / "staging").glob("*.partial"))


def _local_files(host: Platform) -> list[Path]:
    return [path for path in host.store_path.rglob("*") if path.is_file() and "blobs" in path.parts]


def test_a_pull_through_the_second_host_asks_upstream_for_no_blob(
    fleet: Fleet, upstream: Registry, skopeo: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (300_000, 700_000))
    checks.ok(skopeo.login(fleet.a.host, USER.username, USER.password))
    checks.ok(skopeo.login(fleet.b.host, USER.username, USER.password))
    first = upstream.mark()

    result, _ = skopeo.copy_to_dir(fleet.a.image(GROUP, unique_name, "latest"))
    checks.ok(result)
    assert upstream.count("GET", kind="blobs", since=first) == len(pushed.blob_digests)
    second = upstream.mark()
    result, target = skopeo.copy_to_dir(fleet.b.image(GROUP, unique_name, "latest"))
    checks.ok(result)

    assert upstream.count("GET", kind="blobs", since=second) == 0
    for digest in pushed.layer_digests:
        assert _sha256((target / digest.split(":")[1]).read_bytes()) == digest
    # Neither host keeps blobs on its own disk: they are in the shared bucket.
    assert _local_files(fleet.a) == [] and _local_files(fleet.b) == []


def test_eight_concurrent_cold_pulls_across_both_hosts_fetch_each_blob_once(
    fleet: Fleet,
    upstream: Registry,
    faulty: FaultProxy,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (6 * images.MiB, 2 * images.MiB))
    for host in (fleet.a, fleet.b):
        checks.ok(skopeo.login(host.host, USER.username, USER.password))
    # Slow enough that every pull arrives while the fetches run.
    faulty.add(Throttle(4 * images.MiB), path="/blobs/")
    mark = upstream.mark()

    def pull(number: int) -> tuple[Path, str]:
        host = fleet.a if number % 2 else fleet.b
        result, target = skopeo.copy_to_dir(host.image(GROUP, unique_name, "latest"))
        return target, describe(result) if result.returncode else ""

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        pulled = list(pool.map(pull, range(8)))

    assert [error for _, error in pulled] == [""] * 8
    for target, _ in pulled:
        for digest in pushed.layer_digests:
            assert _sha256((target / digest.split(":")[1]).read_bytes()) == digest
    for digest in pushed.blob_digests:
        assert upstream.count("GET", kind="blobs", reference=digest, since=mark) == 1


def _peer_get(url: str, token: str, address: str = "127.0.0.1") -> requests.Response:
    with client_at(address) as client:
        return client.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_the_peer_route_answers_the_fleet_only_and_on_its_listener(
    fleet: Fleet, upstream: Registry, skopeo: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (100_000,))
    checks.ok(skopeo.login(fleet.a.host, USER.username, USER.password))
    checks.ok(skopeo.copy_to_dir(fleet.a.image(GROUP, unique_name, "latest"))[0])
    layer = pushed.layer_digests[0]
    path = f"{PEER_BLOB_PATH}{layer}"
    a_peer, b_peer = (host.env["DEPENDENCY_PROXY_PEER_URL"] for host in (fleet.a, fleet.b))

    def token(issuer: str, holder: str) -> str:
        return PeerTokens(["fleet-secret"], issuer).issue(holder, layer, 0)

    # Host B reads from A's internal listener; A's public one has no peer route.
    from_b = _peer_get(f"{a_peer}{path}", token(b_peer, a_peer))
    on_public = _peer_get(f"{fleet.a.url}{path}", token(b_peer, a_peer))
    # The same token replayed from another address, and a token for host A sent to B.
    replayed = _peer_get(f"{a_peer}{path}", token(b_peer, a_peer), address="127.0.0.2")
    elsewhere = _peer_get(f"{b_peer}{path}", token(b_peer, a_peer))
    # Host B serves the route on its one listener, to A only.
    from_a = _peer_get(f"{b_peer}{path}", token(a_peer, b_peer))
    from_a_replayed = _peer_get(f"{b_peer}{path}", token(a_peer, b_peer), address="127.0.0.3")

    assert from_b.status_code == 200 and _sha256(from_b.content) == layer
    assert from_a.status_code == 200 and _sha256(from_a.content) == layer
    assert on_public.status_code == 404
    assert [replayed.status_code, elsewhere.status_code, from_a_replayed.status_code] == [403] * 3


def test_a_purge_through_one_host_stops_the_other_serving(
    fleet: Fleet, upstream: Registry, skopeo: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (300_000,))
    checks.ok(skopeo.login(fleet.b.host, USER.username, USER.password))
    checks.ok(skopeo.copy_to_dir(fleet.b.image(GROUP, unique_name, "latest"))[0])
    manifest_url = f"{fleet.b.url}/v2/{fleet.b.repository(GROUP, unique_name)}/manifests/latest"
    headers = {
        **fleet.b.bearer(USER.username, USER.password, GROUP, unique_name),
        "Accept": pushed.media_type,
    }
    warm = upstream.mark()
    assert requests.get(manifest_url, headers=headers, timeout=30).status_code == 200
    assert upstream.count("GET", kind="manifests", since=warm) == 0

    fleet.a.flask("dependency-proxy", "purge", GROUP, "--force")
    purged = upstream.mark()
    assert requests.get(manifest_url, headers=headers, timeout=30).status_code == 200

    assert upstream.count("GET", kind="manifests", since=purged) == 1


def test_the_hosts_share_upstream_tokens(
    make_fleet: t.Callable[[str], Fleet],
    token_upstream: TokenUpstream,
    unique_name: str,
    tmp_path: Path,
) -> None:
    image = images.build_image(f"{unique_name}-seed", layer_sizes=(100_000,))
    images.push(
        image,
        token_upstream.registry,
        f"library/{unique_name}",
        "latest",
        workdir=tmp_path,
        creds=token_upstream.push_creds,
    )
    fleet = make_fleet(token_upstream.registry.url)
    tokens = token_upstream.token_server
    mark = tokens.mark()

    for host in (fleet.a, fleet.b):
        headers = host.bearer(USER.username, USER.password, GROUP, unique_name)
        url = f"{host.url}/v2/{host.repository(GROUP, unique_name)}/manifests/latest"
        assert requests.get(url, headers=headers, timeout=30).status_code == 200

    assert tokens.count(f"library/{unique_name}", since=mark) == 1


def test_a_transfer_broken_on_one_host_is_resumed_on_the_other_while_the_first_fetches(
    fleet: Fleet, upstream: Registry, faulty: FaultProxy, unique_name: str, tmp_path: Path
) -> None:
    """The client's retry lands on host B, which answers the rest (``206``) from its
    fetch of host A's peer stream: what A fetched already, then what A gets."""
    pushed = _push(upstream, unique_name, tmp_path, (RESUMED_BYTES,))
    layer = pushed.layer_digests[0]
    size = len(upstream.read_blob(layer))
    headers = fleet.a.bearer(USER.username, USER.password, GROUP, unique_name)
    # Slow enough that host A still fetches (about 6 s) when the client comes back.
    faulty.add(Throttle(32 * images.MiB), path="/blobs/")
    mark = upstream.mark()
    output = tmp_path / "blob"

    answer = curl.cut_then_resume(
        _blob_url(fleet.a, unique_name, layer),
        _blob_url(fleet.b, unique_name, layer),
        headers,
        output,
        cut_at=RESUMED_BYTES // 4,
        still_running=lambda: _spooled(fleet.a) > 0,
    )

    assert answer["status"] == "206"
    start = int(answer["content-range"].split()[1].split("-")[0])
    assert RESUMED_BYTES // 4 <= start < size
    assert answer["content-range"] == f"bytes {start}-{size - 1}/{size}"
    assert _sha256(output.read_bytes()) == layer
    assert upstream.count("GET", kind="blobs", reference=layer, since=mark) == 1


def test_a_host_killed_mid_fetch_is_taken_over_and_leaves_nothing_behind(
    fleet: Fleet,
    upstream: Registry,
    faulty: FaultProxy,
    seaweedfs: SeaweedFS,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = _push(upstream, unique_name, tmp_path, (12 * images.MiB,))
    layer = pushed.layer_digests[0]
    objects_before = set(seaweedfs.objects(fleet.bucket))
    headers = fleet.a.bearer(USER.username, USER.password, GROUP, unique_name)
    faulty.add(Throttle(3 * images.MiB), path="/blobs/")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        on_a = pool.submit(
            requests.get, _blob_url(fleet.a, unique_name, layer), headers=headers, timeout=90
        )
        wait_for(lambda: _spooled(fleet.a) > 0, timeout=20, what="host A to start the fetch")
        on_b = pool.submit(
            requests.get, _blob_url(fleet.b, unique_name, layer), headers=headers, timeout=90
        )
        # Host B is streaming from host A, and A has uploaded a part, when A dies.
        wait_for(lambda: _spooled(fleet.b) > 0, timeout=20, what="host B to follow host A")
        wait_for(
            lambda: seaweedfs.multipart_uploads(fleet.bucket),
            timeout=30,
            what="host A to start its multipart upload",
        )
        pid = fleet.a.process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        with pytest.raises(requests.RequestException):
            on_a.result().raise_for_status()
            raise requests.ConnectionError("host A answered in full")
        response = on_b.result()

    assert response.status_code == 200
    assert _sha256(response.content) == layer
    blob_gets = [r for r in faulty.requests if r.method == "GET" and layer in r.path]
    assert len(blob_gets) == 2
    # The second GET resumed where host A's stream had stopped.
    (resumed,) = blob_gets[1].header_lines("Range")
    assert resumed.startswith("bytes=") and resumed != "bytes=0-"
    # Host A's unfinished upload is aborted by cleanup; B's committed object stays.
    fleet.b.cleanup_later(hours=2)
    assert seaweedfs.multipart_uploads(fleet.bucket) == []
    hex_digest = layer.split(":")[1]
    # (Blobs that the purge test left unreferenced were set aside into trash/ meanwhile.)
    new_objects = set(seaweedfs.objects(fleet.bucket)) - objects_before
    assert {key for key in new_objects if not key.startswith("trash/")} == {
        f"blobs/sha256/{hex_digest[:2]}/{hex_digest}"
    }
    assert not [p for p in fleet.b.store_path.rglob("*.partial")]
