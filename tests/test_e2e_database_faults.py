"""The database fails under a running platform: stopped, hung, unreachable.

The live tests run the example platform under gunicorn with the shipped configuration
(``examples/gunicorn.conf.py``, gevent) on a PostgreSQL cluster of this module's own,
so stopping it or freezing it (SIGSTOP) leaves every other test's database alone. The
upstream is a real registry behind the fault proxy. What they check:

- no pull keeps a database connection busy or inside a transaction while it waits on
  upstream;
- PostgreSQL stopped or hung: requests that need the database answer 503
  ``UNAVAILABLE`` with ``Retry-After`` within the documented bound, ``/v2/`` without
  a token still answers 401 at once, a cached blob pulled with a token obtained before
  the outage still answers 200 with the right bytes;
- once PostgreSQL runs again, the same requests succeed without a gunicorn restart.

The in-process tests at the end check the same 503 mapping, quickly, on a database URL
that cannot be reached (a SQLite file in a missing folder, a closed PostgreSQL port).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import psycopg
import pytest
import requests

from tests.support import checks, images, postgres, processes, seed
from tests.support.faultproxy import Delay, FaultProxy
from tests.support.platform import Platform
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessFactory, free_port, wait_for
from tests.support.registry import Registry

if t.TYPE_CHECKING:
    from flask import Flask

if t.TYPE_CHECKING:
    pass

GROUP = seed.ACME
USER = seed.ALICE
#: ``DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS`` of the live platform: short, so the
#: hung-database test stays quick. The default is 5 s.
DATABASE_TIMEOUT = 2.0
#: ``DEPENDENCY_PROXY_READY_TIMEOUT_SECONDS``, the default.
READY_TIMEOUT = 2.0
#: What a request may take beyond that bound on this machine (2 cores, shared).
MARGIN = 2.0
#: A request that needs no database, or falls back without it, answers within this.
FAST = 1.0
#: ``PRINCIPAL_RECHECK_SECONDS`` of the live platform: longer than one test, so the
#: grants checked before an outage still hold during it.
RECHECK_SECONDS = 120


@dataclasses.dataclass
class Faults:
    cluster: PostgresCluster
    database: str
    platform: Platform
    upstream: Registry
    proxy: FaultProxy
    cached: images.Pushed
    uncached: images.Pushed
    #: A personal access token of ``root`` with the ``api`` scope.
    api_token: str

    def manifest_url(self, image: str, reference: str) -> str:
        repository = self.platform.repository(GROUP, image)
        return f"{self.platform.url}/v2/{repository}/manifests/{reference}"

    def blob_url(self, image: str, digest: str) -> str:
        return f"{self.platform.url}/v2/{self.platform.repository(GROUP, image)}/blobs/{digest}"

    def api_url(self) -> str:
        return f"{self.platform.url}/api/v4/groups/{GROUP}/dependency_proxy/settings"

    def pull_headers(self, image: str) -> dict[str, str]:
        headers = self.platform.bearer(USER.username, USER.password, GROUP, image)
        headers["Accept"] = images.MANIFEST_ACCEPT
        return headers


@pytest.fixture(scope="module")
def faults(
    module_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Faults]:
    workdir = tmp_path_factory.mktemp("database-faults")
    cluster = PostgresCluster(module_processes).start()
    upstream = Registry(module_processes, workdir / "upstream", name="faults-upstream").start()
    proxy = FaultProxy(upstream.url).start()
    database = cluster.create_database("faults")
    platform = Platform(
        module_processes,
        workdir / "platform",
        database_url=cluster.url(database),
        upstream_url=proxy.url,
        name="platform-database-faults",
        # One worker: the answers it remembers (grants, blobs it served) are the ones
        # the outage requests meet, whichever connection they come on.
        workers=1,
        extra_env={
            "DEPENDENCY_PROXY_DATABASE_TIMEOUT_SECONDS": str(DATABASE_TIMEOUT),
            "DEPENDENCY_PROXY_PRINCIPAL_RECHECK_SECONDS": str(RECHECK_SECONDS),
            "DEPENDENCY_PROXY_UPSTREAM_RETRIES": "0",
        },
    )
    try:
        with platform.batch():
            seed.seed_minimal(platform)
            platform.create_user(seed.ROOT.username, seed.ROOT.password, admin=True)
        api_token = (
            platform.flask("token", "create", seed.ROOT.username, "--scopes", "api")
            .stdout.strip()
            .splitlines()[-1]
        )
        platform.start()
        cached = images.push(
            images.build_image("db-faults-cached", layer_sizes=(256 * 1024,)),
            upstream,
            "e2e/cached",
            "1",
            workdir=workdir,
        )
        uncached = images.push(
            images.build_image("db-faults-uncached", layer_sizes=(256 * 1024,)),
            upstream,
            "e2e/uncached",
            "1",
            workdir=workdir,
        )
        yield Faults(cluster, database, platform, upstream, proxy, cached, uncached, api_token)
    finally:
        proxy.stop()
        platform.stop()
        cluster.stop()


# -- the cluster's faults ------------------------------------------------------------------


def _cluster_pids(cluster: PostgresCluster) -> list[int]:
    """The postmaster and every process it forked (backends, checkpointer, ...)."""
    pid_file = cluster.data_dir / "postmaster.pid"
    postmaster = int(pid_file.read_text().splitlines()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *(int(pid) for pid in children)]


def _stop_immediately(cluster: PostgresCluster) -> None:
    """``pg_ctl stop -m immediate``: every backend dies at once, nothing is cleaned up."""
    argv = [
        str(postgres.BIN_DIR / "pg_ctl"),
        "-D",
        str(cluster.data_dir),
        "stop",
        "-m",
        "immediate",
    ]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cluster.process is not None and cluster.process.popen is not None
    cluster.process.popen.wait(30)


def _start_again(cluster: PostgresCluster) -> None:
    assert cluster.process is not None
    if cluster.process in processes.RUNNING:  # it exited without stop()
        processes.RUNNING.remove(cluster.process)
    cluster.process.start(ready=lambda: _accepts(cluster), timeout=60)


def _accepts(cluster: PostgresCluster) -> bool:
    with psycopg.connect(_conninfo(cluster, "postgres"), connect_timeout=2):
        return True


def _conninfo(cluster: PostgresCluster, database: str) -> str:
    return f"host=127.0.0.1 port={cluster.port} user=postgres dbname={database}"


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


# -- helpers ---------------------------------------------------------------------------------


def _timed(method: str, url: str, **kwargs: t.Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=60, **kwargs)
    return response, time.monotonic() - started


def _busy_connections(faults: Faults) -> list[tuple[str, str]]:
    """Connections to the platform's database that are running a query or sit inside a
    transaction (this check connects to another database, so it never counts itself)."""
    with psycopg.connect(_conninfo(faults.cluster, "postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, coalesce(query, '') FROM pg_stat_activity"
            " WHERE datname = %s AND state IS NOT NULL AND state <> 'idle'",
            (faults.database,),
        ).fetchall()
    return [(str(state), str(query)) for state, query in rows]


# -- no connection held across upstream -----------------------------------------------------


def test_no_transaction_open_while_upstream_is_slow(faults: Faults) -> None:
    headers = faults.pull_headers("e2e/cached")
    url = faults.manifest_url("e2e/cached", "1")
    # A cold tag (HEAD, then GET upstream), then a warm one (HEAD only).
    seen = [*_sample_while_slow(faults, url, headers), *_sample_while_slow(faults, url, headers)]
    assert all(not busy for busy in seen), seen


def _sample_while_slow(
    faults: Faults, url: str, headers: dict[str, str]
) -> list[list[tuple[str, str]]]:
    """Pull while upstream takes 2 s to answer the manifest HEAD; sample the database's
    connections meanwhile."""
    rule = faults.proxy.add(Delay(2.0), method="HEAD", path="/manifests/", times=1)
    result: dict[str, requests.Response] = {}
    puller = threading.Thread(
        target=lambda: result.update(r=requests.get(url, headers=headers, timeout=60))
    )
    puller.start()
    wait_for(lambda: rule.used == 1, timeout=10, what="the slow HEAD upstream")
    seen = []
    for _sample in range(6):
        time.sleep(0.25)
        seen.append(_busy_connections(faults))
    puller.join(30)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].headers["Docker-Content-Digest"] == faults.cached.digest
    return seen


# -- PostgreSQL stopped, PostgreSQL hung ----------------------------------------------------


@dataclasses.dataclass
class Probe:
    """What one test asks the platform, with a token obtained before the outage."""

    faults: Faults
    headers: dict[str, str]
    #: Elapsed seconds per request, for the failure message.
    times: dict[str, float] = dataclasses.field(default_factory=dict)

    def get(self, what: str, url: str, **kwargs: t.Any) -> requests.Response:
        response, elapsed = _timed("GET", url, **kwargs)
        self.times[what] = round(elapsed, 3)
        return response

    def login(self) -> requests.Response:
        return self.get(
            "/jwt/auth",
            f"{self.faults.platform.url}/jwt/auth",
            params={"service": "dependency_proxy"},
            auth=(USER.username, USER.password),
        )

    def manifest(self) -> requests.Response:
        url = self.faults.manifest_url("e2e/cached", "1")
        return self.get("manifest", url, headers=self.headers)

    def blob(self, what: str, image: str, digest: str) -> requests.Response:
        return self.get(what, self.faults.blob_url(image, digest), headers=self.headers)

    def api(self) -> requests.Response:
        return self.get(
            "REST API",
            self.faults.api_url(),
            headers={"PRIVATE-TOKEN": self.faults.api_token},
        )

    def base(self, with_token: bool) -> requests.Response:
        headers = self.headers if with_token else {}
        return self.get(
            f"/v2/ token={with_token}", f"{self.faults.platform.url}/v2/", headers=headers
        )


def _probe(faults: Faults) -> Probe:
    """A token, and the cached image pulled with it: the worker now knows the principal,
    the grant, the group's switch and the blobs it served."""
    probe = Probe(faults, faults.pull_headers("e2e/cached"))
    assert probe.manifest().status_code == 200
    for digest in faults.cached.blob_digests:
        response = probe.blob("warm blob", "e2e/cached", digest)
        assert response.status_code == 200, response.text
    assert probe.api().status_code == 200
    probe.times.clear()
    return probe


def _assert_unavailable(response: requests.Response, bound: float, elapsed: float) -> None:
    checks.registry_error(response, 503, "UNAVAILABLE")
    assert int(response.headers["Retry-After"]) > 0, dict(response.headers)
    assert elapsed < bound, (response.request.url, elapsed, bound)


def _assert_outage(probe: Probe, uncached_digest: str, bound: float) -> None:
    """Everything that needs the database answers 503 within ``bound``; what can be
    decided without it keeps working."""
    faults = probe.faults
    response = probe.login()
    _assert_unavailable(response, bound, probe.times["/jwt/auth"])
    response = probe.manifest()
    _assert_unavailable(response, bound, probe.times["manifest"])
    response = probe.blob("uncached blob", "e2e/uncached", uncached_digest)
    _assert_unavailable(response, bound, probe.times["uncached blob"])

    response = probe.api()
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert "database" in response.json()["message"], response.text
    assert int(response.headers["Retry-After"]) > 0
    assert probe.times["REST API"] < bound

    response = probe.base(with_token=False)
    assert response.status_code == 401, response.text
    assert probe.times["/v2/ token=False"] < FAST

    # A load balancer takes the host out of rotation; liveness stays fine.
    response = probe.get("ready", f"{faults.platform.url}/-/dependency_proxy/ready")
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    # A stopped database fails the check; a hung one does not answer in time.
    assert checks["storage"] == "ok", checks
    assert re.fullmatch(
        r"the database check failed \(the log says why\)|no answer within [0-9.]+ s",
        checks["database"],
    ), checks
    # Nothing of the error: not the server's address, port, user or database name.
    answered = response.text
    assert str(faults.cluster.port) not in answered, answered
    assert faults.database not in answered and "postgres" not in answered.lower(), answered
    assert probe.times["ready"] < READY_TIMEOUT + MARGIN
    response = probe.get("health", f"{faults.platform.url}/-/dependency_proxy/health")
    assert response.status_code == 200 and probe.times["health"] < FAST
    response = probe.base(with_token=True)
    assert response.status_code == 200, response.text

    for digest in faults.cached.blob_digests:
        response = probe.blob("cached blob", "e2e/cached", digest)
        assert response.status_code == 200, response.text
        assert response.content == faults.upstream.read_blob(digest)
        assert probe.times["cached blob"] < bound


def _assert_recovered(probe: Probe, uncached_digest: str) -> None:
    """The same requests succeed again, with no restart of gunicorn."""
    faults = probe.faults
    pid = faults.platform.process.pid
    assert probe.login().status_code == 200
    assert probe.manifest().status_code == 200
    response = probe.blob("uncached blob", "e2e/uncached", uncached_digest)
    assert response.status_code == 200, response.text
    assert response.content == faults.upstream.read_blob(uncached_digest)
    assert probe.api().status_code == 200
    ready = probe.get("ready", f"{faults.platform.url}/-/dependency_proxy/ready")
    assert ready.status_code == 200, ready.text
    assert faults.platform.process.pid == pid and faults.platform.process.is_running()


@pytest.mark.e2e
def test_postgres_stopped(faults: Faults) -> None:
    probe = _probe(faults)
    uncached = faults.uncached.config_digest
    assert uncached is not None
    _stop_immediately(faults.cluster)
    try:
        # Refused connections are noticed at once; the bound is the same as for a hang.
        _assert_outage(probe, uncached, DATABASE_TIMEOUT + MARGIN)
        outage_times = dict(probe.times)
    finally:
        _start_again(faults.cluster)
    _assert_recovered(probe, uncached)
    print("stopped:", outage_times)


@pytest.mark.e2e
def test_postgres_hung(faults: Faults) -> None:
    probe = _probe(faults)
    uncached = faults.uncached.layer_digests[0]
    pids = _cluster_pids(faults.cluster)
    _signal_all(pids, signal.SIGSTOP)
    try:
        _assert_outage(probe, uncached, DATABASE_TIMEOUT + MARGIN)
        # Many requests at once, more than the pool holds: each is answered within the
        # bound, none hangs.
        statuses = _burst(probe, 20)
        assert statuses and all(status == 503 for status in statuses.values()), statuses
        outage_times = dict(probe.times)
    finally:
        _signal_all(pids, signal.SIGCONT)
    _assert_recovered(probe, uncached)
    print("hung:", outage_times)


def _burst(probe: Probe, count: int) -> dict[int, int]:
    """``count`` manifest requests at once; their statuses once all were answered."""
    url = probe.faults.manifest_url("e2e/cached", "1")
    statuses: dict[int, int] = {}

    def pull(number: int) -> None:
        response = requests.get(url, headers=probe.headers, timeout=60)
        statuses[number] = response.status_code

    threads = [threading.Thread(target=pull, args=(n,)) for n in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    probe.times[f"burst of {count}"] = round(elapsed, 3)
    assert len(statuses) == count and elapsed < DATABASE_TIMEOUT + MARGIN, (statuses, elapsed)
    return statuses


# -- in process: a database that cannot be reached ------------------------------------------

_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_app(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[Flask]:
    """The platform in process on a database it cannot open: a SQLite file in a folder
    that does not exist, or a PostgreSQL port nobody listens on."""
    from examples.platform import create_app
    from tests.platform_fixtures import dispose, platform_env_keys

    for key in platform_env_keys():
        monkeypatch.delenv(key)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'missing' / 'platform.sqlite3'}"
    else:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/platform"
    flask_app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "DATABASE_URL": url,
            "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
            "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / "store"),
        }
    )
    yield flask_app
    dispose(flask_app)


def _registry_unavailable(response: t.Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["errors"][0]
    assert error["code"] == "UNAVAILABLE", error
    assert "database" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_unreachable_database_answers_503_in_every_blueprint(unreachable_app: Flask) -> None:
    from examples.platform.tokens import PERSONAL_ACCESS_TOKEN_PREFIX
    from flask_dependency_proxy import state

    client = unreachable_app.test_client()
    started = time.monotonic()

    # Needs no database: the login challenge.
    assert client.get("/v2/").status_code == 401

    _registry_unavailable(
        client.get("/jwt/auth?service=dependency_proxy", auth=("alice", "a-password"))
    )
    with unreachable_app.app_context():
        token, _claims = state(None).issuer.issue("user:1")
    bearer = {"Authorization": f"Bearer {token}"}
    repository = "acme/dependency_proxy/containers/alpine"
    _registry_unavailable(client.get("/v2/", headers=bearer))
    _registry_unavailable(client.get(f"/v2/{repository}/manifests/latest", headers=bearer))
    _registry_unavailable(client.get(f"/v2/{repository}/blobs/{_DIGEST}", headers=bearer))
    head = client.head(f"/v2/{repository}/blobs/{_DIGEST}", headers=bearer)
    assert head.status_code == 503 and int(head.headers["Retry-After"]) > 0

    api = client.get(
        "/api/v4/groups/acme/dependency_proxy/settings",
        headers={"PRIVATE-TOKEN": PERSONAL_ACCESS_TOKEN_PREFIX + "x" * 40},
    )
    assert api.status_code == 503, api.get_data(as_text=True)
    assert api.mimetype == "application/json"
    assert api.get_json()["message"].startswith("503 Service Unavailable")
    assert int(api.headers["Retry-After"]) > 0

    with client.session_transaction() as session:
        session["_user_id"] = "1"
    page = client.get("/groups/acme/-/dependency_proxy")
    assert page.status_code == 503, page.get_data(as_text=True)
    assert page.mimetype == "text/html"
    assert "database" in page.get_data(as_text=True)
    assert int(page.headers["Retry-After"]) > 0

    # Refused or impossible connections fail at once, not after a timeout.
    assert time.monotonic() - started < 10
