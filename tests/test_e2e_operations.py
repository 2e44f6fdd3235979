"""Operating the proxy: Prometheus metrics from every worker, liveness and readiness,
and one parseable log line per registry request.

The platform runs under the shipped gunicorn configuration with two gevent workers
(which puts prometheus_client in its multiprocess mode), metrics on and protected by a
token, and JSON request logs; clients are skopeo and plain HTTP. The database outage
side of readiness is checked where the database is stopped and frozen
(``test_e2e_database_faults.py``).
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.databases import Databases
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory, wait_for
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the metrics, probes and logs, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
USER = seed.ALICE
METRICS_TOKEN = "scrape-secret-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def platform(
    module_platform_factory: PlatformFactory,
    upstream: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Platform:
    return module_platform_factory(
        upstream.url,
        name="operations",
        extra_env={
            "DEPENDENCY_PROXY_METRICS_ENABLED": "true",
            "DEPENDENCY_PROXY_METRICS_TOKEN": METRICS_TOKEN,
            "DEPENDENCY_PROXY_REQUEST_LOG": "json",
            # Each worker's own folder of metric files, gone with the module.
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics")),
        },
    )


def _scrape(platform: Platform) -> Samples:
    response = requests.get(
        f"{platform.url}/-/dependency_proxy/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and wanted <= set(found)
    )


def _pull(platform: Platform, tmp_path: Path, repository: str, tag: str) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(platform.host, USER.username, USER.password))
    checks.ok(skopeo.copy_to_dir(platform.image(GROUP, repository, tag))[0])


def test_metrics_count_every_worker_outcomes_bytes_and_upstream_requests(
    platform: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    image = images.build_image(unique_name, layer_sizes=(30_000, 70_000, 50_000))
    pushed = images.push(image, upstream, f"ops/{unique_name}", "1", workdir=tmp_path)
    blob_bytes = sum(blob.size for blob in image.blobs)
    before = _scrape(platform)

    _pull(platform, tmp_path / "first", pushed.repository, "1")
    # The last blob's row is written after its last byte: wait for the cache to settle.
    wait_for(
        lambda: (
            _value(_scrape(platform), "dependency_proxy_upstream_fetched_bytes_total")
            - _value(before, "dependency_proxy_upstream_fetched_bytes_total")
            >= blob_bytes
        ),
        timeout=10,
        what="the fetched bytes counted",
    )
    _pull(platform, tmp_path / "second", pushed.repository, "1")
    after = _scrape(platform)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    blobs = len(pushed.blob_digests)
    # Two workers served these requests; every one of them is counted.
    assert delta("dependency_proxy_cache_requests_total", kind="blob", outcome="miss") == blobs
    assert delta("dependency_proxy_cache_requests_total", kind="blob", outcome="hit") == blobs
    assert delta("dependency_proxy_cache_requests_total", kind="manifest", outcome="miss") == 1
    assert (
        delta("dependency_proxy_cache_requests_total", kind="manifest", outcome="revalidated") >= 1
    )
    assert delta("dependency_proxy_upstream_fetched_bytes_total") == blob_bytes
    assert (
        delta("dependency_proxy_served_bytes_total", kind="blob", source="upstream") == blob_bytes
    )
    assert delta("dependency_proxy_served_bytes_total", kind="blob", source="cache") == blob_bytes
    assert (
        delta("dependency_proxy_registry_requests_total", route="blob", method="GET", status="200")
        == 2 * blobs
    )
    assert (
        delta(
            "dependency_proxy_upstream_requests_total",
            upstream="default",
            kind="blob",
            status="200",
        )
        == blobs
    )
    assert (
        delta(
            "dependency_proxy_upstream_requests_total",
            upstream="default",
            kind="manifest",
            status="200",
        )
        >= 3
    )  # HEAD and GET of the first pull, HEAD of the second
    assert delta("dependency_proxy_upstream_request_duration_seconds_count", kind="blob") == blobs
    assert _value(after, "dependency_proxy_fetches_in_flight") == 0
    # No image names or group paths in any label.
    assert not any(
        pushed.repository in value or "acme" in value
        for (_name, labels) in after
        for _key, value in labels
    )


def test_the_shipped_gunicorn_configuration_as_shipped_serves_every_worker_metrics(
    live_process: ProcessFactory,
    databases: Databases,
    upstream: Registry,
    tmp_path: Path,
    unique_name: str,
) -> None:
    """``gunicorn -c examples/gunicorn.conf.py``, nothing else: no
    ``PROMETHEUS_MULTIPROC_DIR`` set beforehand, so the configuration makes the folder
    itself, before prometheus_client is imported anywhere."""
    shipped = Platform(
        live_process,
        tmp_path / "shipped",
        database_url=databases.create("shipped"),
        upstream_url=upstream.url,
        name="shipped",
        extra_env={
            "DEPENDENCY_PROXY_METRICS_ENABLED": "true",
            "DEPENDENCY_PROXY_METRICS_TOKEN": METRICS_TOKEN,
            # The folder the configuration makes lands in the test's own folder.
            "TMPDIR": str(tmp_path),
        },
        as_shipped=True,
    )
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "GUNICORN_CMD_ARGS"):
        shipped.env.pop(name, None)
    seed.seed_minimal(shipped)
    shipped.start()
    image = images.build_image(unique_name, layer_sizes=(30_000, 50_000))
    pushed = images.push(image, upstream, f"ops/{unique_name}", "1", workdir=tmp_path)

    _pull(shipped, tmp_path / "pulled", pushed.repository, "1")

    def pulls() -> Samples:
        return _scrape(shipped)

    wait_for(
        lambda: (
            _value(pulls(), "dependency_proxy_upstream_fetched_bytes_total")
            >= sum(blob.size for blob in image.blobs)
        ),
        timeout=10,
        what="the fetched bytes counted",
    )
    samples = _scrape(shipped)
    blobs = len(pushed.blob_digests)
    assert (
        _value(samples, "dependency_proxy_cache_requests_total", kind="blob", outcome="miss")
        == blobs
    )
    assert (
        _value(samples, "dependency_proxy_cache_requests_total", kind="manifest", outcome="miss")
        == 1
    )
    assert (
        _value(
            samples,
            "dependency_proxy_registry_requests_total",
            route="blob",
            method="GET",
            status="200",
        )
        == blobs
    )


def test_metrics_need_the_token(platform: Platform) -> None:
    url = f"{platform.url}/-/dependency_proxy/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 401, (headers, response.text)
        assert "dependency_proxy" not in response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_route_is_off_by_default(
    platform_factory: t.Callable[..., Platform], upstream: Registry
) -> None:
    plain = platform_factory(upstream.url)
    response = requests.get(f"{plain.url}/-/dependency_proxy/metrics", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"message": "metrics are not enabled"}
    assert requests.get(f"{plain.url}/-/dependency_proxy/ready", timeout=10).status_code == 200


def test_health_and_readiness_follow_the_blob_store(platform: Platform) -> None:
    health = requests.get(f"{platform.url}/-/dependency_proxy/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{platform.url}/-/dependency_proxy/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}

    blobs = platform.store_path / "blobs"
    start = platform.process.log_path.stat().st_size
    aside = platform.store_path / "blobs-away"
    blobs.rename(aside)
    try:
        ready = requests.get(f"{platform.url}/-/dependency_proxy/ready", timeout=10)
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok"
        # Which check failed, and nothing of why: the route answers anyone.
        assert body["reasons"] == {"storage": "the storage check failed (the log says why)"}
        assert body["checks"]["storage"] == body["reasons"]["storage"]
        assert "missing or not writable" not in ready.text and str(blobs) not in ready.text
        # Why goes to the log.
        wait_for(
            lambda: f"path {blobs}" in platform.process.log_text(start),
            timeout=5,
            what="the storage failure in the log",
        )
        assert "missing or not writable" in platform.process.log_text(start)
        assert int(ready.headers["Retry-After"]) > 0
        # Liveness asks nothing: the process is fine.
        assert requests.get(f"{platform.url}/-/dependency_proxy/health", timeout=10).ok
    finally:
        aside.rename(blobs)
    assert requests.get(f"{platform.url}/-/dependency_proxy/ready", timeout=10).status_code == 200


def test_one_json_log_line_per_registry_request(
    platform: Platform, upstream: Registry, tmp_path: Path, unique_name: str
) -> None:
    image = images.build_image(unique_name, layer_sizes=(20_000,))
    pushed = images.push(image, upstream, f"ops/{unique_name}", "2.0", workdir=tmp_path)
    start = platform.process.log_path.stat().st_size
    _pull(platform, tmp_path, pushed.repository, "2.0")
    layer = pushed.layer_digests[0]

    def lines() -> list[dict[str, t.Any]]:
        found = []
        for line in platform.process.log_text(start).splitlines():
            _, brace, rest = line.partition("{")
            if brace and unique_name in rest:
                found.append(json.loads(brace + rest))
        return found

    wait_for(
        lambda: any(line.get("reference") == layer for line in lines()),
        timeout=10,
        what="the layer's log line",
    )
    logged = lines()
    manifests = [line for line in logged if line["route"] == "manifest"]
    assert {line["method"] for line in manifests} >= {"GET"}
    first = next(line for line in manifests if line["method"] == "GET")
    assert first["group"] == GROUP
    assert first["image"] == pushed.repository
    assert first["reference"] == "2.0"
    assert first["status"] == 200
    assert first["outcome"] in {"miss", "revalidated"}
    assert first["upstream_status"] == 200
    blob = next(line for line in logged if line["reference"] == layer)
    assert blob["route"] == "blob" and blob["outcome"] == "miss" and blob["status"] == 200
    assert blob["upstream_status"] == 200  # the GET its fetch made, outside the request
    assert blob["bytes"] == next(b.size for b in image.blobs if b.digest == layer)
    assert isinstance(blob["duration_ms"], float) and blob["duration_ms"] >= 0
