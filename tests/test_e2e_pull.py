"""Pulls through the live platform with skopeo and podman, from a real upstream registry.

The platform runs under gunicorn (two workers) on SQLite and on PostgreSQL, with its blobs
on disk and in S3-compatible object storage (SeaweedFS); the upstream is
``docker-registry``, whose access log tells what reached it.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from tests.support import checks, images, seed
from tests.support.clients import Podman, Skopeo
from tests.support.databases import Databases
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory, wait_for
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS

pytestmark = pytest.mark.e2e

GROUP = seed.ACME
USER = seed.ALICE


#: Object storage runs on PostgreSQL only: the bucket meets the database nowhere that a
#: second run on SQLite would reach, and the disk scenarios run on both.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite", "live": "s3"}]


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def live(
    request: pytest.FixtureRequest,
    platform: Platform,
    module_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    databases: Databases,
    upstream: Registry,
) -> t.Iterator[Platform]:
    """The session's platform (blobs on disk), then one with its blobs in a bucket.

    A fixture of its own name: overriding the session's ``platform`` with parameters
    would make pytest set that one up again for each of them."""
    if request.param == "filesystem":
        yield platform
        return
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    live = Platform(
        module_processes,
        tmp_path_factory.mktemp("platform-s3"),
        database_url=databases.create("pull-s3"),
        upstream_url=upstream.url,
        name="platform-s3",
        extra_env=seaweedfs.env(seaweedfs.new_bucket()),
    )
    seed.seed_full(live)
    yield live.start()
    live.stop()


@pytest.fixture
def alice(live: Platform, skopeo: Skopeo) -> Skopeo:
    """skopeo logged in to the platform as a developer of ``acme``."""
    checks.ok(skopeo.login(live.host, USER.username, USER.password))
    return skopeo


def _push(
    upstream: Registry,
    repository: str,
    tag: str,
    seed_: str,
    workdir: Path,
    *,
    sizes: tuple[int, ...] = (300_000, 700_000),
    docker_format: bool = False,
) -> images.Pushed:
    image = images.build_image(seed_, layer_sizes=sizes)
    return images.push(
        image, upstream, repository, tag, workdir=workdir, docker_format=docker_format
    )


def test_login(live: Platform, upstream: Registry, unique_name: str, tmp_path: Path) -> None:
    _push(upstream, f"e2e/{unique_name}", "1", unique_name, tmp_path, sizes=(1000,))

    checks.ok(Skopeo(tmp_path / "good").login(live.host, USER.username, USER.password))

    output = checks.failed(
        Skopeo(tmp_path / "bad").login(live.host, USER.username, "wrong-password")
    )
    assert "invalid username/password" in output or "unauthorized" in output

    result, _ = Skopeo(tmp_path / "anonymous").copy_to_dir(
        live.image(GROUP, f"e2e/{unique_name}", "1")
    )
    output = checks.failed(result)
    assert "unauthorized" in output or "authentication required" in output


@pytest.mark.parametrize("docker_format", [False, True], ids=["oci", "docker"])
def test_pull_by_tag_gets_upstream_bytes(
    live: Platform,
    upstream: Registry,
    alice: Skopeo,
    unique_name: str,
    tmp_path: Path,
    docker_format: bool,
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = _push(upstream, repository, "1.0", unique_name, tmp_path, docker_format=docker_format)
    assert len(pushed.layer_digests) == 2

    result, target = alice.copy_to_dir(live.image(GROUP, repository, "1.0"))
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    for digest in pushed.layer_digests:
        # A client is done once the digest is verified; the commit (on object storage
        # the end of an upload) follows.
        expected = [upstream.read_blob(digest)]
        wait_for(
            lambda digest=digest, expected=expected: live.stored_blobs_for(digest) == expected,
            timeout=30,
            what="the layer committed to the store",
        )
        if not live.object_storage:
            # The cached layers are readable by the platform's user and group only.
            (blob,) = [p for p in live.store_files_for(digest) if "blobs" in p.parts]
            assert oct(blob.stat().st_mode & 0o777) == oct(0o640)
            assert oct(blob.parent.stat().st_mode & 0o777) == oct(0o750)


def test_second_pull_only_heads_upstream(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = _push(upstream, repository, "1.0", unique_name, tmp_path)
    checks.ok(alice.copy_to_dir(live.image(GROUP, repository, "1.0"))[0])
    assert upstream.count("GET", repository=repository, kind="blobs") >= 2

    since = upstream.mark()
    result, target = alice.copy_to_dir(live.image(GROUP, repository, "1.0"))
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    seen = [
        (r.method, r.kind, r.reference)
        for r in upstream.access_log(since)
        if r.repository == repository
    ]
    assert ("HEAD", "manifests", "1.0") in seen, seen
    assert not [s for s in seen if s[0] == "GET"], seen


def test_moved_tag_gets_new_digest(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    first = _push(upstream, repository, "stable", f"{unique_name}-first", tmp_path)
    result, target = alice.copy_to_dir(live.image(GROUP, repository, "stable"))
    checks.ok(result)
    checks.same_as_upstream(target, first, upstream)

    second = _push(upstream, repository, "stable", f"{unique_name}-second", tmp_path)
    assert second.digest != first.digest
    result, target = alice.copy_to_dir(live.image(GROUP, repository, "stable"))
    checks.ok(result)
    checks.same_as_upstream(target, second, upstream)
    inspected = json.loads(checks.ok(alice.inspect(live.image(GROUP, repository, "stable"))).stdout)
    assert inspected["Digest"] == second.digest


def test_copy_all_of_multi_arch_index(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = images.push(
        images.build_index(unique_name), upstream, repository, "multi", workdir=tmp_path
    )

    result, layout = alice.copy_to_oci(live.image(GROUP, repository, "multi"))
    checks.ok(result)
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == pushed.digest
    blobs = layout / "blobs" / "sha256"
    assert (blobs / pushed.digest[7:]).read_bytes() == pushed.manifest
    for child in pushed.children.values():
        assert (blobs / child.digest[7:]).read_bytes() == child.manifest
        for digest in child.blob_digests:
            assert (blobs / digest[7:]).read_bytes() == upstream.read_blob(digest)


def test_podman_pulls_arm64_from_index(
    live: Platform, upstream: Registry, podman: Podman, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = images.push(
        images.build_index(unique_name), upstream, repository, "multi", workdir=tmp_path
    )
    checks.ok(podman.login(live.host, USER.username, USER.password))

    reference = live.image(GROUP, repository, "multi")
    checks.ok(podman.pull(reference, arch="arm64"))
    inspected = podman.image_inspect(reference)
    assert inspected["Architecture"] == "arm64"
    arm64 = pushed.child("arm64")
    assert f"{live.image(GROUP, repository)}@{arm64.digest}" in inspected["RepoDigests"]
    # Exactly the arm64 blobs came through the proxy, and from upstream.
    fetched = {
        r.reference
        for r in upstream.access_log()
        if r.repository == repository and r.kind == "blobs" and r.method == "GET"
    }
    assert set(arm64.blob_digests) <= fetched
    assert not set(pushed.child("amd64").layer_digests) & fetched


def test_pull_by_digest(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = images.push(
        images.build_index(unique_name), upstream, repository, "multi", workdir=tmp_path
    )
    arm64 = pushed.child("arm64")

    result, target = alice.copy_to_dir(live.image(GROUP, repository, arm64.digest))
    checks.ok(result)
    checks.same_as_upstream(target, arm64, upstream)

    # Again by digest: content is immutable, upstream is not asked about the manifest.
    since = upstream.mark()
    result, target = alice.copy_to_dir(live.image(GROUP, repository, arm64.digest))
    checks.ok(result)
    checks.same_as_upstream(target, arm64, upstream)
    assert upstream.count(repository=repository, kind="manifests", since=since) == 0
    assert upstream.count(repository=repository, kind="blobs", since=since) == 0


def test_blob_not_matching_its_digest_is_not_cached(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    repository = f"e2e/{unique_name}"
    pushed = _push(upstream, repository, "1", unique_name, tmp_path)
    bad = pushed.layer_digests[-1]
    original = upstream.corrupt_blob(bad)

    result, _ = alice.copy_to_dir(live.image(GROUP, repository, "1"))
    checks.failed(result)
    assert upstream.count("GET", repository=repository, reference=bad) >= 1
    # Neither a committed blob nor a leftover staging file for the digest.
    wait_for(
        lambda: not live.stored_blobs_for(bad),
        timeout=15,
        what="no store file for the bad digest",
    )

    upstream.restore_blob(bad, original)
    result, target = alice.copy_to_dir(live.image(GROUP, repository, "1"))
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    wait_for(
        lambda: live.stored_blobs_for(bad) == [original],
        timeout=30,
        what="the right bytes committed to the store",
    )


def test_official_image_name_maps_to_library(
    live: Platform, upstream: Registry, alice: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    pushed = _push(upstream, f"library/{unique_name}", "3.19", unique_name, tmp_path, sizes=(1000,))

    result, target = alice.copy_to_dir(live.image(GROUP, unique_name, "3.19"))
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)
    assert upstream.count(repository=f"library/{unique_name}", kind="manifests") >= 1
    assert upstream.count(repository=unique_name) == 0
