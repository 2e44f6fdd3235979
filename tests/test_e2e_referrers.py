"""OCI referrers through the cache, with the suite's real upstream (distribution 2.8,
which has no referrers API: the proxy reads the referrers tag schema) and a plain HTTP
client: the list, its ``artifactType`` filter, the referrer content pulled through by
digest, and the cached list served while upstream is down, to the group that cached it
only."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import artifacts, images, seed
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the referrers route, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

IMAGE = "e2e/attached"
SBOM = "application/spdx+json"


class Attached(t.NamedTuple):
    platform: Platform
    upstream: Registry
    subject: images.Pushed
    descriptors: list[dict[str, t.Any]]
    sbom: bytes


@pytest.fixture(scope="module")
def attached(
    module_processes: ProcessFactory,
    module_platform_factory: PlatformFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Attached:
    """An image upstream with two referrers (a Sigstore bundle and an SBOM) attached the
    way OCI clients attach them to a registry without the referrers API."""
    workdir = tmp_path_factory.mktemp("referrers")
    upstream = Registry(module_processes, workdir / "upstream", name="referrers-upstream").start()
    platform = module_platform_factory(upstream.url, name="referrers", setup=seed.seed_full)
    subject = images.push(
        images.build_image("referrers-seed", layer_sizes=(1024,)),
        upstream,
        IMAGE,
        "1",
        workdir=workdir,
    )
    sbom = b'{"spdxVersion":"SPDX-2.3"}'
    descriptors = artifacts.push_referrers(
        upstream.url,
        IMAGE,
        {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)},
        [
            (artifacts.BUNDLE, artifacts.BUNDLE, b'{"mediaType":"bundle"}'),
            (SBOM, SBOM, sbom),
        ],
    )
    return Attached(platform, upstream, subject, descriptors, sbom)


def _get(
    live: Attached,
    path: str,
    user: seed.Account = seed.ALICE,
    group: str = seed.ACME,
    artifact_type: str | None = None,
) -> requests.Response:
    headers = live.platform.bearer(user.username, user.password, group, IMAGE)
    url = f"{live.platform.url}/v2/{live.platform.repository(group, IMAGE)}/{path}"
    params = {"artifactType": artifact_type} if artifact_type else None
    return requests.get(url, headers=headers, params=params, timeout=30)


def test_referrers_list_filter_and_content(attached: Attached) -> None:
    answer = _get(attached, f"referrers/{attached.subject.digest}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == artifacts.OCI_INDEX
    assert "OCI-Filters-Applied" not in answer.headers
    index = answer.json()
    assert index["mediaType"] == artifacts.OCI_INDEX and index["schemaVersion"] == 2
    assert index["manifests"] == attached.descriptors

    filtered = _get(attached, f"referrers/{attached.subject.digest}", artifact_type=SBOM)
    assert filtered.status_code == 200
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert filtered.json()["manifests"] == [attached.descriptors[1]]

    # The referrer and its blob pull through as ordinary content, by digest.
    sbom = attached.descriptors[1]
    manifest = _get(attached, f"manifests/{sbom['digest']}")
    assert manifest.status_code == 200
    document = json.loads(manifest.content)
    assert document["subject"]["digest"] == attached.subject.digest
    blob = _get(attached, f"blobs/{document['layers'][0]['digest']}")
    assert blob.content == attached.sbom

    # A digest nothing refers to has an empty list; a malformed one is a registry error.
    nothing = _get(attached, f"referrers/sha256:{'0' * 64}")
    assert (nothing.status_code, nothing.json()["manifests"]) == (200, [])
    bad = _get(attached, "referrers/sha256:NOTHEX")
    assert (bad.status_code, bad.json()["errors"][0]["code"]) == (400, "DIGEST_INVALID")
    bad_type = _get(attached, f"referrers/{attached.subject.digest}", artifact_type="<x>")
    assert bad_type.status_code == 400 and bad_type.json()["errors"][0]["code"] == "UNSUPPORTED"
    anonymous = requests.get(
        f"{attached.platform.url}/v2/{attached.platform.repository(seed.ACME, IMAGE)}"
        f"/referrers/{attached.subject.digest}",
        timeout=30,
    )
    assert anonymous.status_code == 401


def test_referrers_served_from_cache_while_upstream_is_down(
    attached: Attached, tmp_path: Path
) -> None:
    warm = _get(attached, f"referrers/{attached.subject.digest}")
    assert warm.status_code == 200
    attached.upstream.stop()
    try:
        cached = _get(attached, f"referrers/{attached.subject.digest}", artifact_type=SBOM)
        assert cached.status_code == 200, cached.text
        assert cached.json()["manifests"] == [attached.descriptors[1]]
        assert cached.headers["X-Dependency-Proxy-Stale"] == "true"
        assert cached.headers["OCI-Filters-Applied"] == "artifactType"
        # Another group never sees this group's cached list.
        other = _get(
            attached, f"referrers/{attached.subject.digest}", user=seed.BOB, group=seed.GLOBEX
        )
        assert other.status_code == 503
        assert other.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert attached.descriptors[0]["digest"] not in other.text
    finally:
        attached.upstream.start()
