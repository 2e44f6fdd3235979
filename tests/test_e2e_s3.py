"""Blobs in S3-compatible object storage (a real SeaweedFS), pulled with skopeo through
the platform under gunicorn's gevent workers, on PostgreSQL.

A miss is spooled locally and uploaded to a multipart upload of the blob's final key
while it streams; the object appears only once the digest is verified. A hit answers
307 to a presigned URL (``S3_REDIRECT``) or is streamed by the proxy. A wrong blob, a
killed worker, purge and cleanup, and an object store that is down never leave a wrong
object under a blob's key nor answer 500.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.models.stats import human_size
from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.databases import Databases
from tests.support.faultproxy import FaultProxy, Throttle
from tests.support.platform import REPO_ROOT, Platform
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessFactory, free_port, wait_for
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE
#: Runs cleanup in the platform's environment with its clock moved forward, so what a
#: killed fetch left counts as stale without waiting for the staging age.
CLEANUP_LATER = """
import datetime as dt, sys
from examples.platform import create_app
from flask_dependency_proxy import state
hours = float(sys.argv[1])
app = create_app()
with app.app_context():
    later = lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=hours)
    print(state(app).lifecycle.with_clock(later).cleanup().summary())
"""


class Site(t.NamedTuple):
    platform: Platform
    bucket: str


@pytest.fixture(scope="module")
def pg_databases(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Databases]:
    """PostgreSQL only: object storage is the production setup, and the database does
    not change what reaches the object store."""
    manager = Databases("postgresql", tmp_path_factory.mktemp("db-s3"), postgres_cluster)
    yield manager
    manager.drop_all()


@pytest.fixture(scope="module")
def fault(upstream: Registry) -> t.Iterator[FaultProxy]:
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def store_log(seaweedfs: SeaweedFS) -> t.Iterator[FaultProxy]:
    """Every request the platforms (and the clients they redirect) make to the object
    store goes through this recording proxy."""
    proxy = FaultProxy(seaweedfs.endpoint).start()
    yield proxy
    proxy.stop()


class SiteFactory(t.Protocol):
    def __call__(self, name: str, upstream_url: str, **settings: str) -> Site: ...


@pytest.fixture(scope="module")
def s3_site(
    module_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: Databases,
    seaweedfs: SeaweedFS,
    store_log: FaultProxy,
) -> SiteFactory:
    """Starts a platform named ``name`` on a bucket of its own, reaching the object store
    through ``store_log``, with ``settings`` added to its environment."""

    def start(name: str, upstream_url: str, **settings: str) -> Site:
        bucket = seaweedfs.new_bucket()
        platform = Platform(
            module_processes,
            tmp_path_factory.mktemp(name),
            database_url=pg_databases.create(name),
            upstream_url=upstream_url,
            name=name,
            extra_env={
                **seaweedfs.env(bucket),
                "DEPENDENCY_PROXY_S3_ENDPOINT_URL": store_log.url,
                "DEPENDENCY_PROXY_PURGE_COOLDOWN_SECONDS": "0",
                "DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "1",
                **settings,
            },
        )
        seed.seed_minimal(platform)
        return Site(platform.start(), bucket)

    return start


@pytest.fixture(scope="module")
def redirecting(s3_site: SiteFactory, fault: FaultProxy) -> Site:
    """Hits answered with presigned redirects; upstream behind the fault proxy."""
    return s3_site("platform-s3", fault.url)


@pytest.fixture(scope="module")
def streaming(s3_site: SiteFactory, upstream: Registry) -> Site:
    """Hits streamed by the proxy from the object store."""
    return s3_site("platform-s3-streamed", upstream.url, DEPENDENCY_PROXY_S3_REDIRECT="false")


def _login(platform: Platform, tmp_path: Path) -> Skopeo:
    client = Skopeo(tmp_path / "skopeo")
    checks.ok(client.login(platform.host, USER.username, USER.password))
    return client


def _push(upstream: Registry, name: str, workdir: Path, sizes: tuple[int, ...]) -> images.Pushed:
    image = images.build_image(name, layer_sizes=sizes)
    return images.push(image, upstream, f"s3/{name}", "1", workdir=workdir)


def _keys(site: Site, seaweedfs: SeaweedFS, digests: t.Iterable[str]) -> dict[str, bool]:
    """Whether each digest's final key is in the bucket."""
    present = set(seaweedfs.objects(site.bucket))
    return {d: f"blobs/sha256/{d[7:9]}/{d[7:]}" in present for d in digests}


def _wait_committed(site: Site, seaweedfs: SeaweedFS, digests: t.Sequence[str]) -> None:
    """Wait for every digest's object: a client gets a verified blob's last bytes before
    the upload to the object store is completed."""
    wait_for(
        lambda: all(_keys(site, seaweedfs, digests).values()),
        timeout=60,
        interval=0.1,
        what="the pulled blobs committed to the object store",
    )


def _local_blob_files(platform: Platform) -> list[Path]:
    return [p for p in platform.store_files() if "blobs" in p.parts]


def _blob_url(platform: Platform, name: str, digest: str) -> str:
    return f"{platform.url}/v2/{platform.repository(GROUP, name)}/blobs/{digest}"


def _upstream_blob_gets(upstream: Registry, repository: str, since: int) -> list[str]:
    return [
        r.reference or ""
        for r in upstream.access_log(since)
        if r.repository == repository and r.kind == "blobs" and r.method == "GET"
    ]


@pytest.mark.parametrize("mode", ["redirect", "streamed"])
def test_cold_then_warm_pull(
    mode: str,
    request: pytest.FixtureRequest,
    upstream: Registry,
    seaweedfs: SeaweedFS,
    store_log: FaultProxy,
    unique_name: str,
    tmp_path: Path,
) -> None:
    site: Site = request.getfixturevalue("redirecting" if mode == "redirect" else "streaming")
    platform = site.platform
    pushed = _push(upstream, unique_name, tmp_path, (9 * images.MiB + 123, 200_000))
    skopeo = _login(platform, tmp_path)
    reference = platform.image(GROUP, pushed.repository, "1")
    assert not any(_keys(site, seaweedfs, pushed.blob_digests).values())

    result, target = skopeo.copy_to_dir(reference)
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    _wait_committed(site, seaweedfs, pushed.blob_digests)
    assert seaweedfs.multipart_uploads(site.bucket) == []
    assert _local_blob_files(platform) == []

    since = upstream.mark()
    result, target = skopeo.copy_to_dir(reference)
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    assert _upstream_blob_gets(upstream, pushed.repository, since) == []

    layer = pushed.layer_digests[0]
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    response = requests.get(
        _blob_url(platform, pushed.repository, layer),
        headers=headers,
        allow_redirects=False,
        timeout=30,
    )
    if mode == "redirect":
        assert response.status_code == 307
        location = response.headers["Location"]
        assert location.startswith(f"{store_log.url}/{site.bucket}/blobs/sha256/")
        assert "X-Amz-Signature=" in location
        assert requests.get(location, timeout=30).content == upstream.read_blob(layer)
    else:
        assert response.status_code == 200
        assert response.content == upstream.read_blob(layer)


def _store_requests(store_log: FaultProxy, since: int, key: str) -> list[str]:
    """The methods of the object-store requests about ``key`` after the first ``since``."""
    return [r.method for r in store_log.requests[since:] if key in r.path]


@pytest.mark.parametrize("mode", ["redirect", "streamed"])
def test_hit_asks_the_store_nothing_but_the_bytes(
    mode: str,
    request: pytest.FixtureRequest,
    upstream: Registry,
    seaweedfs: SeaweedFS,
    store_log: FaultProxy,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """The database knows a cached blob's size: a streamed hit makes no ``HEAD`` to the
    store, only its download; a redirected one checks the object at most once per
    worker in ``S3_VERIFY_SECONDS`` (300 s), besides the client's download."""
    site: Site = request.getfixturevalue("redirecting" if mode == "redirect" else "streaming")
    platform = site.platform
    pushed = _push(upstream, unique_name, tmp_path, (150_000,))
    layer = pushed.layer_digests[0]
    key = f"blobs/sha256/{layer[7:9]}/{layer[7:]}"
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    url = _blob_url(platform, pushed.repository, layer)
    assert requests.get(url, headers=headers, timeout=30).content == upstream.read_blob(layer)
    _wait_committed(site, seaweedfs, [layer])
    since = len(store_log.requests)
    rounds = 5
    for _ in range(rounds):
        response = requests.get(url, headers=headers, timeout=30)
        assert response.content == upstream.read_blob(layer)
        head = requests.head(url, headers=headers, timeout=30)
        assert head.headers["Content-Length"] == str(len(response.content))
    methods = _store_requests(store_log, since, key)
    assert methods.count("GET") == rounds
    if mode == "redirect":
        assert methods.count("HEAD") <= platform.workers
    else:
        assert methods == ["GET"] * rounds


def test_object_gone_from_under_its_row_is_fetched_again(
    streaming: Site, upstream: Registry, seaweedfs: SeaweedFS, unique_name: str, tmp_path: Path
) -> None:
    """Without a ``HEAD`` on hits, a blob deleted behind the cache's back shows when it
    is opened: the request fetches it again instead of failing."""
    platform = streaming.platform
    pushed = _push(upstream, unique_name, tmp_path, (120_000,))
    layer = pushed.layer_digests[0]
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    url = _blob_url(platform, pushed.repository, layer)
    assert requests.get(url, headers=headers, timeout=30).status_code == 200
    _wait_committed(streaming, seaweedfs, [layer])
    seaweedfs.client.delete_object(
        Bucket=streaming.bucket, Key=f"blobs/sha256/{layer[7:9]}/{layer[7:]}"
    )
    since = upstream.mark()
    for _ in range(2):  # whichever worker answers
        response = requests.get(url, headers=headers, timeout=30)
        assert response.status_code == 200
        assert response.content == upstream.read_blob(layer)
        _wait_committed(streaming, seaweedfs, [layer])
    assert _upstream_blob_gets(upstream, pushed.repository, since) == [layer]


@pytest.fixture(scope="module")
def checking(s3_site: SiteFactory, upstream: Registry) -> Site:
    """Redirected hits that check their object every time (``S3_VERIFY_SECONDS = 0``)."""
    return s3_site("platform-s3-checking", upstream.url, DEPENDENCY_PROXY_S3_VERIFY_SECONDS="0")


def test_object_gone_behind_a_redirect_is_fetched_again(
    checking: Site, upstream: Registry, seaweedfs: SeaweedFS, unique_name: str, tmp_path: Path
) -> None:
    """A redirect cannot see the client's ``404``: the object's check before it finds a
    blob deleted behind the cache's back, and the hit fetches it again instead of
    sending clients to a missing object."""
    platform = checking.platform
    pushed = _push(upstream, unique_name, tmp_path, (110_000,))
    layer = pushed.layer_digests[0]
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
    url = _blob_url(platform, pushed.repository, layer)
    assert requests.get(url, headers=headers, timeout=30).content == upstream.read_blob(layer)
    _wait_committed(checking, seaweedfs, [layer])
    seaweedfs.client.delete_object(
        Bucket=checking.bucket, Key=f"blobs/sha256/{layer[7:9]}/{layer[7:]}"
    )
    since = upstream.mark()
    response = requests.get(url, headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == upstream.read_blob(layer)
    assert _upstream_blob_gets(upstream, pushed.repository, since) == [layer]
    _wait_committed(checking, seaweedfs, [layer])
    again = requests.get(url, headers=headers, allow_redirects=False, timeout=30)
    assert again.status_code == 307
    assert requests.get(again.headers["Location"], timeout=30).content == upstream.read_blob(layer)


def test_wrong_upstream_bytes_leave_no_object_and_no_upload(
    redirecting: Site, upstream: Registry, seaweedfs: SeaweedFS, unique_name: str, tmp_path: Path
) -> None:
    platform = redirecting.platform
    pushed = _push(upstream, unique_name, tmp_path, (11 * images.MiB,))
    layer = pushed.layer_digests[0]
    original = upstream.corrupt_blob(layer)
    try:
        headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)
        with pytest.raises(requests.RequestException):
            with requests.get(
                _blob_url(platform, pushed.repository, layer), headers=headers, timeout=60
            ) as response:
                response.raise_for_status()
    finally:
        upstream.restore_blob(layer, original)
    wait_for(
        lambda: not seaweedfs.multipart_uploads(redirecting.bucket),
        timeout=20,
        what="the failed fetch's upload to be aborted",
    )
    assert _keys(redirecting, seaweedfs, [layer]) == {layer: False}
    assert not [p for p in platform.store_files() if layer[7:] in p.name]


def _workers(platform: Platform) -> list[int]:
    assert platform.process.pid is not None
    found = subprocess.run(
        ["pgrep", "-P", str(platform.process.pid)], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def _cleanup_later(platform: Platform, hours: float) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CLEANUP_LATER, str(hours)],
        env=platform.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_upload_of_a_killed_fetch_is_aborted_by_cleanup(
    redirecting: Site,
    upstream: Registry,
    fault: FaultProxy,
    seaweedfs: SeaweedFS,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = redirecting.platform
    pushed = _push(upstream, unique_name, tmp_path, (24 * images.MiB,))
    layer = pushed.layer_digests[0]
    key = f"blobs/sha256/{layer[7:9]}/{layer[7:]}"
    fault.add(Throttle(4 * images.MiB), method="GET", path=layer)
    headers = platform.bearer(USER.username, USER.password, GROUP, pushed.repository)

    def pull() -> None:
        try:
            requests.get(_blob_url(platform, pushed.repository, layer), headers=headers, timeout=60)
        except requests.RequestException:
            pass

    client = threading.Thread(target=pull, daemon=True)
    client.start()
    try:

        def part_uploaded() -> bool:
            for upload in seaweedfs.multipart_uploads(redirecting.bucket):
                if upload["Key"] == key:
                    parts = seaweedfs.client.list_parts(
                        Bucket=redirecting.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    return bool(parts.get("Parts"))
            return False

        wait_for(part_uploaded, timeout=30, what="a part uploaded while the blob streams")
        # Still streaming: the object is not under its key yet.
        assert _keys(redirecting, seaweedfs, [layer]) == {layer: False}
        for pid in _workers(platform):
            os.kill(pid, signal.SIGKILL)
    finally:
        client.join(timeout=60)
        fault.clear()
    assert [u["Key"] for u in seaweedfs.multipart_uploads(redirecting.bucket)] == [key]
    assert _keys(redirecting, seaweedfs, [layer]) == {layer: False}
    wait_for(lambda: len(_workers(platform)) == 2, timeout=30, what="gunicorn's new workers")

    # An upload that young may belong to a fetch still running: kept.
    platform.flask("dependency-proxy", "cleanup")
    assert [u["Key"] for u in seaweedfs.multipart_uploads(redirecting.bucket)] == [key]
    _cleanup_later(platform, hours=2)
    assert seaweedfs.multipart_uploads(redirecting.bucket) == []
    assert not [p for p in platform.store_files() if p.name.endswith(".partial")]


def test_purge_and_cleanup_delete_the_objects(
    streaming: Site,
    seaweedfs: SeaweedFS,
    store_log: FaultProxy,
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    site, platform = streaming, streaming.platform
    pushed = _push(upstream, unique_name, tmp_path, (300_000, 100_000))
    reference = platform.image(GROUP, pushed.repository, "1")
    checks.ok(_login(platform, tmp_path).copy_to_dir(reference)[0])
    _wait_committed(site, seaweedfs, pushed.blob_digests)
    stored = seaweedfs.objects(site.bucket)
    size = sum(
        seaweedfs.client.head_object(Bucket=site.bucket, Key=key)["ContentLength"] for key in stored
    )
    stats = platform.flask("dependency-proxy", "stats").stdout
    described = f"Blobs in s3://{site.bucket}/ (endpoint {store_log.url})"
    assert f"{described}: {len(stored)}, {human_size(size)}." in stats
    assert seaweedfs.secret_key not in stats

    platform.flask("dependency-proxy", "purge", GROUP, "--force")
    wait_for(
        lambda: f"set aside {len(stored)}," in platform.flask("dependency-proxy", "cleanup").stdout,
        timeout=30,
        interval=0.5,
        what="cleanup to set the purged blobs aside once the grace period passed",
    )
    assert seaweedfs.objects(site.bucket, "blobs/") == []
    assert len(seaweedfs.objects(site.bucket, "trash/")) == len(stored)
    wait_for(
        lambda: (
            f"Deleted {len(stored)} blob files"
            in platform.flask("dependency-proxy", "cleanup").stdout
        ),
        timeout=30,
        interval=0.5,
        what="cleanup to delete the set-aside blobs after the grace period",
    )
    assert seaweedfs.objects(site.bucket) == []
    assert f"{described}: 0, " in platform.flask("dependency-proxy", "stats").stdout


def test_object_store_down_answers_503(
    redirecting: Site,
    seaweedfs: SeaweedFS,
    module_processes: ProcessFactory,
    upstream: Registry,
    unique_name: str,
    tmp_path: Path,
) -> None:
    platform = redirecting.platform
    pulled = _push(upstream, unique_name, tmp_path, (50_000,))
    never_pulled = _push(upstream, f"{unique_name}-cold", tmp_path, (60_000,))
    skopeo = _login(platform, tmp_path)
    checks.ok(skopeo.copy_to_dir(platform.image(GROUP, pulled.repository, "1"))[0])
    _wait_committed(redirecting, seaweedfs, pulled.blob_digests)
    # A second host on the same database whose object store refuses connections.
    down = Platform(
        module_processes,
        tmp_path / "down",
        database_url=platform.database_url,
        upstream_url=platform.upstream_url,
        name="platform-s3-down",
        extra_env={
            **{
                key: value
                for key, value in platform.env.items()
                if key.startswith("DEPENDENCY_PROXY_") and key != "DEPENDENCY_PROXY_EXTERNAL_URL"
            },
            "DEPENDENCY_PROXY_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "SECRET_KEY": platform.env["SECRET_KEY"],
            **{key: value for key, value in platform.env.items() if key.startswith("AWS_")},
        },
    ).start()
    try:
        # A hit asks the store nothing: the client gets its presigned URL.
        headers = down.bearer(USER.username, USER.password, GROUP, pulled.repository)
        url = _blob_url(down, pulled.repository, pulled.layer_digests[0])
        response = requests.get(url, headers=headers, allow_redirects=False, timeout=60)
        assert response.status_code == 307, (url, response.status_code, response.text)
        # A miss cannot be stored.
        headers = down.bearer(USER.username, USER.password, GROUP, never_pulled.repository)
        url = _blob_url(down, never_pulled.repository, never_pulled.layer_digests[0])
        response = requests.get(url, headers=headers, timeout=60)
        assert response.status_code == 503, (url, response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        down.stop()
    # Without credentials no URL can be signed: 503, not 500.
    unsigned = Platform(
        module_processes,
        tmp_path / "unsigned",
        database_url=platform.database_url,
        upstream_url=platform.upstream_url,
        name="platform-s3-unsigned",
        extra_env={
            **{
                key: value
                for key, value in platform.env.items()
                if key.startswith("DEPENDENCY_PROXY_") and key != "DEPENDENCY_PROXY_EXTERNAL_URL"
            },
            "SECRET_KEY": platform.env["SECRET_KEY"],
        },
    ).start()
    try:
        headers = unsigned.bearer(USER.username, USER.password, GROUP, pulled.repository)
        url = _blob_url(unsigned, pulled.repository, pulled.layer_digests[0])
        response = requests.get(url, headers=headers, allow_redirects=False, timeout=60)
        assert response.status_code == 503, (url, response.status_code, response.text)
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        unsigned.stop()
